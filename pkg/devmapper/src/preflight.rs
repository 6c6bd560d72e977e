//! What `rustlayer check` reports for the devmapper backend: whether the daemon can
//! start here, and how full its pool is. Reads only; creates nothing.

use std::path::{Path, PathBuf};

use rustlayer_core::Check;

use crate::backend::device_prefix;
use crate::config::{DevmapperConfig, FsType};
use crate::dm::{DeviceMapper, Dm};
use crate::error::{Error, Result};
use crate::pool::Pool;

/// Device-mapper, the thin pool (its figures against `min_free_percent`, or, for the
/// self-managed pool, what start will make), and mkfs while the base device is not
/// made yet.
pub fn preflight(root: &Path, config: &DevmapperConfig) -> Vec<Check> {
    let mut checks = Vec::new();
    let dm = crate::kernel_support().and_then(|()| Dm::open());
    match dm {
        Ok(dm) => {
            checks.push(Check {
                name: "device-mapper",
                ok: true,
                detail: "the kernel's device-mapper answers".into(),
            });
            checks.push(Check::new("thin pool", thin_pool(&dm, root, config)));
        }
        Err(err) => {
            checks.push(Check::new("device-mapper", Err(err)));
            checks.push(Check::new(
                "thin pool",
                Err(Error::Config(
                    "cannot be inspected without device-mapper".into(),
                )),
            ));
        }
    }
    checks.push(Check::new("mkfs", mkfs(root, config.fs_type)));
    checks
}

/// The daemon resolves its root before naming devices after it; so does this, when
/// the root exists yet.
fn resolved(root: &Path) -> PathBuf {
    std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned())
}

fn thin_pool(dm: &Dm, root: &Path, config: &DevmapperConfig) -> Result<String> {
    let (name, managed) = match &config.pool_name {
        Some(name) => (name.clone(), false),
        None => (format!("{}-pool", device_prefix(&resolved(root))), true),
    };
    if dm.device(&name)?.is_none() {
        if !managed {
            // The same refusal the daemon gives at start.
            Pool::open_existing(dm, &name)?;
        }
        return Ok(format!(
            "{name} will be made at start on sparse files under {} ({} data, {} metadata)",
            root.join("devmapper").display(),
            config.pool_data_size,
            config.pool_metadata_size
        ));
    }
    let usage = Pool::open_existing(dm, &name)?.usage(dm)?;
    match usage.refusal(&name, config.min_free_percent) {
        Some(err) => Err(err),
        None => Ok(format!("{name}: {}", usage.figures())),
    }
}

fn mkfs(root: &Path, fs: FsType) -> Result<String> {
    if root.join("devmapper").join("base").exists() {
        return Ok("the base filesystem is made; mkfs is not needed again".into());
    }
    let program = format!("mkfs.{fs}");
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(&program).is_file()))
        .unwrap_or(false);
    if found {
        Ok(format!(
            "{program} found; the base filesystem is made at first start"
        ))
    } else {
        Err(Error::Config(format!(
            "{program} is not in PATH; the first start needs it to make the base filesystem (install {})",
            fs.tools_package()
        )))
    }
}
