//! The daemon's settings: a TOML file with the same names as the command-line
//! flags, which win over it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustlayer_devmapper::{ByteSize, DevmapperConfig};
use rustlayer_node::ReadyLabel;
use rustlayer_overlay::SizeLimits;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/rustlayer/config.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Overlay,
    Devmapper,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub root: PathBuf,
    pub address: PathBuf,
    pub backend: BackendKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<SocketAddr>,
    pub log_format: LogFormat,
    /// Group id allowed to use the socket besides root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<u32>,
    /// containerd's proxy plugin for rustlayer declares `remap-ids`: mounts of
    /// user-namespaced snapshots carry `uidmap=`/`gidmap=` for containerd to idmap.
    pub remap_ids: bool,
    /// Settings of the overlay backend (ignored by the devmapper backend).
    pub overlay: OverlayConfig,
    /// Settings of the devmapper backend (ignored by the overlay backend).
    pub devmapper: DevmapperConfig,
    /// Settings of the Kubernetes node integration shared by every node.
    pub node: NodeConfig,
}

/// `[node]`: what this daemon calls itself on its Kubernetes Node. The node's
/// name and whether the integration runs are flags: they differ per node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The label set to "true" on the Node while serving; checked as a label key
    /// when the file is read.
    #[serde(
        serialize_with = "serialize_ready_label",
        deserialize_with = "deserialize_ready_label"
    )]
    pub ready_label: ReadyLabel,
}

fn serialize_ready_label<S: Serializer>(label: &ReadyLabel, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(label.as_str())
}

fn deserialize_ready_label<'de, D: Deserializer<'de>>(d: D) -> Result<ReadyLabel, D::Error> {
    let key = String::deserialize(d)?;
    ReadyLabel::new(&key).map_err(serde::de::Error::custom)
}

/// `[overlay]`: size limits of active snapshots, through project quotas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverlayConfig {
    /// The size limit of an active snapshot without `containerd.io/snapshot/max-size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_size: Option<ByteSize>,
    /// The inode limit of every active snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_inodes: Option<u64>,
    /// Refuse `max-size` where the root has no project quotas, instead of ignoring it.
    pub enforce_size: bool,
}

