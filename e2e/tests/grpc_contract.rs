//! The snapshots API as containerd's client sees it: over the socket, with the exact
//! status codes its unpacker and garbage collector branch on.

use rustlayer_api::snapshots as pb;
use rustlayer_e2e::support::labels;
use rustlayer_e2e::{Daemon, PbKind, privileged};
use tonic::Code;

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("expected a refusal").code()
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_over_grpc() {
    if !privileged("lifecycle_over_grpc") {
        return;
    }
    let daemon = Daemon::start();
    let c = daemon.client().await;

    let unpack = "ns/1/extract-123 sha256:aa";
    let mounts = c.prepare(unpack, "").await.unwrap();
    assert_eq!(mounts[0].fs_type, "overlay");
    c.commit("ns/2/sha256:aa", unpack).await.unwrap();
    let mounts = c
        .prepare_labeled("ns/3/ctr", "ns/2/sha256:aa", labels(&[("app", "web")]))
        .await
        .unwrap();
    assert_eq!(mounts[0].fs_type, "overlay");
    assert_eq!(c.mounts("ns/3/ctr").await.unwrap(), mounts);
    c.view("ns/4/view", "ns/2/sha256:aa").await.unwrap();

    let info = c.stat("ns/3/ctr").await.unwrap();
    assert_eq!(info.kind, PbKind::Active as i32);
    assert_eq!(info.parent, "ns/2/sha256:aa");
    assert_eq!(info.labels, labels(&[("app", "web")]));
    assert!(info.created_at.is_some() && info.updated_at.is_some());
    assert_eq!(
        c.stat("ns/2/sha256:aa").await.unwrap().kind,
        PbKind::Committed as i32
    );
    assert_eq!(c.stat("ns/4/view").await.unwrap().kind, PbKind::View as i32);

    let usage = c.usage("ns/2/sha256:aa").await.unwrap();
    assert_eq!(usage.inodes, 1);
    // Committed layers and views answer from the metadata; an active layer is
    // measured, so what a container wrote shows.
    let upper = mounts[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .expect("an overlay on a parent has an upper directory");
    std::fs::write(format!("{upper}/written"), vec![7u8; 64 * 1024]).unwrap();
    let usage = c.usage("ns/3/ctr").await.unwrap();
    assert_eq!(usage.inodes, 2);
    assert!(usage.size >= 64 * 1024, "{usage:?}");
    assert_eq!(
        c.usage("ns/4/view").await.unwrap(),
        pb::UsageResponse::default()
    );
    assert_eq!(
        c.names(&[]).await,
        ["ns/2/sha256:aa", "ns/3/ctr", "ns/4/view"]
    );

    c.remove("ns/4/view").await.unwrap();
    c.remove("ns/3/ctr").await.unwrap();
    c.remove("ns/2/sha256:aa").await.unwrap();
    assert!(c.names(&[]).await.is_empty());
    c.cleanup().await.unwrap();
    drop(c);
    let mut daemon = daemon;
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_carry_containerds_codes() {
    if !privileged("refusals_carry_containerds_codes") {
        return;
    }
    let daemon = Daemon::start();
    let c = daemon.client().await;
    c.prepare("a", "").await.unwrap();
    c.commit("base", "a").await.unwrap();
    c.prepare("active", "base").await.unwrap();
    c.view("view", "base").await.unwrap();

    assert_eq!(code(c.prepare("active", "base").await), Code::AlreadyExists);
    assert_eq!(code(c.prepare("base", "").await), Code::AlreadyExists);
    assert_eq!(code(c.prepare("x", "nope").await), Code::NotFound);
    assert_eq!(code(c.prepare("x", "active").await), Code::InvalidArgument);
    assert_eq!(code(c.commit("c", "view").await), Code::FailedPrecondition);
    assert_eq!(code(c.commit("c", "nope").await), Code::NotFound);
    assert_eq!(code(c.commit("base", "active").await), Code::AlreadyExists);
    // Commit's parent, as containerd 2.2's CommitActive answers it.
    c.prepare("loose", "").await.unwrap();
    assert_eq!(
        code(c.commit_onto("c", "active", "nope").await),
        Code::InvalidArgument,
        "prepared on another parent"
    );
    assert_eq!(
        code(c.commit_onto("c", "loose", "nope").await),
        Code::NotFound
    );
    assert_eq!(
        code(c.commit_onto("c", "loose", "view").await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(c.commit_onto("c", "loose", "loose").await),
        Code::NotFound
    );
    c.commit_onto("same", "active", "base").await.unwrap();
    c.commit_onto("rebased", "loose", "base").await.unwrap();
    assert_eq!(c.stat("rebased").await.unwrap().parent, "base");
    assert_eq!(code(c.mounts("base").await), Code::FailedPrecondition);
    assert_eq!(code(c.remove("base").await), Code::FailedPrecondition);
    assert_eq!(code(c.remove("nope").await), Code::NotFound);
    assert_eq!(code(c.stat("nope").await), Code::NotFound);
    assert_eq!(code(c.usage("nope").await), Code::NotFound);
    assert_eq!(code(c.usage("").await), Code::InvalidArgument);
    assert_eq!(code(c.stat("").await), Code::InvalidArgument);
    assert_eq!(code(c.mounts("").await), Code::InvalidArgument);
    assert_eq!(code(c.prepare("", "").await), Code::InvalidArgument);
    assert_eq!(code(c.prepare("nul\0key", "").await), Code::InvalidArgument);
    let huge = labels(&[("k", &"v".repeat(4096))]);
    assert_eq!(
        code(c.prepare_labeled("x", "", huge).await),
        Code::InvalidArgument
    );
    let mut raw = c.raw.clone();
    let no_info = raw
        .update(pb::UpdateSnapshotRequest {
            snapshotter: String::new(),
            info: None,
            update_mask: None,
        })
        .await;
    assert_eq!(code(no_info), Code::InvalidArgument);
    let bad_path = raw
        .update(pb::UpdateSnapshotRequest {
            snapshotter: String::new(),
            info: Some(pb::Info {
                name: "base".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["kind".into()],
            }),
        })
        .await;
    assert_eq!(code(bad_path), Code::InvalidArgument);

    // After all that, exactly what was made is there.
    assert_eq!(c.names(&[]).await, ["base", "rebased", "same", "view"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_and_filters() {
    if !privileged("update_and_filters") {
        return;
    }
    let daemon = Daemon::start();
    let c = daemon.client().await;
    c.prepare_labeled(
        "a",
        "",
        labels(&[("containerd.io/gc.root", "x"), ("tier", "1")]),
    )
    .await
    .unwrap();
    c.commit("base", "a").await.unwrap();
    c.prepare_labeled("b", "base", labels(&[("tier", "2")]))
        .await
        .unwrap();
    c.view("v", "base").await.unwrap();

    let mut raw = c.raw.clone();
    let updated = raw
        .update(pb::UpdateSnapshotRequest {
            snapshotter: String::new(),
            info: Some(pb::Info {
                name: "b".into(),
                labels: labels(&[("tier", "3"), ("extra", "e")]),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels.tier".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(updated.labels, labels(&[("tier", "3")]));

    assert_eq!(c.names(&["kind==active"]).await, ["b"]);
    assert_eq!(
        c.names(&["kind==view", "kind==committed"]).await,
        ["base", "v"]
    );
    assert_eq!(c.names(&["parent==base"]).await, ["b", "v"]);
    assert_eq!(c.names(&["labels.tier==3"]).await, ["b"]);
    assert!(
        c.names(&["labels.\"containerd.io/gc.root\""])
            .await
            .is_empty(),
        "Commit gives the committed snapshot its own labels"
    );
    assert_eq!(code(c.list(&["==x"]).await), Code::InvalidArgument);
}
