//! Each thin device's size where it differs from the base device's. dm-thin keeps
//! no size for a thin device (the size is only in the table it is activated with),
//! so a snapshot prepared with `containerd.io/snapshot/max-size`, or a child of
//! such a layer, would come back at the base size after a restart without this
//! record: one small file per device, `<dir>/<thin id>` holding its bytes, written
//! durably before the device exists and removed durably after it is deleted.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::base::write_durably;
use crate::error::{Error, Result};
use crate::pool::ThinId;

#[derive(Debug)]
pub struct DeviceSizes {
    dir: PathBuf,
}

impl DeviceSizes {
    pub fn open(dir: &Path) -> Result<DeviceSizes> {
        fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        Ok(DeviceSizes {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, id: ThinId) -> PathBuf {
        self.dir.join(id.get().to_string())
    }

    /// The recorded size in bytes, or None for a device of the base size.
    pub fn get(&self, id: ThinId) -> Result<Option<u64>> {
        let path = self.path(id);
        match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map(Some).map_err(|_| {
                Error::Pool(format!(
                    "size record {} holds {:?}, not a number of bytes",
                    path.display(),
                    text
                ))
            }),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
            Err(err) => Err(Error::io("read", path)(err)),
        }
    }

    pub fn record(&self, id: ThinId, bytes: u64) -> Result<()> {
        write_durably(&self.path(id), format!("{bytes}\n").as_bytes())
    }

    /// Removes a record durably, so a reused id never finds an old size; absent is fine.
    pub fn forget(&self, id: ThinId) -> Result<()> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => fs::File::open(&self.dir)
                .and_then(|dir| dir.sync_all())
                .map_err(Error::io("sync", &self.dir)),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
            Err(err) => Err(Error::io("remove", path)(err)),
        }
    }

    /// Every id with a record (an interrupted write's temporary file is not one).
    pub fn ids(&self) -> Result<Vec<ThinId>> {
        Ok(named_by_thin_id(&self.dir, "")?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }
}

/// The entries of `dir` named `<prefix><thin id>`, with their ids.
pub fn named_by_thin_id(dir: &Path, prefix: &str) -> Result<Vec<(ThinId, PathBuf)>> {
    let entries = fs::read_dir(dir).map_err(Error::io("list", dir))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io("list", dir))?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.strip_prefix(prefix))
            .and_then(|id| id.parse::<u64>().ok())
            .and_then(ThinId::new)
        {
            found.push((id, entry.path()));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_read_back_listed_and_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sizes = DeviceSizes::open(&dir.path().join("sizes")).expect("open");
        let id = ThinId::new(7).expect("thin id");
        assert_eq!(sizes.get(id).expect("no record"), None);
        sizes.record(id, 1 << 30).expect("record");
        assert_eq!(sizes.get(id).expect("a record"), Some(1 << 30));
        assert_eq!(sizes.ids().expect("list"), vec![id]);
        sizes.forget(id).expect("forget");
        sizes.forget(id).expect("forgetting twice is fine");
        assert_eq!(sizes.get(id).expect("gone"), None);
        assert!(sizes.ids().expect("list").is_empty());
    }

    #[test]
    fn a_damaged_record_is_an_error_not_the_base_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sizes = DeviceSizes::open(dir.path()).expect("open");
        fs::write(dir.path().join("3"), "lots").expect("write");
        let err = sizes.get(ThinId::new(3).expect("thin id")).unwrap_err();
        assert!(matches!(err, Error::Pool(_)), "{err:?}");
    }
}
