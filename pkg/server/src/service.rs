use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustlayer_api::snapshots::{self as pb, snapshots_server::Snapshots};
use rustlayer_core::validate::truncate;
use rustlayer_core::{
    Code, Error, Filters, Limits, Measured, Method, RequestObserver, UsageMethod,
};
use rustlayer_snapshotter::{InfoUpdate, Snapshotter, UsageSource};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, error, info_span};

use crate::convert;

/// How many infos go in one List message: containerd's client reads a stream, and
/// batching keeps each message small whatever the number of snapshots.
const LIST_BATCH: usize = 100;

pub struct SnapshotService {
    snapshotter: Arc<Snapshotter>,
    observer: Arc<dyn RequestObserver>,
}

impl SnapshotService {
    pub fn new(snapshotter: Arc<Snapshotter>, observer: Arc<dyn RequestObserver>) -> Self {
        SnapshotService {
            snapshotter,
            observer,
        }
    }

    /// Runs one snapshotter call where `runs` says, inside a span naming the method
    /// and key, and reports its outcome to the observer.
    async fn call<T, F>(&self, method: Method, key: &str, runs: Runs, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Snapshotter) -> rustlayer_core::Result<T> + Send + 'static,
    {
        self.observed(method, key, self.run(runs, f)).await
    }

    /// One request's work, however many calls it takes, as one span and one outcome.
    async fn observed<T>(
        &self,
        method: Method,
        key: &str,
        work: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let span =
            info_span!("rpc", method = method.as_str(), key = %truncate(key, MAX_LOGGED_KEY_BYTES));
        let result = work.instrument(span).await;
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.observer
            .observe(method, code_name(code), started.elapsed());
        result
    }

    async fn run<T, F>(&self, runs: Runs, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Snapshotter) -> rustlayer_core::Result<T> + Send + 'static,
    {
        let snapshotter = Arc::clone(&self.snapshotter);
        let outcome = match runs {
            Runs::OnBlockingPool => tokio::task::spawn_blocking(move || f(&snapshotter))
                .await
                .map_err(|join| join.to_string()),
            Runs::Inline => std::panic::catch_unwind(AssertUnwindSafe(|| f(&snapshotter)))
                .map_err(|_| "panic".to_owned()),
        };
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(log_and_convert(&err)),
            Err(panic) => {
                error!(%panic, "request handler panicked");
                Err(Status::internal("request handler panicked"))
            }
        }
    }

    fn mounts_run(&self) -> Runs {
        if self.snapshotter.backend().mounts_are_derived() {
            Runs::Inline
        } else {
            Runs::OnBlockingPool
        }
    }
}

/// Where a request's snapshotter work runs.
#[derive(Clone, Copy)]
enum Runs {
    /// Off the async runtime: anything that writes, syncs, walks a layer or asks the
    /// backend, any of which can take milliseconds.
    OnBlockingPool,
    /// On the runtime's own thread: a point read of the metadata (an idle reader
    /// connection, never a lock held across I/O) takes microseconds, less than
    /// handing it to another thread and waking this one again. containerd calls
    /// Stat once per snapshot to answer its List, and Mounts and Usage at every
    /// container start, so that hand-off adds up on a busy node.
    Inline,
}

/// gRPC's canonical code names, as `grpc-go` and containerd print them.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The gRPC status for a snapshotter error; containerd's client turns these back
/// into its errdefs classes, so the codes must be exact.
pub fn status_from(err: &Error) -> Status {
    let code = match err.code() {
        Code::NotFound => tonic::Code::NotFound,
        Code::AlreadyExists => tonic::Code::AlreadyExists,
        Code::InvalidArgument => tonic::Code::InvalidArgument,
        Code::FailedPrecondition => tonic::Code::FailedPrecondition,
        Code::ResourceExhausted => tonic::Code::ResourceExhausted,
        Code::Unimplemented => tonic::Code::Unimplemented,
        Code::Unavailable => tonic::Code::Unavailable,
        Code::Internal => tonic::Code::Internal,
    };
    let message = err.to_string();
    let message = match truncate(&message, MAX_STATUS_MESSAGE_BYTES) {
        kept if kept.len() < message.len() => {
            format!("{kept}… ({} more bytes)", message.len() - kept.len())
        }
        _ => message,
    };
    Status::new(code, message)
}

fn log_and_convert(err: &Error) -> Status {
    match err.code() {
        Code::Internal | Code::Unavailable | Code::ResourceExhausted => {
            error!(%err, "request failed")
        }
        // Refusals are part of the protocol (containerd probes with Stat, races
        // with AlreadyExists); they are not worth more than a debug line.
        _ => debug!(%err, "request refused"),
    }
    status_from(err)
}

