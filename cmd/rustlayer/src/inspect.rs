//! `rustlayer ls | tree | usage`: what a running daemon holds, asked over its socket
//! exactly as containerd asks.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use rustlayer_api::snapshots::{self as pb, snapshots_client::SnapshotsClient};
use rustlayer_core::Kind;
use serde::Serialize;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::output::{Output, Table, human_bytes};

#[derive(Debug, Serialize)]
struct Snapshot {
    name: String,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<String>,
    created: String,
    updated: String,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct SnapshotUsage {
    name: String,
    kind: &'static str,
    bytes: i64,
    inodes: i64,
}

#[derive(Debug, Serialize)]
struct TreeNode {
    name: String,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<i64>,
    children: Vec<TreeNode>,
}

async fn client(address: &Path) -> Result<SnapshotsClient<Channel>> {
    rustlayer_server::connect(address)
        .await
        .with_context(|| format!("is the daemon running at {}?", address.display()))
}

async fn list(client: &mut SnapshotsClient<Channel>, filters: &[String]) -> Result<Vec<pb::Info>> {
    let mut stream = client
        .list(pb::ListSnapshotsRequest {
            snapshotter: String::new(),
            filters: filters.to_vec(),
        })
        .await
        .context("List")?
        .into_inner();
    let mut infos = Vec::new();
    while let Some(batch) = stream.next().await {
        infos.extend(batch.context("List")?.info);
    }
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(infos)
}

async fn usage(client: &mut SnapshotsClient<Channel>, key: &str) -> Result<pb::UsageResponse> {
    Ok(client
        .usage(pb::UsageRequest {
            snapshotter: String::new(),
            key: key.to_owned(),
        })
        .await
        .with_context(|| format!("Usage of {key:?}"))?
        .into_inner())
}

fn kind_name(kind: i32) -> &'static str {
    rustlayer_server::kind_from_pb(kind).map_or("unknown", Kind::as_str)
}

