//! containerd's snapshot rules, checked against the real metadata store and the real
//! overlay backend's directory handling (no mounts, so no root needed).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use rustlayer_core::{
    Backend, Code, Filters, Kind, Labels, Mount, SnapshotId, SnapshotRef, Staged, Usage,
};
use rustlayer_overlay::{OverlayBackend, OverlayOptions};
use rustlayer_snapshotter::{InfoUpdate, Snapshotter};

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    faults: Arc<Faults>,
    s: Snapshotter,
}

/// Wraps the real backend to fail chosen steps, as a full disk or a crash would.
#[derive(Default)]
struct Faults {
    fail_publish: AtomicBool,
    fail_seal: AtomicBool,
    /// Speak for a backend that cannot rebase, as devmapper's thin snapshots cannot.
    no_rebase: AtomicBool,
    /// Every id Cleanup was asked to make sure is empty.
    suspects: Mutex<Vec<SnapshotId>>,
    /// Holds the next stage or seal at its start, where a concurrent request may
    /// change the world under it: says "arrived", then waits for "go on".
    gate: Mutex<Option<Gate>>,
}

struct Gate {
    arrived: Sender<()>,
    go_on: Receiver<()>,
}

impl Faults {
    fn pass_gate(&self) {
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            gate.arrived.send(()).unwrap();
            gate.go_on.recv().unwrap();
        }
    }

    /// Arms the gate; the returned ends learn of the arrival and release it.
    fn arm_gate(&self) -> (Receiver<()>, Sender<()>) {
        let (arrived, arrival) = channel();
        let (release, go_on) = channel();
        *self.gate.lock().unwrap() = Some(Gate { arrived, go_on });
        (arrival, release)
    }
}

struct FaultyBackend {
    inner: OverlayBackend,
    faults: Arc<Faults>,
    /// Pretend to be another backend, to test that a root stays with its backend.
    name: Option<&'static str>,
}

fn injected() -> rustlayer_core::Error {
    rustlayer_core::Error::io("injected", std::io::Error::from_raw_os_error(28))
}

impl Backend for FaultyBackend {
    fn name(&self) -> &'static str {
        self.name.unwrap_or_else(|| self.inner.name())
    }
    fn stage(
        &self,
        id: SnapshotId,
        kind: Kind,
        parents: &[SnapshotId],
        labels: &Labels,
    ) -> rustlayer_core::Result<Staged> {
        self.faults.pass_gate();
        self.inner.stage(id, kind, parents, labels)
    }
    fn publish(&self, staged: &Staged, id: SnapshotId) -> rustlayer_core::Result<()> {
        if self.faults.fail_publish.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.publish(staged, id)
    }
    fn discard(&self, staged: Staged) {
        self.inner.discard(staged)
    }
    fn mounts(&self, s: SnapshotRef<'_>, l: &Labels) -> rustlayer_core::Result<Vec<Mount>> {
        self.inner.mounts(s, l)
    }
    fn seal(&self, s: SnapshotRef<'_>) -> rustlayer_core::Result<Usage> {
        if self.faults.fail_seal.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.faults.pass_gate();
        self.inner.seal(s)
    }
    fn supports_rebase(&self) -> bool {
        !self.faults.no_rebase.load(Ordering::SeqCst) && self.inner.supports_rebase()
    }
    fn usage(&self, s: SnapshotRef<'_>) -> rustlayer_core::Result<Usage> {
        self.inner.usage(s)
    }
    fn remove(&self, id: SnapshotId) -> rustlayer_core::Result<()> {
        self.inner.remove(id)
    }
    fn cleanup(
        &self,
        is_known: &dyn Fn(SnapshotId) -> bool,
        suspects: &[SnapshotId],
    ) -> rustlayer_core::Result<usize> {
        self.faults.suspects.lock().unwrap().extend(suspects);
        self.inner.cleanup(is_known, suspects)
    }
}

fn backend_at(root: &Path, faults: Arc<Faults>, name: Option<&'static str>) -> Arc<FaultyBackend> {
    let inner = OverlayBackend::open(&OverlayOptions {
        root: root.to_owned(),
        remap_ids: false,
        size_limits: Default::default(),
    })
    .unwrap();
    Arc::new(FaultyBackend {
        inner,
        faults,
        name,
    })
}

