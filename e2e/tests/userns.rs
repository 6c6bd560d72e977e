//! Snapshots for containers in user namespaces (`ctr run --remap-labels`, pods with
//! `hostUsers: false`): containerd's `uidmapping`/`gidmapping` labels give the
//! container's root its layer, and with `remap_ids` the mounts carry `uidmap=` and
//! `gidmap=`, which containerd 2.x (and this project's mounter, the same way) turns
//! into idmapped lower layers. Mounted for real, and written to as the container's
//! root would: a host uid inside the mapped range.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustlayer_api::snapshots as pb;
use rustlayer_core::{GID_MAPPING_LABEL, Mount, UID_MAPPING_LABEL};
use rustlayer_e2e::support::{code_of, commit_chain, count_entries, labels};
use rustlayer_e2e::{Client, Daemon, Labels, Mounted, require_root};
use rustlayer_mount::{LinuxMounter, Mounter};
use tonic::Code;

const MAP: &str = "0:100000:65536";
const HOST_ROOT: u32 = 100000;

fn mapping(uids: &str, gids: &str) -> Labels {
    labels(&[
        (UID_MAPPING_LABEL, uids),
        (GID_MAPPING_LABEL, gids),
        ("containerd.io/gc.root", "x"),
    ])
}

/// A daemon whose configuration says containerd declares `remap-ids` (its config
/// file's directory, kept for as long as the daemon), and a client of it.
async fn remapping_daemon() -> (tempfile::TempDir, Daemon, Client) {
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("config.toml");
    fs::write(&config, "remap_ids = true\n").unwrap();
    let daemon = Daemon::start_with(&["--config", config.to_str().unwrap()]);
    let client = daemon.client().await;
    (config_dir, daemon, client)
}

fn option<'a>(mount: &'a Mount, key: &str) -> Option<&'a str> {
    mount
        .options
        .iter()
        .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
}

fn owner(path: &Path) -> (u32, u32) {
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.uid(), meta.gid())
}

