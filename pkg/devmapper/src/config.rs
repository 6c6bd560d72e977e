//! The `[devmapper]` section of the daemon's configuration.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::size::ByteSize;

/// The filesystem made on the base device, which every snapshot inherits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }

    /// The Debian package that carries this filesystem's mkfs.
    pub fn tools_package(self) -> &'static str {
        match self {
            FsType::Ext4 => "e2fsprogs",
            FsType::Xfs => "xfsprogs",
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevmapperConfig {
    /// An existing thin pool given to rustlayer alone (e.g. an LVM thin pool's dm
    /// name). Unset: a pool on sparse loop-backed files under `<root>/devmapper/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_name: Option<String>,
    /// Size of the self-managed pool's data file (sparse: space is used as written).
    pub pool_data_size: ByteSize,
    /// Size of the self-managed pool's metadata file.
    pub pool_metadata_size: ByteSize,
    /// The size of every snapshot's filesystem, fixed when the base device is made.
    pub base_image_size: ByteSize,
    pub fs_type: FsType,
    /// Extra arguments for mkfs when the base device is made.
    pub fs_options: Vec<String>,
    /// Pass discards from thin devices down to the pool's data device.
    pub discard_blocks: bool,
    /// Delete thin devices in the background, so Remove returns at once.
    pub async_remove: bool,
    /// New snapshots are refused while less than this share of the pool's data or
    /// metadata space is free, so running containers keep room to write.
    pub min_free_percent: u8,
}

impl Default for DevmapperConfig {
    fn default() -> Self {
        DevmapperConfig {
            pool_name: None,
            pool_data_size: ByteSize::gib(100),
            pool_metadata_size: ByteSize::gib(2),
            base_image_size: ByteSize::gib(10),
            fs_type: FsType::Ext4,
            fs_options: Vec::new(),
            discard_blocks: true,
            async_remove: true,
            min_free_percent: 10,
        }
    }
}

/// A `[devmapper]` setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidConfig {
    #[error("min_free_percent = {0} leaves no space to use; pick 0 to 99")]
    MinFreePercent(u8),
    #[error("base_image_size = {0} is too small for a filesystem (at least 16MiB)")]
    BaseImageTooSmall(ByteSize),
    #[error("pool_metadata_size = {0} is too small (at least 2MiB)")]
    PoolMetadataTooSmall(ByteSize),
}

impl DevmapperConfig {
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.min_free_percent > 99 {
            return Err(InvalidConfig::MinFreePercent(self.min_free_percent));
        }
        if self.base_image_size.get() < 16 << 20 {
            return Err(InvalidConfig::BaseImageTooSmall(self.base_image_size));
        }
        if self.pool_name.is_none() && self.pool_metadata_size.get() < 2 << 20 {
            return Err(InvalidConfig::PoolMetadataTooSmall(self.pool_metadata_size));
        }
        Ok(())
    }
}

/// Printed by `rustlayer config default` under `[devmapper]`.
pub const DEFAULT_TOML: &str = r#"[devmapper]
# Used with backend = "devmapper": every snapshot is a dm-thin device with its own
# filesystem. An existing thin pool given to rustlayer alone (thin ids are managed
# by rustlayer, so never share it with LVM volumes); when unset, a pool on sparse
# files under <root>/devmapper/ attached to loop devices (for development and tests).
# pool_name = "vg0-rustlayer--pool-tpool"

# Sizes of the self-managed pool's sparse data and metadata files.
pool_data_size = "100GiB"
pool_metadata_size = "2GiB"

# Every snapshot's filesystem size, fixed when the base device is first made.
base_image_size = "10GiB"

# "ext4" or "xfs", and extra mkfs arguments for the base device.
fs_type = "ext4"
fs_options = []

# Pass discards down to the pool's data device, so deleted layers free space.
discard_blocks = true

# Delete thin devices in the background; Remove returns at once.
async_remove = true

# Refuse new snapshots while less than this percentage of the pool's data or
# metadata space is free.
min_free_percent = 10
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        devmapper: DevmapperConfig,
    }

    #[test]
    fn printed_defaults_are_the_defaults() {
        let parsed: File = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(parsed.devmapper, DevmapperConfig::default());
        assert!(parsed.devmapper.validate().is_ok());
    }

    #[test]
    fn sizes_and_unknown_keys() {
        let c: DevmapperConfig =
            toml::from_str("base_image_size = \"20G\"\nfs_type = \"xfs\"").unwrap();
        assert_eq!(c.base_image_size, ByteSize::gib(20));
        assert_eq!(c.fs_type, FsType::Xfs);
        assert!(toml::from_str::<DevmapperConfig>("base_size = 1").is_err());
        let tiny: DevmapperConfig = toml::from_str("base_image_size = 4096").unwrap();
        assert!(
            tiny.validate()
                .unwrap_err()
                .to_string()
                .contains("too small")
        );
    }
}
