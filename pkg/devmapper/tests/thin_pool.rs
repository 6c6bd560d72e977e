//! The devmapper backend on a real dm-thin pool (loop-backed, under a temporary
//! root), driven through the snapshotter as the daemon drives it, with real mounts.
//!
//! Needs root and a kernel with device-mapper, so every test is ignored by a plain
//! `cargo test`; hack/vm-test.sh runs them with `--include-ignored` in a VM booting
//! Debian's kernel, where a missing prerequisite fails the test.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustlayer_core::{Backend, Check, Code, Kind, Labels, PoolStats, SnapshotId};
use rustlayer_devmapper::testing::require_device_mapper;
use rustlayer_devmapper::{
    ByteSize, DevmapperBackend, DevmapperConfig, DevmapperOptions, FsType, device_prefix, preflight,
};
use rustlayer_metastore::{Store, StoreOptions};
use rustlayer_mount::{LinuxMounter, Mounter, mount_all};
use rustlayer_snapshotter::Snapshotter;

struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
    backend: Arc<DevmapperBackend>,
    s: Snapshotter,
}

fn small_pool() -> DevmapperConfig {
    DevmapperConfig {
        pool_data_size: ByteSize::bytes(512 << 20),
        pool_metadata_size: ByteSize::bytes(16 << 20),
        base_image_size: ByteSize::bytes(64 << 20),
        ..DevmapperConfig::default()
    }
}

fn open(root: &Path, config: &DevmapperConfig) -> (Arc<DevmapperBackend>, Snapshotter) {
    open_remapping(root, config, false)
}

fn open_remapping(
    root: &Path,
    config: &DevmapperConfig,
    remap_ids: bool,
) -> (Arc<DevmapperBackend>, Snapshotter) {
    let backend = Arc::new(
        DevmapperBackend::open(&DevmapperOptions {
            root: root.to_owned(),
            config: config.clone(),
            remap_ids,
        })
        .expect("open the devmapper backend"),
    );
    let s = Snapshotter::open(root, Arc::clone(&backend) as Arc<dyn Backend>).unwrap();
    (backend, s)
}

/// A scratch directory with an empty root in it.
fn new_root() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    (dir, root)
}

fn fixture(config: DevmapperConfig) -> Fixture {
    fixture_remapping(config, false)
}

fn fixture_remapping(config: DevmapperConfig, remap_ids: bool) -> Fixture {
    let (dir, root) = new_root();
    let (backend, s) = open_remapping(&root, &config, remap_ids);
    Fixture {
        dir,
        root,
        backend,
        s,
    }
}

impl Drop for Fixture {
    /// Takes the pool down so loop devices and dm names don't outlive the test.
    fn drop(&mut self) {
        self.s.close().ok();
    }
}

/// Active device-mapper device names, read from sysfs (no dmsetup needed).
fn active_devices(prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    for entry in fs::read_dir("/sys/block").unwrap() {
        let path = entry.unwrap().path().join("dm/name");
        if let Ok(name) = fs::read_to_string(path) {
            let name = name.trim().to_owned();
            if name.starts_with(prefix) {
                names.push(name);
            }
        }
    }
    names.sort();
    names
}

fn canonical_prefix(root: &Path) -> String {
    device_prefix(&fs::canonicalize(root).unwrap())
}

/// Unmounts `target`, waiting up to 30 s while it is busy: the tests run side by
/// side, and a process another test starts (mkfs, resize2fs) holds a copy of this
/// test's open descriptors from its fork until it execs.
fn unmount(target: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match LinuxMounter.unmount(target, false) {
            Ok(()) => return,
            Err(rustlayer_mount::Error::Unmount { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(err) => panic!("unmount {}: {err}", target.display()),
        }
    }
}

struct Mounted<'a> {
    target: &'a Path,
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        unmount(self.target);
    }
}

fn mount<'a>(f: &Fixture, key: &str, target: &'a Path) -> Mounted<'a> {
    fs::create_dir_all(target).unwrap();
    let mounts = f.s.mounts(key).unwrap();
    mount_all(&LinuxMounter, &mounts, target).unwrap();
    Mounted { target }
}

