//! SIGKILL at random instants while clients prepare, write, commit, view and remove.
//! On overlay, half the layers are made as containerd 2.2's parallel unpack makes
//! them: prepared without a parent, committed onto it (a rebase). On devmapper, a
//! third of the layers are prepared with a `max-size` above the base, so kills
//! land while filesystems grow, and every grown snapshot (and every snapshot of a
//! grown layer) must mount at its size after each restart.
//! After every restart the daemon must hold exactly what it acknowledged: every
//! acknowledged commit committed with its parent, every acknowledged removal gone,
//! an operation whose answer never came either wholly done or not at all, every
//! active snapshot and view mountable with its layers' files, and storage matching
//! the metadata after Cleanup.
//!
//! `RUSTLAYER_TORTURE_KILLS` (default 50) sets the number of kills,
//! `RUSTLAYER_TORTURE_SEED` the random seed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use rustlayer_api::snapshots as pb;
use rustlayer_e2e::support::{
    Rng, env_or, require_device_mapper, storage_matches_metadata, thin_pool_matches_metadata,
};
use rustlayer_e2e::{Client, Daemon, Labels, Mounted, require_root};
use rustlayer_mount::{LinuxProjectQuota, ProjectQuota};
use tonic::Code;

const WORKERS: usize = 4;
/// Each worker's chain of committed layers grows up to this depth, then shrinks.
const MAX_CHAIN: usize = 6;
/// A kill comes after 2 to 15 acknowledged operations (so every round does work, on
/// a fast machine or an emulated one), then at a random instant up to 30 ms later:
/// inside a request, between two, or in the middle of a mount.
const MIN_OPS_BEFORE_KILL: usize = 2;
const MAX_OPS_BEFORE_KILL: usize = 15;
const MAX_KILL_JITTER_US: usize = 30_000;
/// The devmapper daemon's base filesystem, and the `max-size` a grown layer asks.
const DEVMAPPER_BASE_BYTES: u64 = 64 << 20;
const GROWN_BYTES: u64 = 256 << 20;
const GROWN_PERCENT: u64 = 33;

// ---------------------------------------------------------------------------------
// The model: what the daemon has acknowledged.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Active,
    View,
    Committed,
}

