//! A time-bounded, structure-aware mutation fuzzer of the daemon's request handling,
//! below the level of well-formed requests: valid protobuf bodies of every
//! snapshots RPC, about snapshots that exist and that don't, are mutated byte by
//! byte (flips, interesting values, cut, spliced across RPCs, varints overwritten,
//! unknown and repeated fields, up to 1 MiB) and sent raw over the daemon's socket.
//!
//! Every answer must be OK or a precise refusal; tonic's own refusal of a body
//! prost itself cannot decode (Internal "failed to decode", or a reset stream) is
//! accepted for such bodies only: the handler never ran. A refusal, and any answer
//! of a method that only reads, leaves the snapshots exactly as they were. The
//! daemon never dies or panics, writes nothing outside its root, and after the run
//! its storage still matches its metadata.
//!
//! `RUSTLAYER_FUZZ_SECONDS` (default 20) bounds it, `RUSTLAYER_FUZZ_SEED` replays.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use prost::Message;
use rustlayer_api::snapshots as pb;
use rustlayer_core::Method;
use rustlayer_e2e::support::{Rng, env_or, labels, sorted_infos, storage_matches_metadata};
use rustlayer_e2e::{Client, Daemon, require_root};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

const SERVICE: &str = "/containerd.services.snapshots.v1.Snapshots/";
/// What the daemon may answer on purpose. Anything else (Internal, Unknown,
/// Unavailable...) for a decodable body is a bug.
const PRECISE: [Code; 7] = [
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::AlreadyExists,
    Code::FailedPrecondition,
    Code::ResourceExhausted,
    Code::OutOfRange,
];
const MAX_BODY: usize = 1 << 20;

/// Bodies go out and come back as raw bytes.
#[derive(Debug, Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut body = vec![0; src.remaining()];
        src.copy_to_slice(&mut body);
        Ok(Some(body))
    }
}

/// What the fuzzer needs of each method of the API beyond its name.
trait Fuzzed {
    fn path(self) -> PathAndQuery;
    fn decodes(self, body: &[u8]) -> bool;
    fn writes(self) -> bool;
    fn describe(self, body: &[u8]) -> String;
}

impl Fuzzed for Method {
    fn path(self) -> PathAndQuery {
        format!("{SERVICE}{}", self.as_str())
            .parse()
            .expect("a method path")
    }

    /// Whether prost can decode `body` as this method's request: tonic refuses
    /// what it cannot, before any handler runs.
    fn decodes(self, body: &[u8]) -> bool {
        match self {
            Method::Prepare => pb::PrepareSnapshotRequest::decode(body).is_ok(),
            Method::View => pb::ViewSnapshotRequest::decode(body).is_ok(),
            Method::Mounts => pb::MountsRequest::decode(body).is_ok(),
            Method::Commit => pb::CommitSnapshotRequest::decode(body).is_ok(),
            Method::Remove => pb::RemoveSnapshotRequest::decode(body).is_ok(),
            Method::Stat => pb::StatSnapshotRequest::decode(body).is_ok(),
            Method::Update => pb::UpdateSnapshotRequest::decode(body).is_ok(),
            Method::Usage => pb::UsageRequest::decode(body).is_ok(),
            Method::List => pb::ListSnapshotsRequest::decode(body).is_ok(),
            Method::Cleanup => pb::CleanupRequest::decode(body).is_ok(),
        }
    }

    /// Whether an OK answer of this method may change what List shows.
    fn writes(self) -> bool {
        matches!(
            self,
            Method::Prepare | Method::View | Method::Commit | Method::Remove | Method::Update
        )
    }

    /// The decoded request, to print with a failure.
    fn describe(self, body: &[u8]) -> String {
        match self {
            Method::Prepare => format!("{:?}", pb::PrepareSnapshotRequest::decode(body)),
            Method::View => format!("{:?}", pb::ViewSnapshotRequest::decode(body)),
            Method::Mounts => format!("{:?}", pb::MountsRequest::decode(body)),
            Method::Commit => format!("{:?}", pb::CommitSnapshotRequest::decode(body)),
            Method::Remove => format!("{:?}", pb::RemoveSnapshotRequest::decode(body)),
            Method::Stat => format!("{:?}", pb::StatSnapshotRequest::decode(body)),
            Method::Update => format!("{:?}", pb::UpdateSnapshotRequest::decode(body)),
            Method::Usage => format!("{:?}", pb::UsageRequest::decode(body)),
            Method::List => format!("{:?}", pb::ListSnapshotsRequest::decode(body)),
            Method::Cleanup => format!("{:?}", pb::CleanupRequest::decode(body)),
        }
    }
}

