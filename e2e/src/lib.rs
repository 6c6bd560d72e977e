//! Harness for tests that run the real `rustlayer` binary: start a private daemon on
//! a temporary root, talk to it over its socket, stop it and check how it exited.
//!
//! The daemon mounts overlayfs at start, so these tests need root: each is
//! `#[ignore = "needs root: ..."]`, listed as ignored by a plain `cargo test`, and
//! run by the test script as root with `--include-ignored`, where it starts with
//! [`require_root`], which fails it if root or the binary is missing.

pub mod support;

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustlayer_api::snapshots as pb;
use rustlayer_api::snapshots::snapshots_client::SnapshotsClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

pub use rustlayer_api::snapshots::Kind as PbKind;

/// How long a daemon may take to start or stop before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// The binary under test: `RUSTLAYER_BIN`, or the workspace's debug build.
pub fn binary() -> PathBuf {
    match std::env::var_os("RUSTLAYER_BIN") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/rustlayer"),
    }
}

/// Fails the test unless it runs as root with the daemon's binary built.
#[track_caller]
pub fn require_root() {
    rustlayer_mount::testing::require_root("the daemon mounts overlayfs");
    assert!(
        binary().exists(),
        "{} is missing: build it first (cargo build -p rustlayer)",
        binary().display()
    );
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    /// Extra arguments, given again on every restart (a config file, a backend).
    args: Vec<String>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(&[])
    }

    /// Starts a daemon on a fresh root with extra command-line arguments.
    pub fn start_with(extra: &[&str]) -> Daemon {
        Self::start_in(&std::env::temp_dir(), extra)
    }

    /// Starts a daemon on a fresh root under `base`, for a root that must be on a
    /// particular filesystem.
    pub fn start_in(base: &Path, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir_in(base).expect("temp dir");
        let root = dir.path().join("root");
        let socket = dir.path().join("rustlayer.sock");
        let mut daemon = Daemon {
            log: dir.path().join("daemon.log"),
            dir,
            root,
            socket,
            child: None,
            args: extra.iter().map(|a| a.to_string()).collect(),
        };
        daemon.spawn();
        daemon.wait_ready();
        daemon
    }

    /// Starts the binary again on the same root, socket and arguments.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the daemon before restarting it");
        self.spawn();
        self.wait_ready();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log");
        let child = Command::new(binary())
            .arg("serve")
            .arg("--root")
            .arg(&self.root)
            .arg("--address")
            .arg(&self.socket)
            .args(&self.args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start rustlayer");
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if StdUnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("daemon exited during start with {status}:\n{}", self.log());
            }
            assert!(
                started.elapsed() < DEADLINE,
                "daemon not ready after {DEADLINE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    /// Sends a signal and waits for the exit status.
    pub fn stop_with(&mut self, signal: rustix::process::Signal) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, signal);
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if started.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!(
                    "daemon ignored {signal:?} for {DEADLINE:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and the exit must be clean.
    pub fn stop(&mut self) {
        let status = self.stop_with(rustix::process::Signal::TERM);
        assert!(
            status.success(),
            "daemon exited with {status}:\n{}",
            self.log()
        );
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A thin convenience over the generated client, speaking in plain strings.
#[derive(Clone)]
pub struct Client {
    pub raw: SnapshotsClient<Channel>,
}

pub type Labels = BTreeMap<String, String>;

impl Client {
    pub async fn connect(socket: &Path) -> Client {
        Client {
            raw: rustlayer_server::connect(socket)
                .await
                .expect("connect to daemon"),
        }
    }

    pub async fn prepare(
        &self,
        key: &str,
        parent: &str,
    ) -> Result<Vec<rustlayer_core::Mount>, tonic::Status> {
        self.prepare_labeled(key, parent, Labels::new()).await
    }

    pub async fn prepare_labeled(
        &self,
        key: &str,
        parent: &str,
        labels: Labels,
    ) -> Result<Vec<rustlayer_core::Mount>, tonic::Status> {
        let r = self
            .raw
            .clone()
            .prepare(pb::PrepareSnapshotRequest {
                snapshotter: String::new(),
                key: key.into(),
                parent: parent.into(),
                labels,
            })
            .await?;
        Ok(mounts(r.into_inner().mounts))
    }

    pub async fn view(
        &self,
        key: &str,
        parent: &str,
    ) -> Result<Vec<rustlayer_core::Mount>, tonic::Status> {
        let r = self
            .raw
            .clone()
            .view(pb::ViewSnapshotRequest {
                snapshotter: String::new(),
                key: key.into(),
                parent: parent.into(),
                labels: Labels::new(),
            })
            .await?;
        Ok(mounts(r.into_inner().mounts))
    }

    pub async fn mounts(&self, key: &str) -> Result<Vec<rustlayer_core::Mount>, tonic::Status> {
        let r = self
            .raw
            .clone()
            .mounts(pb::MountsRequest {
                snapshotter: String::new(),
                key: key.into(),
            })
            .await?;
        Ok(mounts(r.into_inner().mounts))
    }

    pub async fn commit(&self, name: &str, key: &str) -> Result<(), tonic::Status> {
        self.commit_onto(name, key, "").await
    }

    /// Commit naming a parent: containerd 2.2's rebase of a layer prepared without
    /// one.
    pub async fn commit_onto(
        &self,
        name: &str,
        key: &str,
        parent: &str,
    ) -> Result<(), tonic::Status> {
        self.raw
            .clone()
            .commit(pb::CommitSnapshotRequest {
                snapshotter: String::new(),
                name: name.into(),
                key: key.into(),
                labels: Labels::new(),
                parent: parent.into(),
            })
            .await?;
        Ok(())
    }

    pub async fn remove(&self, key: &str) -> Result<(), tonic::Status> {
        self.raw
            .clone()
            .remove(pb::RemoveSnapshotRequest {
                snapshotter: String::new(),
                key: key.into(),
            })
            .await?;
        Ok(())
    }

    pub async fn stat(&self, key: &str) -> Result<pb::Info, tonic::Status> {
        let r = self
            .raw
            .clone()
            .stat(pb::StatSnapshotRequest {
                snapshotter: String::new(),
                key: key.into(),
            })
            .await?;
        Ok(r.into_inner().info.unwrap_or_default())
    }

    pub async fn usage(&self, key: &str) -> Result<pb::UsageResponse, tonic::Status> {
        let r = self
            .raw
            .clone()
            .usage(pb::UsageRequest {
                snapshotter: String::new(),
                key: key.into(),
            })
            .await?;
        Ok(r.into_inner())
    }

    pub async fn list(&self, filters: &[&str]) -> Result<Vec<pb::Info>, tonic::Status> {
        let mut stream = self
            .raw
            .clone()
            .list(pb::ListSnapshotsRequest {
                snapshotter: String::new(),
                filters: filters.iter().map(|f| f.to_string()).collect(),
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream.next().await {
            out.extend(batch?.info);
        }
        Ok(out)
    }

    pub async fn names(&self, filters: &[&str]) -> Vec<String> {
        let mut names: Vec<String> = self
            .list(filters)
            .await
            .expect("list")
            .into_iter()
            .map(|i| i.name)
            .collect();
        names.sort();
        names
    }

    pub async fn cleanup(&self) -> Result<(), tonic::Status> {
        self.raw
            .clone()
            .cleanup(pb::CleanupRequest {
                snapshotter: String::new(),
            })
            .await?;
        Ok(())
    }
}

fn mounts(list: Vec<rustlayer_api::types::Mount>) -> Vec<rustlayer_core::Mount> {
    list.into_iter()
        .map(|m| rustlayer_core::Mount {
            fs_type: m.r#type,
            source: m.source,
            options: m.options,
        })
        .collect()
}

/// A mount point that unmounts itself, so a failing assertion leaves nothing mounted.
///
/// The unmount detaches: a child another test thread is forking at that moment
/// holds a copy of every open descriptor until it execs, a file of this mount's
/// among them, and a plain unmount would fail with EBUSY. Had that failure been
/// ignored, removing the temporary directory would have deleted the snapshot's
/// files through the mount still attached to it.
pub struct Mounted {
    target: Option<tempfile::TempDir>,
}

impl Mounted {
    pub fn new(mounts: &[rustlayer_core::Mount]) -> Mounted {
        let target = tempfile::tempdir().expect("mount point");
        rustlayer_mount::mount_all(&rustlayer_mount::LinuxMounter, mounts, target.path())
            .expect("mount snapshot");
        Mounted {
            target: Some(target),
        }
    }

    pub fn path(&self) -> &Path {
        self.target.as_ref().expect("mounted until dropped").path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        use rustlayer_mount::Mounter;
        let Some(target) = self.target.take() else {
            return;
        };
        if let Err(err) = rustlayer_mount::LinuxMounter.unmount(target.path(), true) {
            // Keep the directory and whatever is under it rather than delete
            // the snapshot's contents through a mount that is still there.
            let kept = target.keep();
            eprintln!("cannot detach {}: {err}; left in place", kept.display());
        }
    }
}
