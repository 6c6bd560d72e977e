//! Many clients at once, each on its own connection, racing for the same keys:
//! exactly one wins every race and the others get containerd's codes; a mixed random
//! workload on a small key space neither deadlocks nor leaves half-made storage; the
//! daemon's memory stays bounded.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustlayer_api::snapshots as pb;
use rustlayer_e2e::support::{Rng, code_of, count_entries, env_or, sorted_infos, trash_drains};
use rustlayer_e2e::{Client, Daemon, Labels, Mounted, require_root};
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tonic::Code;

const CLIENTS: usize = 64;
/// No single request may take this long; longer means a deadlock.
const REQUEST_DEADLINE: Duration = Duration::from_secs(20);

/// Resident memory of a process, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn threads(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads")
}

type Tally = BTreeMap<String, usize>;

fn tally(results: &[Result<(), tonic::Status>]) -> Tally {
    let mut t = Tally::new();
    for r in results {
        *t.entry(format!("{:?}", code_of(r))).or_default() += 1;
    }
    t
}

/// Runs `f(i, client_i)` on every client at the same instant (behind a barrier) and
/// returns the results in client order.
async fn race<F, Fut>(clients: &[Client], f: F) -> Vec<Result<(), tonic::Status>>
where
    F: Fn(usize, Client) -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(clients.len()));
    let mut set = JoinSet::new();
    for (i, c) in clients.iter().enumerate() {
        let barrier = Arc::clone(&barrier);
        let fut = f(i, c.clone());
        set.spawn(async move {
            barrier.wait().await;
            (i, tokio::time::timeout(REQUEST_DEADLINE, fut).await)
        });
    }
    let mut out: Vec<Option<Result<(), tonic::Status>>> =
        (0..clients.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, r) = joined.expect("client task");
        out[i] =
            Some(r.unwrap_or_else(|_| panic!("client {i}: no answer in {REQUEST_DEADLINE:?}")));
    }
    out.into_iter().map(Option::unwrap).collect()
}

/// Exactly one Ok; every other answer's code is in `losers`.
fn one_winner(what: &str, results: &[Result<(), tonic::Status>], losers: &[Code]) -> usize {
    let t = tally(results);
    let winners: Vec<usize> = (0..results.len()).filter(|&i| results[i].is_ok()).collect();
    let strays: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|s| !losers.contains(&s.code()))
        .map(|s| format!("{:?}: {}", s.code(), s.message()))
        .collect();
    assert!(
        winners.len() == 1 && strays.is_empty(),
        "{what}: want exactly one Ok and the rest {losers:?}; got {t:?}; unexpected: {strays:#?}"
    );
    winners[0]
}

