//! Every refusal carries containerd's exact code and changes nothing.

use rustlayer_e2e::support::{labels, sorted_infos, trash_drains};
use rustlayer_e2e::{Daemon, Labels, require_root};
use tonic::Code;

use crate::requests::{Req, pb_paths, send};
use crate::state::{populate, tree};

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
    let cases = hostile_requests();

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

const MIB: usize = 1 << 20;

/// Each request with the code containerd gives it, aimed at [`populate`]'s world
/// plus "loose", an active snapshot without a parent.
fn hostile_requests() -> Vec<(Req, Code)> {
    [
        invalid_keys(),
        invalid_label_sets(),
        unknown_names(),
        parents_of_the_wrong_kind(),
        kinds_that_refuse(),
        names_taken(),
        invalid_updates(),
    ]
    .concat()
}

/// Keys and parents that are empty, hold a NUL or are too long.
fn invalid_keys() -> Vec<(Req, Code)> {
    use Code::*;
    let mut cases = Vec::new();
    let huge_key = "k".repeat(MIB);
    let over_key = "k".repeat(4097);
    let bad_keys: Vec<String> = vec![
        String::new(),
        "a\0b".into(),
        "\0".into(),
        "base\0".into(),
        over_key.clone(),
        huge_key.clone(),
    ];
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
    cases
}

/// Label sets with a NUL, or too big in one label or all together.
fn invalid_label_sets() -> Vec<(Req, Code)> {
    use Code::*;
    let mut cases = Vec::new();
    let huge_value = labels(&[("big", &"v".repeat(MIB))]);
    let huge_label_key = labels(&[(&"k".repeat(MIB), "v")]);
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
    cases
}

/// Unknown names, including ones that look like paths into or out of the root.
fn unknown_names() -> Vec<(Req, Code)> {
    use Code::*;
    let mut cases = Vec::new();
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
    cases
}

/// Parents of the wrong kind (containerd: "parent is not committed snapshot").
fn parents_of_the_wrong_kind() -> Vec<(Req, Code)> {
    use Code::*;
    let mut cases = Vec::new();
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
    cases
}

/// Kinds that cannot be committed, mounted or removed.
fn kinds_that_refuse() -> Vec<(Req, Code)> {
    use Code::*;
    let mut cases = Vec::new();
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
    cases
}

/// Names taken.
fn names_taken() -> Vec<(Req, Code)> {
    use Code::*;
    let mut cases = Vec::new();
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
    cases
}

/// Update: no info, and field paths that are not mutable. A mask mixing a valid
/// path with an invalid one must roll the valid part back.
fn invalid_updates() -> Vec<(Req, Code)> {
    use Code::*;
    let mut cases = Vec::new();
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
    let huge_path = format!("labels.{}", "p".repeat(MIB));
    cases.push((
        Req::update("active", labels(&[("x", "y")]), &[&huge_path, "kind"]),
        InvalidArgument,
    ));

    cases
}
