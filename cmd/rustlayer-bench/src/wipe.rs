//! Removing every snapshot of one snapshotter in one namespace, children first:
//! between rounds, so each round of an image unpack really unpacks.

use std::collections::HashSet;

use anyhow::Result;

use crate::target::Target;

/// Returns how many snapshots were removed.
pub async fn run(target: &mut Target) -> Result<usize> {
    let mut removed = 0;
    loop {
        let all = target.list().await?;
        if all.is_empty() {
            return Ok(removed);
        }
        let parents: HashSet<&str> = all.iter().map(|(_, p)| p.as_str()).collect();
        let leaves: Vec<&str> = all
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !parents.contains(n))
            .collect();
        anyhow::ensure!(
            !leaves.is_empty(),
            "{}: {} snapshots left and none is a leaf",
            target.label,
            all.len()
        );
        for leaf in leaves {
            if target.remove_if_present(leaf).await? {
                removed += 1;
            }
        }
    }
}
