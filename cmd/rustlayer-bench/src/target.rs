//! One snapshotter to measure: a name in containerd's snapshots service (reached
//! through containerd's socket, in a namespace), or rustlayer's own socket.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use rustlayer_api::snapshots as pb;
use rustlayer_api::snapshots::snapshots_client::SnapshotsClient;
use rustlayer_core::Mount;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// What containerd's garbage collector treats as a root: labelled snapshots stay
/// until the bench removes them, whatever runs meanwhile.
pub const GC_ROOT: &str = "containerd.io/gc.root";

/// The label a direct target is known by in the results.
pub const DIRECT: &str = "rustlayer-direct";

#[derive(Clone, Debug)]
pub enum Via {
    /// containerd's socket; requests carry the namespace header and the snapshotter field.
    Containerd { socket: PathBuf, namespace: String },
    /// rustlayer's socket, no containerd in between.
    Direct { socket: PathBuf },
}

#[derive(Clone)]
pub struct Target {
    /// How results name it: the snapshotter, or "rustlayer-direct".
    pub label: String,
    pub snapshotter: String,
    pub via: Via,
    client: SnapshotsClient<Channel>,
}

impl Target {
    pub async fn connect(label: &str, snapshotter: &str, via: Via) -> Result<Target> {
        let socket = match &via {
            Via::Containerd { socket, .. } | Via::Direct { socket } => socket.clone(),
        };
        let client = rustlayer_server::connect(&socket)
            .await
            .with_context(|| format!("connect to {}", socket.display()))?
            .max_decoding_message_size(64 << 20);
        Ok(Target {
            label: label.to_owned(),
            snapshotter: snapshotter.to_owned(),
            via,
            client,
        })
    }

    pub fn is_direct(&self) -> bool {
        matches!(self.via, Via::Direct { .. })
    }

    fn request<T>(&self, message: T) -> Result<Request<T>> {
        let mut request = Request::new(message);
        if let Via::Containerd { namespace, .. } = &self.via {
            let value: MetadataValue<_> = namespace
                .parse()
                .with_context(|| format!("namespace {namespace:?}"))?;
            request.metadata_mut().insert("containerd-namespace", value);
        }
        Ok(request)
    }

    pub async fn prepare(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        let request = self.request(pb::PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
            parent: parent.to_owned(),
            labels: root_label(),
        })?;
        let response = self
            .client
            .prepare(request)
            .await
            .with_context(|| format!("{}: Prepare {key} (parent {parent:?})", self.label))?;
        Ok(mounts(response.into_inner().mounts))
    }

    pub async fn commit(&mut self, name: &str, key: &str) -> Result<()> {
        let request = self.request(pb::CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: name.to_owned(),
            key: key.to_owned(),
            labels: root_label(),
            parent: String::new(),
        })?;
        self.client
            .commit(request)
            .await
            .with_context(|| format!("{}: Commit {key} as {name}", self.label))?;
        Ok(())
    }

    pub async fn mounts(&mut self, key: &str) -> Result<Vec<Mount>> {
        let request = self.request(pb::MountsRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
        })?;
        let response = self
            .client
            .mounts(request)
            .await
            .with_context(|| format!("{}: Mounts {key}", self.label))?;
        Ok(mounts(response.into_inner().mounts))
    }

    pub async fn remove(&mut self, key: &str) -> Result<()> {
        let request = self.request(pb::RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
        })?;
        self.client
            .remove(request)
            .await
            .with_context(|| format!("{}: Remove {key}", self.label))?;
        Ok(())
    }

    /// Remove, where a snapshot that is already gone counts as removed (containerd's
    /// garbage collector may take a parent whose last child went a moment ago).
    pub async fn remove_if_present(&mut self, key: &str) -> Result<bool> {
        let request = self.request(pb::RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
        })?;
        match self.client.remove(request).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => {
                Err(anyhow::Error::new(status).context(format!("{}: Remove {key}", self.label)))
            }
        }
    }

    /// Usage of a key that does not exist: the cheapest request there is, so its
    /// latency is the floor of one round trip.
    pub async fn usage_missing(&mut self, key: &str) -> Result<()> {
        let request = self.request(pb::UsageRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
        })?;
        match self.client.usage(request).await {
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Ok(_) => anyhow::bail!("{}: Usage of the missing key {key} succeeded", self.label),
            Err(status) => {
                Err(anyhow::Error::new(status).context(format!("{}: Usage {key}", self.label)))
            }
        }
    }

    /// (bytes, inodes)
    pub async fn usage(&mut self, key: &str) -> Result<(i64, i64)> {
        let request = self.request(pb::UsageRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
        })?;
        let usage = self
            .client
            .usage(request)
            .await
            .with_context(|| format!("{}: Usage {key}", self.label))?
            .into_inner();
        Ok((usage.size, usage.inodes))
    }

    /// Every snapshot, as (name, parent), in the order the service streams them.
    pub async fn list(&mut self) -> Result<Vec<(String, String)>> {
        let request = self.request(pb::ListSnapshotsRequest {
            snapshotter: self.snapshotter.clone(),
            filters: Vec::new(),
        })?;
        let mut stream = self
            .client
            .list(request)
            .await
            .with_context(|| format!("{}: List", self.label))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream
            .message()
            .await
            .with_context(|| format!("{}: List stream", self.label))?
        {
            out.extend(batch.info.into_iter().map(|i| (i.name, i.parent)));
        }
        Ok(out)
    }
}

fn root_label() -> BTreeMap<String, String> {
    BTreeMap::from([(GC_ROOT.to_owned(), "rustlayer-bench".to_owned())])
}

fn mounts(list: Vec<rustlayer_api::types::Mount>) -> Vec<Mount> {
    list.into_iter()
        .map(|m| Mount {
            fs_type: m.r#type,
            source: m.source,
            options: m.options,
        })
        .collect()
}

/// Names that do not collide with another run's, or another target's.
pub fn unique_prefix(row: &str, label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("bench-{row}-{label}-{}-{nanos:x}", std::process::id())
}