impl Kind {
    fn pb(self) -> i32 {
        match self {
            Kind::Active => pb::Kind::Active as i32,
            Kind::View => pb::Kind::View as i32,
            Kind::Committed => pb::Kind::Committed as i32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Snap {
    kind: Kind,
    parent: String,
    /// The file written into this snapshot's own layer, named as its content.
    file: Option<String>,
    /// The size its filesystem was grown to, by its own `max-size` or its
    /// parent's; `None` at the base size.
    bytes: Option<u64>,
}

/// A request sent whose answer has not arrived (yet, or ever: the daemon was killed).
#[derive(Debug, Clone)]
enum Pending {
    Create {
        key: String,
        parent: String,
        kind: Kind,
        bytes: Option<u64>,
    },
    Commit {
        name: String,
        key: String,
        /// The parent a rebase puts the layer on; `None` keeps its own.
        onto: Option<String>,
    },
    Remove {
        key: String,
    },
}

#[derive(Debug)]
struct Worker {
    /// Committed layers, each the parent of the next.
    chain: Vec<String>,
    /// Actives and views to remove before anything else.
    extras: Vec<String>,
    n: u64,
    rng: Rng,
    pending: Option<Pending>,
}

#[derive(Debug, Default)]
struct Model {
    present: BTreeMap<String, Snap>,
    workers: Vec<Worker>,
    acked_commits: u64,
    /// Of which committed onto a parent the layer was not prepared on.
    acked_rebases: u64,
    acked_removes: u64,
    /// Prepares acknowledged with a `max-size` above their parent's size.
    acked_grows: u64,
    ops: u64,
    /// Ambiguous outcomes resolved after a restart, by how they turned out.
    resolved: BTreeMap<String, u64>,
    /// What the clients saw when the daemon died under them.
    kill_errors: BTreeSet<String>,
}

struct Round {
    socket: PathBuf,
    model: Arc<Mutex<Model>>,
    /// Operations acknowledged in this round.
    acked: tokio::sync::watch::Sender<usize>,
    killed: Arc<AtomicBool>,
    mounted: Arc<AtomicU64>,
    /// Whether the backend can commit a layer onto a parent it was not prepared on.
    rebase: bool,
    /// Whether some layers ask for a filesystem larger than the base (devmapper).
    grow: bool,
}

enum Step {
    Remove(String),
    Layer { parent: String, name: String },
}

/// Sends one request with its intent recorded first. `None` means the answer never
/// came because the daemon was killed; the worker then stops for this round.
async fn rpc<T>(
    round: &Round,
    w: usize,
    pending: Pending,
    fut: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Option<T> {
    round.model.lock().unwrap().workers[w].pending = Some(pending.clone());
    match fut.await {
        Ok(value) => {
            let mut m = round.model.lock().unwrap();
            m.workers[w].pending = None;
            m.ops += 1;
            round.acked.send_modify(|n| *n += 1);
            Some(value)
        }
        Err(status) => {
            // Answers the daemon gives on purpose mean the model is wrong or the
            // daemon is: both are failures.
            assert!(
                matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
                ),
                "worker {w}: {pending:?} refused: {status:?}"
            );
            // A transport failure must be the kill's doing.
            let waited = tokio::time::timeout(Duration::from_secs(5), async {
                while !round.killed.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
            assert!(
                waited.is_ok(),
                "worker {w}: {pending:?} failed while the daemon was alive: {status:?}"
            );
            if status.code() == Code::Internal {
                // The daemon's own Internal errors name a path or the metadata; a
                // dropped connection speaks of the transport.
                let msg = status.message().to_lowercase();
                assert!(
                    [
                        "transport",
                        "connection",
                        "h2",
                        "broken pipe",
                        "stream",
                        "reset"
                    ]
                    .iter()
                    .any(|w| msg.contains(w)),
                    "worker {w}: {pending:?}: Internal that is not a dropped connection: {status:?}"
                );
            }
            round.model.lock().unwrap().kill_errors.insert(format!(
                "{:?}: {}",
                status.code(),
                status.message()
            ));
            None
        }
    }
}

/// Mounts `mounts` and checks that every file of `layers` is there with its content,
/// and that the filesystem was grown to `bytes` if given; writes `write` if given.
/// Runs on a blocking thread: mount(2) and file I/O.
async fn mount_check_write(
    mounts: Vec<rustlayer_core::Mount>,
    layers: Vec<String>,
    bytes: Option<u64>,
    write: Option<String>,
) {
    tokio::task::spawn_blocking(move || {
        let m = Mounted::new(&mounts);
        if let Some(bytes) = bytes {
            let stat = rustix::fs::statvfs(m.path()).expect("statvfs of the mount");
            let size = stat.f_blocks * stat.f_frsize;
            // Its own metadata takes a little of a filesystem, never a quarter;
            // one at the base size is a quarter of this.
            assert!(
                size <= bytes && size >= bytes / 4 * 3,
                "a filesystem of {size} bytes where {bytes} were grown (mounts {mounts:?})"
            );
        }
        for file in &layers {
            let content = fs::read_to_string(m.path().join(file))
                .unwrap_or_else(|e| panic!("layer file {file}: {e} (mounts {mounts:?})"));
            assert_eq!(&content, file);
        }
        if let Some(file) = write {
            fs::write(m.path().join(&file), &file).unwrap();
        }
    })
    .await
    .expect("mount task");
}

/// Runs until the daemon dies under it (`None`).
async fn worker(round: Arc<Round>, w: usize) -> Option<()> {
    let Ok(raw) = rustlayer_server::connect(&round.socket).await else {
        return None; // killed before we got in
    };
    let c = Client { raw };
    loop {
        let step = {
            let mut m = round.model.lock().unwrap();
            let me = &mut m.workers[w];
            me.n += 1;
            if let Some(key) = me.extras.last() {
                Step::Remove(key.clone())
            } else if !me.chain.is_empty() && (me.chain.len() >= MAX_CHAIN || me.rng.below(4) == 0)
            {
                Step::Remove(me.chain.last().unwrap().clone())
            } else {
                Step::Layer {
                    parent: me.chain.last().cloned().unwrap_or_default(),
                    name: format!("w{w}-{}", me.n),
                }
            }
        };
        match step {
            Step::Remove(key) => {
                let pending = Pending::Remove { key: key.clone() };
                rpc(&round, w, pending, c.remove(&key)).await?;
                let mut m = round.model.lock().unwrap();
                m.present.remove(&key);
                m.acked_removes += 1;
                let me = &mut m.workers[w];
                me.extras.retain(|k| *k != key);
                me.chain.retain(|k| *k != key);
            }
            Step::Layer { parent, name } => {
                let key = format!("{name}-active");
                let onto = {
                    let mut m = round.model.lock().unwrap();
                    let rebase = round.rebase && !parent.is_empty() && m.workers[w].rng.chance(50);
                    rebase.then(|| parent.clone())
                };
                let prepared_on = if onto.is_some() {
                    String::new()
                } else {
                    parent.clone()
                };
                let (labels, bytes, grows) = {
                    let mut m = round.model.lock().unwrap();
                    let inherited = m.present.get(&prepared_on).and_then(|p| p.bytes);
                    if round.grow && m.workers[w].rng.chance(GROWN_PERCENT) {
                        let labels = [(
                            rustlayer_core::MAX_SIZE_LABEL.to_owned(),
                            GROWN_BYTES.to_string(),
                        )]
                        .into();
                        (labels, Some(GROWN_BYTES), inherited.is_none())
                    } else {
                        (Labels::new(), inherited, false)
                    }
                };
                let pending = Pending::Create {
                    key: key.clone(),
                    parent: prepared_on.clone(),
                    kind: Kind::Active,
                    bytes,
                };
                let mounts = rpc(
                    &round,
                    w,
                    pending,
                    c.prepare_labeled(&key, &prepared_on, labels),
                )
                .await?;
                let layers = {
                    let mut m = round.model.lock().unwrap();
                    m.acked_grows += u64::from(grows);
                    m.present.insert(
                        key.clone(),
                        Snap {
                            kind: Kind::Active,
                            parent: prepared_on.clone(),
                            file: None,
                            bytes,
                        },
                    );
                    m.workers[w].extras.push(key.clone());
                    if onto.is_some() {
                        Vec::new()
                    } else {
                        m.workers[w].chain.clone()
                    }
                };
                mount_check_write(mounts, layers.clone(), bytes, Some(name.clone())).await;
                round.mounted.fetch_add(1, Ordering::Relaxed);
                round
                    .model
                    .lock()
                    .unwrap()
                    .present
                    .get_mut(&key)
                    .unwrap()
                    .file = Some(name.clone());

                let pending = Pending::Commit {
                    name: name.clone(),
                    key: key.clone(),
                    onto: onto.clone(),
                };
                let onto_parent = onto.clone().unwrap_or_default();
                rpc(&round, w, pending, c.commit_onto(&name, &key, &onto_parent)).await?;
                let view_too = {
                    let mut m = round.model.lock().unwrap();
                    let mut snap = m.present.remove(&key).unwrap();
                    snap.kind = Kind::Committed;
                    if let Some(onto) = onto {
                        snap.parent = onto;
                        m.acked_rebases += 1;
                    }
                    m.present.insert(name.clone(), snap);
                    m.acked_commits += 1;
                    let me = &mut m.workers[w];
                    me.extras.retain(|k| *k != key);
                    me.chain.push(name.clone());
                    me.rng.below(2) == 0
                };
                if view_too {
                    let view = format!("{name}-view");
                    let pending = Pending::Create {
                        key: view.clone(),
                        parent: name.clone(),
                        kind: Kind::View,
                        bytes,
                    };
                    let mounts = rpc(&round, w, pending, c.view(&view, &name)).await?;
                    let layers = {
                        let mut m = round.model.lock().unwrap();
                        m.present.insert(
                            view.clone(),
                            Snap {
                                kind: Kind::View,
                                parent: name.clone(),
                                file: None,
                                bytes,
                            },
                        );
                        m.workers[w].extras.push(view.clone());
                        m.workers[w].chain.clone()
                    };
                    mount_check_write(mounts, layers, bytes, None).await;
                    round.mounted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// After a restart.

async fn stat(c: &Client, key: &str) -> Option<pb::Info> {
    match c.stat(key).await {
        Ok(info) => Some(info),
        Err(s) if s.code() == Code::NotFound => None,
        Err(s) => panic!("Stat {key:?} after restart: {s:?}"),
    }
}

/// Settles every request whose answer was lost: the restarted daemon must show it
/// either done or not done, never half done.
async fn resolve(c: &Client, model: &Mutex<Model>) {
    let pendings: Vec<(usize, Pending)> = {
        let mut m = model.lock().unwrap();
        m.workers
            .iter_mut()
            .enumerate()
            .filter_map(|(w, me)| me.pending.take().map(|p| (w, p)))
            .collect()
    };
    for (w, pending) in pendings {
        match pending {
            Pending::Create {
                key,
                parent,
                kind,
                bytes,
            } => {
                let found = stat(c, &key).await;
                let mut m = model.lock().unwrap();
                let outcome = match found {
                    Some(info) => {
                        assert_eq!(info.kind, kind.pb(), "{key}: kind after a lost create");
                        assert_eq!(info.parent, parent, "{key}: parent after a lost create");
                        m.present.insert(
                            key.clone(),
                            Snap {
                                kind,
                                parent,
                                file: None,
                                bytes,
                            },
                        );
                        m.workers[w].extras.push(key);
                        "create done"
                    }
                    None => "create not done",
                };
                *m.resolved.entry(outcome.into()).or_default() += 1;
            }
            Pending::Commit { name, key, onto } => {
                let as_name = stat(c, &name).await;
                let as_key = stat(c, &key).await;
                let mut m = model.lock().unwrap();
                let before = m
                    .present
                    .get(&key)
                    .cloned()
                    .expect("committing a known key");
                let outcome = match (as_key, as_name) {
                    (Some(k), None) => {
                        assert_eq!(k.kind, Kind::Active.pb(), "{key}: a lost commit not done");
                        assert_eq!(k.parent, before.parent);
                        "commit not done"
                    }
                    (None, Some(n)) => {
                        assert_eq!(n.kind, Kind::Committed.pb(), "{name}: a lost commit done");
                        let parent = onto.unwrap_or(before.parent);
                        assert_eq!(n.parent, parent, "{name}: parent after commit");
                        let mut snap = m.present.remove(&key).unwrap();
                        snap.kind = Kind::Committed;
                        snap.parent = parent;
                        m.present.insert(name.clone(), snap);
                        let me = &mut m.workers[w];
                        me.extras.retain(|k| *k != key);
                        me.chain.push(name);
                        "commit done"
                    }
                    (k, n) => panic!(
                        "commit of {key:?} as {name:?} half done after a crash: key {k:?}, name {n:?}"
                    ),
                };
                *m.resolved.entry(outcome.into()).or_default() += 1;
            }
            Pending::Remove { key } => {
                let found = stat(c, &key).await;
                let mut m = model.lock().unwrap();
                let before = m.present.get(&key).cloned().expect("removing a known key");
                let outcome = match found {
                    Some(info) => {
                        assert_eq!(info.kind, before.kind.pb(), "{key}: a lost remove not done");
                        assert_eq!(info.parent, before.parent);
                        "remove not done"
                    }
                    None => {
                        m.present.remove(&key);
                        let me = &mut m.workers[w];
                        me.extras.retain(|k| *k != key);
                        me.chain.retain(|k| *k != key);
                        "remove done"
                    }
                };
                *m.resolved.entry(outcome.into()).or_default() += 1;
            }
        }
    }
}

/// The files a snapshot's mount must show: its ancestors', and its own if written.
fn layer_files(present: &BTreeMap<String, Snap>, key: &str) -> Vec<String> {
    let mut files = Vec::new();
    let mut at = present.get(key);
    if let Some(snap) = at
        && snap.kind == Kind::View
    {
        at = present.get(&snap.parent);
    }
    while let Some(snap) = at {
        files.extend(snap.file.clone());
        at = present.get(&snap.parent);
    }
    files
}

#[derive(Debug, Clone, Copy)]
enum Storage {
    Overlay,
    /// Overlay on a root with project quotas and a default size: every active
    /// snapshot is a limited project.
    OverlayWithQuotas,
    Devmapper,
}

impl Storage {
    fn is_overlay(self) -> bool {
        matches!(self, Storage::Overlay | Storage::OverlayWithQuotas)
    }
}

/// No project limit outlives its snapshot, and no active snapshot lost its limit:
/// every limited project in the snapshot id range names a snapshot directory, and
/// every active snapshot's project is limited. Called after Cleanup.
async fn projects_match_snapshots(
    c: &Client,
    root: &Path,
    present: &BTreeMap<String, Snap>,
    when: &str,
) {
    let limited: BTreeSet<u64> = LinuxProjectQuota
        .projects(root, 1)
        .unwrap_or_else(|e| panic!("{when}: project quotas of {}: {e}", root.display()))
        .into_iter()
        .filter(|(id, usage)| *id < 1 << 24 && !usage.limits.is_none())
        .map(|(id, _)| u64::from(id))
        .collect();
    let dirs: BTreeSet<u64> = fs::read_dir(root.join("snapshots"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse().ok())
        .collect();
    let leaked: Vec<_> = limited.difference(&dirs).collect();
    assert!(
        leaked.is_empty(),
        "{when}: limits of projects no snapshot owns: {leaked:?}"
    );
    for key in present
        .iter()
        .filter(|(_, s)| s.kind == Kind::Active)
        .map(|(k, _)| k)
    {
        let mounts = c
            .mounts(key)
            .await
            .unwrap_or_else(|s| panic!("{when}: Mounts {key}: {s:?}"));
        let id: u64 = mounts[0]
            .options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir="))
            .and_then(|upper| {
                Path::new(upper)
                    .parent()?
                    .file_name()?
                    .to_str()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{when}: no snapshot id in the mounts of {key}"));
        assert!(
            limited.contains(&id),
            "{when}: active {key} (project {id}) lost its limit"
        );
    }
}

/// Everything the daemon shows agrees with what it acknowledged. Returns how many
/// acknowledged committed snapshots were checked.
async fn check(c: &Client, root: &Path, storage: Storage, model: &Mutex<Model>, when: &str) -> u64 {
    resolve(c, model).await;
    let present = model.lock().unwrap().present.clone();

    // List shows exactly the model: acknowledged creations present with their kind
    // and parent, acknowledged removals gone.
    let listed: BTreeMap<String, (i32, String)> = c
        .list(&[])
        .await
        .expect("list")
        .into_iter()
        .map(|i| (i.name, (i.kind, i.parent)))
        .collect();
    let expected: BTreeMap<String, (i32, String)> = present
        .iter()
        .map(|(k, s)| (k.clone(), (s.kind.pb(), s.parent.clone())))
        .collect();
    if listed != expected {
        let missing: Vec<_> = expected
            .keys()
            .filter(|k| !listed.contains_key(*k))
            .collect();
        let extra: Vec<_> = listed
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .collect();
        let differ: Vec<_> = expected
            .iter()
            .filter(|(k, v)| listed.get(*k).is_some_and(|l| l != *v))
            .collect();
        panic!(
            "{when}: the daemon lost or invented state: missing {missing:?}, extra {extra:?}, differing {differ:?}"
        );
    }
    for (name, (kind, parent)) in &listed {
        if !parent.is_empty() {
            let p = listed
                .get(parent)
                .unwrap_or_else(|| panic!("{when}: {name} has a missing parent {parent}"));
            assert_eq!(
                p.0,
                Kind::Committed.pb(),
                "{when}: parent of {name} not committed"
            );
        }
        let _ = kind;
    }

    // Every acknowledged commit, one by one.
    let mut checked = 0;
    for (name, snap) in present.iter().filter(|(_, s)| s.kind == Kind::Committed) {
        let info = c
            .stat(name)
            .await
            .unwrap_or_else(|s| panic!("{when}: committed {name} lost: {s:?}"));
        assert_eq!(info.kind, Kind::Committed.pb());
        assert_eq!(info.parent, snap.parent);
        checked += 1;
    }

    // Every active snapshot and view mounts and shows its layers' files.
    for (key, snap) in present.iter().filter(|(_, s)| s.kind != Kind::Committed) {
        let mounts = c
            .mounts(key)
            .await
            .unwrap_or_else(|s| panic!("{when}: Mounts {key}: {s:?}"));
        let files = layer_files(&present, key);
        mount_check_write(mounts, files, snap.bytes, None).await;
    }

    match storage {
        Storage::Overlay => storage_matches_metadata(c, root, when).await,
        Storage::OverlayWithQuotas => {
            storage_matches_metadata(c, root, when).await;
            projects_match_snapshots(c, root, &present, when).await;
        }
        Storage::Devmapper => thin_pool_matches_metadata(c, root, when).await,
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn sigkill_at_random_instants_loses_nothing_acknowledged() {
    require_root();
    torture(Daemon::start(), Storage::Overlay).await;
}

/// The same on dm-thin: a self-managed pool on loop devices that outlives every
/// kill (the kernel keeps the pool and the devices; the restarted daemon finds them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root and device-mapper (dm_thin_pool): the daemon makes a thin pool on loop devices"]
async fn sigkill_at_random_instants_loses_nothing_acknowledged_on_devmapper() {
    require_device_mapper();
    let config = tempfile::NamedTempFile::new().expect("config file");
    // A small base keeps mkfs quick; the pool's files are sparse.
    fs::write(
        config.path(),
        format!(
            "backend = \"devmapper\"\n[devmapper]\npool_data_size = \"2GiB\"\n\
             pool_metadata_size = \"64MiB\"\nbase_image_size = \"{DEVMAPPER_BASE_BYTES}\"\n"
        ),
    )
    .expect("write config");
    let daemon = Daemon::start_with(&["--config", config.path().to_str().unwrap()]);
    torture(daemon, Storage::Devmapper).await;
}

/// The same on a root with project quotas (the VM tier's xfs mounted prjquota, named
/// by `RUSTLAYER_QUOTA_ROOT`) and a default size, so every active snapshot has a
/// limit: after each kill no limit is left on a project no snapshot owns, and no
/// active snapshot has lost its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs project quotas: xfs mounted prjquota at RUSTLAYER_QUOTA_ROOT (the VM tier)"]
async fn sigkill_at_random_instants_leaks_no_project_limit_with_project_quotas() {
    require_root();
    let Some(base) = std::env::var_os("RUSTLAYER_QUOTA_ROOT").map(PathBuf::from) else {
        panic!("RUSTLAYER_QUOTA_ROOT is unset: run this in the VM tier (hack/vm-test.sh)");
    };
    if let Err(err) = LinuxProjectQuota.probe(&base) {
        panic!("{} has no project quotas: {err}", base.display());
    }
    let config = tempfile::NamedTempFile::new().expect("config file");
    fs::write(config.path(), "[overlay]\ndefault_size = \"64MiB\"\n").expect("write config");
    let daemon = Daemon::start_in(&base, &["--config", config.path().to_str().unwrap()]);
    assert!(
        daemon.log().contains("project quotas: on"),
        "{}",
        daemon.log()
    );
    torture(daemon, Storage::OverlayWithQuotas).await;
}

async fn torture(mut daemon: Daemon, storage: Storage) {
    let kills = env_or("RUSTLAYER_TORTURE_KILLS", 50);
    let seed = env_or("RUSTLAYER_TORTURE_SEED", 0x7017_u64);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let root = daemon.root.clone();
    let model = Arc::new(Mutex::new(Model {
        workers: (0..WORKERS)
            .map(|w| Worker {
                chain: Vec::new(),
                extras: Vec::new(),
                n: 0,
                rng: Rng((seed ^ ((w as u64 + 1) << 32)).wrapping_mul(0x2545_f491_4f6c_dd1d) | 1),
                pending: None,
            })
            .collect(),
        ..Model::default()
    }));
    let started = Instant::now();
    let mut commits_checked = 0u64;
    let mut mounted = 0u64;

    for k in 0..kills {
        let round = Arc::new(Round {
            socket: daemon.socket.clone(),
            model: Arc::clone(&model),
            acked: tokio::sync::watch::Sender::new(0),
            killed: Arc::new(AtomicBool::new(false)),
            mounted: Arc::new(AtomicU64::new(0)),
            rebase: storage.is_overlay(),
            grow: matches!(storage, Storage::Devmapper),
        });
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| tokio::spawn(worker(Arc::clone(&round), w)))
            .collect();
        let ops = MIN_OPS_BEFORE_KILL + rng.below(MAX_OPS_BEFORE_KILL - MIN_OPS_BEFORE_KILL + 1);
        let mut acked = round.acked.subscribe();
        tokio::time::timeout(Duration::from_secs(120), acked.wait_for(|n| *n >= ops))
            .await
            .unwrap_or_else(|_| panic!("kill {k}: {ops} operations not acknowledged in 120 s"))
            .expect("round open");
        let jitter = Duration::from_micros(rng.below(MAX_KILL_JITTER_US + 1) as u64);
        tokio::time::sleep(jitter).await;
        let status = tokio::task::block_in_place(|| daemon.stop_with(Signal::KILL));
        assert_eq!(
            status.signal(),
            Some(9),
            "kill {k}: the daemon had already exited with {status}:\n{}",
            daemon.log()
        );
        round.killed.store(true, Ordering::SeqCst);
        for (w, handle) in workers.into_iter().enumerate() {
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .unwrap_or_else(|_| panic!("kill {k}: worker {w} hangs"))
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        }
        mounted += round.mounted.load(Ordering::Relaxed);

        tokio::task::block_in_place(|| daemon.restart());
        let c = daemon.client().await;
        commits_checked += check(
            &c,
            &root,
            storage,
            &model,
            &format!("after kill {k} ({ops} acknowledged + {jitter:?})"),
        )
        .await;
    }

    // A clean stop and start on what the crashes left.
    daemon.stop();
    tokio::task::block_in_place(|| daemon.restart());
    let c = daemon.client().await;
    commits_checked += check(&c, &root, storage, &model, "after a clean restart").await;
    drop(c);
    daemon.stop();
    assert!(!daemon.log().contains("panicked"), "the daemon panicked");

    let m = model.lock().unwrap();
    println!(
        "{storage:?}: kills survived: {kills} in {:.1?} (seed {seed:#x}); operations acknowledged: {}; \
         commits acknowledged: {} ({} rebased), checked {commits_checked} times; removals acknowledged: {}; \
         grown prepares acknowledged: {}; snapshots left: {}; mounts written through: {mounted}; \
         lost answers resolved: {:?}",
        started.elapsed(),
        m.ops,
        m.acked_commits,
        m.acked_rebases,
        m.acked_removes,
        m.acked_grows,
        m.present.len(),
        m.resolved
    );
    println!("errors clients saw at the kills: {:#?}", m.kill_errors);
    assert!(m.acked_commits >= kills, "too little work between kills");
    if matches!(storage, Storage::Devmapper) {
        assert!(
            m.acked_grows * 10 >= m.acked_commits,
            "too few grown prepares: {} for {} commits",
            m.acked_grows,
            m.acked_commits
        );
    }
    if storage.is_overlay() {
        assert!(
            m.acked_rebases * 4 >= m.acked_commits,
            "too few rebases: {} of {} commits",
            m.acked_rebases,
            m.acked_commits
        );
    }
}
