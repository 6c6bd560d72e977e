//! A root's identity (containerd's introspection `Server` answers it as the uuid):
//! made once with the metadata, the same on every open, another for another root.

use rustlayer_metastore::{Store, StoreOptions};

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(
        &dir.path().join("metadata.db"),
        &StoreOptions {
            backend: "overlay".into(),
        },
    )
    .unwrap()
}

fn is_random_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| {
            g.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        && groups[2].starts_with('4')
        && groups[3].starts_with(['8', '9', 'a', 'b'])
}

#[test]
fn a_root_keeps_its_uuid_and_another_root_has_another() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(&dir).uuid().to_owned();
    assert!(is_random_uuid(&first), "{first}");
    assert_eq!(open(&dir).uuid(), first, "reopened");

    let other = tempfile::tempdir().unwrap();
    let second = open(&other).uuid().to_owned();
    assert!(is_random_uuid(&second), "{second}");
    assert_ne!(second, first);
}