/// Prepares `key` and writes into it, half a MiB at a time and synced, until
/// the pool's figures say `full`.
fn fill_pool(f: &Fixture, key: &str, full: impl Fn(&PoolStats) -> bool) {
    let mnt = f.dir.path().join("mnt");
    f.s.prepare(key, "", &none()).unwrap();
    let _m = mount(f, key, &mnt);
    let mut file = fs::File::create(mnt.join("fill")).unwrap();
    let chunk = vec![0x5au8; 512 << 10];
    while !full(&f.backend.pool_stats().unwrap().unwrap()) {
        file.write_all(&chunk).unwrap();
        file.sync_data().unwrap();
    }
}

/// Where the backend mounts a device privately to grow its filesystem.
fn grow_mountpoint(root: &Path, id: SnapshotId) -> PathBuf {
    root.join("devmapper").join(format!("grow-{}", id.get()))
}

fn none() -> Labels {
    Labels::new()
}

#[test]
#[ignore = "needs root and device-mapper (dm_thin_pool): a thin pool on loop devices"]
fn layers_stack_by_copy_on_write_and_views_are_read_only() {
    require_device_mapper("a thin pool on loop devices");
    let f = fixture(small_pool());
    let mnt = f.dir.path().join("mnt");

    let mounts = f.s.prepare("a", "", &none()).unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].fs_type, "ext4");
    assert!(mounts[0].source.starts_with("/dev/dm-"), "{mounts:?}");
    {
        let _m = mount(&f, "a", &mnt);
        let entries: Vec<_> = fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            entries.is_empty(),
            "a first layer starts empty: {entries:?}"
        );
        fs::write(mnt.join("hello"), "one").unwrap();
        fs::create_dir(mnt.join("dir")).unwrap();
        fs::write(mnt.join("dir/keep"), vec![1u8; 1 << 20]).unwrap();
    }
    f.s.commit("A", "a", "", &none()).unwrap();
    let layer = f.s.usage("A").unwrap();
    assert!(
        layer.bytes >= 1 << 20,
        "a 1 MiB file is in the layer: {layer:?}"
    );

    f.s.prepare("b", "A", &none()).unwrap();
    {
        let _m = mount(&f, "b", &mnt);
        assert_eq!(fs::read_to_string(mnt.join("hello")).unwrap(), "one");
        fs::write(mnt.join("hello"), "two").unwrap();
        fs::remove_file(mnt.join("dir/keep")).unwrap();
    }
    f.s.commit("B", "b", "", &none()).unwrap();

    let view = f.s.view("v", "A", &none()).unwrap();
    assert!(view[0].options.contains(&"ro".to_owned()), "{view:?}");
    {
        let _m = mount(&f, "v", &mnt);
        assert_eq!(
            fs::read_to_string(mnt.join("hello")).unwrap(),
            "one",
            "the child's writes never reach its parent"
        );
        assert!(mnt.join("dir/keep").exists());
        let err = fs::write(mnt.join("new"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    }
    f.s.view("w", "B", &none()).unwrap();
    {
        let _m = mount(&f, "w", &mnt);
        assert_eq!(fs::read_to_string(mnt.join("hello")).unwrap(), "two");
        assert!(!mnt.join("dir/keep").exists());
    }

    // Committed layers are inactive; live snapshots are active.
    let prefix = canonical_prefix(&f.root);
    let active = active_devices(&format!("{prefix}-"));
    assert_eq!(active.len(), 3, "pool + views v and w: {active:?}");

    for key in ["v", "w", "B", "A"] {
        f.s.remove(key).unwrap();
    }
    f.backend.drain_removals();
    f.s.cleanup().unwrap();
    let stats = f.backend.pool_stats().unwrap().unwrap();
    assert_eq!(stats.thin_devices, 0, "{stats:?}");
    assert_eq!(
        active_devices(&format!("{prefix}-")),
        vec![format!("{prefix}-pool")]
    );
}

fn preflight_check(root: &Path, config: &DevmapperConfig, name: &str) -> Check {
    preflight(root, config)
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} check"))
}

