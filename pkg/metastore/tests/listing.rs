//! Listing every snapshot streams labels beside the snapshots in id order; each
//! snapshot must get exactly its own labels, whichever snapshots between have none
//! and whichever were deleted or relabelled.

mod common;

use std::collections::BTreeMap;
use std::time::SystemTime;

use common::{insert, open};
use rustlayer_core::{Kind, Labels, SnapshotId};

#[test]
fn every_snapshot_lists_with_exactly_its_own_labels() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ids = store
        .write(|tx| tx.reserve_ids(60, SnapshotId::MIN, SnapshotId::MAX))
        .unwrap();
    // Labels on some ids only, in runs and alone, with several labels each; the
    // names sort differently from the order they are given in.
    let labels_of = |n: usize| -> Labels {
        (0..n % 4)
            .filter(|_| !n.is_multiple_of(3))
            .map(|i| (format!("z{}-{n}", 3 - i), format!("v{n}.{i}")))
            .collect()
    };
    for (n, id) in ids.iter().enumerate() {
        let key = format!("snapshot {n}");
        let labels = labels_of(n);
        insert(&store, *id, &key, Kind::Active, &labels);
    }
    for n in (0..60).step_by(7) {
        store.write(|tx| tx.delete(ids[n])).unwrap();
    }
    for n in (2..60usize).step_by(11).filter(|n| !n.is_multiple_of(7)) {
        let relabelled: Labels = [("only".to_owned(), format!("{n}"))].into();
        store
            .write(|tx| tx.replace_labels(ids[n], &relabelled, SystemTime::now()))
            .unwrap();
    }

    let mut listed = BTreeMap::new();
    store
        .read(|tx| {
            tx.for_each_info(|info| {
                listed.insert(info.name, info.labels);
            })
        })
        .unwrap();
    let mut expected = BTreeMap::new();
    for (n, id) in ids.iter().enumerate() {
        if n.is_multiple_of(7) {
            continue;
        }
        let own = store.read(|tx| tx.labels(*id)).unwrap();
        expected.insert(format!("snapshot {n}"), own);
    }
    assert_eq!(listed.len(), 60 - (0..60).step_by(7).count());
    assert_eq!(listed, expected);
    assert!(
        expected.values().filter(|l| l.len() > 1).count() > 10,
        "the data must hold snapshots with several labels"
    );
    assert!(expected.values().filter(|l| l.is_empty()).count() > 10);
}

#[test]
fn ids_of_a_kind_are_exactly_those_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ids = store
        .write(|tx| tx.reserve_ids(6, SnapshotId::MIN, SnapshotId::MAX))
        .unwrap();
    let kinds = [
        Kind::Active,
        Kind::View,
        Kind::Active,
        Kind::Active,
        Kind::View,
        Kind::Active,
    ];
    for (n, (id, kind)) in ids.iter().zip(kinds).enumerate() {
        let key = format!("snapshot {n}");
        insert(&store, *id, &key, kind, &Labels::new());
    }
    store.write(|tx| tx.delete(ids[3])).unwrap();
    let active = store.read(|tx| tx.ids_of_kind(Kind::Active)).unwrap();
    let want: std::collections::HashSet<SnapshotId> = [ids[0], ids[2], ids[5]].into();
    assert_eq!(active, want);
    let views = store.read(|tx| tx.ids_of_kind(Kind::View)).unwrap();
    assert_eq!(views, [ids[1], ids[4]].into());
    assert!(
        store
            .read(|tx| tx.ids_of_kind(Kind::Committed))
            .unwrap()
            .is_empty()
    );
}