fn open_at(root: &Path, faults: Arc<Faults>) -> Snapshotter {
    Snapshotter::open(root, backend_at(root, faults, None)).unwrap()
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let faults = Arc::new(Faults::default());
    let s = open_at(&root, Arc::clone(&faults));
    Fixture {
        _dir: dir,
        root,
        faults,
        s,
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn none() -> Labels {
    Labels::new()
}

fn code<T: std::fmt::Debug>(r: rustlayer_core::Result<T>) -> Code {
    r.expect_err("expected an error").code()
}

/// Everything observable: every snapshot's info and every file under the root
/// except the metadata file itself (whose bytes change with any read transaction).
fn state(f: &Fixture) -> (Vec<String>, BTreeSet<PathBuf>) {
    let mut infos = Vec::new();
    f.s.list(&Filters::parse::<&str>(&[]).unwrap(), |i| {
        infos.push(format!("{i:?}"))
    })
    .unwrap();
    let mut files = BTreeSet::new();
    let mut stack = vec![f.root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("metadata.db")
            {
                continue;
            }
            if path.is_dir() && !path.is_symlink() {
                stack.push(path.clone());
            }
            files.insert(path);
        }
    }
    (infos, files)
}

/// A committed chain `base` <- `mid`, and an active `top` on `mid`.
fn chain(f: &Fixture) {
    f.s.prepare("a-base", "", &none()).unwrap();
    f.s.commit("base", "a-base", "", &labels(&[("layer", "0")]))
        .unwrap();
    f.s.prepare("a-mid", "base", &none()).unwrap();
    f.s.commit("mid", "a-mid", "", &none()).unwrap();
    f.s.prepare("top", "mid", &none()).unwrap();
}

#[test]
fn lifecycle_prepare_commit_view_remove() {
    let f = fixture();
    let mounts =
        f.s.prepare("default/1/extract sha256:abc", "", &none())
            .unwrap();
    assert_eq!(mounts[0].fs_type, "overlay");
    let info = f.s.stat("default/1/extract sha256:abc").unwrap();
    assert_eq!(info.kind, Kind::Active);
    assert_eq!(info.parent, None);

    f.s.commit(
        "layer-1",
        "default/1/extract sha256:abc",
        "",
        &labels(&[("x", "y")]),
    )
    .unwrap();
    assert_eq!(
        code(f.s.stat("default/1/extract sha256:abc")),
        Code::NotFound
    );
    let info = f.s.stat("layer-1").unwrap();
    assert_eq!(info.kind, Kind::Committed);
    assert_eq!(info.labels, labels(&[("x", "y")]));

    let view = f.s.view("v", "layer-1", &none()).unwrap();
    assert_eq!(view[0].options, ["ro", "rbind"]);
    assert_eq!(f.s.stat("v").unwrap().parent.as_deref(), Some("layer-1"));
    assert_eq!(code(f.s.remove("layer-1")), Code::FailedPrecondition);
    f.s.remove("v").unwrap();
    f.s.remove("layer-1").unwrap();
    assert_eq!(f.s.counts().unwrap().committed, 0);
}

#[test]
fn mounts_stack_the_whole_chain_nearest_first() {
    let f = fixture();
    chain(&f);
    let mounts = f.s.mounts("top").unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].fs_type, "overlay");
    let lower = mounts[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap();
    let links: Vec<PathBuf> = lower.split(':').map(PathBuf::from).collect();
    assert_eq!(links.len(), 2);
    // The nearest parent's link resolves to mid's layer, which lies on top of base's.
    let mid_target = fs::canonicalize(&links[0]).unwrap();
    let base_target = fs::canonicalize(&links[1]).unwrap();
    assert!(mid_target.ends_with("fs") && base_target.ends_with("fs"));
    assert_ne!(mid_target, base_target);
    assert_eq!(
        f.s.mounts("top").unwrap(),
        mounts,
        "Mounts repeats Prepare's answer"
    );
}

