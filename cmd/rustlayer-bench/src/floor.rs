//! The proxy floor: containerd's snapshots API served from a map in memory, with no
//! storage, no disk I/O and no durability. Put behind containerd as a proxy plugin
//! next to rustlayer, it shows what the proxy path itself costs (containerd's
//! client, the socket, the gRPC stack), so the benchmark can tell that apart from
//! the time rustlayer spends on its own work. It is a yardstick for the bench and
//! nothing else: it keeps snapshots only as long as it runs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context, Result};
use rustlayer_api::snapshots::snapshots_server::{Snapshots, SnapshotsServer};
use rustlayer_api::snapshots::{self as pb, Kind};
use rustlayer_server::{SocketOptions, bind_socket};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// Serves until the process is stopped, on a socket bound as the daemon binds its own.
pub async fn serve(socket: &Path) -> Result<()> {
    let listener = bind_socket(socket, &SocketOptions::default())
        .with_context(|| format!("bind {}", socket.display()))?;
    serve_on(listener).await
}

pub async fn serve_on(listener: UnixListener) -> Result<()> {
    tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(Floor::default()))
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await
        .context("serve the proxy floor")
}

#[derive(Default)]
struct Floor {
    snapshots: Mutex<HashMap<String, pb::Info>>,
}

impl Floor {
    fn snapshots(&self) -> MutexGuard<'_, HashMap<String, pb::Info>> {
        rustlayer_core::sync::lock(&self.snapshots)
    }

    /// The same checks a real snapshotter makes, so containerd sees the same codes.
    fn create(&self, key: String, parent: String, kind: Kind) -> Result<(), Status> {
        let mut snapshots = self.snapshots();
        if snapshots.contains_key(&key) {
            return Err(Status::already_exists(format!("snapshot {key:?} exists")));
        }
        if !parent.is_empty() {
            match snapshots.get(&parent) {
                None => return Err(Status::not_found(format!("parent {parent:?} not found"))),
                Some(p) if p.kind != Kind::Committed as i32 => {
                    return Err(Status::failed_precondition(format!(
                        "parent {parent:?} is not committed"
                    )));
                }
                Some(_) => {}
            }
        }
        snapshots.insert(key.clone(), info(key, parent, kind));
        Ok(())
    }
}

fn info(name: String, parent: String, kind: Kind) -> pb::Info {
    pb::Info {
        name,
        parent,
        kind: kind as i32,
        ..Default::default()
    }
}

fn missing(key: &str) -> Status {
    Status::not_found(format!("snapshot {key:?} not found"))
}

#[tonic::async_trait]
impl Snapshots for Floor {
    async fn prepare(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = request.into_inner();
        self.create(r.key, r.parent, Kind::Active)?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: vec![],
        }))
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        self.create(r.key, r.parent, Kind::View)?;
        Ok(Response::new(pb::ViewSnapshotResponse { mounts: vec![] }))
    }

    async fn mounts(
        &self,
        request: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let key = request.into_inner().key;
        if !self.snapshots().contains_key(&key) {
            return Err(missing(&key));
        }
        Ok(Response::new(pb::MountsResponse { mounts: vec![] }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let mut snapshots = self.snapshots();
        let parent = match snapshots.get(&r.key) {
            None => return Err(missing(&r.key)),
            Some(s) if s.kind != Kind::Active as i32 => {
                return Err(Status::failed_precondition(format!(
                    "snapshot {:?} is not active",
                    r.key
                )));
            }
            Some(s) => s.parent.clone(),
        };
        if snapshots.contains_key(&r.name) {
            return Err(Status::already_exists(format!(
                "snapshot {:?} exists",
                r.name
            )));
        }
        snapshots.remove(&r.key);
        snapshots.insert(r.name.clone(), info(r.name, parent, Kind::Committed));
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let key = request.into_inner().key;
        let mut snapshots = self.snapshots();
        if !snapshots.contains_key(&key) {
            return Err(missing(&key));
        }
        if snapshots.values().any(|s| s.parent == key) {
            return Err(Status::failed_precondition(format!(
                "snapshot {key:?} has children"
            )));
        }
        snapshots.remove(&key);
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let key = request.into_inner().key;
        let info = self.snapshots().get(&key).cloned();
        match info {
            Some(info) => Ok(Response::new(pb::StatSnapshotResponse { info: Some(info) })),
            None => Err(missing(&key)),
        }
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let wanted = request
            .into_inner()
            .info
            .ok_or_else(|| Status::invalid_argument("update without info"))?;
        let mut snapshots = self.snapshots();
        let stored = snapshots
            .get_mut(&wanted.name)
            .ok_or_else(|| missing(&wanted.name))?;
        stored.labels = wanted.labels;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(stored.clone()),
        }))
    }

    type ListStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<pb::ListSnapshotsResponse, Status>>>;

    async fn list(
        &self,
        _request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let info: Vec<pb::Info> = self.snapshots().values().cloned().collect();
        let batches: Vec<_> = info
            .chunks(100)
            .map(|chunk| {
                Ok(pb::ListSnapshotsResponse {
                    info: chunk.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(tokio_stream::iter(batches)))
    }

    async fn usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let key = request.into_inner().key;
        if !self.snapshots().contains_key(&key) {
            return Err(missing(&key));
        }
        Ok(Response::new(pb::UsageResponse { size: 0, inodes: 0 }))
    }

    async fn cleanup(&self, _request: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{Target, Via};
    use tonic::Code;

    fn code(err: &anyhow::Error) -> Option<Code> {
        err.chain()
            .find_map(|e| e.downcast_ref::<Status>())
            .map(Status::code)
    }

    #[tokio::test]
    async fn answers_a_cycle_with_the_codes_containerd_branches_on() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("floor.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(serve_on(listener));
        let via = Via::Direct {
            socket: socket.clone(),
        };
        let mut floor = Target::connect("floor", "floor", via).await.unwrap();

        floor.prepare("a", "").await.unwrap();
        let again = floor.prepare("a", "").await.unwrap_err();
        assert_eq!(code(&again), Some(Code::AlreadyExists), "{again:#}");
        let on_active = floor.prepare("b", "a").await.unwrap_err();
        assert_eq!(code(&on_active), Some(Code::FailedPrecondition));
        floor.commit("layer", "a").await.unwrap();
        let gone = floor.mounts("a").await.unwrap_err();
        assert_eq!(code(&gone), Some(Code::NotFound), "{gone:#}");
        floor.prepare("child", "layer").await.unwrap();
        let parent_busy = floor.remove("layer").await.unwrap_err();
        assert_eq!(code(&parent_busy), Some(Code::FailedPrecondition));
        assert_eq!(floor.list().await.unwrap().len(), 2);
        floor.remove("child").await.unwrap();
        floor.remove("layer").await.unwrap();
        floor.usage_missing("layer").await.unwrap();
        assert!(floor.list().await.unwrap().is_empty());
        server.abort();
    }
}