/// No missing or uncommitted parent; with no request in flight, no staging debris and
/// one storage directory per snapshot (before Cleanup: nothing may need it).
async fn consistent(c: &Client, root: &Path, when: &str) -> Vec<pb::Info> {
    let all = sorted_infos(c).await;
    for info in &all {
        if !info.parent.is_empty() {
            let parent = all
                .iter()
                .find(|p| p.name == info.parent)
                .unwrap_or_else(|| panic!("{when}: {:?} has a missing parent", info.name));
            assert_eq!(
                parent.kind,
                pb::Kind::Committed as i32,
                "{when}: parent of {:?} is not committed",
                info.name
            );
        }
    }
    assert_eq!(
        count_entries(&root.join("staging")),
        0,
        "{when}: staging/ debris"
    );
    assert_eq!(
        count_entries(&root.join("snapshots")),
        all.len(),
        "{when}: snapshots/ must hold one directory per snapshot"
    );
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn racing_clients_get_exactly_one_winner() {
    require_root();
    let rounds = env_or("RUSTLAYER_CONCURRENCY_ROUNDS", 12) as usize;
    let mut daemon = Daemon::start();
    let pid = daemon.pid();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(Client::connect(&daemon.socket).await);
    }
    let c = clients[0].clone();
    let root = daemon.root.clone();
    let started = Instant::now();
    let rss_start = rss_kib(pid);
    let mut rss_rounds = Vec::new();
    let mut parent = String::new();

    for r in 0..rounds {
        // Everyone prepares the same key.
        let key = format!("r{r}/active");
        let p = parent.clone();
        let k = key.clone();
        let res = race(&clients, move |_, c| {
            let (k, p) = (k.clone(), p.clone());
            async move { c.prepare(&k, &p).await.map(|_| ()) }
        })
        .await;
        one_winner("Prepare of one key", &res, &[Code::AlreadyExists]);

        // Everyone commits it under the same name. A loser either finds the key gone
        // (committed: NotFound) or, having passed the first check, the name taken.
        let layer = format!("r{r}/layer");
        let (k, l) = (key.clone(), layer.clone());
        let res = race(&clients, move |_, c| {
            let (k, l) = (k.clone(), l.clone());
            async move { c.commit(&l, &k).await }
        })
        .await;
        one_winner(
            "Commit of one key to one name",
            &res,
            &[Code::NotFound, Code::AlreadyExists],
        );
        assert_eq!(
            c.stat(&layer).await.unwrap().kind,
            pb::Kind::Committed as i32
        );
        assert_eq!(c.stat(&layer).await.unwrap().parent, parent);
        assert_eq!(code_of(&c.stat(&key).await), Code::NotFound);

        // One key, 64 names: one commit wins, the key is gone for the others.
        let x = format!("r{r}/x");
        c.prepare(&x, &layer).await.unwrap();
        let xx = x.clone();
        let res = race(&clients, move |i, c| {
            let x = xx.clone();
            async move { c.commit(&format!("{x}-as-{i}"), &x).await }
        })
        .await;
        let xw = one_winner("Commit of one key to many names", &res, &[Code::NotFound]);
        for i in 0..CLIENTS {
            let want = if i == xw { Code::Ok } else { Code::NotFound };
            assert_eq!(code_of(&c.stat(&format!("{x}-as-{i}")).await), want);
        }

        // 64 keys, one name: one commit wins, the name is taken for the others.
        let l = layer.clone();
        let res = race(&clients, move |i, c| {
            let l = l.clone();
            async move { c.prepare(&format!("r{r}/d{i}"), &l).await.map(|_| ()) }
        })
        .await;
        assert!(
            res.iter().all(Result::is_ok),
            "distinct Prepares: {:?}",
            tally(&res)
        );
        let same = format!("r{r}/same");
        let s = same.clone();
        let res = race(&clients, move |i, c| {
            let s = s.clone();
            async move { c.commit(&s, &format!("r{r}/d{i}")).await }
        })
        .await;
        let w = one_winner(
            "Commit of many keys to one name",
            &res,
            &[Code::AlreadyExists],
        );
        // The losers' actives are intact and removable, concurrently.
        let res = race(&clients, move |i, c| async move {
            c.remove(&format!("r{r}/d{i}")).await
        })
        .await;
        for (i, got) in res.iter().enumerate() {
            let want = if i == w { Code::NotFound } else { Code::Ok };
            assert_eq!(code_of(got), want, "Remove of r{r}/d{i}: {got:?}");
        }

        // Everyone makes the same view, then everyone removes it.
        let view = format!("r{r}/view");
        let (v, l) = (view.clone(), layer.clone());
        let res = race(&clients, move |_, c| {
            let (v, l) = (v.clone(), l.clone());
            async move { c.view(&v, &l).await.map(|_| ()) }
        })
        .await;
        one_winner("View of one key", &res, &[Code::AlreadyExists]);
        let v = view.clone();
        let res = race(&clients, move |_, c| {
            let v = v.clone();
            async move { c.remove(&v).await }
        })
        .await;
        one_winner("Remove of one view", &res, &[Code::NotFound]);

        // Everyone removes the same committed leaves.
        for leaf in [same.clone(), format!("{x}-as-{xw}")] {
            let lf = leaf.clone();
            let res = race(&clients, move |_, c| {
                let lf = lf.clone();
                async move { c.remove(&lf).await }
            })
            .await;
            one_winner("Remove of one committed leaf", &res, &[Code::NotFound]);
        }

        // A committed layer with a child cannot be removed by anyone.
        if !parent.is_empty() {
            let p = parent.clone();
            let res = race(&clients, move |_, c| {
                let p = p.clone();
                async move { c.remove(&p).await }
            })
            .await;
            assert!(
                res.iter().all(|r| code_of(r) == Code::FailedPrecondition),
                "Remove of a parent: {:?}",
                tally(&res)
            );
        }

        let all = consistent(&c, &root, &format!("after round {r}")).await;
        assert_eq!(all.len(), r + 1, "one layer per round remains: {all:#?}");
        parent = layer;
        rss_rounds.push(rss_kib(pid));
    }

    // Tear the chain down from its tip.
    for r in (0..rounds).rev() {
        c.remove(&format!("r{r}/layer")).await.unwrap();
    }
    consistent(&c, &root, "after teardown").await;
    assert!(sorted_infos(&c).await.is_empty());
    c.cleanup().await.unwrap();
    trash_drains(&root).await;

    let rss_end = rss_kib(pid);
    println!(
        "{rounds} rounds of {CLIENTS} racing clients in {:.1?}; RSS {} KiB at start, {:?} KiB per round, {} KiB at end; {} threads",
        started.elapsed(),
        rss_start,
        rss_rounds,
        rss_end,
        threads(pid)
    );
    let max = rss_rounds
        .iter()
        .copied()
        .max()
        .unwrap_or(rss_end)
        .max(rss_end);
    assert!(max < 200 * 1024, "daemon RSS reached {max} KiB");
    if rounds >= 4 {
        // Later rounds do the same work as earlier ones: memory must level off.
        let mid = rss_rounds[rounds / 2 - 1];
        let last = rss_rounds[rounds - 1];
        assert!(
            last <= mid + 16 * 1024,
            "daemon RSS grew from {mid} KiB to {last} KiB over the second half of the rounds"
        );
    }
    drop(clients);
    drop(c);
    daemon.stop();
}