/// A status message travels percent-encoded in an HTTP/2 header: one echoing a huge
/// input (a 50 KB filter) would overflow the client's header limit and turn a
/// precise refusal into a protocol error.
const MAX_STATUS_MESSAGE_BYTES: usize = 1024;
const MAX_LOGGED_KEY_BYTES: usize = 256;

type ListStream = Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for SnapshotService {
    async fn prepare(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = request.into_inner();
        let key = r.key.clone();
        let labels = r.labels;
        let mounts = self
            .call(Method::Prepare, &key, Runs::OnBlockingPool, move |s| {
                s.prepare(&r.key, &r.parent, &labels)
            })
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: convert::mounts(mounts),
        }))
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        let key = r.key.clone();
        let labels = r.labels;
        let mounts = self
            .call(Method::View, &key, Runs::OnBlockingPool, move |s| {
                s.view(&r.key, &r.parent, &labels)
            })
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: convert::mounts(mounts),
        }))
    }

    async fn mounts(
        &self,
        request: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let r = request.into_inner();
        let key = r.key.clone();
        let mounts = self
            .call(Method::Mounts, &key, self.mounts_run(), move |s| {
                s.mounts(&r.key)
            })
            .await?;
        Ok(Response::new(pb::MountsResponse {
            mounts: convert::mounts(mounts),
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let key = r.key.clone();
        let labels = r.labels;
        self.call(Method::Commit, &key, Runs::OnBlockingPool, move |s| {
            s.commit(&r.name, &r.key, &r.parent, &labels)
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let key = r.key.clone();
        self.call(Method::Remove, &key, Runs::OnBlockingPool, move |s| {
            s.remove(&r.key)
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let r = request.into_inner();
        let key = r.key.clone();
        let info = self
            .call(Method::Stat, &key, Runs::Inline, move |s| s.stat(&r.key))
            .await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(convert::info(info)),
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let Some(info) = r.info else {
            let err = Error::InvalidArgument("update carries no snapshot info".into());
            self.observer.observe(
                Method::Update,
                code_name(tonic::Code::InvalidArgument),
                Duration::ZERO,
            );
            return Err(status_from(&err));
        };
        let update = InfoUpdate {
            name: info.name,
            labels: info.labels,
            paths: r.update_mask.map(|m| m.paths).unwrap_or_default(),
        };
        let key = update.name.clone();
        let info = self
            .call(Method::Update, &key, Runs::OnBlockingPool, move |s| {
                s.update(&update)
            })
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(convert::info(info)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = request.into_inner();
        let infos = self
            .call(Method::List, "", Runs::OnBlockingPool, move |s| {
                let filters = Filters::parse(&r.filters)?;
                let mut infos = Vec::new();
                s.list(&filters, |info| infos.push(convert::info(info)))?;
                Ok(infos)
            })
            .await?;
        let mut infos = infos.into_iter();
        let mut batches = Vec::new();
        loop {
            let info: Vec<pb::Info> = infos.by_ref().take(LIST_BATCH).collect();
            if info.is_empty() {
                break;
            }
            batches.push(Ok(pb::ListSnapshotsResponse { info }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let key = request.into_inner().key;
        let usage = self
            .observed(Method::Usage, &key, async {
                let probe = key.clone();
                match self
                    .run(Runs::Inline, move |s| s.usage_source(&probe))
                    .await?
                {
                    UsageSource::Recorded(usage) => Ok(Measured {
                        usage,
                        method: UsageMethod::Recorded,
                        limits: Limits::default(),
                    }),
                    // An active layer is measured: a walk, kept off the runtime.
                    UsageSource::Active(id) => {
                        let key = key.clone();
                        self.run(Runs::OnBlockingPool, move |s| s.measure(&key, id))
                            .await
                    }
                }
            })
            .await?;
        let mut response = Response::new(convert::usage(usage.usage));
        convert::usage_details(&usage, response.metadata_mut());
        Ok(response)
    }

    async fn cleanup(&self, _request: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        self.call(Method::Cleanup, "", Runs::OnBlockingPool, |s| {
            s.cleanup().map(|_| ())
        })
        .await?;
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_echoing_a_huge_input_keeps_its_code_and_fits_a_header() {
        let input = "é".repeat(50_000);
        let status = status_from(&Error::InvalidArgument(format!(
            "filters: parse error: [{input}]"
        )));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().len() < MAX_STATUS_MESSAGE_BYTES + 40,
            "{}",
            status.message().len()
        );
        assert!(
            status
                .message()
                .starts_with("invalid argument: filters: parse error: [é")
        );
        assert!(status.message().ends_with("more bytes)"));

        let short = status_from(&Error::NotFound("k".into()));
        assert_eq!(short.message(), "snapshot \"k\" does not exist");
    }
}
