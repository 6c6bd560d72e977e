//! Id reservation: lowest free first, never an id that names a snapshot or is
//! reserved, and a clear error when the id space is used up.

use std::time::SystemTime;

use rustlayer_core::{Kind, Labels, SnapshotId};
use rustlayer_metastore::{Error, NewSnapshot, Reservation, Store, StoreOptions};

fn store(dir: &tempfile::TempDir) -> Store {
    Store::open(
        &dir.path().join("metadata.db"),
        &StoreOptions {
            backend: "test".into(),
        },
    )
    .unwrap()
}

fn ids(raw: &[u64]) -> Vec<SnapshotId> {
    raw.iter().copied().map(SnapshotId::new).collect()
}

fn insert(store: &Store, id: SnapshotId, key: &str) {
    store
        .write(|tx| {
            tx.insert(&NewSnapshot {
                id,
                key,
                parent: None,
                kind: Kind::Active,
                labels: &Labels::new(),
                storage: None,
                now: SystemTime::now(),
            })
            .map(|_| ())
        })
        .unwrap();
}

#[test]
fn reservations_fill_gaps_and_survive_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let max = SnapshotId::MAX;
    let first = store.write(|tx| tx.reserve_ids(3, max)).unwrap();
    assert_eq!(first, ids(&[1, 2, 3]));
    insert(&store, first[0], "a");
    insert(&store, first[2], "c");
    // Inserting ends a reservation; 2 is still reserved (a Prepare that failed).
    let reserved = store.read(|tx| tx.reserved_ids()).unwrap();
    assert_eq!(reserved, vec![(SnapshotId::new(2), Reservation::Staging)]);
    assert_eq!(
        store.write(|tx| tx.reserve_ids(2, max)).unwrap(),
        ids(&[4, 5])
    );

    // A deleted snapshot's id stays reserved until released.
    store.write(|tx| tx.delete(SnapshotId::new(1))).unwrap();
    assert!(
        store
            .read(|tx| tx.reserved_ids())
            .unwrap()
            .contains(&(SnapshotId::new(1), Reservation::Removed))
    );
    assert_eq!(store.write(|tx| tx.reserve_ids(1, max)).unwrap(), ids(&[6]));
    store
        .write(|tx| tx.release_ids(&ids(&[1, 2, 4, 5, 6])))
        .unwrap();
    assert_eq!(
        store.write(|tx| tx.reserve_ids(3, max)).unwrap(),
        ids(&[1, 2, 4])
    );
}

#[test]
fn an_exhausted_id_space_is_an_error_and_reserves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let max = SnapshotId::new(4);
    assert_eq!(
        store.write(|tx| tx.reserve_ids(3, max)).unwrap(),
        ids(&[1, 2, 3])
    );
    let err = store.write(|tx| tx.reserve_ids(2, max)).unwrap_err();
    assert!(matches!(err, Error::IdsExhausted { max: 4 }), "{err}");
    assert_eq!(
        rustlayer_core::Error::from(err).code(),
        rustlayer_core::Code::ResourceExhausted
    );
    assert_eq!(store.write(|tx| tx.reserve_ids(1, max)).unwrap(), ids(&[4]));
}