#[test]
#[ignore = "needs root and device-mapper (dm_thin_pool): a thin pool on loop devices"]
fn check_reports_what_start_will_make_then_the_pool_and_its_figures() {
    require_device_mapper("a thin pool on loop devices");
    let (_dir, root) = new_root();
    let config = small_pool();
    let before = preflight(&root, &config);
    assert!(before.iter().all(|c| c.ok), "{before:?}");
    let pool = preflight_check(&root, &config, "thin pool");
    assert!(pool.detail.contains("will be made at start"), "{pool:?}");
    assert!(
        preflight_check(&root, &config, "mkfs")
            .detail
            .contains("found")
    );

    let (backend, s) = open(&root, &config);
    let pool = preflight_check(&root, &config, "thin pool");
    assert!(pool.ok, "{pool:?}");
    assert!(
        pool.detail.starts_with(backend.pool_name()) && pool.detail.contains("% free"),
        "the pool's name and figures: {pool:?}"
    );
    assert!(
        preflight_check(&root, &config, "mkfs")
            .detail
            .contains("is made")
    );
    s.close().unwrap();

    let missing = DevmapperConfig {
        pool_name: Some("rustlayer-test-no-such-pool".into()),
        ..small_pool()
    };
    let pool = preflight_check(&root, &missing, "thin pool");
    assert!(
        !pool.ok && pool.detail.contains("does not exist"),
        "{pool:?}"
    );
}

#[test]
#[ignore = "needs root and device-mapper (dm_thin_pool): a thin pool on loop devices"]
fn a_nearly_full_pool_refuses_new_snapshots_until_space_is_freed() {
    require_device_mapper("a thin pool on loop devices");
    // Overprovisioned, as thin pools are: each filesystem could outgrow the pool.
    let config = DevmapperConfig {
        pool_data_size: ByteSize::bytes(32 << 20),
        base_image_size: ByteSize::bytes(128 << 20),
        min_free_percent: 10,
        ..small_pool()
    };
    let f = fixture(config.clone());
    // Into the 10% the daemon keeps free for running containers, short of
    // exhausting the pool.
    fill_pool(&f, "big", |stats| {
        stats.data_used_bytes * 100 > stats.data_size_bytes * 91
    });
    let prefix = canonical_prefix(&f.root);
    let before = active_devices(&prefix);
    let err = f.s.prepare("refused", "", &none()).unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(f.backend.pool_name()) && message.contains("data"),
        "the message names the pool and its figures: {message}"
    );
    assert!(f.s.stat("refused").is_err(), "nothing half-created");
    assert_eq!(active_devices(&prefix), before);
    let pool_check = preflight_check(&f.root, &config, "thin pool");
    assert!(
        !pool_check.ok && pool_check.detail.contains("nearly full"),
        "rustlayer check reports the full pool: {pool_check:?}"
    );

    f.s.remove("big").unwrap();
    f.backend.drain_removals();
    let stats = f.backend.pool_stats().unwrap().unwrap();
    assert!(
        stats.data_used_bytes * 2 < stats.data_size_bytes,
        "deleting the device gave its blocks back: {stats:?}"
    );
    f.s.prepare("after", "", &none())
        .expect("space came back after Remove");
}

