//! `rustlayer ls | tree | usage`: what a running daemon holds, asked over its socket
//! exactly as containerd asks.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use rustlayer_api::snapshots::{self as pb, snapshots_client::SnapshotsClient};
use rustlayer_core::{Kind, Usage, UsageMethod, saturating_i64};
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
    /// How the daemon found the figures: `counted` (project quota counters),
    /// `walked`, `recorded` (cached at Commit), `measured` (asked from a device).
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit_inodes: Option<u64>,
    /// The larger of bytes / limit_bytes and inodes / limit_inodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    used_fraction: Option<f64>,
}

impl SnapshotUsage {
    fn new(name: String, kind: &'static str, answer: tonic::Response<pb::UsageResponse>) -> Self {
        let (method, limits) = rustlayer_server::read_usage_details(answer.metadata());
        let u = answer.into_inner();
        let usage = Usage {
            bytes: u64::try_from(u.size).unwrap_or(0),
            inodes: u64::try_from(u.inodes).unwrap_or(0),
        };
        SnapshotUsage {
            name,
            kind,
            bytes: u.size,
            inodes: u.inodes,
            method: method.map(UsageMethod::as_str),
            limit_bytes: limits.bytes,
            limit_inodes: limits.inodes,
            used_fraction: limits.fraction_used(usage),
        }
    }

    /// The limits as one cell: `-` where none applies.
    fn limit_cell(&self) -> String {
        let bytes = self.limit_bytes.map(|b| human_bytes(saturating_i64(b)));
        let inodes = self.limit_inodes.map(|i| format!("{i} inodes"));
        match (bytes, inodes) {
            (Some(b), Some(i)) => format!("{b}, {i}"),
            (b, i) => b.or(i).unwrap_or_else(|| "-".into()),
        }
    }

    fn used_cell(&self) -> String {
        self.used_fraction
            .map_or_else(|| "-".into(), |f| format!("{:.0}%", f * 100.0))
    }
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

/// The Usage answer with its metadata, which carries the limits.
async fn usage(
    client: &mut SnapshotsClient<Channel>,
    key: &str,
) -> Result<tonic::Response<pb::UsageResponse>> {
    client
        .usage(pb::UsageRequest {
            snapshotter: String::new(),
            key: key.to_owned(),
        })
        .await
        .with_context(|| format!("Usage of {key:?}"))
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
        let answer = usage(&mut c, &name).await?;
        rows.push(SnapshotUsage::new(name, kind, answer));
    }
    match output {
        Output::Json => crate::output::print_json(&rows),
        Output::Table => {
            let mut t = Table::new(&[
                "NAME", "KIND", "SIZE", "INODES", "LIMIT", "USED", "MEASURED",
            ]);
            for r in &rows {
                t.row(vec![
                    r.name.clone(),
                    r.kind.into(),
                    human_bytes(r.bytes),
                    r.inodes.to_string(),
                    r.limit_cell(),
                    r.used_cell(),
                    r.method.unwrap_or("-").into(),
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
        sizes.insert(
            info.name.clone(),
            usage(&mut c, &info.name).await?.into_inner().size,
        );
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
