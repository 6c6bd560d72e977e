//! Hostile and malformed requests: every refusal carries containerd's exact code,
//! changes nothing (metadata or storage), writes nothing outside the root, and the
//! daemon keeps serving. A property-style loop throws random strings at random RPCs.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustlayer_api::snapshots as pb;
use rustlayer_e2e::support::{Rng, labels, sorted_infos, storage_matches_metadata, trash_drains};
use rustlayer_e2e::{Client, Daemon, Labels, Mounted, require_root};
use tokio_stream::StreamExt;
use tonic::Code;

// ---------------------------------------------------------------------------------
// Requests as data, so tables and the random loop share one sender.

#[derive(Debug, Clone)]
enum Req {
    Prepare {
        key: String,
        parent: String,
        labels: Labels,
    },
    View {
        key: String,
        parent: String,
        labels: Labels,
    },
    Mounts {
        key: String,
    },
    Commit {
        name: String,
        key: String,
        parent: String,
        labels: Labels,
    },
    Remove {
        key: String,
    },
    Stat {
        key: String,
    },
    Usage {
        key: String,
    },
    Update {
        info: Option<pb::Info>,
        paths: Option<Vec<String>>,
    },
    List {
        filters: Vec<String>,
    },
    Cleanup,
}

impl Req {
    fn prepare(key: &str, parent: &str) -> Req {
        Req::Prepare {
            key: key.into(),
            parent: parent.into(),
            labels: Labels::new(),
        }
    }

    fn prepare_labeled(key: &str, labels: Labels) -> Req {
        Req::Prepare {
            key: key.into(),
            parent: String::new(),
            labels,
        }
    }

    fn view(key: &str, parent: &str) -> Req {
        Req::View {
            key: key.into(),
            parent: parent.into(),
            labels: Labels::new(),
        }
    }

    fn commit(name: &str, key: &str) -> Req {
        Req::commit_onto(name, key, "")
    }

    fn commit_onto(name: &str, key: &str, parent: &str) -> Req {
        Req::Commit {
            name: name.into(),
            key: key.into(),
            parent: parent.into(),
            labels: Labels::new(),
        }
    }

    fn update(name: &str, labels: Labels, paths: &[&str]) -> Req {
        Req::Update {
            info: Some(pb::Info {
                name: name.into(),
                labels,
                ..Default::default()
            }),
            paths: Some(pb_paths(paths)),
        }
    }

    /// Whether an Ok answer may change the metadata.
    fn mutates(&self) -> bool {
        matches!(
            self,
            Req::Prepare { .. }
                | Req::View { .. }
                | Req::Commit { .. }
                | Req::Remove { .. }
                | Req::Update { .. }
        )
    }

    /// A one-line description that does not print a megabyte of key.
    fn describe(&self) -> String {
        short(&format!("{self:?}"), 240)
    }
}

fn pb_paths(paths: &[&str]) -> Vec<String> {
    paths.iter().map(|p| p.to_string()).collect()
}

fn short(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} bytes]", &s[..end], s.len())
}

/// Sends one request; Ok carries the mounts Prepare and View hand out.
async fn send(c: &Client, req: &Req) -> Result<Vec<rustlayer_core::Mount>, tonic::Status> {
    let mut raw = c.raw.clone();
    match req.clone() {
        Req::Prepare {
            key,
            parent,
            labels,
        } => c.prepare_labeled(&key, &parent, labels).await,
        Req::View {
            key,
            parent,
            labels,
        } => {
            let r = raw
                .view(pb::ViewSnapshotRequest {
                    snapshotter: String::new(),
                    key,
                    parent,
                    labels,
                })
                .await?;
            Ok(r.into_inner()
                .mounts
                .into_iter()
                .map(|m| rustlayer_core::Mount {
                    fs_type: m.r#type,
                    source: m.source,
                    options: m.options,
                })
                .collect())
        }
        Req::Mounts { key } => c.mounts(&key).await,
        Req::Commit {
            name,
            key,
            parent,
            labels,
        } => {
            raw.commit(pb::CommitSnapshotRequest {
                snapshotter: String::new(),
                name,
                key,
                labels,
                parent,
            })
            .await?;
            Ok(Vec::new())
        }
        Req::Remove { key } => c.remove(&key).await.map(|()| Vec::new()),
        Req::Stat { key } => c.stat(&key).await.map(|_| Vec::new()),
        Req::Usage { key } => c.usage(&key).await.map(|_| Vec::new()),
        Req::Update { info, paths } => {
            raw.update(pb::UpdateSnapshotRequest {
                snapshotter: String::new(),
                info,
                update_mask: paths.map(|paths| prost_types::FieldMask { paths }),
            })
            .await?;
            Ok(Vec::new())
        }
        Req::List { filters } => {
            let mut stream = raw
                .list(pb::ListSnapshotsRequest {
                    snapshotter: String::new(),
                    filters,
                })
                .await?
                .into_inner();
            while let Some(batch) = stream.next().await {
                batch?;
            }
            Ok(Vec::new())
        }
        Req::Cleanup => c.cleanup().await.map(|()| Vec::new()),
    }
}