#[test]
fn codes_match_containerd() {
    let f = fixture();
    chain(&f);
    assert_eq!(code(f.s.prepare("top", "", &none())), Code::AlreadyExists);
    assert_eq!(
        code(f.s.prepare("base", "", &none())),
        Code::AlreadyExists,
        "one namespace for keys and names"
    );
    assert_eq!(code(f.s.prepare("x", "missing", &none())), Code::NotFound);
    assert_eq!(
        code(f.s.prepare("x", "top", &none())),
        Code::InvalidArgument,
        "active parent"
    );
    f.s.view("v", "mid", &none()).unwrap();
    assert_eq!(
        code(f.s.prepare("x", "v", &none())),
        Code::InvalidArgument,
        "view parent"
    );
    assert_eq!(
        code(f.s.commit("c", "v", "", &none())),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(f.s.commit("c", "base", "", &none())),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(f.s.commit("c", "missing", "", &none())),
        Code::NotFound
    );
    assert_eq!(
        code(f.s.commit("mid", "top", "", &none())),
        Code::AlreadyExists
    );
    assert_eq!(code(f.s.mounts("mid")), Code::FailedPrecondition);
    assert_eq!(code(f.s.mounts("missing")), Code::NotFound);
    assert_eq!(code(f.s.remove("base")), Code::FailedPrecondition);
    assert_eq!(code(f.s.remove("missing")), Code::NotFound);
    assert_eq!(code(f.s.usage("missing")), Code::NotFound);
    assert_eq!(code(f.s.stat("")), Code::InvalidArgument);
    assert_eq!(code(f.s.prepare("", "", &none())), Code::InvalidArgument);
    assert_eq!(
        code(f.s.prepare("a\0b", "", &none())),
        Code::InvalidArgument
    );
    assert_eq!(
        code(f.s.prepare("x", "a\0b", &none())),
        Code::InvalidArgument
    );
    let huge = labels(&[("big", &"v".repeat(5000))]);
    assert_eq!(code(f.s.prepare("x", "", &huge)), Code::InvalidArgument);
    assert_eq!(
        code(f.s.commit("c", "top", "", &huge)),
        Code::InvalidArgument
    );
}

#[test]
fn rejected_requests_change_nothing() {
    let f = fixture();
    chain(&f);
    f.s.view("v", "mid", &none()).unwrap();
    let before = state(&f);
    let huge = labels(&[("big", &"v".repeat(5000))]);
    let rejected: Vec<(&str, rustlayer_core::Result<()>)> = vec![
        ("dup prepare", f.s.prepare("top", "base", &none()).map(drop)),
        ("prepare on view", f.s.prepare("x", "v", &none()).map(drop)),
        ("prepare huge labels", f.s.prepare("x", "", &huge).map(drop)),
        ("commit view", f.s.commit("c", "v", "", &none())),
        (
            "commit onto existing",
            f.s.commit("base", "top", "", &none()),
        ),
        ("remove parent", f.s.remove("mid")),
        (
            "update bad path",
            f.s.update(&InfoUpdate {
                name: "mid".into(),
                labels: labels(&[("a", "b")]),
                paths: vec!["labels.a".into(), "parent".into()],
            })
            .map(drop),
        ),
    ];
    for (what, result) in rejected {
        assert!(result.is_err(), "{what} should be refused");
        assert_eq!(state(&f), before, "{what} changed state");
    }
}

#[test]
fn failed_publish_and_seal_leave_no_trace() {
    let f = fixture();
    chain(&f);
    let before = state(&f);
    f.faults.fail_publish.store(true, Ordering::SeqCst);
    assert_eq!(
        code(f.s.prepare("new", "mid", &none())),
        Code::ResourceExhausted
    );
    f.faults.fail_publish.store(false, Ordering::SeqCst);
    assert_eq!(state(&f), before);

    f.faults.fail_seal.store(true, Ordering::SeqCst);
    assert_eq!(
        code(f.s.commit("top-c", "top", "", &none())),
        Code::ResourceExhausted
    );
    f.faults.fail_seal.store(false, Ordering::SeqCst);
    assert_eq!(f.s.stat("top").unwrap().kind, Kind::Active);
    f.s.commit("top-c", "top", "", &none()).unwrap();
}

