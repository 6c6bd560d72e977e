//! Checks run before serving: a snapshotter that starts on a root where overlay
//! cannot work fails every container later, far from the cause.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustlayer_core::{Check, Mount};
use rustlayer_mount::{Mounter, supports_d_type};

use crate::error::{Error, Result, io_err};

/// Turns the first failed check of a [`preflight`] into an error naming it.
pub fn ensure(checks: &[Check]) -> Result<()> {
    match checks.iter().find(|c| !c.ok) {
        Some(c) => Err(Error::Preflight(format!("{}: {}", c.name, c.detail))),
        None => Ok(()),
    }
}

/// The check's name in logs and `rustlayer check`.
pub const IDMAPPED_LAYERS: &str = "idmapped layers";

/// The probe maps the container's root to this host id; any unused id would do.
const PROBE_HOST_ID: u32 = 1_000_000;

/// Checks that `root` can hold overlay layers: the filesystem records d_type, and a
/// real two-layer overlay mounts there and shows the lower layers' files. Also
/// probes whether overlay mounts on idmapped lower layers there, as containerd 2.x
/// mounts user-namespaced snapshots with `remap_ids`; that check fails only when
/// `remap_ids` is set, and otherwise reports what the node could do.
pub fn preflight(root: &Path, mounter: &dyn Mounter, remap_ids: bool) -> Vec<Check> {
    vec![
        Check::new("d_type", check_d_type(root)),
        Check::new("overlay mount", check_overlay_mount(root, mounter)),
        idmapped_layers(root, mounter, remap_ids),
    ]
}

fn idmapped_layers(root: &Path, mounter: &dyn Mounter, remap_ids: bool) -> Check {
    let outcome = probe_in_scratch(root, "idmap", |dir| try_idmapped_overlay(dir, mounter));
    let (ok, detail) = match (outcome, remap_ids) {
        (Ok(found), true) => (true, format!("{found}; remap_ids is on")),
        (Ok(found), false) => (
            true,
            format!(
                "{found}; remap_ids is off, so containerd copies images by chown for user \
                 namespaces (turn it on with the proxy plugin's capabilities = [\"remap-ids\"], \
                 containerd 2.0 or later)"
            ),
        ),
        (Err(err), true) => (
            false,
            format!(
                "{err}; remap_ids is on: turn it off, and remove containerd's remap-ids capability"
            ),
        ),
        (Err(err), false) => (
            true,
            format!(
                "{err}; remap_ids is off, so containerd copies images by chown for user namespaces"
            ),
        ),
    };
    Check {
        name: IDMAPPED_LAYERS,
        ok,
        detail,
    }
}

fn check_d_type(root: &Path) -> Result<String> {
    if supports_d_type(root)? {
        Ok(format!(
            "{} records file types in directories",
            root.display()
        ))
    } else {
        Err(Error::Preflight(format!(
            "the filesystem of {} does not record file types in directories (d_type); \
             overlayfs needs it (xfs must be formatted with ftype=1)",
            root.display()
        )))
    }
}

fn check_overlay_mount(root: &Path, mounter: &dyn Mounter) -> Result<String> {
    probe_in_scratch(root, "overlay", |dir| try_overlay(dir, mounter))
}