#[test]
#[ignore = "needs root and device-mapper (dm_thin_pool): a thin pool on loop devices"]
fn restart_deactivates_then_reactivates_what_containerd_still_needs() {
    require_device_mapper("a thin pool on loop devices");
    let (dir, root) = new_root();
    let mnt = dir.path().join("mnt");
    let prefix = canonical_prefix(&root);
    {
        let (_backend, s) = open(&root, &small_pool());
        s.prepare("a", "", &none()).unwrap();
        let mounts = s.mounts("a").unwrap();
        fs::create_dir_all(&mnt).unwrap();
        mount_all(&LinuxMounter, &mounts, &mnt).unwrap();
        fs::write(mnt.join("data"), "kept").unwrap();
        unmount(&mnt);
        s.commit("A", "a", "", &none()).unwrap();
        s.prepare("live", "A", &none()).unwrap();
        s.close().unwrap();
    }
    assert_eq!(
        active_devices(&prefix),
        Vec::<String>::new(),
        "a clean shutdown with nothing mounted takes every device and the pool down"
    );

    let (_backend, s) = open(&root, &small_pool());
    assert_eq!(
        active_devices(&prefix),
        vec![format!("{prefix}-{}", 2), format!("{prefix}-pool")],
        "the live snapshot is active again"
    );
    let mounts = s.mounts("live").unwrap();
    mount_all(&LinuxMounter, &mounts, &mnt).unwrap();
    let data = fs::read_to_string(mnt.join("data"));
    unmount(&mnt);
    assert_eq!(data.unwrap(), "kept");
    s.close().unwrap();
}

/// containerd's parallel unpack commits a layer prepared without a parent onto the
/// layer below; a thin device cannot be moved onto another's blocks, so the Commit
/// is refused as not implemented and the layer stays the active snapshot it was.
#[test]
#[ignore = "needs root and device-mapper (dm_thin_pool): a thin pool on loop devices"]
fn a_layer_cannot_be_rebased_onto_another_thin_device() {
    require_device_mapper("a thin pool on loop devices");
    let f = fixture(small_pool());
    assert!(!f.backend.supports_rebase());
    f.s.prepare("a", "", &none()).unwrap();
    f.s.commit("A", "a", "", &none()).unwrap();
    f.s.prepare("loose", "", &none()).unwrap();
    let before = f.s.stat("loose").unwrap();
    let refused = f.s.commit("B", "loose", "A", &none()).unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused}");
    assert_eq!(f.s.stat("loose").unwrap(), before);
    assert_eq!(f.s.stat("B").unwrap_err().code(), Code::NotFound);
    f.s.commit("B", "loose", "", &none()).unwrap();
    assert_eq!(f.s.stat("B").unwrap().parent, None);
}

#[test]
#[ignore = "needs root and device-mapper (dm_thin_pool): a thin pool on loop devices"]
fn a_device_left_by_a_crash_before_its_metadata_is_deleted_at_start() {
    require_device_mapper("a thin pool on loop devices");
    let (_dir, root) = new_root();
    let prefix = canonical_prefix(&root);
    let config = small_pool();
    let orphans = {
        let (backend, s) = open(&root, &config);
        s.prepare("kept", "", &none()).unwrap();
        drop(s);
        // What a Prepare leaves when the daemon dies between creating the device
        // and committing its row: a reserved id with a device and no snapshot.
        let store = Store::open(
            &root.join("metadata.db"),
            &StoreOptions {
                backend: "devmapper".into(),
            },
        )
        .unwrap();
        let ids = store
            .write(|tx| tx.reserve_ids(2, SnapshotId::MIN, SnapshotId::MAX))
            .unwrap();
        backend.stage(ids[0], Kind::Active, &[], &none()).unwrap();
        // And what one leaves when it dies inside a grow: the device mounted on
        // its private mountpoint, which outlives the process.
        let grown = ids[1];
        backend
            .stage(grown, Kind::Active, &[], &max_size(256 << 20))
            .unwrap();
        let snapshot = rustlayer_core::SnapshotRef {
            id: grown,
            kind: Kind::Active,
            parents: &[],
        };
        let mountpoint = grow_mountpoint(&root, grown);
        fs::create_dir(&mountpoint).unwrap();
        mount_all(
            &LinuxMounter,
            &backend.mounts(snapshot, &none()).unwrap(),
            &mountpoint,
        )
        .unwrap();
        for id in &ids {
            assert!(active_devices(&prefix).contains(&format!("{prefix}-{}", id.get())));
        }
        ids
    };

    let (backend, s) = open(&root, &config);
    for id in &orphans {
        assert!(
            !active_devices(&prefix).contains(&format!("{prefix}-{}", id.get())),
            "the orphan {id} is deactivated"
        );
        // Deleting it again must fail: the pool no longer has that thin id.
        let deleted_again = Command::new("dmsetup")
            .env("DM_DISABLE_UDEV", "1")
            .args(["message", backend.pool_name(), "0"])
            .arg(format!("delete {}", id.get()))
            .output()
            .unwrap();
        assert!(
            !deleted_again.status.success(),
            "thin id {} still exists in the pool",
            id.get()
        );
    }
    assert!(
        !grow_mountpoint(&root, orphans[1]).exists(),
        "the interrupted grow's mount is gone"
    );
    assert!(s.stat("kept").is_ok());
    s.close().unwrap();
}