#[test]
fn a_malformed_max_size_is_refused_and_changes_nothing() {
    let f = fixture();
    let max_size = rustlayer_core::MAX_SIZE_LABEL;
    for bad in ["", "0", "-1", "ten", "1GiB", " 1"] {
        let err =
            f.s.prepare("k", "", &labels(&[(max_size, bad)]))
                .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err}");
        assert_eq!(f.s.stat("k").unwrap_err().code(), Code::NotFound);
    }
    assert_eq!(
        fs::read_dir(f.root.join("snapshots")).unwrap().count(),
        0,
        "a refused Prepare made no storage"
    );

    f.s.prepare("k", "", &labels(&[(max_size, "1048576")]))
        .unwrap();
    let stored = || f.s.stat("k").unwrap().labels.get(max_size).cloned();
    assert_eq!(
        stored().as_deref(),
        Some("1048576"),
        "the label stays on the snapshot"
    );
    let err =
        f.s.update(&InfoUpdate {
            name: "k".into(),
            labels: labels(&[(max_size, "-5")]),
            paths: vec![format!("labels.{max_size}")],
        })
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        stored().as_deref(),
        Some("1048576"),
        "a refused Update changed nothing"
    );
}

#[test]
fn update_follows_containerd_field_paths() {
    let f = fixture();
    f.s.prepare("k", "", &labels(&[("a", "1"), ("b", "2")]))
        .unwrap();
    let created = f.s.stat("k").unwrap();

    let info =
        f.s.update(&InfoUpdate {
            name: "k".into(),
            labels: labels(&[("b", "20"), ("c", "30"), ("ignored", "x")]),
            paths: vec!["labels.b".into(), "labels.c".into()],
        })
        .unwrap();
    assert_eq!(info.labels, labels(&[("a", "1"), ("b", "20"), ("c", "30")]));
    assert!(info.updated >= created.updated);
    assert_eq!(info.created, created.created);

    let info =
        f.s.update(&InfoUpdate {
            name: "k".into(),
            labels: Labels::new(),
            paths: vec!["labels.a".into()],
        })
        .unwrap();
    assert_eq!(
        info.labels,
        labels(&[("b", "20"), ("c", "30")]),
        "absent value deletes"
    );

    let info =
        f.s.update(&InfoUpdate {
            name: "k".into(),
            labels: labels(&[("only", "this")]),
            paths: vec![],
        })
        .unwrap();
    assert_eq!(
        info.labels,
        labels(&[("only", "this")]),
        "no mask replaces all"
    );
    assert_eq!(
        code(f.s.update(&InfoUpdate {
            name: "missing".into(),
            ..Default::default()
        })),
        Code::NotFound
    );
}

#[test]
fn committed_usage_is_cached_active_usage_is_live() {
    let f = fixture();
    f.s.prepare("a", "", &none()).unwrap();
    let active = f.s.usage("a").unwrap();
    assert_eq!(active.inodes, 1, "just the layer root");
    let upper = upper_of(&f, "a");
    fs::write(upper.join("file"), vec![7u8; 100_000]).unwrap();
    let grown = f.s.usage("a").unwrap();
    assert_eq!(grown.inodes, 2);
    assert!(grown.bytes >= 100_000);

    f.s.commit("c", "a", "", &none()).unwrap();
    let committed = f.s.usage("c").unwrap();
    assert_eq!(committed, grown);
    // Nothing writes to a committed layer; if something did, Usage still answers
    // from the cache instead of walking the layer.
    fs::write(upper.join("other"), vec![7u8; 100_000]).unwrap();
    assert_eq!(f.s.usage("c").unwrap(), committed);
    assert_eq!(f.s.committed_usage().unwrap(), committed);
    f.s.view("v", "c", &none()).unwrap();
    assert_eq!(f.s.usage("v").unwrap(), Usage::default());
}