/// Valid requests of every method, about the populated snapshots and others.
fn seeds() -> Vec<(Method, Vec<u8>)> {
    let keys = ["base", "mid", "work", "look", "missing", "", "../../etc"];
    let mut seeds = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let key = key.to_string();
        let parent = keys[(i + 1) % keys.len()].to_string();
        let l = labels(&[("containerd.io/gc.root", "x"), ("a.b", "c")]);
        seeds.push((
            Method::Prepare,
            pb::PrepareSnapshotRequest {
                snapshotter: "rustlayer".into(),
                key: format!("{key}-new"),
                parent: parent.clone(),
                labels: l.clone(),
            }
            .encode_to_vec(),
        ));
        seeds.push((
            Method::View,
            pb::ViewSnapshotRequest {
                snapshotter: String::new(),
                key: format!("{key}-view"),
                parent: key.clone(),
                labels: l.clone(),
            }
            .encode_to_vec(),
        ));
        seeds.push((
            Method::Mounts,
            pb::MountsRequest {
                snapshotter: String::new(),
                key: key.clone(),
            }
            .encode_to_vec(),
        ));
        seeds.push((
            Method::Commit,
            pb::CommitSnapshotRequest {
                snapshotter: String::new(),
                name: format!("{key}-committed"),
                key: key.clone(),
                labels: l.clone(),
                parent: parent.clone(),
            }
            .encode_to_vec(),
        ));
        seeds.push((
            Method::Remove,
            pb::RemoveSnapshotRequest {
                snapshotter: String::new(),
                key: key.clone(),
            }
            .encode_to_vec(),
        ));
        seeds.push((
            Method::Stat,
            pb::StatSnapshotRequest {
                snapshotter: String::new(),
                key: key.clone(),
            }
            .encode_to_vec(),
        ));
        seeds.push((
            Method::Update,
            pb::UpdateSnapshotRequest {
                snapshotter: String::new(),
                info: Some(pb::Info {
                    name: key.clone(),
                    parent,
                    kind: (i % 4) as i32,
                    created_at: None,
                    updated_at: None,
                    labels: l,
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["labels.a.b".into(), "labels".into(), "parent".into()],
                }),
            }
            .encode_to_vec(),
        ));
        seeds.push((
            Method::Usage,
            pb::UsageRequest {
                snapshotter: String::new(),
                key,
            }
            .encode_to_vec(),
        ));
    }
    for filters in [
        vec![],
        vec!["kind==committed".to_owned()],
        vec![
            "labels.\"a.b\"==c,name~=^b".to_owned(),
            "parent!=\"\"".to_owned(),
        ],
    ] {
        seeds.push((
            Method::List,
            pb::ListSnapshotsRequest {
                snapshotter: String::new(),
                filters,
            }
            .encode_to_vec(),
        ));
    }
    seeds.push((
        Method::Cleanup,
        pb::CleanupRequest::default().encode_to_vec(),
    ));
    seeds
}

fn hex(bytes: &[u8], max: usize) -> String {
    bytes.iter().take(max).map(|b| format!("{b:02x}")).collect()
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// One to four byte-level mutations of `body`; `other` is another seed to splice.
fn mutate(rng: &mut Rng, body: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(out.len() + 1);
        // Unknown fields and repeats keep a body decodable, so they come up more
        // often: about half the bodies reach a handler.
        match *rng.pick(&[0, 1, 2, 3, 4, 5, 6, 7, 7, 7, 7, 8, 8, 8, 9]) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = *rng.pick(&[0x00, 0xff, 0x80, 0x7f, 0x0a, 0x12, 0x1a, 0x22]);
            }
            2 => {
                let n = rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                out.splice(at..at, bytes);
            }
            3 if !out.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                out.drain(at.min(end)..end);
            }
            4 => out.truncate(at),
            5 => {
                let from = rng.below(other.len() + 1);
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            6 => {
                // A length or tag replaced by a huge or negative varint.
                let mut v = Vec::new();
                varint(
                    *rng.pick(&[u64::MAX, 1 << 31, 1 << 63, u64::from(u32::MAX), 0x7fff_ffff]),
                    &mut v,
                );
                let end = (at + 1).min(out.len());
                out.splice(at..end, v);
            }
            7 => {
                // An unknown field of a random number and wire type.
                let field = 1 + rng.below(1 << 20) as u64;
                let wire = *rng.pick(&[0u64, 1, 2, 5]);
                varint(field << 3 | wire, &mut out);
                match wire {
                    0 => varint(rng.next_u64(), &mut out),
                    1 => out.extend_from_slice(&rng.next_u64().to_le_bytes()),
                    5 => out.extend_from_slice(&(rng.next_u64() as u32).to_le_bytes()),
                    _ => {
                        let n = rng.below(64);
                        varint(n as u64, &mut out);
                        out.extend((0..n).map(|_| rng.next_u64() as u8));
                    }
                }
            }
            8 => {
                // Protobuf merges repeated messages: fields again, many times.
                let copy = out.clone();
                for _ in 0..1 + rng.below(50) {
                    out.extend_from_slice(&copy);
                }
            }
            9 => {
                // A big string field (key, field 2), up to the 1 MiB cap.
                let n = rng.below(MAX_BODY - 16);
                varint(2 << 3 | 2, &mut out);
                varint(n as u64, &mut out);
                out.extend(std::iter::repeat_n(*rng.pick(&[b'a', b'/', 0, b'.']), n));
            }
            _ => {}
        }
    }
    out.truncate(MAX_BODY);
    out
}