#[test]
#[ignore = "needs root and device-mapper (dm_thin_pool): a thin pool on loop devices"]
fn a_base_mount_left_by_a_crash_on_the_first_start_is_undone_at_the_next() {
    require_device_mapper("a thin pool on loop devices");
    let (_dir, root) = new_root();
    let prefix = canonical_prefix(&root);
    let config = small_pool();
    let pool = {
        // Dropped, not closed: a crash, so the pool stays active.
        let (backend, s) = open(&root, &config);
        drop(s);
        backend.pool_name().to_owned()
    };
    // What the first start leaves when it dies while the base's root is being
    // emptied: the base device active and mounted on its private mountpoint, and
    // no marker saying the base was finished.
    let state = root.join("devmapper");
    fs::remove_file(state.join("base")).unwrap();
    let base = format!("{prefix}-base");
    let sectors = config.base_image_size.get() / 512;
    let dmsetup = |args: &[&str]| {
        let out = Command::new("dmsetup")
            .env("DM_DISABLE_UDEV", "1")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "dmsetup {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let pool_device = dmsetup(&["info", "-c", "--noheadings", "-o", "major,minor", &pool]);
    let table = format!("0 {sectors} thin {pool_device} 0");
    dmsetup(&["create", &base, "--table", &table]);
    // No udev here: the kernel's own node, /dev/dm-<minor>.
    let minor = dmsetup(&["info", "-c", "--noheadings", "-o", "minor", &base]);
    let mountpoint = state.join("base.mnt");
    fs::create_dir(&mountpoint).unwrap();
    let mounted = Command::new("mount")
        .arg(format!("/dev/dm-{minor}"))
        .arg(&mountpoint)
        .output()
        .unwrap();
    assert!(mounted.status.success(), "{mounted:?}");

    let (_backend, s) = open(&root, &config);
    assert!(!mountpoint.exists(), "the leftover base mount is undone");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(mountpoint.to_str().unwrap()), "{mounts}");
    // The base was made again, and new layers start from its empty root.
    let mnt = root.join("mnt");
    s.prepare("after", "", &none()).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    mount_all(&LinuxMounter, &s.mounts("after").unwrap(), &mnt).unwrap();
    let entries: Vec<_> = fs::read_dir(&mnt).unwrap().collect();
    unmount(&mnt);
    assert!(entries.is_empty(), "{entries:?}");
    s.close().unwrap();
}

#[test]
#[ignore = "needs root and device-mapper (dm_thin_pool): a thin pool on loop devices"]
fn xfs_snapshots_of_one_base_mount_side_by_side() {
    require_device_mapper("a thin pool on loop devices");
    // mkfs.xfs refuses filesystems under 300 MiB.
    let f = fixture(DevmapperConfig {
        fs_type: FsType::Xfs,
        base_image_size: ByteSize::bytes(320 << 20),
        ..small_pool()
    });
    f.s.prepare("one", "", &none()).unwrap();
    f.s.prepare("two", "", &none()).unwrap();
    let (m1, m2) = (f.dir.path().join("m1"), f.dir.path().join("m2"));
    let mounts = f.s.mounts("one").unwrap();
    assert_eq!(mounts[0].fs_type, "xfs");
    assert!(
        mounts[0].options.contains(&"nouuid".to_owned()),
        "{mounts:?}"
    );
    let _one = mount(&f, "one", &m1);
    let _two = mount(&f, "two", &m2);
    fs::write(m1.join("f"), "1").unwrap();
    assert!(!m2.join("f").exists(), "the two snapshots are independent");
}