/// Requests racing with the Remove of what they name: each sees the snapshot either
/// still there or gone (NotFound), never a storage error from the half-second
/// in which its directory moved to the trash.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn requests_racing_a_remove_see_it_there_or_gone() {
    require_root();
    let rounds = env_or("RUSTLAYER_CONCURRENCY_ROUNDS", 12) as usize;
    let mut daemon = Daemon::start();
    let root = daemon.root.clone();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(Client::connect(&daemon.socket).await);
    }
    let c = clients[0].clone();
    let mut strays: Vec<String> = Vec::new();
    let mut outcomes = Tally::new();
    let mut note = |what: &str, r: &Result<(), tonic::Status>, allowed: &[Code]| {
        let code = code_of(r);
        *outcomes.entry(format!("{what} {code:?}")).or_default() += 1;
        if !allowed.contains(&code) {
            strays.push(format!(
                "{what}: {code:?}: {}",
                r.as_ref().err().map(|s| s.message()).unwrap_or_default()
            ));
        }
    };

    for r in 0..rounds {
        // A committed parent removed while others stack children and views on it.
        let base = format!("b{r}");
        let m = c.prepare(&format!("{base}-a"), "").await.unwrap();
        {
            let m = Mounted::new(&m);
            fs::write(m.path().join("f"), "x").unwrap();
        }
        c.commit(&base, &format!("{base}-a")).await.unwrap();
        let b = base.clone();
        let res = race(&clients, move |i, c| {
            let b = b.clone();
            async move {
                match i % 4 {
                    0 => c.remove(&b).await,
                    1 => c.prepare(&format!("{b}/child{i}"), &b).await.map(|_| ()),
                    2 => c.view(&format!("{b}/view{i}"), &b).await.map(|_| ()),
                    _ => c.usage(&b).await.map(|_| ()),
                }
            }
        })
        .await;
        for (i, res) in res.iter().enumerate() {
            match i % 4 {
                0 => note(
                    "Remove of a parent",
                    res,
                    &[Code::Ok, Code::NotFound, Code::FailedPrecondition],
                ),
                1 => note(
                    "Prepare on a parent being removed",
                    res,
                    &[Code::Ok, Code::NotFound],
                ),
                2 => note(
                    "View on a parent being removed",
                    res,
                    &[Code::Ok, Code::NotFound],
                ),
                _ => note(
                    "Usage of a layer being removed",
                    res,
                    &[Code::Ok, Code::NotFound],
                ),
            }
        }
        let removed = res.iter().step_by(4).filter(|r| r.is_ok()).count();
        note(
            "Removes of one parent that succeeded: at most one",
            &if removed > 1 {
                Err(tonic::Status::aborted(format!("{removed} succeeded")))
            } else {
                Ok(())
            },
            &[Code::Ok],
        );

        // An active snapshot removed while others measure, mount and commit it.
        let act = format!("a{r}");
        let m = c.prepare(&act, "").await.unwrap();
        {
            let m = Mounted::new(&m);
            for j in 0..50 {
                fs::write(m.path().join(format!("f{j}")), "x").unwrap();
            }
        }
        let a = act.clone();
        let res = race(&clients, move |i, c| {
            let a = a.clone();
            async move {
                match i % 4 {
                    0 => c.remove(&a).await,
                    1 => c.usage(&a).await.map(|_| ()),
                    2 => c.mounts(&a).await.map(|_| ()),
                    _ => c.commit(&format!("{a}-as-{i}"), &a).await,
                }
            }
        })
        .await;
        for (i, res) in res.iter().enumerate() {
            match i % 4 {
                0 => note("Remove of an active", res, &[Code::Ok, Code::NotFound]),
                1 => note(
                    "Usage of an active being removed",
                    res,
                    &[Code::Ok, Code::NotFound],
                ),
                2 => note(
                    "Mounts of an active being removed",
                    res,
                    &[Code::Ok, Code::NotFound],
                ),
                _ => note(
                    "Commit of an active being removed",
                    res,
                    &[Code::Ok, Code::NotFound],
                ),
            }
        }

        let won = res
            .iter()
            .enumerate()
            .filter(|(i, r)| (i % 4 == 0 || i % 4 == 3) && r.is_ok())
            .count();
        note(
            "Remove or Commits of one active that succeeded: exactly one",
            &if won == 1 {
                Ok(())
            } else {
                Err(tonic::Status::aborted(format!("{won} succeeded")))
            },
            &[Code::Ok],
        );

        // Clear the round away, leaves first.
        let all = consistent(&c, &root, &format!("after race round {r}")).await;
        for info in all.iter().filter(|i| !i.parent.is_empty()) {
            c.remove(&info.name).await.unwrap();
        }
        for info in sorted_infos(&c).await {
            c.remove(&info.name).await.unwrap();
        }
        consistent(&c, &root, &format!("after clearing round {r}")).await;
    }
    println!("{rounds} rounds of requests racing a Remove: {outcomes:?}");
    drop(clients);
    drop(c);
    daemon.stop();
    let mut grouped = Tally::new();
    for s in &strays {
        *grouped.entry(s.clone()).or_default() += 1;
    }
    assert!(
        strays.is_empty(),
        "{} answers other than \"there\" or \"gone\":\n{grouped:#?}",
        strays.len()
    );
}