/// The layer directory of an active snapshot: its overlay's upper directory.
fn upper_of(f: &Fixture, key: &str) -> PathBuf {
    let mounts = f.s.mounts(key).unwrap();
    mounts[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{key} has no upper directory: {mounts:?}"))
}

/// The lower directories a snapshot's overlay stacks, nearest first, each
/// resolved to the layer it names.
fn lowers_of(f: &Fixture, key: &str) -> Vec<PathBuf> {
    let mounts = f.s.mounts(key).unwrap();
    mounts[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap_or_else(|| panic!("{key} has no lower directories: {mounts:?}"))
        .split(':')
        .map(|l| fs::canonicalize(l).unwrap())
        .collect()
}

#[test]
fn keys_never_become_paths() {
    let f = fixture();
    for key in ["../../../../tmp/escape", "/etc/passwd", "a/b/c", ".."] {
        f.s.prepare(key, "", &none()).unwrap();
        let upper = upper_of(&f, key);
        assert!(upper.starts_with(f.root.join("snapshots")), "{upper:?}");
        assert!(!upper.to_string_lossy().contains(".."));
    }
    assert!(!Path::new("/tmp/escape").exists());
}

#[test]
fn state_survives_reopen_and_reopen_cleans_debris() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    {
        let s = open_at(&root, Arc::default());
        s.prepare("a", "", &none()).unwrap();
        s.commit("c", "a", "", &labels(&[("k", "v")])).unwrap();
        s.prepare("b", "c", &none()).unwrap();
    }
    // What a crash between publishing storage and committing metadata leaves.
    fs::create_dir_all(root.join("snapshots/999/fs")).unwrap();
    fs::create_dir_all(root.join("staging/new-dead/fs")).unwrap();
    let s = open_at(&root, Arc::default());
    assert_eq!(s.stat("c").unwrap().labels, labels(&[("k", "v")]));
    assert_eq!(s.stat("b").unwrap().parent.as_deref(), Some("c"));
    assert!(!root.join("snapshots/999").exists());
    assert!(!root.join("staging/new-dead").exists());
    assert_eq!(s.cleanup().unwrap(), 0, "nothing left to clean");
}

#[test]
fn a_root_is_bound_to_its_backend() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    drop(open_at(&root, Arc::default()));
    let other = backend_at(&root, Arc::default(), Some("devmapper"));
    let err = Snapshotter::open(&root, other).unwrap_err();
    assert!(err.to_string().contains("backend"), "{err}");
}

#[test]
fn corrupt_metadata_is_refused_not_reset() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    {
        let s = open_at(&root, Arc::default());
        s.prepare("a", "", &none()).unwrap();
        s.close().unwrap();
    }
    let db = root.join("metadata.db");
    let mut bytes = fs::read(&db).unwrap();
    bytes[..16].copy_from_slice(b"not a database!!");
    fs::write(&db, &bytes).unwrap();
    let inner = OverlayBackend::open(&OverlayOptions {
        root: root.clone(),
        remap_ids: false,
        size_limits: Default::default(),
    })
    .unwrap();
    let err = Snapshotter::open(&root, Arc::new(inner)).unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert_eq!(
        fs::read(&db).unwrap(),
        bytes,
        "the evidence is left as it was"
    );

    let truncated = &bytes[..bytes.len() / 2];
    fs::write(&db, truncated).unwrap();
    let inner = OverlayBackend::open(&OverlayOptions {
        root: root.clone(),
        remap_ids: false,
        size_limits: Default::default(),
    })
    .unwrap();
    assert!(Snapshotter::open(&root, Arc::new(inner)).is_err());
}

#[test]
fn chains_deeper_than_the_kernel_allows_are_refused() {
    let f = fixture();
    let mut parent = String::new();
    for i in 0..=rustlayer_snapshotter::MAX_CHAIN_DEPTH {
        let key = format!("a{i}");
        f.s.prepare(&key, &parent, &none()).unwrap();
        parent = format!("c{i}");
        f.s.commit(&parent, &key, "", &none()).unwrap();
    }
    assert_eq!(
        code(f.s.prepare("too-deep", &parent, &none())),
        Code::FailedPrecondition
    );
}

fn id_of(f: &Fixture, key: &str) -> u64 {
    let upper = upper_of(f, key);
    let dir = upper
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    dir.parse().unwrap()
}

