//! Requests as data, so tables and the random loop share one sender.

use rustlayer_api::snapshots as pb;
use rustlayer_e2e::{Client, Labels};
use tokio_stream::StreamExt;

#[derive(Debug, Clone)]
pub(crate) enum Req {
    Prepare {
        key: String,
        parent: String,
        labels: Labels,
    },
    View {
        key: String,
        parent: String,
        labels: Labels,
    },
    Mounts {
        key: String,
    },
    Commit {
        name: String,
        key: String,
        parent: String,
        labels: Labels,
    },
    Remove {
        key: String,
    },
    Stat {
        key: String,
    },
    Usage {
        key: String,
    },
    Update {
        info: Option<pb::Info>,
        paths: Option<Vec<String>>,
    },
    List {
        filters: Vec<String>,
    },
    Cleanup,
}

impl Req {
    pub(crate) fn prepare(key: &str, parent: &str) -> Req {
        Req::Prepare {
            key: key.into(),
            parent: parent.into(),
            labels: Labels::new(),
        }
    }

    pub(crate) fn prepare_labeled(key: &str, labels: Labels) -> Req {
        Req::Prepare {
            key: key.into(),
            parent: String::new(),
            labels,
        }
    }

    pub(crate) fn view(key: &str, parent: &str) -> Req {
        Req::View {
            key: key.into(),
            parent: parent.into(),
            labels: Labels::new(),
        }
    }

    pub(crate) fn commit(name: &str, key: &str) -> Req {
        Req::commit_onto(name, key, "")
    }

    pub(crate) fn commit_onto(name: &str, key: &str, parent: &str) -> Req {
        Req::Commit {
            name: name.into(),
            key: key.into(),
            parent: parent.into(),
            labels: Labels::new(),
        }
    }

    pub(crate) fn update(name: &str, labels: Labels, paths: &[&str]) -> Req {
        Req::Update {
            info: Some(pb::Info {
                name: name.into(),
                labels,
                ..Default::default()
            }),
            paths: Some(pb_paths(paths)),
        }
    }

    /// Whether an Ok answer may change the metadata.
    pub(crate) fn mutates(&self) -> bool {
        matches!(
            self,
            Req::Prepare { .. }
                | Req::View { .. }
                | Req::Commit { .. }
                | Req::Remove { .. }
                | Req::Update { .. }
        )
    }

    /// A one-line description that does not print a megabyte of key.
    pub(crate) fn describe(&self) -> String {
        short(&format!("{self:?}"), 240)
    }
}

pub(crate) fn pb_paths(paths: &[&str]) -> Vec<String> {
    paths.iter().map(|p| p.to_string()).collect()
}

pub(crate) fn short(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} bytes]", &s[..end], s.len())
}

/// Sends one request; Ok carries the mounts Prepare and View hand out.
pub(crate) async fn send(
    c: &Client,
    req: &Req,
) -> Result<Vec<rustlayer_core::Mount>, tonic::Status> {
    let mut raw = c.raw.clone();
    match req.clone() {
        Req::Prepare {
            key,
            parent,
            labels,
        } => c.prepare_labeled(&key, &parent, labels).await,
        Req::View {
            key,
            parent,
            labels,
        } => {
            let r = raw
                .view(pb::ViewSnapshotRequest {
                    snapshotter: String::new(),
                    key,
                    parent,
                    labels,
                })
                .await?;
            Ok(r.into_inner()
                .mounts
                .into_iter()
                .map(|m| rustlayer_core::Mount {
                    fs_type: m.r#type,
                    source: m.source,
                    options: m.options,
                })
                .collect())
        }
        Req::Mounts { key } => c.mounts(&key).await,
        Req::Commit {
            name,
            key,
            parent,
            labels,
        } => {
            raw.commit(pb::CommitSnapshotRequest {
                snapshotter: String::new(),
                name,
                key,
                labels,
                parent,
            })
            .await?;
            Ok(Vec::new())
        }
        Req::Remove { key } => c.remove(&key).await.map(|()| Vec::new()),
        Req::Stat { key } => c.stat(&key).await.map(|_| Vec::new()),
        Req::Usage { key } => c.usage(&key).await.map(|_| Vec::new()),
        Req::Update { info, paths } => {
            raw.update(pb::UpdateSnapshotRequest {
                snapshotter: String::new(),
                info,
                update_mask: paths.map(|paths| prost_types::FieldMask { paths }),
            })
            .await?;
            Ok(Vec::new())
        }
        Req::List { filters } => {
            let mut stream = raw
                .list(pb::ListSnapshotsRequest {
                    snapshotter: String::new(),
                    filters,
                })
                .await?
                .into_inner();
            while let Some(batch) = stream.next().await {
                batch?;
            }
            Ok(Vec::new())
        }
        Req::Cleanup => c.cleanup().await.map(|()| Vec::new()),
    }
}
