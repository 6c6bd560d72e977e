//! The snapshots API as containerd's client sees it: over the socket, with the exact
//! status codes its unpacker and garbage collector branch on.

use rustlayer_api::snapshots as pb;
use rustlayer_e2e::support::labels;
use rustlayer_e2e::{Daemon, PbKind, require_root};
use tonic::Code;

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("expected a refusal").code()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn lifecycle_over_grpc() {
    require_root();
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
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn refusals_carry_containerds_codes() {
    require_root();
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
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn update_and_filters() {
    require_root();
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

/// containerd's Introspection service, which `ctr` 1.7 and later ask on every
/// command: `Server` names this root (a uuid kept across restarts), this process
/// and its pid namespace, with no deprecations; `Plugins` and `PluginInfo` describe
/// what the socket serves, with containerd's filters and codes.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn introspection_answers_as_containerds_does() {
    use rustlayer_api::introspection::{self as ipb, introspection_client::IntrospectionClient};
    require_root();
    let mut daemon = Daemon::start();
    let connect = |socket: std::path::PathBuf| async move {
        IntrospectionClient::new(rustlayer_server::channel(&socket).await.unwrap())
    };
    let mut c = connect(daemon.socket.clone()).await;
    let server = c.server(()).await.unwrap().into_inner();
    assert_eq!(server.pid, daemon.pid() as u64);
    let pidns = std::fs::metadata(format!("/proc/{}/ns/pid", daemon.pid())).unwrap();
    assert_eq!(
        server.pidns,
        std::os::unix::fs::MetadataExt::ino(&pidns),
        "pid namespace"
    );
    assert!(server.deprecations.is_empty(), "{:?}", server.deprecations);
    let groups: Vec<usize> = server.uuid.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{}", server.uuid);

    let all = c
        .plugins(ipb::PluginsRequest { filters: vec![] })
        .await
        .unwrap()
        .into_inner()
        .plugins;
    let ids: Vec<(&str, &str)> = all
        .iter()
        .map(|p| (p.r#type.as_str(), p.id.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("io.containerd.snapshotter.v1", "rustlayer"),
            ("io.containerd.grpc.v1", "snapshots"),
            ("io.containerd.grpc.v1", "introspection"),
        ]
    );
    let snapshotter = c
        .plugins(ipb::PluginsRequest {
            filters: vec!["type==io.containerd.snapshotter.v1,id==rustlayer".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .plugins;
    assert_eq!(snapshotter.len(), 1);
    assert_eq!(snapshotter[0].capabilities, ["rebase"], "overlay rebases");
    assert_eq!(
        snapshotter[0].exports.get("root").map(String::as_str),
        Some(daemon.root.to_str().unwrap())
    );
    assert_eq!(snapshotter[0].platforms[0].os, "linux");
    let services = c
        .plugins(ipb::PluginsRequest {
            filters: vec!["type==io.containerd.grpc.v1".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .plugins;
    assert_eq!(services.len(), 2);
    assert_eq!(
        code(
            c.plugins(ipb::PluginsRequest {
                filters: vec!["==x".into()],
            })
            .await
        ),
        Code::InvalidArgument
    );

    let info = c
        .plugin_info(ipb::PluginInfoRequest {
            r#type: "io.containerd.snapshotter.v1".into(),
            id: "rustlayer".into(),
            options: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.plugin.as_ref(), Some(&snapshotter[0]));
    assert_eq!(
        code(
            c.plugin_info(ipb::PluginInfoRequest {
                r#type: "io.containerd.snapshotter.v1".into(),
                id: "overlayfs".into(),
                options: None,
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.plugin_info(ipb::PluginInfoRequest {
                r#type: "io.containerd.snapshotter.v1".into(),
                id: "rustlayer".into(),
                options: Some(prost_types::Any::default()),
            })
            .await
        ),
        Code::Unimplemented
    );

    // The same root is the same server after a restart; another root is another.
    drop(c);
    daemon.stop();
    daemon.restart();
    let again = connect(daemon.socket.clone())
        .await
        .server(())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.uuid, server.uuid);
    assert_eq!(again.pid, daemon.pid() as u64);
    let other = Daemon::start();
    let elsewhere = connect(other.socket.clone())
        .await
        .server(())
        .await
        .unwrap()
        .into_inner();
    assert_ne!(elsewhere.uuid, server.uuid);
}

/// Every `ctr` on this machine (Debian's, and the containerd releases the version
/// matrix unpacks under `.cache/containerd/<version>/`) talks to the socket as to
/// containerd: it lists the snapshots, and from 1.7 on, where it asks the
/// Introspection service before each command, it warns of nothing.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn ctr_uses_the_socket_without_warnings() {
    require_root();
    let mut ctrs = vec![std::path::PathBuf::from("/usr/bin/ctr")];
    let cache = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/containerd");
    if let Ok(versions) = std::fs::read_dir(&cache) {
        ctrs.extend(versions.map(|v| v.unwrap().path().join("usr/bin/ctr")));
    }
    ctrs.retain(|ctr| ctr.exists());
    assert!(!ctrs.is_empty(), "no ctr here: run hack/deps.sh");

    let daemon = Daemon::start();
    let c = daemon.client().await;
    c.prepare("seen-by-ctr", "").await.unwrap();
    let socket = daemon.socket.to_str().unwrap();
    let ctr = |bin: &std::path::Path, args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(["--address", socket])
            .args(args)
            .env_remove("CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS")
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            bin.display(),
            text(&out.stderr)
        );
        (text(&out.stdout), text(&out.stderr))
    };
    let mut asked = Vec::new();
    for bin in &ctrs {
        let (version, _) = ctr(bin, &["--version"]);
        let (listed, warnings) = ctr(bin, &["snapshots", "--snapshotter", "rustlayer", "ls"]);
        assert!(listed.contains("seen-by-ctr"), "{version}: {listed}");
        assert!(
            !warnings.contains("Failed to check deprecations"),
            "{version}: {warnings}"
        );
        // `ctr deprecations` exists where ctr asks the Introspection service.
        if !version.contains(" 1.6.") {
            let (deprecations, warnings) = ctr(bin, &["deprecations", "list"]);
            assert_eq!(
                (deprecations.trim(), warnings.trim()),
                ("", ""),
                "{version}"
            );
            asked.push(version.trim().to_owned());
        }
    }
    println!(
        "ctr binaries: {}; of which asked Introspection: {asked:?}",
        ctrs.len()
    );
}

/// An HTTP/2 frame as the test reads it off the socket.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

async fn read_frame(socket: &mut tokio::net::UnixStream) -> Frame {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 9];
    socket.read_exact(&mut header).await.expect("a frame");
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; len];
    socket.read_exact(&mut payload).await.expect("a payload");
    Frame {
        kind: header[3],
        flags: header[4],
        stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
        payload,
    }
}

/// gRPC's C core (Python's grpcio and most non-Go clients) sends the socket's path
/// as HTTP/2's `:authority`, which the HTTP/2 server refuses as a URI authority
/// with RST_STREAM PROTOCOL_ERROR. Written here frame by frame, as such a client
/// does, with the authority indexed by the first request and referred to by the
/// second: both get their answer.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn a_socket_path_as_authority_gets_a_normal_answer() {
    use prost::Message;
    use tokio::io::AsyncWriteExt;
    require_root();
    let daemon = Daemon::start();
    let expected_uuid = {
        let channel = rustlayer_server::channel(&daemon.socket).await.unwrap();
        rustlayer_api::introspection::introspection_client::IntrospectionClient::new(channel)
            .server(())
            .await
            .unwrap()
            .into_inner()
            .uuid
    };
    let path = b"/containerd.services.introspection.v1.Introspection/Server";
    for authority in [
        &b"/run/rustlayer/rustlayer.sock"[..],
        b"unix:/run/rustlayer/rustlayer.sock",
        b"%2Frun%2Frustlayer%2Frustlayer.sock",
        b"",
    ] {
        let mut socket = tokio::net::UnixStream::connect(&daemon.socket)
            .await
            .unwrap();
        let mut sent = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        sent.extend(frame(0x4, 0, 0, &[]));
        // :method POST and :scheme http from the static table; the rest literal,
        // entered in the dynamic table (newest first: te 62, content-type 63,
        // :path 64, :authority 65).
        let mut block = vec![0x83, 0x86, 0x41, authority.len() as u8];
        block.extend(authority);
        block.extend([0x44, path.len() as u8]);
        block.extend(path);
        block.extend([0x5f, 16]);
        block.extend(b"application/grpc");
        block.extend([0x40, 2]);
        block.extend(b"te");
        block.push(8);
        block.extend(b"trailers");
        sent.extend(frame(0x1, 0x4, 1, &block));
        let empty_message = [0u8, 0, 0, 0, 0];
        sent.extend(frame(0x0, 0x1, 1, &empty_message));
        sent.extend(frame(0x1, 0x4, 3, &[0x83, 0x86, 0xc1, 0xc0, 0xbf, 0xbe]));
        sent.extend(frame(0x0, 0x1, 3, &empty_message));
        socket.write_all(&sent).await.unwrap();

        let mut answers = std::collections::BTreeMap::new();
        let mut ended = std::collections::BTreeSet::new();
        let read = async {
            while ended.len() < 2 {
                let f = read_frame(&mut socket).await;
                match f.kind {
                    0x3 => panic!(
                        "{}: stream {} reset with code {:?}",
                        String::from_utf8_lossy(authority),
                        f.stream,
                        f.payload
                    ),
                    0x4 if f.flags & 0x1 == 0 => {
                        socket.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap();
                    }
                    0x7 => panic!("GOAWAY: {:?}", f.payload),
                    0x0 if f.stream != 0 => {
                        answers
                            .entry(f.stream)
                            .or_insert_with(Vec::new)
                            .extend(f.payload);
                    }
                    0x1 if f.flags & 0x1 != 0 => {
                        ended.insert(f.stream);
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("both answers within 10 s");
        for stream in [1, 3] {
            let answer = &answers[&stream];
            assert!(answer.len() >= 5 && answer[0] == 0, "{answer:?}");
            let server =
                rustlayer_api::introspection::ServerResponse::decode(&answer[5..]).unwrap();
            assert_eq!(server.uuid, expected_uuid);
        }
    }
}