#[test]
fn a_removed_snapshots_id_is_reused_only_after_cleanup_confirms_it_empty() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let faults = Arc::new(Faults::default());
    let mut f = Fixture {
        s: open_at(&root, Arc::clone(&faults)),
        _dir: dir,
        root: root.clone(),
        faults: Arc::clone(&faults),
    };
    f.s.prepare("a", "", &none()).unwrap();
    f.s.prepare("keep", "", &none()).unwrap();
    let (a, keep) = (id_of(&f, "a"), id_of(&f, "keep"));
    assert_eq!((a, keep), (1, 2), "lowest free ids first");
    f.s.remove("a").unwrap();
    f.s.prepare("b", "", &none()).unwrap();
    assert_ne!(
        id_of(&f, "b"),
        a,
        "a removed id stays reserved until Cleanup"
    );

    faults.suspects.lock().unwrap().clear();
    drop(std::mem::replace(
        &mut f.s,
        open_at(&root, Arc::clone(&faults)),
    ));
    let suspects = faults.suspects.lock().unwrap().clone();
    assert!(suspects.contains(&SnapshotId::new(a)), "{suspects:?}");
    f.s.prepare("c", "", &none()).unwrap();
    assert_eq!(id_of(&f, "c"), a, "confirmed empty, the id is free again");
    assert_eq!(f.s.stat("keep").unwrap().name, "keep");
}

/// Reservations search on from the last id handed out instead of reading every id in
/// use; an id Cleanup frees must still be found by the next search.
#[test]
fn an_id_cleanup_frees_is_handed_out_again_without_a_restart() {
    let f = fixture();
    // More than one reservation batch, so the next Prepare reserves afresh.
    let names: Vec<String> = (0..40).map(|n| format!("s{n}")).collect();
    for name in &names {
        f.s.prepare(name, "", &none()).unwrap();
    }
    let ids: Vec<u64> = names.iter().map(|name| id_of(&f, name)).collect();
    assert_eq!(ids, (1..=40).collect::<Vec<_>>(), "lowest free ids first");
    f.s.remove("s3").unwrap();
    f.s.cleanup().unwrap();
    let mut reused = None;
    for n in 0..20 {
        let name = format!("new{n}");
        f.s.prepare(&name, "", &none()).unwrap();
        if id_of(&f, &name) == 4 {
            reused = Some(name);
            break;
        }
    }
    assert!(
        reused.is_some(),
        "id 4, freed by Cleanup, was never handed out again"
    );
}

/// Storage work runs outside the write lock, so a Remove can take the snapshot it
/// works on away, and another request can make a new snapshot under the same name
/// before the failure is noticed. The answer must still be containerd's NotFound.
#[test]
fn a_name_removed_and_made_again_mid_request_is_not_found_not_an_io_error() {
    let f = fixture();
    let remake = |name: &str| {
        f.s.prepare("remake", "", &none()).unwrap();
        f.s.commit(name, "remake", "", &none()).unwrap();
    };
    remake("base");

    let (arrival, release) = f.faults.arm_gate();
    std::thread::scope(|scope| {
        let child = scope.spawn(|| f.s.prepare("child", "base", &none()));
        arrival.recv().unwrap();
        f.s.remove("base").unwrap();
        remake("base");
        release.send(()).unwrap();
        assert_eq!(code(child.join().unwrap()), Code::NotFound);
    });
    assert_eq!(code(f.s.stat("child")), Code::NotFound, "nothing half-made");

    f.s.prepare("active", "", &none()).unwrap();
    let (arrival, release) = f.faults.arm_gate();
    std::thread::scope(|scope| {
        let commit = scope.spawn(|| f.s.commit("layer", "active", "", &none()));
        arrival.recv().unwrap();
        f.s.remove("active").unwrap();
        f.s.prepare("active", "", &none()).unwrap();
        release.send(()).unwrap();
        assert_eq!(code(commit.join().unwrap()), Code::NotFound);
    });
    assert_eq!(code(f.s.stat("layer")), Code::NotFound, "nothing committed");
    assert_eq!(f.s.stat("active").unwrap().kind, Kind::Active);
}

