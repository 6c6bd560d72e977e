//! Id reservation: lowest free first, never an id that names a snapshot or is
//! reserved, and a clear error when the id space is used up.

mod common;

use rustlayer_core::{Kind, Labels, SnapshotId};
use rustlayer_metastore::{Error, Store};

fn ids(raw: &[u64]) -> Vec<SnapshotId> {
    raw.iter().copied().map(SnapshotId::new).collect()
}

fn insert(store: &Store, id: SnapshotId, key: &str) {
    common::insert(store, id, key, Kind::Active, &Labels::new());
}

#[test]
fn reservations_fill_gaps_and_survive_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    let max = SnapshotId::MAX;
    let first = store
        .write(|tx| tx.reserve_ids(3, SnapshotId::MIN, max))
        .unwrap();
    assert_eq!(first, ids(&[1, 2, 3]));
    insert(&store, first[0], "a");
    insert(&store, first[2], "c");
    // Inserting ends a reservation; 2 is still reserved (a Prepare that failed).
    let reserved = store.read(|tx| tx.reserved_ids()).unwrap();
    assert_eq!(reserved, ids(&[2]));
    assert_eq!(
        store
            .write(|tx| tx.reserve_ids(2, SnapshotId::MIN, max))
            .unwrap(),
        ids(&[4, 5])
    );

    // A deleted snapshot's id stays reserved until released.
    store.write(|tx| tx.delete(SnapshotId::new(1))).unwrap();
    assert!(
        store
            .read(|tx| tx.reserved_ids())
            .unwrap()
            .contains(&SnapshotId::new(1))
    );
    assert_eq!(
        store
            .write(|tx| tx.reserve_ids(1, SnapshotId::MIN, max))
            .unwrap(),
        ids(&[6])
    );
    store
        .write(|tx| tx.release_ids(&ids(&[1, 2, 4, 5, 6])))
        .unwrap();
    assert_eq!(
        store
            .write(|tx| tx.reserve_ids(3, SnapshotId::MIN, max))
            .unwrap(),
        ids(&[1, 2, 4])
    );
}

#[test]
fn an_exhausted_id_space_is_an_error_and_reserves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    let max = SnapshotId::new(4);
    assert_eq!(
        store
            .write(|tx| tx.reserve_ids(3, SnapshotId::MIN, max))
            .unwrap(),
        ids(&[1, 2, 3])
    );
    let err = store
        .write(|tx| tx.reserve_ids(2, SnapshotId::MIN, max))
        .unwrap_err();
    assert!(matches!(err, Error::IdsExhausted { max: 4 }), "{err}");
    assert_eq!(
        rustlayer_core::Error::from(err).code(),
        rustlayer_core::Code::ResourceExhausted
    );
    assert_eq!(
        store
            .write(|tx| tx.reserve_ids(1, SnapshotId::MIN, max))
            .unwrap(),
        ids(&[4])
    );
}

#[test]
fn a_search_hint_skips_what_is_below_it_and_falls_back_when_too_few_remain_above() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    let max = SnapshotId::new(6);
    let reserve = |count, from| store.write(|tx| tx.reserve_ids(count, SnapshotId::new(from), max));
    assert_eq!(reserve(3, 1).unwrap(), ids(&[1, 2, 3]));
    store.write(|tx| tx.release_ids(&ids(&[2]))).unwrap();
    // 2 is free but below the hint; a hint of 0 means the lowest id.
    assert_eq!(reserve(2, 4).unwrap(), ids(&[4, 5]));
    assert_eq!(reserve(1, 0).unwrap(), ids(&[2]));
    store.write(|tx| tx.release_ids(&ids(&[1]))).unwrap();
    // Only 6 is left above the hint: the search starts again from the lowest id.
    assert_eq!(reserve(2, 6).unwrap(), ids(&[1, 6]));
    let err = reserve(1, 1).unwrap_err();
    assert!(matches!(err, Error::IdsExhausted { max: 6 }), "{err}");
}
