//! Property-style: random strings at random RPCs.

use std::collections::BTreeMap;
use std::time::Instant;

use rustlayer_api::snapshots as pb;

use rustlayer_e2e::support::{Rng, sorted_infos, storage_matches_metadata};
use rustlayer_e2e::{Daemon, Labels, Mounted, require_root};
use tonic::Code;

use crate::requests::{Req, send, short};
use crate::state::populate;

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
