//! Real overlay mounts of what the daemon hands out: whiteouts and opaque
//! directories land in the layer, views are read-only, and 500-layer chains mount.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rustlayer_e2e::{Daemon, Mounted, privileged};

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread")]
async fn deletions_and_opaque_dirs_live_in_the_layer() {
    if !privileged("deletions_and_opaque_dirs_live_in_the_layer") {
        return;
    }
    let daemon = Daemon::start();
    let c = daemon.client().await;

    let base = c.prepare("base-a", "").await.unwrap();
    {
        let m = Mounted::new(&base);
        fs::create_dir_all(m.path().join("etc")).unwrap();
        fs::write(m.path().join("etc/doomed"), "x").unwrap();
        fs::write(m.path().join("etc/motd"), "old").unwrap();
        fs::create_dir_all(m.path().join("data/sub")).unwrap();
        fs::write(m.path().join("data/a"), "a").unwrap();
    }
    c.commit("base", "base-a").await.unwrap();

    let child = c.prepare("child-a", "base").await.unwrap();
    assert_eq!(child[0].fs_type, "overlay");
    {
        let m = Mounted::new(&child);
        assert_eq!(read(&m.path().join("etc/motd")), "old");
        fs::remove_file(m.path().join("etc/doomed")).unwrap();
        fs::write(m.path().join("etc/motd"), "new").unwrap();
        fs::remove_dir_all(m.path().join("data")).unwrap();
        fs::create_dir(m.path().join("data")).unwrap();
        fs::write(m.path().join("data/fresh"), "f").unwrap();
    }
    let upper = child[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .map(Path::new)
        .unwrap()
        .to_owned();
    let whiteout = fs::symlink_metadata(upper.join("etc/doomed")).unwrap();
    assert!(
        whiteout.file_type().is_char_device() && whiteout.rdev() == 0,
        "kernel whiteout"
    );
    let opaque = xattr(&upper.join("data"), "trusted.overlay.opaque");
    assert_eq!(
        opaque.as_deref(),
        Some(&b"y"[..]),
        "opaque marker on the replaced dir"
    );
    c.commit("child", "child-a").await.unwrap();

    let view = c.view("look", "child").await.unwrap();
    let m = Mounted::new(&view);
    assert!(!m.path().join("etc/doomed").exists());
    assert_eq!(read(&m.path().join("etc/motd")), "new");
    let mut data: Vec<String> = fs::read_dir(m.path().join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    data.sort();
    assert_eq!(data, ["fresh"]);
    let err = fs::write(m.path().join("etc/motd"), "nope").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "views are read-only (EROFS)");
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64];
    match rustix::fs::lgetxattr(path, name, &mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_500_layer_chain_mounts() {
    if !privileged("a_500_layer_chain_mounts") {
        return;
    }
    let daemon = Daemon::start();
    let c = daemon.client().await;
    let mut parent = String::new();
    // 499 committed layers under one active top: 500 lower directories for a view
    // of the top once committed.
    for i in 0..500 {
        let key = format!("default/{i}/extract-{i} sha256:{i:064x}");
        let mounts = c.prepare(&key, &parent).await.unwrap();
        if i == 0 || i == 499 {
            let m = Mounted::new(&mounts);
            fs::write(m.path().join(format!("layer-{i}")), i.to_string()).unwrap();
        }
        let name = format!("default/{i}/sha256:{i:064x}");
        c.commit(&name, &key).await.unwrap();
        parent = name;
    }
    let top = c.prepare("container", &parent).await.unwrap();
    let data = top[0].options.join(",");
    assert!(data.len() > 4096, "the test must exercise compaction");
    let m = Mounted::new(&top);
    assert_eq!(read(&m.path().join("layer-0")), "0");
    assert_eq!(read(&m.path().join("layer-499")), "499");
    fs::write(m.path().join("written"), "top").unwrap();
}
