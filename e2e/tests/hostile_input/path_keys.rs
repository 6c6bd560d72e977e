//! Keys are arbitrary strings, never paths: whatever they look like, nothing is
//! written outside the root.

use std::fs;

use rustlayer_e2e::support::{labels, storage_matches_metadata, trash_drains};
use rustlayer_e2e::{Daemon, Mounted, require_root};

use crate::requests::short;
use crate::state::tree;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn keys_that_look_like_paths_stay_inside_the_root() {
    require_root();
    let mut daemon = Daemon::start();
    let c = daemon.client().await;
    let before_tree = tree(&daemon.root);
    let pid = std::process::id();
    let escape = format!("/tmp/rustlayer-escape-{pid}");
    let keys = [
        format!("../../../../tmp/rustlayer-escape-{pid}"),
        format!("{escape}-abs"),
        "..".into(),
        ".".into(),
        "/".into(),
        "a/../../b".into(),
        "snapshots/1".into(),
        "../metadata.db".into(),
        "metadata.db".into(),
        "l/../../x".into(),
        "staging".into(),
        "trash/../..".into(),
        "%2e%2e%2f%2e%2e%2fx".into(),
        "~root/x".into(),
        "new\nline".into(),
        "trailing/".into(),
        "'; DROP TABLE snapshots; --".into(),
        "\u{202e}evil".into(),
        "k".repeat(4096),
    ];
    // Names derived from a key stay under the 4096-byte limit.
    let committed = |i: usize| format!("../../../..{escape}-committed-{i}");
    let view = |i: usize| format!("../../../../../../..{escape}-view-{i}");
    let child = |i: usize| format!("/../{i}/../../../..{escape}-child");
    for (i, key) in keys.iter().enumerate() {
        let mounts = c
            .prepare_labeled(key, "", labels(&[(&escape, &format!("{escape}-label"))]))
            .await
            .unwrap_or_else(|s| panic!("Prepare {:?}: {s:?}", short(key, 64)));
        {
            let m = Mounted::new(&mounts);
            fs::write(m.path().join("marker"), key.as_bytes()).unwrap();
        }
        c.commit(&committed(i), key)
            .await
            .unwrap_or_else(|s| panic!("Commit {:?}: {s:?}", short(key, 64)));
        let info = c.stat(&committed(i)).await.unwrap();
        assert_eq!(info.name, committed(i));
        assert!(info.labels.is_empty(), "Commit without labels keeps none");
        let mounts = c.view(&view(i), &committed(i)).await.unwrap();
        let m = Mounted::new(&mounts);
        assert_eq!(fs::read(m.path().join("marker")).unwrap(), key.as_bytes());
        drop(m);
        let mounts = c
            .prepare(&format!("{}{}", child(i), short(key, 100)), &committed(i))
            .await
            .unwrap();
        let m = Mounted::new(&mounts);
        assert_eq!(fs::read(m.path().join("marker")).unwrap(), key.as_bytes());
        drop(m);
    }
    let escaped = || -> Vec<String> {
        fs::read_dir("/tmp")
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("rustlayer-escape-{pid}")))
            .collect()
    };
    assert!(
        escaped().is_empty(),
        "created outside the root: {:?}",
        escaped()
    );
    // The daemon's directory holds the root, the socket and the log, nothing else.
    let mut beside: Vec<String> = fs::read_dir(daemon.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    beside.sort();
    assert_eq!(beside, ["daemon.log", "root", "rustlayer.sock"]);
    let mut top: Vec<String> = fs::read_dir(&daemon.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("metadata.db"))
        .collect();
    top.sort();
    assert_eq!(top, ["empty", "l", "snapshots", "staging", "trash"]);
    // Storage is named by id only.
    for entry in fs::read_dir(daemon.root.join("snapshots")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name.bytes().all(|b| b.is_ascii_digit()),
            "snapshots/{name} is not an id"
        );
    }
    for entry in fs::read_dir(daemon.root.join("l")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
            "l/{name} is not a base-36 id"
        );
    }
    assert_eq!(c.names(&[]).await.len(), keys.len() * 3);
    storage_matches_metadata(&c, &daemon.root, "after hostile input").await;

    // Removing them all leaves the root as it was.
    for (i, key) in keys.iter().enumerate() {
        c.remove(&view(i)).await.unwrap();
        c.remove(&format!("{}{}", child(i), short(key, 100)))
            .await
            .unwrap();
        c.remove(&committed(i)).await.unwrap();
    }
    assert!(c.names(&[]).await.is_empty());
    c.cleanup().await.unwrap();
    trash_drains(&daemon.root).await;
    assert_eq!(tree(&daemon.root), before_tree);
    assert!(
        escaped().is_empty(),
        "created outside the root: {:?}",
        escaped()
    );
    drop(c);
    daemon.stop();
}