impl OverlayConfig {
    pub fn size_limits(&self) -> SizeLimits {
        SizeLimits {
            default_size: self.default_size.map(ByteSize::get),
            default_inodes: self.default_inodes,
            enforce_size: self.enforce_size,
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.default_size.is_some_and(|size| size.get() == 0) {
            return Err("default_size must be more than zero (leave it out for no limit)".into());
        }
        if self.default_inodes == Some(0) {
            return Err("default_inodes must be more than zero (leave it out for no limit)".into());
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/rustlayer"),
            address: PathBuf::from("/run/rustlayer/rustlayer.sock"),
            backend: BackendKind::Overlay,
            metrics_address: None,
            log_format: LogFormat::Text,
            socket_group: None,
            remap_ids: false,
            overlay: OverlayConfig::default(),
            devmapper: DevmapperConfig::default(),
            node: NodeConfig::default(),
        }
    }
}

/// `rustlayer config default`: every setting with its default and what it does.
pub fn default_toml() -> String {
    format!(
        "{TOP_LEVEL_TOML}\n{OVERLAY_TOML}\n{}\n{NODE_TOML}",
        rustlayer_devmapper::DEFAULT_TOML
    )
}

const TOP_LEVEL_TOML: &str = r#"# rustlayer daemon configuration. Command-line flags override these settings.

# Where snapshots and their metadata live. Must not be a symlink or world-writable.
root = "/var/lib/rustlayer"

# The unix socket containerd's proxy plugin dials (created 0660, owned by root).
address = "/run/rustlayer/rustlayer.sock"

# Storage backend: "overlay" (overlayfs layers) or "devmapper" (dm-thin devices).
backend = "overlay"

# Prometheus metrics, /healthz and /readyz; off unless set. Keep it on loopback
# unless a scraper elsewhere needs it.
# metrics_address = "127.0.0.1:9192"

# Log lines as "text" or "json"; the level comes from RUST_LOG (default "info").
log_format = "text"

# A group id that may use the socket besides root.
# socket_group = 0

# User namespaces (Kubernetes hostUsers: false, ctr run --remap-labels): set to
# true exactly when containerd's proxy plugin for rustlayer declares
# capabilities = ["remap-ids"]. rustlayer then returns mounts with uidmap=/gidmap=
# and containerd 2.0 or later idmaps the image's layers; the daemon refuses to
# start on a kernel that cannot (`rustlayer check` says). containerd 1.6 and 1.7
# cannot idmap layers: leave it false there, and containerd copies the image with
# its files chowned instead. The two settings must agree: with the capability but
# not this, containers in user namespaces see their image owned by nobody; with
# this but not the capability, containerd's chowned copy is mapped a second time.
remap_ids = false
"#;

const OVERLAY_TOML: &str = r#"[overlay]
# Used with backend = "overlay". Where the root's filesystem keeps project quotas
# (xfs mounted with prjquota; ext4 made with -O quota,project and mounted with
# prjquota), every active snapshot's layer is a project of its own: the label
# containerd.io/snapshot/max-size (bytes) becomes a hard limit (writes past it
# fail with EDQUOT), and Usage reads the filesystem's counters instead of walking
# the layer. Elsewhere usage is walked and the label is ignored; `rustlayer check`
# says which. The root must then be the only user of project ids on its filesystem.

# The size limit of an active snapshot without the label, like "10GiB"; no limit
# when unset.
# default_size = "10GiB"

# The inode limit of every active snapshot; no limit when unset.
# default_inodes = 1000000

# Refuse snapshots with the label (FailedPrecondition) on a root without project
# quotas instead of ignoring it; the daemon then also refuses to start with a
# default_size or default_inodes it cannot enforce.
enforce_size = false
"#;

const NODE_TOML: &str = r#"[node]
# Kubernetes node integration (--node-integration): the label this daemon sets
# to "true" on its Node while it serves and removes when it stops. A second
# daemon on the same nodes (its own socket and root) needs a label of its own,
# such as "rustlayer.io/ready-<name>", or one's shutdown unlabels the node while
# the other still serves; its Events then also name the label. A Kubernetes label
# key: an optional DNS-subdomain prefix and "/", then at most 63 letters, digits,
# '-', '_' or '.', beginning and ending with a letter or digit.
ready_label = "rustlayer.io/ready"
"#;

impl Config {
    /// The file at `path`, or the default file if it exists, or the defaults.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let (path, required) = match path {
            Some(path) => (path, true),
            None => (Path::new(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let config: Config = toml::from_str(&text)
                    .with_context(|| format!("invalid configuration in {}", path.display()))?;
                config.overlay.validate().map_err(|problem| {
                    anyhow::anyhow!("invalid [overlay] in {}: {problem}", path.display())
                })?;
                config.devmapper.validate().map_err(|problem| {
                    anyhow::anyhow!("invalid [devmapper] in {}: {problem}", path.display())
                })?;
                Ok(config)
            }
            Err(err) if !required && err.kind() == std::io::ErrorKind::NotFound => {
                Ok(Config::default())
            }
            Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_defaults_are_the_defaults() {
        let parsed: Config = toml::from_str(&default_toml()).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn typos_are_errors_not_silently_ignored() {
        let err = toml::from_str::<Config>("roots = \"/x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn partial_files_keep_other_defaults() {
        let c: Config = toml::from_str(
            "backend = \"devmapper\"\nmetrics_address = \"127.0.0.1:9\"\n[devmapper]\npool_name = \"p\"",
        )
        .unwrap();
        assert_eq!(c.backend, BackendKind::Devmapper);
        assert_eq!(c.devmapper.pool_name.as_deref(), Some("p"));
        assert_eq!(
            c.devmapper.base_image_size,
            DevmapperConfig::default().base_image_size
        );
        assert_eq!(c.metrics_address, Some("127.0.0.1:9".parse().unwrap()));
        assert_eq!(c.root, Config::default().root);
    }

    #[test]
    fn remap_ids_is_off_unless_asked_for() {
        assert!(!Config::default().remap_ids);
        let c: Config = toml::from_str("remap_ids = true").unwrap();
        assert!(c.remap_ids);
    }

    #[test]
    fn overlay_size_limits_are_read_with_units() {
        let c: Config = toml::from_str(
            "[overlay]\ndefault_size = \"2GiB\"\ndefault_inodes = 5000\nenforce_size = true",
        )
        .unwrap();
        assert_eq!(
            c.overlay.size_limits(),
            SizeLimits {
                default_size: Some(2 << 30),
                default_inodes: Some(5000),
                enforce_size: true,
            }
        );
        assert_eq!(
            Config::default().overlay.size_limits(),
            SizeLimits::default()
        );
        assert!(toml::from_str::<Config>("[overlay]\ndefault_sise = 1").is_err());
        let zero: Config = toml::from_str("[overlay]\ndefault_size = 0").unwrap();
        assert!(zero.overlay.validate().is_err());
    }

    #[test]
    fn the_ready_label_defaults_to_the_one_existing_installs_use() {
        assert_eq!(
            Config::default().node.ready_label.as_str(),
            rustlayer_node::READY_LABEL
        );
        let c: Config =
            toml::from_str("[node]\nready_label = \"rustlayer.io/ready-limited\"").unwrap();
        assert_eq!(c.node.ready_label.as_str(), "rustlayer.io/ready-limited");
        assert!(toml::from_str::<Config>("[node]\nready_lable = \"x\"").is_err());
    }

    #[test]
    fn a_bad_ready_label_fails_loading_saying_why() {
        let dir = std::env::temp_dir().join(format!("rustlayer-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        for (key, problem) in [
            ("rustlayer.io/ready limited", "has ' '"),
            ("Rustlayer.io/ready", "is no DNS subdomain"),
            ("rustlayer.io/", "the name is empty"),
        ] {
            std::fs::write(&path, format!("[node]\nready_label = {key:?}\n")).unwrap();
            let err = format!("{:#}", Config::load(Some(&path)).unwrap_err());
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains("ready_label"), "{err}");
            assert!(
                err.contains(&format!("ready label {key:?} is no Kubernetes label key")),
                "{err}"
            );
            assert!(err.contains(problem), "{key:?}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_named_file_must_exist() {
        assert!(Config::load(Some(Path::new("/nonexistent/rustlayer.toml"))).is_err());
    }
}