fn time(ts: Option<prost_types::Timestamp>) -> String {
    let Some(ts) = ts else { return String::new() };
    let secs = u64::try_from(ts.seconds).unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

pub async fn ls(address: &Path, filters: &[String], output: Output) -> Result<()> {
    let mut c = client(address).await?;
    let snapshots: Vec<Snapshot> = list(&mut c, filters)
        .await?
        .into_iter()
        .map(|i| Snapshot {
            kind: kind_name(i.kind),
            parent: Some(i.parent).filter(|p| !p.is_empty()),
            created: time(i.created_at),
            updated: time(i.updated_at),
            labels: i.labels.into_iter().collect(),
            name: i.name,
        })
        .collect();
    match output {
        Output::Json => crate::output::print_json(&snapshots),
        Output::Table => {
            let mut t = Table::new(&["NAME", "KIND", "PARENT", "CREATED", "LABELS"]);
            for s in &snapshots {
                t.row(vec![
                    s.name.clone(),
                    s.kind.into(),
                    s.parent.clone().unwrap_or_default(),
                    s.created.clone(),
                    s.labels.len().to_string(),
                ]);
            }
            t.print();
            Ok(())
        }
    }
}

pub async fn usage_report(address: &Path, keys: &[String], output: Output) -> Result<()> {
    let mut c = client(address).await?;
    let targets: Vec<(String, &'static str)> = if keys.is_empty() {
        list(&mut c, &[])
            .await?
            .into_iter()
            .map(|i| (i.name, kind_name(i.kind)))
            .collect()
    } else {
        let mut out = Vec::new();
        for key in keys {
            let info = c
                .stat(pb::StatSnapshotRequest {
                    snapshotter: String::new(),
                    key: key.clone(),
                })
                .await
                .with_context(|| format!("Stat of {key:?}"))?
                .into_inner()
                .info
                .unwrap_or_default();
            out.push((info.name, kind_name(info.kind)));
        }
        out
    };
    let mut rows = Vec::new();
    for (name, kind) in targets {
        let u = usage(&mut c, &name).await?;
        rows.push(SnapshotUsage {
            name,
            kind,
            bytes: u.size,
            inodes: u.inodes,
        });
    }
    match output {
        Output::Json => crate::output::print_json(&rows),
        Output::Table => {
            let mut t = Table::new(&["NAME", "KIND", "SIZE", "INODES"]);
            for r in &rows {
                t.row(vec![
                    r.name.clone(),
                    r.kind.into(),
                    human_bytes(r.bytes),
                    r.inodes.to_string(),
                ]);
            }
            let bytes: i64 = rows.iter().map(|r| r.bytes).sum();
            let inodes: i64 = rows.iter().map(|r| r.inodes).sum();
            t.row(vec![
                format!("TOTAL ({} snapshots)", rows.len()),
                String::new(),
                human_bytes(bytes),
                inodes.to_string(),
            ]);
            t.print();
            Ok(())
        }
    }
}

pub async fn tree(address: &Path, output: Output) -> Result<()> {
    let mut c = client(address).await?;
    let infos = list(&mut c, &[]).await?;
    let mut sizes = HashMap::new();
    for info in infos.iter().filter(|i| kind_name(i.kind) == "committed") {
        // Committed layers answer from the daemon's cache: cheap even for big trees.
        sizes.insert(info.name.clone(), usage(&mut c, &info.name).await?.size);
    }
    let names: std::collections::HashSet<&str> = infos.iter().map(|i| i.name.as_str()).collect();
    let mut children: BTreeMap<&str, Vec<&pb::Info>> = BTreeMap::new();
    let mut roots = Vec::new();
    for info in &infos {
        if info.parent.is_empty() || !names.contains(info.parent.as_str()) {
            roots.push(info);
        } else {
            children.entry(info.parent.as_str()).or_default().push(info);
        }
    }
    fn build(
        info: &pb::Info,
        children: &BTreeMap<&str, Vec<&pb::Info>>,
        sizes: &HashMap<String, i64>,
    ) -> TreeNode {
        TreeNode {
            name: info.name.clone(),
            kind: kind_name(info.kind),
            bytes: sizes.get(&info.name).copied(),
            children: children
                .get(info.name.as_str())
                .map(|kids| kids.iter().map(|k| build(k, children, sizes)).collect())
                .unwrap_or_default(),
        }
    }
    let forest: Vec<TreeNode> = roots.iter().map(|r| build(r, &children, &sizes)).collect();
    match output {
        Output::Json => crate::output::print_json(&forest),
        Output::Table => {
            let mut out = String::new();
            for root in &forest {
                render(root, "", "", &mut out);
            }
            print!("{out}");
            Ok(())
        }
    }
}

/// Draws a node and its subtree with box-drawing branches, like `tree(1)`.
fn render(node: &TreeNode, first: &str, rest: &str, out: &mut String) {
    let size = node
        .bytes
        .map(|b| format!(", {}", human_bytes(b)))
        .unwrap_or_default();
    out.push_str(&format!("{first}{} ({}{size})\n", node.name, node.kind));
    let last = node.children.len().saturating_sub(1);
    for (i, child) in node.children.iter().enumerate() {
        let (branch, indent) = if i == last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        render(
            child,
            &format!("{rest}{branch}"),
            &format!("{rest}{indent}"),
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_draw_like_tree1() {
        let leaf = |name: &str, kind| TreeNode {
            name: name.into(),
            kind,
            bytes: None,
            children: vec![],
        };
        let root = TreeNode {
            name: "base".into(),
            kind: "committed",
            bytes: Some(2048),
            children: vec![
                TreeNode {
                    name: "mid".into(),
                    kind: "committed",
                    bytes: Some(0),
                    children: vec![leaf("ctr", "active")],
                },
                leaf("v", "view"),
            ],
        };
        let mut out = String::new();
        render(&root, "", "", &mut out);
        assert_eq!(
            out,
            "base (committed, 2.0 KiB)\n├── mid (committed, 0 B)\n│   └── ctr (active)\n└── v (view)\n"
        );
    }
}