/// Runs `probe` in a fresh directory under `root`, removed afterwards.
fn probe_in_scratch(
    root: &Path,
    what: &str,
    probe: impl FnOnce(&Path) -> Result<String>,
) -> Result<String> {
    let dir = root.join(format!(".preflight-{what}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let result = probe(&dir);
    let _ = fs::remove_dir_all(&dir);
    result
}

/// Mounts overlay as containerd 2.x mounts a user-namespaced snapshot, two lower
/// layers idmapped through `uidmap=`/`gidmap=`, and looks at a lower file owned by
/// root on disk: it must show as the host id the container's root maps to.
fn try_idmapped_overlay(dir: &Path, mounter: &dyn Mounter) -> Result<String> {
    for sub in ["lower1", "lower2", "upper", "work", "merged"] {
        fs::create_dir_all(dir.join(sub)).map_err(io_err("create", dir.join(sub)))?;
    }
    // Made by the daemon, so owned by root on disk.
    let probe = dir.join("lower1/probe");
    fs::write(&probe, b"lower").map_err(io_err("write", &probe))?;
    let map = format!("0:{PROBE_HOST_ID}:1");
    let mount = Mount {
        fs_type: "overlay".into(),
        source: "overlay".into(),
        options: vec![
            format!("uidmap={map}"),
            format!("gidmap={map}"),
            format!(
                "lowerdir={}:{}",
                dir.join("lower2").display(),
                dir.join("lower1").display()
            ),
            format!("upperdir={}", dir.join("upper").display()),
            format!("workdir={}", dir.join("work").display()),
        ],
    };
    let merged = dir.join("merged");
    mounter.mount(&mount, &merged).map_err(|err| {
        Error::Preflight(format!(
            "overlayfs on idmapped lower layers cannot be mounted in {} ({err}); it needs \
             Linux 5.19 or later and a filesystem that idmaps (ext4, xfs, btrfs; tmpfs \
             from Linux 6.3)",
            dir.display()
        ))
    })?;
    let seen = fs::metadata(merged.join("probe")).map(|m| (m.uid(), m.gid()));
    mounter.unmount(&merged, true)?;
    match seen {
        Ok((uid, gid)) if uid == PROBE_HOST_ID && gid == PROBE_HOST_ID => {
            Ok("overlayfs mounts on idmapped lower layers".into())
        }
        Ok((uid, gid)) => Err(Error::Preflight(format!(
            "overlayfs on idmapped lower layers shows a root-owned lower file as {uid}:{gid}, \
             not {PROBE_HOST_ID}:{PROBE_HOST_ID}"
        ))),
        Err(err) => Err(Error::Preflight(format!(
            "overlayfs on idmapped lower layers mounted but does not show the lower file: {err}"
        ))),
    }
}

fn try_overlay(dir: &Path, mounter: &dyn Mounter) -> Result<String> {
    for sub in ["lower1", "lower2", "upper", "work", "merged"] {
        fs::create_dir_all(dir.join(sub)).map_err(io_err("create", dir.join(sub)))?;
    }
    fs::write(dir.join("lower1/probe"), b"lower").map_err(io_err("write", dir.join("lower1")))?;
    let mount = Mount {
        fs_type: "overlay".into(),
        source: "overlay".into(),
        options: vec![
            format!(
                "lowerdir={}:{}",
                dir.join("lower2").display(),
                dir.join("lower1").display()
            ),
            format!("upperdir={}", dir.join("upper").display()),
            format!("workdir={}", dir.join("work").display()),
        ],
    };
    let merged = dir.join("merged");
    mounter.mount(&mount, &merged).map_err(|err| {
        Error::Preflight(format!(
            "cannot mount overlayfs with several lower layers ({err}); \
             rustlayer needs root and a kernel with overlayfs"
        ))
    })?;
    let seen = fs::read(merged.join("probe"));
    mounter.unmount(&merged, true)?;
    match seen {
        Ok(content) if content == b"lower" => {
            Ok("overlayfs with several lower layers works".into())
        }
        other => Err(Error::Preflight(format!(
            "overlayfs mounted but does not show lower layers correctly: {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustlayer_mount::{MountCall, RecordingMounter};

    fn idmapped_check(remap_ids: bool) -> (Check, Vec<MountCall>) {
        let dir = tempfile::tempdir().unwrap();
        let mounter = RecordingMounter::default();
        let check = preflight(dir.path(), &mounter, remap_ids)
            .into_iter()
            .find(|c| c.name == IDMAPPED_LAYERS)
            .expect("the idmap probe reports");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "probes leave nothing behind"
        );
        (check, mounter.calls())
    }

    #[test]
    fn the_idmap_probe_mounts_as_containerd_does() {
        let (_, calls) = idmapped_check(true);
        let mount = calls
            .iter()
            .find_map(|call| match call {
                MountCall::Mount { mount, .. }
                    if mount.options.iter().any(|o| o.starts_with("uidmap=")) =>
                {
                    Some(mount)
                }
                _ => None,
            })
            .expect("an idmapped overlay was asked for");
        assert_eq!(mount.fs_type, "overlay");
        let options = &mount.options;
        assert_eq!(options[0], "uidmap=0:1000000:1");
        assert_eq!(options[1], "gidmap=0:1000000:1");
        let lowers = options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .unwrap();
        assert_eq!(lowers.split(':').count(), 2, "{lowers}");
        assert!(
            calls.iter().any(|c| matches!(c, MountCall::Unmount { .. })),
            "the probe unmounts what it mounted: {calls:?}"
        );
    }

    #[test]
    fn a_failed_idmap_probe_fails_start_only_with_remap_ids() {
        // Nothing is really mounted, so the probe file never shows: unsupported.
        let (check, _) = idmapped_check(true);
        assert!(!check.ok);
        assert!(check.detail.contains("remap_ids is on"), "{}", check.detail);
        let (check, _) = idmapped_check(false);
        assert!(check.ok, "without remap_ids the probe only informs");
        assert!(check.detail.contains("chown"), "{}", check.detail);
    }
}