/// containerd 2.2's parallel unpack: each layer prepared without a parent, then
/// committed onto the layer below with Commit's `parent`.
#[test]
fn commit_with_a_parent_rebases_a_layer_prepared_without_one() {
    let f = fixture();
    chain(&f);
    let below = lowers_of(&f, "top");
    f.s.prepare("extract-2", "", &none()).unwrap();
    let layer = upper_of(&f, "extract-2");
    assert_eq!(lowers_of(&f, "extract-2"), [f.root.join("empty")]);
    f.s.commit("layer-2", "extract-2", "mid", &labels(&[("l", "2")]))
        .unwrap();

    let info = f.s.stat("layer-2").unwrap();
    assert_eq!(info.kind, Kind::Committed);
    assert_eq!(info.parent.as_deref(), Some("mid"));
    assert_eq!(info.labels, labels(&[("l", "2")]));
    f.s.prepare("container", "layer-2", &none()).unwrap();
    assert_eq!(
        lowers_of(&f, "container"),
        [
            fs::canonicalize(layer).unwrap(),
            below[0].clone(),
            below[1].clone()
        ],
        "the rebased layer stacks on its new parent's whole chain"
    );
    assert_eq!(
        code(f.s.remove("mid")),
        Code::FailedPrecondition,
        "the new parent has a child now"
    );
    let mut children = Vec::new();
    f.s.list(&Filters::parse(&["parent==mid"]).unwrap(), |i| {
        children.push(i.name)
    })
    .unwrap();
    children.sort();
    assert_eq!(children, ["layer-2", "top"]);

    // A snapshot committed with the parent it already has, or with none given,
    // keeps that parent.
    f.s.prepare("on-base", "base", &none()).unwrap();
    f.s.commit("same", "on-base", "base", &none()).unwrap();
    assert_eq!(f.s.stat("same").unwrap().parent.as_deref(), Some("base"));
    f.s.prepare("plain", "base", &none()).unwrap();
    f.s.commit("kept", "plain", "", &none()).unwrap();
    assert_eq!(f.s.stat("kept").unwrap().parent.as_deref(), Some("base"));
}

#[test]
fn rebase_refusals_carry_containerds_codes_and_change_nothing() {
    let f = fixture();
    chain(&f);
    f.s.view("v", "mid", &none()).unwrap();
    f.s.prepare("loose", "", &none()).unwrap();
    f.s.prepare("on-base", "base", &none()).unwrap();
    let before = state(&f);
    let refusals = [
        (
            "another parent than the one prepared on",
            f.s.commit("c", "on-base", "mid", &none()),
            Code::InvalidArgument,
        ),
        (
            "another parent, even a missing one",
            f.s.commit("c", "on-base", "missing", &none()),
            Code::InvalidArgument,
        ),
        (
            "a missing parent",
            f.s.commit("c", "loose", "missing", &none()),
            Code::NotFound,
        ),
        (
            "an active parent",
            f.s.commit("c", "loose", "top", &none()),
            Code::FailedPrecondition,
        ),
        (
            "a view as parent",
            f.s.commit("c", "loose", "v", &none()),
            Code::FailedPrecondition,
        ),
        (
            "itself by key",
            f.s.commit("c", "loose", "loose", &none()),
            Code::NotFound,
        ),
        (
            "itself by its new name",
            f.s.commit("c", "loose", "c", &none()),
            Code::NotFound,
        ),
        (
            "a parent with a NUL",
            f.s.commit("c", "loose", "mi\0d", &none()),
            Code::InvalidArgument,
        ),
        (
            "onto a name that exists",
            f.s.commit("mid", "loose", "base", &none()),
            Code::AlreadyExists,
        ),
        (
            "a view committed onto a parent",
            f.s.commit("c", "v", "base", &none()),
            Code::FailedPrecondition,
        ),
    ];
    for (what, result, expected) in refusals {
        assert_eq!(code(result), expected, "{what}");
        assert_eq!(state(&f), before, "{what} changed state");
    }
    f.s.commit("c", "loose", "mid", &none()).unwrap();
}