#[test]
#[ignore = "needs root and device-mapper (dm_thin_pool): a thin pool on loop devices"]
fn user_namespaced_snapshots_are_idmapped_whole_with_remap_ids() {
    require_device_mapper("a thin pool on loop devices");
    // containerd 2.x idmaps any mount but overlay as a whole when it carries both
    // uidmap= and gidmap=; the thin device stays as unpacked, owned by root.
    let map = "0:100000:65536";
    let mapped: Labels = [
        (
            "containerd.io/snapshot/uidmapping".to_owned(),
            map.to_owned(),
        ),
        (
            "containerd.io/snapshot/gidmapping".to_owned(),
            map.to_owned(),
        ),
    ]
    .into();
    for fs_type in [FsType::Ext4, FsType::Xfs] {
        let mut config = small_pool();
        if fs_type == FsType::Xfs {
            // mkfs.xfs refuses filesystems under 300 MiB.
            config.fs_type = FsType::Xfs;
            config.base_image_size = ByteSize::bytes(320 << 20);
        }
        let f = fixture_remapping(config, true);
        let mnt = f.dir.path().join("mnt");
        f.s.prepare("base", "", &none()).unwrap();
        {
            let _m = mount(&f, "base", &mnt);
            fs::create_dir(mnt.join("etc")).unwrap();
            fs::write(mnt.join("etc/motd"), "hello").unwrap();
        }
        f.s.commit("image", "base", "", &none()).unwrap();

        let mounts = f.s.prepare("ctr", "image", &mapped).unwrap();
        assert_eq!(
            mounts[0].options[..2],
            [format!("uidmap={map}"), format!("gidmap={map}")],
            "{mounts:?}"
        );
        assert_eq!(f.s.mounts("ctr").unwrap(), mounts);
        {
            let _m = mount(&f, "ctr", &mnt);
            for path in [mnt.clone(), mnt.join("etc/motd")] {
                let meta = fs::metadata(&path).unwrap();
                assert_eq!((meta.uid(), meta.gid()), (100000, 100000), "{path:?}");
            }
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "echo mine > {0}/etc/motd && mkdir {0}/proc",
                    mnt.display()
                ))
                .uid(100000)
                .gid(100000)
                .output()
                .unwrap();
            assert!(out.status.success(), "the container's root writes: {out:?}");
        }
        // Without the mapping the device shows what is on disk: root's files.
        let mut plain = mounts[0].clone();
        plain.options.drain(..2);
        fs::create_dir_all(&mnt).unwrap();
        mount_all(&LinuxMounter, &[plain], &mnt).unwrap();
        let _m = Mounted { target: &mnt };
        let meta = fs::metadata(mnt.join("proc")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{fs_type:?}");
    }

    let f = fixture(small_pool());
    f.s.prepare("ctr", "", &mapped).unwrap();
    assert!(
        !f.s.mounts("ctr").unwrap()[0]
            .options
            .iter()
            .any(|o| o.starts_with("uidmap=") || o.starts_with("gidmap=")),
        "without remap_ids containerd makes a chowned copy; the mounts stay plain"
    );
}

fn max_size(bytes: u64) -> Labels {
    [(rustlayer_core::MAX_SIZE_LABEL.to_owned(), bytes.to_string())].into()
}

/// The size the mounted filesystem reports, in bytes.
fn filesystem_bytes(mountpoint: &Path) -> u64 {
    let stat = rustix::fs::statvfs(mountpoint).unwrap();
    stat.f_blocks * stat.f_frsize
}