/// Sends `body` to `method` and returns the status code of the answer.
async fn send(channel: &Channel, method: Method, body: Vec<u8>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("the channel is ready");
    let request = tonic::Request::new(body);
    if method == Method::List {
        match grpc.server_streaming(request, method.path(), Raw).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                while let Some(item) = stream.next().await {
                    if let Err(status) = item {
                        return status.code();
                    }
                }
                Code::Ok
            }
            Err(status) => status.code(),
        }
    } else {
        match grpc.unary(request, method.path(), Raw).await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    }
}

/// A small world to aim at: a committed chain, an active snapshot and a view.
async fn populate(c: &Client) {
    let present: Vec<String> = c
        .list(&[])
        .await
        .expect("list")
        .into_iter()
        .map(|i| i.name)
        .collect();
    let has = |k: &str| present.iter().any(|p| p == k);
    if !has("base") {
        c.prepare("base-a", "").await.expect("prepare base");
        c.commit("base", "base-a").await.expect("commit base");
    }
    if !has("mid") {
        c.prepare("mid-a", "base").await.expect("prepare mid");
        c.commit("mid", "mid-a").await.expect("commit mid");
    }
    if !has("work") {
        c.prepare("work", "mid").await.expect("prepare work");
    }
    if !has("look") {
        c.view("look", "base").await.expect("view look");
    }
}

/// Removes what the fuzzing made, children before parents, so the next round
/// aims at the small world again.
async fn prune(c: &Client) {
    // The small world exactly: a fuzzed request may have made "base" a view.
    let keep = [
        ("base", pb::Kind::Committed, ""),
        ("mid", pb::Kind::Committed, "base"),
        ("work", pb::Kind::Active, "mid"),
        ("look", pb::Kind::View, "base"),
    ];
    for _ in 0..64 {
        let extra: Vec<String> = c
            .list(&[])
            .await
            .expect("list")
            .into_iter()
            .filter(|i| {
                !keep
                    .iter()
                    .any(|(n, k, p)| i.name == *n && i.kind == *k as i32 && i.parent == *p)
            })
            .map(|i| i.name)
            .collect();
        if extra.is_empty() {
            return;
        }
        for key in extra {
            // A parent refuses with FailedPrecondition until its children are gone.
            let _ = c.remove(&key).await;
        }
    }
    panic!("fuzzed snapshots could not be pruned");
}

/// Fails unless the daemon process still runs: a dead child stays a zombie until
/// the harness reaps it, so its mere existence proves nothing.
fn assert_alive(daemon: &Daemon) {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", daemon.pid())).unwrap_or_default();
    // "pid (comm) S ...": the state follows the command name, which may hold spaces.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    assert!(
        matches!(state, Some(s) if s != 'Z' && s != 'X'),
        "the daemon is gone (state {state:?}):\n{}",
        daemon.log()
    );
}

/// `path` with `.` and `..` resolved by name only, so a dangling link resolves too.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Every symbolic link under `dir` whose target lies outside `root`: a key or a
/// label reaching a path would show up here as a link out of the root.
fn links_leaving(root: &Path, dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let meta = std::fs::symlink_metadata(&path).expect("lstat");
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).expect("readlink");
            let resolved = lexically_normal(&dir.join(&target));
            if !resolved.starts_with(root) {
                found.push(format!("{} -> {}", path.display(), target.display()));
            }
        } else if meta.is_dir() {
            links_leaving(root, &path, found);
        }
    }
}