// ---------------------------------------------------------------------------------

const ACTIVES: usize = 8;
const LAYERS: usize = 6;
const VIEWS: usize = 4;

fn any_key(rng: &mut Rng) -> String {
    match rng.below(3) {
        0 => format!("m{}", rng.below(ACTIVES)),
        1 => format!("c{}", rng.below(LAYERS)),
        _ => format!("v{}", rng.below(VIEWS)),
    }
}

/// One random request on the small key space; returns its name, code and message.
async fn mixed_op(c: &Client, rng: &mut Rng) -> (&'static str, Code, String, Vec<Code>) {
    use Code::*;
    let (op, result, allowed): (&'static str, Result<(), tonic::Status>, Vec<Code>) =
        match rng.below(13) {
            0 | 1 => {
                let p = if rng.below(3) == 0 {
                    String::new()
                } else {
                    format!("c{}", rng.below(LAYERS))
                };
                let key = format!("m{}", rng.below(ACTIVES));
                (
                    "Prepare",
                    c.prepare(&key, &p).await.map(|_| ()),
                    vec![Ok, AlreadyExists, NotFound],
                )
            }
            2 => {
                let key = format!("v{}", rng.below(VIEWS));
                let p = format!("c{}", rng.below(LAYERS));
                (
                    "View",
                    c.view(&key, &p).await.map(|_| ()),
                    vec![Ok, AlreadyExists, NotFound],
                )
            }
            3 | 4 => {
                let name = format!("c{}", rng.below(LAYERS));
                let key = format!("m{}", rng.below(ACTIVES));
                (
                    "Commit",
                    c.commit(&name, &key).await,
                    vec![Ok, AlreadyExists, NotFound],
                )
            }
            5 | 10 | 11 => (
                "Remove",
                c.remove(&any_key(rng)).await,
                vec![Ok, NotFound, FailedPrecondition],
            ),
            6 => (
                "Stat",
                c.stat(&any_key(rng)).await.map(|_| ()),
                vec![Ok, NotFound],
            ),
            7 => {
                let key = if rng.below(2) == 0 {
                    format!("m{}", rng.below(ACTIVES))
                } else {
                    format!("v{}", rng.below(VIEWS))
                };
                (
                    "Mounts",
                    c.mounts(&key).await.map(|_| ()),
                    vec![Ok, NotFound],
                )
            }
            8 => (
                "Usage",
                c.usage(&any_key(rng)).await.map(|_| ()),
                vec![Ok, NotFound],
            ),
            9 => {
                let mut raw = c.raw.clone();
                let labels: Labels = [("n".to_string(), rng.next_u64().to_string())].into();
                let r = raw
                    .update(pb::UpdateSnapshotRequest {
                        snapshotter: String::new(),
                        info: Some(pb::Info {
                            name: any_key(rng),
                            labels,
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["labels.n".into()],
                        }),
                    })
                    .await
                    .map(|_| ());
                ("Update", r, vec![Ok, NotFound])
            }
            _ => {
                if rng.below(4) == 0 {
                    ("Cleanup", c.cleanup().await, vec![Ok])
                } else {
                    ("List", c.list(&[]).await.map(|_| ()), vec![Ok])
                }
            }
        };
    let code = code_of(&result);
    let msg = result
        .err()
        .map(|s| s.message().to_owned())
        .unwrap_or_default();
    (op, code, msg, allowed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn mixed_workload_has_no_deadlock_no_stray_codes_no_debris() {
    require_root();
    let secs = env_or("RUSTLAYER_MIXED_SECS", 10);
    let mut daemon = Daemon::start();
    let pid = daemon.pid();
    let root = daemon.root.clone();
    let rss_start = rss_kib(pid);

    let deadline = Instant::now() + Duration::from_secs(secs);
    let stats: Arc<Mutex<Tally>> = Arc::default();
    let strays: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut set = JoinSet::new();
    for t in 0..CLIENTS {
        let c = Client::connect(&daemon.socket).await;
        let stats = Arc::clone(&stats);
        let strays = Arc::clone(&strays);
        set.spawn(async move {
            let mut rng =
                Rng(0x1234_5678_9abc_def1 ^ (t as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut done = 0u64;
            while Instant::now() < deadline {
                let (op, code, msg, allowed) =
                    tokio::time::timeout(REQUEST_DEADLINE, mixed_op(&c, &mut rng))
                        .await
                        .unwrap_or_else(|_| {
                            panic!("client {t}: a request got no answer in {REQUEST_DEADLINE:?}")
                        });
                *stats
                    .lock()
                    .unwrap()
                    .entry(format!("{op} {code:?}"))
                    .or_default() += 1;
                if !allowed.contains(&code) {
                    strays
                        .lock()
                        .unwrap()
                        .push(format!("{op}: {code:?}: {msg}"));
                }
                done += 1;
            }
            done
        });
    }
    let total = tokio::time::timeout(Duration::from_secs(secs + 60), async {
        let mut total = 0;
        while let Some(done) = set.join_next().await {
            total += done.expect("client task");
        }
        total
    })
    .await
    .expect("the mixed workload did not finish: deadlock?");

    let c = Client::connect(&daemon.socket).await;
    let all = consistent(&c, &root, "after the mixed workload").await;
    // Everything mountable mounts: its parents' links and layers are all there.
    for info in &all {
        if info.kind != pb::Kind::Committed as i32 {
            let mounts = c.mounts(&info.name).await.unwrap();
            let _m = Mounted::new(&mounts);
        }
    }
    c.cleanup().await.unwrap();
    let after = consistent(&c, &root, "after Cleanup").await;
    assert_eq!(after, all, "Cleanup changed the metadata");
    let names: HashSet<&str> = all.iter().map(|i| i.name.as_str()).collect();
    let committed = all
        .iter()
        .filter(|i| i.kind == pb::Kind::Committed as i32)
        .count();
    assert!(
        count_entries(&root.join("l")) >= committed,
        "a committed layer lost its link"
    );
    assert!(
        count_entries(&root.join("l")) <= names.len(),
        "links to unknown ids after Cleanup"
    );
    trash_drains(&root).await;
    let rss_end = rss_kib(pid);

    let stats = stats.lock().unwrap().clone();
    println!(
        "mixed workload: {total} requests by {CLIENTS} clients in {secs} s; {} snapshots left; RSS {rss_start} -> {rss_end} KiB; {} threads; {stats:?}",
        all.len(),
        threads(pid)
    );
    let strays = strays.lock().unwrap().clone();
    let mut grouped: BTreeMap<String, usize> = BTreeMap::new();
    for s in &strays {
        *grouped.entry(s.clone()).or_default() += 1;
    }
    assert!(
        strays.is_empty(),
        "{} answers with codes containerd does not expect for them:\n{grouped:#?}",
        strays.len()
    );
    assert!(rss_end < 200 * 1024, "daemon RSS {rss_end} KiB");
    assert!(total > 1000, "only {total} requests in {secs} s");
    drop(c);
    daemon.stop();
}