/// Writes `bytes` of non-zero data to `path` and syncs it, so the blocks are
/// really allocated on the thin device.
fn write_synced(path: &Path, bytes: u64) -> std::io::Result<()> {
    let mut file = fs::File::create(path)?;
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..bytes / chunk.len() as u64 {
        file.write_all(&chunk)?;
    }
    file.sync_all()
}

/// A filesystem of roughly `device` bytes: its own metadata (journal, log,
/// inode tables, allocation groups) takes a little, never a quarter.
fn assert_fills(filesystem: u64, device: u64, what: &str) {
    assert!(
        filesystem <= device && filesystem >= device / 4 * 3,
        "{what}: a filesystem of {filesystem} bytes on a device of {device}"
    );
}

/// max-size larger than the base: the snapshot's filesystem is grown to it, holds
/// more than the base could, its children inherit the size, a smaller max-size is
/// refused without a trace, and a restart activates every device at its size.
fn max_size_grows_the_filesystem(config: DevmapperConfig, big: u64, write: u64) {
    let base = config.base_image_size.get();
    assert!(
        base < write && write < big,
        "the test writes more than the base holds"
    );
    let (dir, root) = new_root();
    let prefix = canonical_prefix(&root);
    let mnt = dir.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let measure = |s: &Snapshotter, key: &str| -> u64 {
        mount_all(&LinuxMounter, &s.mounts(key).unwrap(), &mnt).unwrap();
        let bytes = filesystem_bytes(&mnt);
        unmount(&mnt);
        bytes
    };
    {
        let (backend, s) = open(&root, &config);
        let started = std::time::Instant::now();
        s.prepare("plain", "", &none()).unwrap();
        let plain_took = started.elapsed();
        let started = std::time::Instant::now();
        s.prepare("big", "", &max_size(big)).unwrap();
        let big_took = started.elapsed();
        let (plain_used, big_used) = (
            s.usage("plain").unwrap().bytes,
            s.usage("big").unwrap().bytes,
        );
        eprintln!(
            "{}: prepare at the base size {plain_took:?} ({plain_used} bytes of the pool), \
             grown from {base} to {big} bytes {big_took:?} ({big_used} bytes of the pool)",
            config.fs_type
        );
        assert!(
            big_used - plain_used < (big - base) / 32,
            "growing writes little into the pool: {big_used} bytes against {plain_used}"
        );
        if config.fs_type == FsType::Ext4 {
            // The grown groups' inode tables are never zeroed into the pool.
            let options = &s.mounts("big").unwrap()[0].options;
            assert!(options.contains(&"noinit_itable".to_owned()), "{options:?}");
        }
        assert_fills(measure(&s, "plain"), base, "without max-size");
        mount_all(&LinuxMounter, &s.mounts("big").unwrap(), &mnt).unwrap();
        assert_fills(filesystem_bytes(&mnt), big, "with max-size");
        let written = write_synced(&mnt.join("large"), write);
        unmount(&mnt);
        written.expect("a write larger than the base fits under max-size");
        s.commit("BIG", "big", "", &none()).unwrap();
        assert!(
            s.usage("BIG").unwrap().bytes >= write,
            "the layer holds the write"
        );

        s.prepare("child", "BIG", &none()).unwrap();
        assert_fills(measure(&s, "child"), big, "a child of the larger layer");

        let devices = active_devices(&format!("{prefix}-"));
        let thin = backend.pool_stats().unwrap().unwrap().thin_devices;
        let err = s.prepare("small", "BIG", &max_size(big / 2)).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert_eq!(s.stat("small").unwrap_err().code(), Code::NotFound);
        assert_eq!(active_devices(&format!("{prefix}-")), devices);
        assert_eq!(backend.pool_stats().unwrap().unwrap().thin_devices, thin);
        s.close().unwrap();
    }

    let (_backend, s) = open(&root, &config);
    assert_fills(measure(&s, "child"), big, "the child after a restart");
    s.prepare("grandchild", "BIG", &none()).unwrap();
    mount_all(&LinuxMounter, &s.mounts("grandchild").unwrap(), &mnt).unwrap();
    let size = filesystem_bytes(&mnt);
    let data = fs::metadata(mnt.join("large")).map(|m| m.len());
    unmount(&mnt);
    assert_fills(size, big, "a new child of the larger layer after a restart");
    assert_eq!(data.unwrap(), write);
    assert_fills(
        measure(&s, "plain"),
        base,
        "the base-sized snapshot after a restart",
    );
    s.close().unwrap();
}