// ---------------------------------------------------------------------------------
// Observing the daemon's state: its metadata (List) and its storage (the root).

/// Every path under `root` (but the metadata files) with its type, size, mode and
/// link target; timestamps are left out.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_owned();
            if dir == root
                && entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("metadata.db")
            {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o7777;
            let ft = meta.file_type();
            let desc = if ft.is_dir() {
                format!("dir {mode:o} {}:{}", meta.uid(), meta.gid())
            } else if ft.is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if ft.is_file() {
                format!("file {} {mode:o}", meta.len())
            } else {
                format!("other {ft:?} {mode:o}")
            };
            out.insert(rel, desc);
            if ft.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

// ---------------------------------------------------------------------------------

/// A small world to aim at: a committed base with an active, a view and a committed
/// child on it.
async fn populate(c: &Client) {
    c.prepare_labeled("base-a", "", labels(&[("origin", "test")]))
        .await
        .unwrap();
    c.commit("base", "base-a").await.unwrap();
    c.prepare_labeled("active", "base", labels(&[("tier", "1")]))
        .await
        .unwrap();
    c.view("view", "base").await.unwrap();
    c.prepare("child-a", "base").await.unwrap();
    c.commit("child", "child-a").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn refusals_carry_exact_codes_and_change_nothing() {
    require_root();
    let mut daemon = Daemon::start();
    let c = daemon.client().await;
    populate(&c).await;
    // Prepared without a parent, as containerd's parallel unpack prepares a layer.
    c.prepare("loose", "").await.unwrap();
    let before_infos = sorted_infos(&c).await;
    let before_tree = tree(&daemon.root);

    let mib = 1 << 20;
    let huge_key = "k".repeat(mib);
    let over_key = "k".repeat(4097);
    let bad_keys: Vec<String> = vec![
        String::new(),
        "a\0b".into(),
        "\0".into(),
        "base\0".into(),
        over_key.clone(),
        huge_key.clone(),
    ];
    let huge_value = labels(&[("big", &"v".repeat(mib))]);
    let huge_label_key = labels(&[(&"k".repeat(mib), "v")]);
    let nul_label_key = labels(&[("a\0b", "v")]);
    let nul_label_value = labels(&[("a", "v\0")]);
    let over_label = labels(&[("k", &"v".repeat(4096))]);
    // 30 000 small labels: each fine, 360 KB together.
    let many_labels: Labels = (0..30_000)
        .map(|i| (format!("label-{i:06}"), "v".to_string()))
        .collect();
    // 100 labels of 3000 bytes: each fine, 300 KB together.
    let fat_labels: Labels = (0..100)
        .map(|i| (format!("{i:04}{}", "k".repeat(2996)), String::new()))
        .collect();
    let bad_label_sets = [
        &huge_value,
        &huge_label_key,
        &nul_label_key,
        &nul_label_value,
        &over_label,
        &many_labels,
    ];

    let mut cases: Vec<(Req, Code)> = Vec::new();
    use Code::*;
    for k in &bad_keys {
        cases.push((Req::prepare(k, ""), InvalidArgument));
        cases.push((Req::view(k, ""), InvalidArgument));
        cases.push((Req::Mounts { key: k.clone() }, InvalidArgument));
        cases.push((Req::commit(k, "active"), InvalidArgument));
        cases.push((Req::commit("fresh", k), InvalidArgument));
        cases.push((Req::Remove { key: k.clone() }, InvalidArgument));
        cases.push((Req::Stat { key: k.clone() }, InvalidArgument));
        cases.push((Req::Usage { key: k.clone() }, InvalidArgument));
        cases.push((
            Req::update(k, labels(&[("x", "y")]), &["labels"]),
            InvalidArgument,
        ));
        if !k.is_empty() {
            // An empty parent means "no parent"; any other invalid one is refused.
            cases.push((Req::prepare("fresh", k), InvalidArgument));
            cases.push((Req::view("fresh", k), InvalidArgument));
            cases.push((Req::commit_onto("fresh", "loose", k), InvalidArgument));
        }
    }
    for set in bad_label_sets.iter().copied().chain([&fat_labels]) {
        cases.push((Req::prepare_labeled("fresh", set.clone()), InvalidArgument));
        cases.push((
            Req::View {
                key: "fresh".into(),
                parent: "base".into(),
                labels: set.clone(),
            },
            InvalidArgument,
        ));
        cases.push((
            Req::Commit {
                name: "fresh".into(),
                key: "active".into(),
                parent: String::new(),
                labels: set.clone(),
            },
            InvalidArgument,
        ));
        cases.push((Req::update("active", set.clone(), &[]), InvalidArgument));
        cases.push((
            Req::update("active", set.clone(), &["labels"]),
            InvalidArgument,
        ));
    }
    // Unknown names, including ones that look like paths into or out of the root.
    for unknown in [
        "nope",
        "../base",
        "../../../../etc/passwd",
        "/",
        ".",
        "..",
        "snapshots/1",
        "1",
        "metadata.db",
        "base/",
        " base",
        "BASE",
    ] {
        cases.push((Req::prepare("fresh", unknown), NotFound));
        cases.push((Req::view("fresh", unknown), NotFound));
        cases.push((
            Req::Mounts {
                key: unknown.into(),
            },
            NotFound,
        ));
        cases.push((Req::commit("fresh", unknown), NotFound));
        cases.push((Req::commit_onto("fresh", "loose", unknown), NotFound));
        cases.push((
            Req::Remove {
                key: unknown.into(),
            },
            NotFound,
        ));
        cases.push((
            Req::Stat {
                key: unknown.into(),
            },
            NotFound,
        ));
        cases.push((
            Req::Usage {
                key: unknown.into(),
            },
            NotFound,
        ));
        cases.push((Req::update(unknown, Labels::new(), &[]), NotFound));
    }
    // Parents of the wrong kind (containerd: "parent is not committed snapshot").
    for parent in ["active", "view"] {
        cases.push((Req::prepare("fresh", parent), InvalidArgument));
        cases.push((Req::view("fresh", parent), InvalidArgument));
    }
    // Commit's parent (containerd 2.2's rebase), with the codes of containerd's
    // CommitActive: a snapshot keeps the parent it was prepared on (another one is
    // InvalidArgument, looked at before the parent itself), the new parent must be
    // committed (FailedPrecondition), and a snapshot is never its own parent (its
    // key is gone once committed, its name not there before: NotFound).
    cases.extend([
        (
            Req::commit_onto("fresh", "active", "child"),
            InvalidArgument,
        ),
        (Req::commit_onto("fresh", "active", "nope"), InvalidArgument),
        (
            Req::commit_onto("fresh", "loose", "active"),
            FailedPrecondition,
        ),
        (
            Req::commit_onto("fresh", "loose", "view"),
            FailedPrecondition,
        ),
        (Req::commit_onto("fresh", "loose", "loose"), NotFound),
        (Req::commit_onto("fresh", "loose", "fresh"), NotFound),
        (Req::commit_onto("child", "loose", "base"), AlreadyExists),
        (
            Req::commit_onto("fresh", "view", "base"),
            FailedPrecondition,
        ),
        (
            Req::commit_onto("fresh", "base", "child"),
            FailedPrecondition,
        ),
    ]);
    // Kinds that cannot be committed, mounted or removed.
    cases.extend([
        (Req::commit("fresh", "view"), FailedPrecondition),
        (Req::commit("fresh", "base"), FailedPrecondition),
        (Req::Mounts { key: "base".into() }, FailedPrecondition),
        (
            Req::Mounts {
                key: "child".into(),
            },
            FailedPrecondition,
        ),
        (Req::Remove { key: "base".into() }, FailedPrecondition),
    ]);
    // Names taken.
    cases.extend([
        (Req::prepare("active", ""), AlreadyExists),
        (Req::prepare("base", ""), AlreadyExists),
        (Req::prepare("view", "base"), AlreadyExists),
        (Req::view("view", "base"), AlreadyExists),
        (Req::view("active", ""), AlreadyExists),
        (Req::commit("base", "active"), AlreadyExists),
        (Req::commit("view", "active"), AlreadyExists),
        (Req::commit("active", "active"), AlreadyExists),
        (Req::commit("child", "active"), AlreadyExists),
    ]);
    // Update: no info, and field paths that are not mutable. A mask mixing a valid
    // path with an invalid one must roll the valid part back.
    cases.push((
        Req::Update {
            info: None,
            paths: None,
        },
        InvalidArgument,
    ));
    cases.push((
        Req::Update {
            info: None,
            paths: Some(pb_paths(&["labels"])),
        },
        InvalidArgument,
    ));
    for paths in [
        &["kind"][..],
        &["parent"],
        &["name"],
        &["created_at"],
        &["updated_at"],
        &[""],
        &["Labels"],
        &["labels\0"],
        &["label.x"],
        &["labels", "kind"],
        &["labels.tier", "parent"],
    ] {
        for name in ["active", "base", "view"] {
            cases.push((
                Req::update(name, labels(&[("tier", "9"), ("evil", "1")]), paths),
                InvalidArgument,
            ));
        }
    }
    let huge_path = format!("labels.{}", "p".repeat(mib));
    cases.push((
        Req::update("active", labels(&[("x", "y")]), &[&huge_path, "kind"]),
        InvalidArgument,
    ));

    let mut wrong = Vec::new();
    for (req, want) in &cases {
        let got = match send(&c, req).await {
            Result::Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        if got != *want {
            wrong.push(format!("{}: got {got:?}, want {want:?}", req.describe()));
        }
    }
    println!("hostile requests sent: {}", cases.len());

    // Nothing changed: metadata (timestamps included) and storage.
    let after_infos = sorted_infos(&c).await;
    assert_eq!(
        after_infos, before_infos,
        "refused requests changed the metadata"
    );
    c.cleanup().await.unwrap();
    trash_drains(&daemon.root).await;
    assert_eq!(
        tree(&daemon.root),
        before_tree,
        "refused requests changed the storage"
    );
    assert!(
        wrong.is_empty(),
        "{} of {} requests got the wrong code:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );

    // Still healthy.
    c.prepare("after", "base").await.unwrap();
    c.remove("after").await.unwrap();
    drop(c);
    daemon.stop();
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn malformed_filters_are_invalid_argument() {
    require_root();
    let mut daemon = Daemon::start();
    let c = daemon.client().await;
    populate(&c).await;
    let before = sorted_infos(&c).await;

    // Each is outside containerd's grammar (filters/parser.go):
    //   selectors := selector ("," selector)*
    //   selector  := fieldpath (operator value)
    //   operator  := "==" | "!=" | "~="
    //   value     := quoted | [^\s,]+
    let malformed = [
        "==x",
        "!=x",
        "~=x",
        ",",
        ",,",
        "kind==",
        "kind!=",
        "kind~=",
        "kind==active,",
        ",kind==active",
        "kind==active,,kind==view",
        ".kind",
        "kind.",
        "kind..name",
        "labels.\"unterminated",
        "labels.\"a\"==\"unterminated",
        "kind==\"bad escape \\q\"",
        "kind active",
        "kind==active kind==view",
        "\"",
        "\0",
        "kind\0==active",
        "*",
        "kind===",
        "labels.==x",
    ];
    let mut wrong = Vec::new();
    for f in malformed {
        // Alone, and ORed with a valid filter: one bad filter spoils the request.
        for filters in [vec![f], vec!["kind==active", f]] {
            match c.list(&filters).await {
                Err(s) if s.code() == Code::InvalidArgument => {}
                Err(s) => wrong.push(format!("{filters:?}: got {:?} ({})", s.code(), s.message())),
                Ok(infos) => wrong.push(format!(
                    "{filters:?}: accepted, listed {} snapshots",
                    infos.len()
                )),
            }
        }
    }
    // A megabyte of filter is refused or answered, never a crash or Internal.
    let long = format!("labels.\"{}\"==x", "a".repeat(1 << 20));
    if let Err(s) = c.list(&[&long]).await {
        assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    }
    assert_eq!(sorted_infos(&c).await, before);
    assert!(
        wrong.is_empty(),
        "malformed filters not refused with InvalidArgument:\n{}",
        wrong.join("\n")
    );
    drop(c);
    daemon.stop();
}

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

// ---------------------------------------------------------------------------------
// Property-style: random strings at random RPCs.

const PIECES: &[&str] = &[
    "",
    "a",
    "b",
    "key",
    "base",
    "../",
    "..",
    ".",
    "/",
    "\0",
    "\n",
    "\t",
    " ",
    "é",
    "日本",
    "\u{202e}",
    "\u{feff}",
    "\u{7f}",
    "\u{1}",
    "%",
    "%s",
    "\\",
    "\"",
    "'",
    ",",
    "==",
    "!=",
    "~=",
    "=",
    "labels.",
    "labels",
    "kind",
    "parent",
    "name",
    "active",
    "committed",
    "view",
    "*",
    "(",
    "[",
    "?",
    "metadata.db",
    "snapshots",
    "containerd.io/gc.root",
];

fn random_string(rng: &mut Rng) -> String {
    let mut s = String::new();
    match rng.below(10) {
        // Around the 4096-byte key limit.
        0 => {
            let len = 4094 + rng.below(5);
            s.push_str(&"x".repeat(len));
        }
        // Random code points, control characters included.
        1 | 2 => {
            for _ in 0..rng.below(24) {
                let c = match rng.below(3) {
                    0 => char::from_u32(rng.below(0x80) as u32),
                    1 => char::from_u32(rng.below(0x800) as u32),
                    _ => char::from_u32(rng.below(0x11_0000) as u32),
                };
                if let Some(c) = c {
                    s.push(c);
                }
            }
        }
        _ => {
            for _ in 0..rng.below(6) {
                let piece = PIECES[rng.below(PIECES.len())];
                s.push_str(piece);
            }
        }
    }
    s
}

fn random_labels(rng: &mut Rng) -> Labels {
    let mut labels = BTreeMap::new();
    match rng.below(8) {
        0 => {
            labels.insert(random_string(rng), "v".repeat(4090 + rng.below(10)));
        }
        // Many labels; now and then over the 256 KiB total.
        1 => {
            let value = if rng.chance(25) { 3000 } else { 40 };
            for i in 0..rng.below(120) {
                labels.insert(format!("l{i}"), "v".repeat(rng.below(value)));
            }
        }
        _ => {
            for _ in 0..rng.below(3) {
                labels.insert(random_string(rng), random_string(rng));
            }
        }
    }
    labels
}

/// A name from the current state most of the time (so some requests succeed and
/// change things), a random string otherwise.
fn some_key(rng: &mut Rng, names: &[String]) -> String {
    if !names.is_empty() && rng.chance(45) {
        rng.pick(names).clone()
    } else {
        random_string(rng)
    }
}

fn random_request(rng: &mut Rng, names: &[String]) -> Req {
    match rng.below(11) {
        0 | 1 => Req::Prepare {
            key: random_string(rng),
            parent: if rng.chance(50) {
                String::new()
            } else {
                some_key(rng, names)
            },
            labels: random_labels(rng),
        },
        2 => Req::View {
            key: random_string(rng),
            parent: some_key(rng, names),
            labels: random_labels(rng),
        },
        3 => Req::Mounts {
            key: some_key(rng, names),
        },
        4 => Req::Commit {
            name: random_string(rng),
            key: some_key(rng, names),
            parent: if rng.chance(50) {
                String::new()
            } else {
                some_key(rng, names)
            },
            labels: random_labels(rng),
        },
        5 => Req::Remove {
            key: some_key(rng, names),
        },
        6 => Req::Stat {
            key: some_key(rng, names),
        },
        7 => Req::Usage {
            key: some_key(rng, names),
        },
        8 => Req::Update {
            info: rng.chance(90).then(|| pb::Info {
                name: some_key(rng, names),
                parent: random_string(rng),
                kind: rng.below(5) as i32 - 1,
                labels: random_labels(rng),
                ..Default::default()
            }),
            paths: rng.chance(70).then(|| {
                (0..rng.below(4))
                    .map(|_| match rng.below(3) {
                        0 => "labels".to_string(),
                        1 => format!("labels.{}", random_string(rng)),
                        _ => random_string(rng),
                    })
                    .collect()
            }),
        },
        9 => Req::List {
            filters: (0..rng.below(3)).map(|_| random_string(rng)).collect(),
        },
        _ => Req::Cleanup,
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn random_inputs_never_crash_or_change_state_when_refused() {
    require_root();
    let total: usize = std::env::var("RUSTLAYER_HOSTILE_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let seed: u64 = std::env::var("RUSTLAYER_HOSTILE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut daemon = Daemon::start();
    let c = daemon.client().await;
    populate(&c).await;

    let allowed = [
        Code::Ok,
        Code::InvalidArgument,
        Code::NotFound,
        Code::AlreadyExists,
        Code::FailedPrecondition,
    ];
    let mut state = sorted_infos(&c).await;
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    let started = Instant::now();
    for i in 0..total {
        let names: Vec<String> = state.iter().map(|i| i.name.clone()).collect();
        let req = random_request(&mut rng, &names);
        let result = send(&c, &req).await;
        let code = result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
        *codes.entry(format!("{code:?}")).or_default() += 1;
        if !allowed.contains(&code) {
            let msg = result.as_ref().err().map(|s| s.message().to_owned());
            bad.push(format!(
                "#{i} {}: {code:?} {}",
                req.describe(),
                short(&msg.unwrap_or_default(), 300)
            ));
        }
        if let Ok(mounts) = &result
            && !mounts.is_empty()
        {
            // What Prepare and View hand out must mount.
            let _m = Mounted::new(mounts);
        }
        let now = sorted_infos(&c).await;
        if code != Code::Ok || !req.mutates() {
            assert_eq!(
                now,
                state,
                "#{i} {} answered {code:?} but the metadata changed",
                req.describe()
            );
        }
        state = now;
        // Keep the population small enough for List after every request to be cheap.
        if state.len() > 40 {
            for info in state.iter().rev() {
                let _ = c.remove(&info.name).await;
            }
            state = sorted_infos(&c).await;
        }
    }
    println!(
        "random inputs tried: {total} in {:.1?} (seed {seed:#x}); codes: {codes:?}",
        started.elapsed()
    );
    assert!(
        bad.is_empty(),
        "{} requests got codes outside {allowed:?}:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(
        codes.get("Ok").copied().unwrap_or(0) > total / 20,
        "too few requests succeeded to exercise state changes: {codes:?}"
    );

    // Storage agrees with the metadata; every parent exists and is committed.
    let all = sorted_infos(&c).await;
    for info in &all {
        if !info.parent.is_empty() {
            let parent = all
                .iter()
                .find(|p| p.name == info.parent)
                .unwrap_or_else(|| panic!("{:?} has a missing parent", info.name));
            assert_eq!(parent.kind, pb::Kind::Committed as i32);
        }
    }
    storage_matches_metadata(&c, &daemon.root, "after hostile input").await;
    drop(c);
    daemon.stop();
    assert!(!daemon.log().contains("panicked"));
}