/// Runs a shell command as host uid and gid [`HOST_ROOT`], as the container's root
/// runs, and asserts that it succeeds.
fn as_container_root(script: &str) {
    let out = Command::new("sh")
        .args(["-c", script])
        .uid(HOST_ROOT)
        .gid(HOST_ROOT)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "the container's root (host uid {HOST_ROOT}) cannot run `{script}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Prepares `key` on `parent` for a container whose uids and gids map as `map`.
async fn prepare_mapped(c: &Client, key: &str, parent: &str, map: &str) -> Vec<Mount> {
    c.prepare_labeled(key, parent, mapping(map, map))
        .await
        .unwrap()
}

/// Commits `name` on `parent`: a layer holding `dir/file` with `content`, root's.
async fn commit_layer(c: &Client, name: &str, parent: &str, dir: &str, file: &str, content: &str) {
    let key = format!("{name}-a");
    let mounts = c.prepare(&key, parent).await.unwrap();
    {
        let m = Mounted::new(&mounts);
        fs::create_dir(m.path().join(dir)).unwrap();
        fs::write(m.path().join(dir).join(file), content).unwrap();
    }
    c.commit(name, &key).await.unwrap();
}

/// Two committed layers with root-owned content: `/etc/motd` below, `/srv/app`
/// above.
async fn image(c: &Client) {
    commit_layer(c, "base", "", "etc", "motd", "hello").await;
    commit_layer(c, "app", "base", "srv", "app", "app").await;
}

fn upper(mount: &Mount) -> PathBuf {
    PathBuf::from(option(mount, "upperdir").expect("an upper directory"))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn the_container_root_owns_its_layer_through_idmapped_lowers() {
    require_root();
    let (_config, daemon, c) = remapping_daemon().await;
    assert!(
        daemon
            .log()
            .contains("overlayfs mounts on idmapped lower layers"),
        "the start-up probe ran and passed:\n{}",
        daemon.log()
    );
    image(&c).await;

    let mounts = prepare_mapped(&c, "ctr", "app", MAP).await;
    assert_eq!(mounts.len(), 1);
    let m = &mounts[0];
    assert_eq!(m.fs_type, "overlay");
    // containerd 2.x reads exactly these two options, in its %d:%d:%d[,...] form.
    assert_eq!(m.options[0], format!("uidmap={MAP}"));
    assert_eq!(m.options[1], format!("gidmap={MAP}"));
    let lowers: Vec<&str> = option(m, "lowerdir").unwrap().split(':').collect();
    assert_eq!(lowers.len(), 2);
    let snapshots = daemon.root.join("snapshots");
    for lower in &lowers {
        let lower = Path::new(lower);
        assert_eq!(
            lower.parent().and_then(Path::parent),
            Some(snapshots.as_path()),
            "lower layers are named by their real directories, which containerd \
             idmaps through their common directory: {lower:?}"
        );
        assert_eq!(lower.file_name().unwrap(), "fs");
        assert_eq!(owner(lower), (0, 0), "layers on disk stay root's");
    }
    let upper = upper(m);
    let work = PathBuf::from(option(m, "workdir").unwrap());
    assert_eq!(owner(&upper), (HOST_ROOT, HOST_ROOT));
    assert_eq!(owner(&work), (HOST_ROOT, HOST_ROOT));
    assert_eq!(
        c.mounts("ctr").await.unwrap(),
        mounts,
        "Mounts answers as Prepare did"
    );

    {
        let rootfs = Mounted::new(&mounts);
        let p = rootfs.path();
        assert_eq!(owner(p), (HOST_ROOT, HOST_ROOT), "the rootfs is root's");
        assert_eq!(owner(&p.join("etc/motd")), (HOST_ROOT, HOST_ROOT));
        assert_eq!(owner(&p.join("srv/app")), (HOST_ROOT, HOST_ROOT));
        // The container's root writes where only the image's root may: possible only
        // if the lower layers are idmapped.
        as_container_root(&format!(
            "echo changed > {0}/etc/motd && mkdir {0}/proc && echo new > {0}/srv/new",
            p.display()
        ));
    }
    for written in ["etc/motd", "proc", "srv/new"] {
        assert_eq!(
            owner(&upper.join(written)),
            (HOST_ROOT, HOST_ROOT),
            "{written} written by the container's root lands in the upper dir as {HOST_ROOT}"
        );
    }
    let lower_motd = Path::new(lowers[1]).join("etc/motd");
    assert_eq!(fs::read_to_string(lower_motd).unwrap(), "hello");
    assert_eq!(owner(Path::new(lowers[1])), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn without_remap_ids_mounts_stay_plain_and_the_upper_is_still_root_s() {
    require_root();
    // containerd without the capability unpacks a chowned copy of the image and
    // prepares on it with the labels still set: mapping it again would be wrong.
    let daemon = Daemon::start();
    assert!(
        daemon.log().contains("remap_ids is off"),
        "{}",
        daemon.log()
    );
    let c = daemon.client().await;
    image(&c).await;
    let mounts = prepare_mapped(&c, "ctr", "app", MAP).await;
    let m = &mounts[0];
    assert!(
        !m.options
            .iter()
            .any(|o| o.starts_with("uidmap=") || o.starts_with("gidmap=")),
        "{:?}",
        m.options
    );
    assert!(
        option(m, "lowerdir").unwrap().contains("/l/"),
        "plain mounts keep the short links"
    );
    assert_eq!(owner(&upper(m)), (HOST_ROOT, HOST_ROOT));

    let parentless = prepare_mapped(&c, "empty", "", MAP).await;
    assert_eq!(parentless[0].fs_type, "overlay");
    assert_eq!(
        owner(&upper(&parentless[0])),
        (HOST_ROOT, HOST_ROOT),
        "a parentless layer is an upper like any other"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn a_parentless_snapshot_is_an_idmapped_overlay_whose_upper_the_container_root_owns() {
    require_root();
    let (_config, _daemon, c) = remapping_daemon().await;
    let mounts = prepare_mapped(&c, "scratch", "", MAP).await;
    let m = &mounts[0];
    assert_eq!(m.fs_type, "overlay", "{m:?}");
    assert_eq!(
        m.options[..2],
        [format!("uidmap={MAP}"), format!("gidmap={MAP}")],
        "{m:?}"
    );
    let layer = upper(m);
    assert_eq!(
        owner(&layer),
        (HOST_ROOT, HOST_ROOT),
        "overlay never idmaps the upper: it belongs to the container's root on disk"
    );
    {
        let rootfs = Mounted::new(&mounts);
        assert_eq!(owner(rootfs.path()), (HOST_ROOT, HOST_ROOT));
        as_container_root(&format!("mkdir {}/proc", rootfs.path().display()));
    }
    assert_eq!(
        owner(&layer.join("proc")),
        (HOST_ROOT, HOST_ROOT),
        "written by the container's root through the overlay"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn a_mapping_change_on_a_chain_maps_every_layer_with_the_new_mapping() {
    require_root();
    // As containerd's own overlay snapshotter: only the new snapshot's labels count.
    // A layer committed from a container with another mapping holds that mapping's
    // host ids, which the new mapping does not cover: they show as the overflow id.
    let (_config, _daemon, c) = remapping_daemon().await;
    image(&c).await;
    let first = prepare_mapped(&c, "first-a", "app", MAP).await;
    {
        let rootfs = Mounted::new(&first);
        as_container_root(&format!(
            "echo mine > {}/srv/first",
            rootfs.path().display()
        ));
    }
    c.commit("first", "first-a").await.unwrap();

    let other = "0:200000:65536";
    let second = prepare_mapped(&c, "second", "first", other).await;
    let m = &second[0];
    assert_eq!(m.options[0], format!("uidmap={other}"));
    assert_eq!(option(m, "lowerdir").unwrap().split(':').count(), 3);
    assert_eq!(owner(&upper(m)), (200000, 200000));
    let overflow: u32 = fs::read_to_string("/proc/sys/kernel/overflowuid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let rootfs = Mounted::new(&second);
    assert_eq!(owner(&rootfs.path().join("srv/app")), (200000, 200000));
    assert_eq!(
        owner(&rootfs.path().join("srv/first")).0,
        overflow,
        "a file of the first mapping's root is outside the second mapping"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn a_500_layer_chain_mounts_on_idmapped_lowers() {
    require_root();
    // Real directory names are longer than the short links: the options fit a page
    // only once the lowers are relative to their idmapped copy, as containerd makes
    // them.
    let (_config, _daemon, c) = remapping_daemon().await;
    let parent = commit_chain(&c, 500).await;
    let top = prepare_mapped(&c, "container", &parent, MAP).await;
    assert_eq!(option(&top[0], "lowerdir").unwrap().split(':').count(), 500);
    assert!(
        top[0].options.join(",").len() > 4096,
        "the test must exercise compaction"
    );
    let rootfs = Mounted::new(&top);
    for layer in ["layer-0", "layer-499"] {
        assert_eq!(owner(&rootfs.path().join(layer)), (HOST_ROOT, HOST_ROOT));
    }
    as_container_root(&format!("echo top >> {}/layer-0", rootfs.path().display()));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn bad_mapping_labels_are_refused_and_change_nothing() {
    require_root();
    let (_config, daemon, c) = remapping_daemon().await;
    image(&c).await;
    let snapshots = daemon.root.join("snapshots");
    let before = (c.names(&[]).await, count_entries(&snapshots));

    let lone_uid = labels(&[(UID_MAPPING_LABEL, MAP)]);
    let lone_gid = labels(&[(GID_MAPPING_LABEL, MAP)]);
    for (what, l) in [
        ("malformed uid map", mapping("0:100000", MAP)),
        ("malformed gid map", mapping(MAP, "0:x:1")),
        ("empty range", mapping("0:100000:0", MAP)),
        (
            "overlapping ranges",
            mapping("0:100000:10,5:200000:10", MAP),
        ),
        ("unmapped root", mapping("1:100000:65536", MAP)),
        ("uid map alone", lone_uid),
        ("gid map alone", lone_gid),
    ] {
        let r = c.prepare_labeled("bad", "app", l.clone()).await;
        assert_eq!(code_of(&r), Code::InvalidArgument, "{what}: {r:?}");
        let r = c
            .raw
            .clone()
            .view(pb::ViewSnapshotRequest {
                snapshotter: String::new(),
                key: "bad".into(),
                parent: "app".into(),
                labels: l,
            })
            .await;
        assert_eq!(code_of(&r), Code::InvalidArgument, "{what} (View): {r:?}");
    }
    assert_eq!(
        (c.names(&[]).await, count_entries(&snapshots)),
        before,
        "refusals leave no snapshot and no storage"
    );

    // A label update must leave a mapping whole.
    prepare_mapped(&c, "ctr", "app", MAP).await;
    let r = c
        .raw
        .clone()
        .update(pb::UpdateSnapshotRequest {
            snapshotter: String::new(),
            info: Some(pb::Info {
                name: "ctr".into(),
                labels: labels(&[(UID_MAPPING_LABEL, "garbage")]),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![format!("labels.{UID_MAPPING_LABEL}")],
            }),
        })
        .await;
    assert_eq!(code_of(&r), Code::InvalidArgument, "{r:?}");
    let info = c.stat("ctr").await.unwrap();
    assert_eq!(
        info.labels.get(UID_MAPPING_LABEL).map(String::as_str),
        Some(MAP)
    );
    // Replacing both at once is fine, and the mounts follow the labels, as
    // containerd's own snapshotter reads them at Mounts.
    let other = "0:300000:65536";
    let r = c
        .raw
        .clone()
        .update(pb::UpdateSnapshotRequest {
            snapshotter: String::new(),
            info: Some(pb::Info {
                name: "ctr".into(),
                labels: mapping(other, other),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![
                    format!("labels.{UID_MAPPING_LABEL}"),
                    format!("labels.{GID_MAPPING_LABEL}"),
                ],
            }),
        })
        .await;
    assert_eq!(code_of(&r), Code::Ok, "{r:?}");
    assert_eq!(
        c.mounts("ctr").await.unwrap()[0].options[0],
        format!("uidmap={other}")
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn ext4_and_xfs_mounts_are_idmapped_whole_as_containerd_does_for_devmapper() {
    require_root();
    // What containerd 2.x does with a devmapper snapshot's uidmap=/gidmap=: mount the
    // device, then idmap the mount as a whole. On a loop device here; the thin
    // devices of the devmapper tier are block devices the same way.
    for fs_type in ["ext4", "xfs"] {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        fs::File::create(&image)
            .unwrap()
            .set_len(320 << 20)
            .unwrap();
        let mkfs = Command::new(format!("mkfs.{fs_type}"))
            .arg("-q")
            .arg(&image)
            .output()
            .expect("mkfs");
        assert!(mkfs.status.success(), "{mkfs:?}");
        let losetup = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .expect("losetup");
        assert!(losetup.status.success(), "{losetup:?}");
        let device = String::from_utf8(losetup.stdout).unwrap().trim().to_owned();
        let _detach = Detach(device.clone());

        let target = dir.path().join("mnt");
        fs::create_dir(&target).unwrap();
        let mut options = vec![format!("uidmap={MAP}"), format!("gidmap={MAP}")];
        if fs_type == "xfs" {
            options.push("nouuid".into());
        }
        let mount = Mount {
            fs_type: fs_type.into(),
            source: device.clone(),
            options,
        };
        LinuxMounter.mount(&mount, &target).unwrap();
        let unmount = Unmount(target.clone());
        assert_eq!(owner(&target), (HOST_ROOT, HOST_ROOT), "{fs_type}");
        as_container_root(&format!("mkdir {}/proc", target.display()));
        assert_eq!(owner(&target.join("proc")), (HOST_ROOT, HOST_ROOT));
        drop(unmount);
        // Only one mount was stacked on the target, and no scratch mount remains.
        assert!(
            !fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .contains(&device),
            "{fs_type}: nothing of the device stays mounted"
        );
    }
}

struct Detach(String);

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// Detaches (see `Mounted`: a forking test thread may hold a file of it open).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = LinuxMounter.unmount(&self.0, true);
    }
}