#[test]
#[ignore = "needs root and device-mapper (dm_thin_pool): a thin pool on loop devices"]
fn max_size_grows_an_ext4_snapshot_and_survives_a_restart() {
    require_device_mapper("a thin pool on loop devices");
    max_size_grows_the_filesystem(small_pool(), 256 << 20, 96 << 20);
}

#[test]
#[ignore = "needs root and device-mapper (dm_thin_pool): a thin pool on loop devices"]
fn max_size_grows_an_xfs_snapshot_and_survives_a_restart() {
    require_device_mapper("a thin pool on loop devices");
    // mkfs.xfs refuses filesystems under 300 MiB.
    let config = DevmapperConfig {
        fs_type: FsType::Xfs,
        base_image_size: ByteSize::bytes(320 << 20),
        pool_data_size: ByteSize::bytes(1 << 30),
        ..small_pool()
    };
    max_size_grows_the_filesystem(config, 768 << 20, 400 << 20);
}

/// A grow the pool has no room for: resize2fs's new group metadata runs the pool
/// out of data space. The Prepare is refused with ResourceExhausted and leaves
/// no row, no active device and no size record; the pool is writable again once
/// the device is deleted, and a grow that fits works.
#[test]
#[ignore = "needs root and device-mapper (dm_thin_pool): a thin pool on loop devices"]
fn a_grow_that_runs_the_pool_out_of_space_is_refused_without_a_trace() {
    require_device_mapper("a thin pool on loop devices");
    let config = DevmapperConfig {
        pool_data_size: ByteSize::bytes(32 << 20),
        // Refusals by free percentage would stop the Prepare before its grow.
        min_free_percent: 0,
        ..small_pool()
    };
    let f = fixture(config);
    let mnt = f.dir.path().join("mnt");
    // Short of exhausting the pool: the journal and the unmount take a little
    // more.
    fill_pool(&f, "filler", |stats| {
        stats.data_size_bytes - stats.data_used_bytes < 2 << 20
    });
    let prefix = canonical_prefix(&f.root);
    let before = active_devices(&prefix);
    let sizes = f.root.join("devmapper").join("sizes");
    let started = std::time::Instant::now();
    // 16 GiB of ext4 needs megabytes of new bitmaps and descriptors, spread over
    // hundreds of the pool's 64 KiB blocks.
    let err = f.s.prepare("grown", "", &max_size(16 << 30)).unwrap_err();
    eprintln!("grow refused after {:?}: {err}", started.elapsed());
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(
        err.to_string().contains(f.backend.pool_name()),
        "the message names the pool: {err}"
    );
    assert_eq!(f.s.stat("grown").unwrap_err().code(), Code::NotFound);
    assert_eq!(active_devices(&prefix), before, "no device is left active");
    assert_eq!(
        fs::read_dir(&sizes).unwrap().count(),
        0,
        "no size record is left"
    );
    assert!(
        fs::read_dir(f.root.join("devmapper")).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("grow-")),
        "no private mountpoint is left"
    );
    // Deleting the device gave its blocks back: the pool left out-of-space mode.
    f.s.prepare("plain", "", &none())
        .expect("the pool takes new snapshots again");

    f.s.remove("filler").unwrap();
    f.backend.drain_removals();
    f.s.prepare("grown", "", &max_size(256 << 20))
        .expect("a grow that fits works");
    mount_all(&LinuxMounter, &f.s.mounts("grown").unwrap(), &mnt).unwrap();
    let size = filesystem_bytes(&mnt);
    unmount(&mnt);
    assert_fills(size, 256 << 20, "the grow after space came back");
}