/// The snapshots one side has and the other lacks, for a readable failure.
fn difference(before: &[pb::Info], after: &[pb::Info]) -> String {
    let gone: Vec<&pb::Info> = before.iter().filter(|i| !after.contains(i)).collect();
    let new: Vec<&pb::Info> = after.iter().filter(|i| !before.contains(i)).collect();
    format!("before only: {gone:?}; after only: {new:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn mutated_protobuf_requests_get_precise_answers_and_change_nothing_outside_the_root() {
    require_root();
    let seconds = env_or("RUSTLAYER_FUZZ_SECONDS", 20);
    let seed = env_or("RUSTLAYER_FUZZ_SEED", 0xf022_u64);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut daemon = Daemon::start();
    let c = daemon.client().await;
    populate(&c).await;
    let channel = rustlayer_server::channel(&daemon.socket)
        .await
        .expect("connect to the daemon");
    let seeds = seeds();

    let mut per_method: BTreeMap<Method, u64> = BTreeMap::new();
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let (mut tried, mut undecodable) = (0u64, 0u64);
    let mut previous = String::from("none");
    // What List showed before the next request; None after an accepted write,
    // until it is needed again.
    let mut known: Option<Vec<pb::Info>> = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        let (method, body) = &seeds[rng.below(seeds.len())];
        // Mostly the method's own seeds; sometimes another method's body entirely.
        let method = if rng.chance(10) {
            *rng.pick(&Method::ALL)
        } else {
            *method
        };
        let other = &seeds[rng.below(seeds.len())].1;
        let body = mutate(&mut rng, body, other);
        let decodes = method.decodes(&body);
        if decodes && known.is_none() {
            known = Some(sorted_infos(&c).await);
        }
        let code = send(&channel, method, body.clone()).await;
        tried += 1;
        *per_method.entry(method).or_default() += 1;
        *codes.entry(format!("{code:?}")).or_default() += 1;
        if !decodes {
            undecodable += 1;
        }
        let request = || {
            format!(
                "{method:?} answered {code:?} (seed {seed:#x}, request {tried}); body {}: {}; the request before: {previous}; daemon log tail:\n{}",
                hex(&body, 256),
                method.describe(&body).chars().take(600).collect::<String>(),
                daemon
                    .log()
                    .lines()
                    .filter(|l| !l.contains("DEBUG"))
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        };
        // tonic refuses a body prost cannot decode before any handler runs: with
        // Internal, or, while the connection's flow-control window is still taken by
        // a large body just before, by resetting the stream (Cancelled).
        let precise = PRECISE.contains(&code)
            || (!decodes && matches!(code, Code::Internal | Code::Cancelled));
        assert!(precise, "{}", request());
        // An undecodable body never reached a handler; were it to change anything,
        // the next decodable request's check would still see it.
        if decodes {
            if code == Code::Ok && method.writes() {
                known = None;
            } else {
                let after = sorted_infos(&c).await;
                let before = known.as_ref().expect("listed before the request");
                assert!(
                    after == *before,
                    "the snapshots changed: {}; {}",
                    difference(before, &after),
                    request()
                );
            }
        }
        previous = format!(
            "{method:?} {code:?} {} bytes: {}",
            body.len(),
            hex(&body, 64)
        );
        if tried % 400 == 0 {
            assert_alive(&daemon);
            assert!(
                !daemon.log().contains("panicked"),
                "the daemon panicked:\n{}",
                daemon.log()
            );
            c.cleanup().await.expect("Cleanup between batches");
            prune(&c).await;
            populate(&c).await;
            known = None;
        }
    }
    let elapsed = started.elapsed();

    // The daemon lived through it, wrote nowhere but its root, and its storage
    // still matches its metadata.
    assert_alive(&daemon);
    assert!(!daemon.log().contains("panicked"), "the daemon panicked");
    let mut beside_root: Vec<String> = std::fs::read_dir(daemon.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    beside_root.sort();
    assert_eq!(beside_root, ["daemon.log", "root", "rustlayer.sock"]);
    let mut leaving = Vec::new();
    links_leaving(&daemon.root, &daemon.root, &mut leaving);
    assert!(leaving.is_empty(), "links out of the root: {leaving:?}");
    prune(&c).await;
    storage_matches_metadata(&c, &daemon.root, "after fuzzing").await;
    populate(&c).await;
    c.prepare("after", "mid").await.expect("still serves");
    c.commit("after-c", "after").await.expect("still commits");
    c.remove("after-c").await.expect("still removes");
    drop(c);
    daemon.stop();
    println!(
        "fuzzed requests: {tried} in {elapsed:.1?} ({:.0}/s, seed {seed:#x}); undecodable bodies: {undecodable}; per method: {per_method:?}; codes: {codes:?}",
        tried as f64 / elapsed.as_secs_f64(),
    );
}
