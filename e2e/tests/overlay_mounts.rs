//! Real overlay mounts of what the daemon hands out: whiteouts and opaque
//! directories land in the layer, views are read-only, and 500-layer chains mount.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustlayer_e2e::support::commit_chain;
use rustlayer_e2e::{Daemon, Mounted, require_root};

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn deletions_and_opaque_dirs_live_in_the_layer() {
    require_root();
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
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn a_500_layer_chain_mounts() {
    require_root();
    let daemon = Daemon::start();
    let c = daemon.client().await;
    // 499 committed layers under one active top: 500 lower directories for a view
    // of the top once committed.
    let parent = commit_chain(&c, 500).await;
    let top = c.prepare("container", &parent).await.unwrap();
    let data = top[0].options.join(",");
    assert!(data.len() > 4096, "the test must exercise compaction");
    let m = Mounted::new(&top);
    assert_eq!(read(&m.path().join("layer-0")), "0");
    assert_eq!(read(&m.path().join("layer-499")), "499");
    fs::write(m.path().join("written"), "top").unwrap();
}

/// One entry of an OCI layer's tar stream, in stream order.
#[derive(Debug, Clone, Copy)]
enum Entry {
    Dir(&'static str),
    File(&'static str, &'static str),
    /// `.wh.<name>`: the named entry of the layers below is deleted.
    Whiteout(&'static str),
    /// `<dir>/.wh..wh..opq`: the directory hides what the layers below have in it.
    Opaque(&'static str),
}

/// What containerd's applier does with a layer and the mounts the snapshotter gave
/// (`apply` in diff/apply/apply_linux.go, the same from 1.6 to 2.x). One overlay
/// mount with an `upperdir=`: the layer goes straight into that directory, nothing
/// is mounted, and pkg/archive's `OverlayConvertWhiteout` writes whiteouts as
/// overlay's, a 0/0 character device for `.wh.<name>` and the
/// `trusted.overlay.opaque` xattr for an opaque marker. Anything else is mounted and
/// the layer applied into the mounted tree with pkg/archive's default: a whiteout
/// deletes what it names and an opaque marker what the layer has not brought so
/// far. Returns whether it wrote into an upper directory.
fn apply_layer(mounts: &[rustlayer_core::Mount], layer: &[Entry]) -> bool {
    let upper = match mounts {
        [only] if only.fs_type == "overlay" => only
            .options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(Path::new),
        _ => None,
    };
    // pkg/archive makes a missing parent directory of an entry (`mkparent`).
    let in_parent = |path: PathBuf| {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        path
    };
    if let Some(upper) = upper {
        for entry in layer {
            match *entry {
                Entry::Dir(dir) => fs::create_dir_all(upper.join(dir)).unwrap(),
                Entry::File(path, content) => {
                    fs::write(in_parent(upper.join(path)), content).unwrap()
                }
                Entry::Whiteout(path) => rustix::fs::mknodat(
                    rustix::fs::CWD,
                    in_parent(upper.join(path)),
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::empty(),
                    0,
                )
                .unwrap(),
                Entry::Opaque(dir) => rustix::fs::setxattr(
                    upper.join(dir),
                    "trusted.overlay.opaque",
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )
                .unwrap(),
            }
        }
        return true;
    }
    let m = Mounted::new(mounts);
    let root = m.path();
    let mut unpacked = Vec::new();
    for entry in layer {
        match *entry {
            Entry::Dir(dir) => {
                fs::create_dir_all(root.join(dir)).unwrap();
                unpacked.push(root.join(dir));
            }
            Entry::File(path, content) => {
                fs::write(in_parent(root.join(path)), content).unwrap();
                unpacked.push(root.join(path));
            }
            Entry::Whiteout(path) => {
                let gone = in_parent(root.join(path));
                if gone.is_dir() {
                    fs::remove_dir_all(gone).unwrap();
                } else if fs::symlink_metadata(&gone).is_ok() {
                    fs::remove_file(gone).unwrap();
                }
            }
            Entry::Opaque(dir) => {
                for child in fs::read_dir(root.join(dir)).unwrap() {
                    let child = child.unwrap().path();
                    if unpacked.contains(&child) {
                        continue;
                    }
                    if child.is_dir() {
                        fs::remove_dir_all(child).unwrap();
                    } else {
                        fs::remove_file(child).unwrap();
                    }
                }
            }
        }
    }
    false
}

/// What a mounted tree shows: every path with its type and a file's content; an
/// entry listed but not there to look at (a stray whiteout) says so.
fn merged_view(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {
                    out.push(format!("{rel}/"));
                    walk(root, &path, out);
                }
                Ok(meta) if meta.is_file() => out.push(format!("{rel} = {}", read(&path))),
                Ok(meta) => out.push(format!("{rel}: {:?}", meta.file_type())),
                Err(err) => out.push(format!("{rel}: listed but {err}")),
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// containerd 2.2's parallel unpack (the proxy plugin declaring `rebase`) prepares
/// each layer without its parent, applies it, and commits it onto the layer below.
/// The layer must then show what it shows when unpacked on top of its parent:
/// its whiteouts hide the parent's files and its opaque directories the parent's
/// contents. And a bottom layer's whiteouts, which hide nothing, show nowhere.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn a_layer_unpacked_without_its_parent_then_rebased_merges_as_one_unpacked_on_it() {
    require_root();
    let daemon = Daemon::start();
    let c = daemon.client().await;
    use Entry::*;
    let bottom = [
        Dir("etc"),
        File("etc/doomed", "x"),
        File("etc/motd", "old"),
        Dir("data"),
        File("data/a", "a"),
        Dir("data/sub"),
        File("data/sub/b", "b"),
        Dir("keep"),
        File("keep/x", "x"),
        // A bottom layer's deletion of nothing.
        Whiteout("keep/never-there"),
    ];
    let upper = [
        Whiteout("etc/doomed"),
        File("etc/motd", "new"),
        Dir("data"),
        Opaque("data"),
        File("data/fresh", "f"),
        Dir("new"),
        File("new/f", "n"),
    ];

    let mounts = c.prepare("extract-1", "").await.unwrap();
    assert!(apply_layer(&mounts, &bottom), "{mounts:?}");
    c.commit("layer-1", "extract-1").await.unwrap();

    // Sequential: on its parent.
    let mounts = c.prepare("extract-2-seq", "layer-1").await.unwrap();
    assert!(apply_layer(&mounts, &upper), "{mounts:?}");
    c.commit("layer-2-seq", "extract-2-seq").await.unwrap();

    // Parallel: without it, then committed onto it.
    let mounts = c.prepare("extract-2-par", "").await.unwrap();
    assert!(
        apply_layer(&mounts, &upper),
        "a parentless Prepare must be an overlay the applier writes overlay whiteouts into: {mounts:?}"
    );
    c.commit_onto("layer-2-par", "extract-2-par", "layer-1")
        .await
        .unwrap();
    assert_eq!(c.stat("layer-2-par").await.unwrap().parent, "layer-1");

    let expected = [
        "data/",
        "data/fresh = f",
        "etc/",
        "etc/motd = new",
        "keep/",
        "keep/x = x",
        "new/",
        "new/f = n",
    ];
    let mut seen = Vec::new();
    for layer in ["layer-2-seq", "layer-2-par"] {
        let container = c.prepare(&format!("{layer}-ctr"), layer).await.unwrap();
        let m = Mounted::new(&container);
        let view = merged_view(m.path());
        assert_eq!(view, expected, "container on {layer}");
        drop(m);
        let look = c.view(&format!("{layer}-view"), layer).await.unwrap();
        let m = Mounted::new(&look);
        assert_eq!(merged_view(m.path()), view, "view of {layer}");
        seen.push(view);
    }
    assert_eq!(seen[0], seen[1]);

    // The bottom layer alone: its whiteout was removed at Commit, not left to show.
    let container = c.prepare("layer-1-ctr", "layer-1").await.unwrap();
    let m = Mounted::new(&container);
    assert_eq!(
        merged_view(m.path()),
        [
            "data/",
            "data/a = a",
            "data/sub/",
            "data/sub/b = b",
            "etc/",
            "etc/doomed = x",
            "etc/motd = old",
            "keep/",
            "keep/x = x",
        ]
    );
}