#[test]
fn a_backend_that_cannot_rebase_refuses_it_and_changes_nothing() {
    let f = fixture();
    chain(&f);
    f.faults.no_rebase.store(true, Ordering::SeqCst);
    f.s.prepare("loose", "", &none()).unwrap();
    f.s.prepare("on-base", "base", &none()).unwrap();
    let before = state(&f);
    assert_eq!(
        code(f.s.commit("c", "loose", "mid", &none())),
        Code::Unimplemented
    );
    assert_eq!(
        code(f.s.commit("c", "loose", "missing", &none())),
        Code::Unimplemented,
        "no parent could make it work"
    );
    assert_eq!(state(&f), before);
    assert_eq!(f.s.stat("loose").unwrap().kind, Kind::Active);
    // Nothing else about Commit changes for such a backend.
    f.s.commit("same", "on-base", "base", &none()).unwrap();
    f.s.commit("bottom", "loose", "", &none()).unwrap();
    assert_eq!(f.s.stat("bottom").unwrap().parent, None);
}

#[test]
fn a_rebase_deeper_than_the_kernel_allows_is_refused() {
    let f = fixture();
    let mut parent = String::new();
    for i in 0..rustlayer_snapshotter::MAX_CHAIN_DEPTH {
        let key = format!("a{i}");
        f.s.prepare(&key, &parent, &none()).unwrap();
        parent = format!("c{i}");
        f.s.commit(&parent, &key, "", &none()).unwrap();
    }
    f.s.prepare("fits", "", &none()).unwrap();
    f.s.commit("top", "fits", &parent, &none()).unwrap();
    f.s.prepare("too-deep", "", &none()).unwrap();
    assert_eq!(
        code(f.s.commit("deeper", "too-deep", "top", &none())),
        Code::FailedPrecondition
    );
    assert_eq!(f.s.stat("too-deep").unwrap().kind, Kind::Active);
}

/// The parent is checked again in the transaction that commits: removed (and even
/// made again under its name) while the layer was sealed, it is not found, and the
/// layer stays the active snapshot it was.
#[test]
fn a_parent_removed_while_the_layer_is_sealed_is_not_found() {
    let f = fixture();
    f.s.prepare("p", "", &none()).unwrap();
    f.s.commit("parent", "p", "", &none()).unwrap();
    f.s.prepare("loose", "", &none()).unwrap();
    let (arrival, release) = f.faults.arm_gate();
    std::thread::scope(|scope| {
        let commit = scope.spawn(|| f.s.commit("layer", "loose", "parent", &none()));
        arrival.recv().unwrap();
        f.s.remove("parent").unwrap();
        f.s.prepare("p", "", &none()).unwrap();
        f.s.commit("parent", "p", "", &none()).unwrap();
        release.send(()).unwrap();
        assert_eq!(code(commit.join().unwrap()), Code::NotFound);
    });
    assert_eq!(code(f.s.stat("layer")), Code::NotFound, "nothing committed");
    let loose = f.s.stat("loose").unwrap();
    assert_eq!((loose.kind, loose.parent), (Kind::Active, None));
    f.s.commit("layer", "loose", "parent", &none()).unwrap();
    assert_eq!(f.s.stat("layer").unwrap().parent.as_deref(), Some("parent"));
}

#[test]
fn a_failed_seal_leaves_a_rebase_undone() {
    let f = fixture();
    chain(&f);
    f.s.prepare("loose", "", &none()).unwrap();
    let before = state(&f);
    f.faults.fail_seal.store(true, Ordering::SeqCst);
    assert_eq!(
        code(f.s.commit("layer", "loose", "mid", &none())),
        Code::ResourceExhausted
    );
    f.faults.fail_seal.store(false, Ordering::SeqCst);
    assert_eq!(state(&f), before);
    f.s.commit("layer", "loose", "mid", &none()).unwrap();
}

/// What a crash leaves is what the metadata file says: reopened after a rebase, the
/// layer is committed on its parent, with the parent's whole chain under it.
#[test]
fn a_rebase_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    {
        let s = open_at(&root, Arc::default());
        s.prepare("a", "", &none()).unwrap();
        s.commit("base", "a", "", &none()).unwrap();
        s.prepare("b", "", &none()).unwrap();
        s.commit("layer", "b", "base", &none()).unwrap();
    }
    let s = open_at(&root, Arc::default());
    assert_eq!(s.stat("layer").unwrap().parent.as_deref(), Some("base"));
    s.prepare("c", "layer", &none()).unwrap();
    let mounts = s.mounts("c").unwrap();
    let lowers = mounts[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap();
    assert_eq!(lowers.split(':').count(), 2, "{lowers}");
}
