//! Kubernetes' path onto rustlayer: a private containerd whose CRI plugin is
//! configured with `snapshotter = "rustlayer"`, driven over CRI the way the
//! kubelet drives it: a host-network pod sandbox, a container that prints and
//! writes a file, its log read from the CRI log path, its root checked to be a
//! rustlayer snapshot, then the pod torn down and its snapshots gone from the
//! daemon once containerd's garbage collection has run.
//!
//! Needs root, containerd (with its CRI plugin), runc, python3 and a static
//! busybox (Debian: containerd runc python3 busybox-static). hack/cri-e2e.sh
//! runs it:
//!
//!     cargo test -p rustlayer-e2e --test cri -- --ignored --nocapture

use std::collections::HashMap;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustlayer_e2e::{Client, Daemon, PbKind, privileged};
use rustlayer_e2e_cri::v1::image_service_client::ImageServiceClient;
use rustlayer_e2e_cri::v1::runtime_service_client::RuntimeServiceClient;
use rustlayer_e2e_cri::v1::{self as cri, ContainerState, NamespaceMode};
use tonic::transport::Channel;

/// The namespace containerd's CRI plugin keeps everything in.
const NS: &str = "k8s.io";
const SANDBOX_IMAGE: &str = "docker.io/library/rustlayer-pause:e2e";
const WORKLOAD_IMAGE: &str = "docker.io/library/rustlayer-e2e:latest";
/// The cgroup (in every hierarchy) the pod's containers are put under.
const CGROUP_PARENT: &str = "rustlayer-cri-e2e";
/// Bounds every wait: a hung containerd or daemon fails the test, never stalls it.
const DEADLINE: Duration = Duration::from_secs(60);

/// The tools this test runs, or why it cannot.
fn missing_tools() -> Vec<String> {
    let mut missing: Vec<String> = [
        "containerd",
        "ctr",
        "containerd-shim-runc-v2",
        "runc",
        "python3",
    ]
    .iter()
    .filter(|tool| {
        !std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
            .unwrap_or(false)
    })
    .map(|tool| tool.to_string())
    .collect();
    if !Path::new("/bin/busybox").is_file() {
        missing.push("/bin/busybox (busybox-static)".into());
    }
    missing
}

/// A private containerd with CRI on, using `rustlayer` at `snapshotter_socket`.
/// Dropping it kills containerd and the shims it started and unmounts what is
/// left under its directory, so a failed assertion leaves nothing behind.
struct Containerd {
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    fn start(snapshotter_socket: &Path) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("rustlayer-cri-e2e.")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        let socket = d.join("containerd.sock");
        for sub in ["cni/bin", "cni/net.d", "pods"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        // No CNI: host-network pods need none. restrict_oom_score_adj because
        // containerd runs with a raised OOM score adjustment here, which the
        // kubelet would otherwise be refused lowering. Stream server on a
        // free port, so parallel containerds do not collide on 10010.
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "rustlayer"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  Root = "{d}/runc"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{d}/cni/bin"
  conf_dir = "{d}/cni/net.d"

[proxy_plugins.rustlayer]
  type = "snapshot"
  address = "{rl}"
"#,
            d = d.display(),
            sock = socket.display(),
            rl = snapshotter_socket.display(),
        );
        std::fs::write(d.join("containerd.toml"), config).expect("config");
        let log = std::fs::File::create(d.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("containerd.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let mut containerd = Containerd {
            dir,
            socket,
            child: Some(child),
        };
        let started = Instant::now();
        while StdUnixStream::connect(&containerd.socket).is_err() {
            if let Some(status) = containerd
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("containerd exited with {status}:\n{}", containerd.log());
            }
            assert!(
                started.elapsed() < DEADLINE,
                "containerd not listening after {DEADLINE:?}:\n{}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        containerd
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.path().join("containerd.log")).unwrap_or_default();
        // The tail, past the plugin-loading chatter.
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("loading plugin"))
            .collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `ctr` against this containerd, in CRI's namespace; panics on failure.
    fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("timeout")
            .arg("120")
            .arg("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", NS])
            .args(args)
            .output()
            .expect("run ctr");
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Builds an image with one of the e2e image scripts and imports it onto
    /// rustlayer, as a pull by the kubelet would unpack it.
    fn import(&self, script: &str, name: &str) {
        let archive = self
            .path()
            .join(format!("{}.tar", name.replace(['/', ':'], "_")));
        let out = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(script))
            .arg("--output")
            .arg(&archive)
            .arg("--name")
            .arg(name)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.ctr(&[
            "images",
            "import",
            "--snapshotter",
            "rustlayer",
            archive.to_str().expect("utf-8 path"),
        ]);
    }

    fn mounted_under(&self) -> Vec<String> {
        let prefix = format!("{}/", self.path().display());
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_owned)
            .collect()
    }

    /// SIGTERM and a clean exit.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!(
                    "containerd ignored SIGTERM for {DEADLINE:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "containerd exited with {status}:\n{}",
            self.log()
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Shims outlive containerd; ours name our directory on their command line.
        let dir = self.path().display().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("containerd-shim")
                && cmdline.contains(&dir)
                && let Some(pid) = rustix::process::Pid::from_raw(pid)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        // The pod's cgroups, once their processes are gone (cgroup v1: one tree
        // per hierarchy). rmdir only removes empty ones.
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            remove_cgroup_tree(&hierarchy.path().join(CGROUP_PARENT));
        }
        remove_cgroup_tree(&Path::new("/sys/fs/cgroup").join(CGROUP_PARENT));
        let mut mounts = self.mounted_under();
        mounts.sort();
        for m in mounts.iter().rev() {
            let _ = rustix::mount::unmount(m.as_str(), rustix::mount::UnmountFlags::DETACH);
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&child.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Polls `probe` until it returns Some, or None after DEADLINE.
async fn within<T, F, Fut>(mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if started.elapsed() > DEADLINE {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `probe` until it returns Some, failing after DEADLINE with `what`.
async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    within(probe)
        .await
        .unwrap_or_else(|| panic!("{what}: not after {DEADLINE:?}"))
}

/// The last lines of a log, for a failure message.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Bounds one CRI call.
async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> T {
    match tokio::time::timeout(DEADLINE, call).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => panic!("{what}: {status:?}"),
        Err(_) => panic!("{what}: no answer in {DEADLINE:?}"),
    }
}

/// The daemon's snapshots whose key names `id` (containerd keys a container's
/// root by the container id, under "<namespace>/<n>/").
async fn daemon_snapshots_of(daemon: &Client, id: &str) -> Vec<(String, i32)> {
    daemon
        .list(&[])
        .await
        .expect("list the daemon's snapshots")
        .into_iter()
        .filter(|info| info.name.contains(id))
        .map(|info| (info.name, info.kind))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs containerd's CRI plugin; hack/cri-e2e.sh runs it"]
async fn kubelet_runs_a_pod_on_rustlayer() {
    if !privileged("kubelet_runs_a_pod_on_rustlayer") {
        return;
    }
    let missing = missing_tools();
    if !missing.is_empty() {
        let why = format!("needs {}", missing.join(", "));
        if std::env::var("RUSTLAYER_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("kubelet_runs_a_pod_on_rustlayer: {why}");
        }
        eprintln!("skipped kubelet_runs_a_pod_on_rustlayer: {why}");
        return;
    }

    let mut daemon = Daemon::start();
    let snapshots = daemon.client().await;
    let mut containerd = Containerd::start(&daemon.socket);

    let channel: Channel = eventually("containerd's CRI socket accepts a connection", || async {
        rustlayer_e2e_cri::connect(&containerd.socket).await.ok()
    })
    .await;
    let mut runtime = RuntimeServiceClient::new(channel.clone());
    let images = ImageServiceClient::new(channel);

    // The CRI plugin registers after containerd starts serving; the kubelet too
    // retries Version until it answers.
    let version = eventually("CRI Version answers", || {
        let mut runtime = runtime.clone();
        async move {
            runtime
                .version(cri::VersionRequest {
                    version: "v1".into(),
                })
                .await
                .ok()
                .map(|r| r.into_inner())
        }
    })
    .await;
    assert_eq!(version.runtime_name, "containerd", "{version:?}");
    assert_eq!(version.runtime_api_version, "v1", "{version:?}");
    eprintln!("CRI: {} {}", version.runtime_name, version.runtime_version);

    containerd.import("cri/make_pause_image.py", SANDBOX_IMAGE);
    containerd.import("containerd/make_image.py", WORKLOAD_IMAGE);
    // CRI learns of imported images from containerd's events.
    for image in [SANDBOX_IMAGE, WORKLOAD_IMAGE] {
        eventually(&format!("CRI ImageStatus knows {image}"), || {
            let mut images = images.clone();
            async move {
                images
                    .image_status(cri::ImageStatusRequest {
                        image: Some(cri::ImageSpec {
                            image: image.into(),
                            ..Default::default()
                        }),
                        verbose: false,
                    })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().image)
            }
        })
        .await;
    }

    let log_directory = containerd.path().join("pods/default_rustlayer-e2e_uid-1");
    std::fs::create_dir_all(&log_directory).expect("pod log dir");
    // A host-network pod, as the kubelet sends it: no hostname (the runtime
    // refuses one with the node's network namespace).
    let sandbox_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "rustlayer-e2e".into(),
            uid: "uid-1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: log_directory.to_str().expect("utf-8").into(),
        labels: HashMap::from([("app".into(), "rustlayer-e2e".into())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            // The pod's cgroups in a tree of the test's own, removed at the end.
            cgroup_parent: format!("/{CGROUP_PARENT}"),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = bounded(
        "RunPodSandbox",
        runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        }),
    )
    .await
    .pod_sandbox_id;
    eprintln!("RunPodSandbox: {pod}");

    let container = bounded(
        "CreateContainer",
        runtime.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "work".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: WORKLOAD_IMAGE.into(),
                    ..Default::default()
                }),
                command: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo hello from rustlayer; echo written >/written; cat /written; cat /etc/motd; ls /data".into(),
                ],
                log_path: "work/0.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config),
        }),
    )
    .await
    .container_id;
    eprintln!("CreateContainer: {container}");

    // Both roots are rustlayer snapshots: the sandbox's and the container's,
    // each an active snapshot keyed by its id.
    for (what, id) in [("the sandbox", &pod), ("the container", &container)] {
        let found = daemon_snapshots_of(&snapshots, id).await;
        assert!(
            found.len() == 1 && found[0].1 == PbKind::Active as i32,
            "{what} {id}: want one active snapshot in the daemon, got {found:?}"
        );
    }
    let container_key = daemon_snapshots_of(&snapshots, &container).await[0]
        .0
        .clone();

    bounded(
        "StartContainer",
        runtime.start_container(cri::StartContainerRequest {
            container_id: container.clone(),
        }),
    )
    .await;
    let status = eventually("the container exits", || {
        let mut runtime = runtime.clone();
        let id = container.clone();
        async move {
            let status = runtime
                .container_status(cri::ContainerStatusRequest {
                    container_id: id,
                    verbose: false,
                })
                .await
                .ok()?
                .into_inner()
                .status?;
            (status.state == ContainerState::ContainerExited as i32).then_some(status)
        }
    })
    .await;
    assert_eq!(status.exit_code, 0, "{status:?}");

    // CRI's log format: "<time> <stream> <P|F> <text>" a line.
    let log_path = log_directory.join("work/0.log");
    assert_eq!(Path::new(&status.log_path), log_path, "{status:?}");
    let log = std::fs::read_to_string(&log_path).expect("container log");
    let lines: Vec<String> = log
        .lines()
        .map(|l| {
            let fields: Vec<&str> = l.splitn(4, ' ').collect();
            assert!(
                fields.len() == 4 && fields[1] == "stdout" && fields[2] == "F",
                "not a CRI log line: {l:?}"
            );
            fields[3].to_owned()
        })
        .collect();
    assert_eq!(
        lines,
        ["hello from rustlayer", "written", "new", "fresh"],
        "the container's log (merged image root: /etc/motd from layer 2, /data opaque in layer 3)"
    );

    // The write landed in the container's own upper directory on the daemon's root.
    let mounts = snapshots.mounts(&container_key).await.expect("Mounts");
    let upper = mounts
        .iter()
        .flat_map(|m| m.options.iter())
        .find_map(|o| o.strip_prefix("upperdir="))
        .unwrap_or_else(|| panic!("no upperdir in {mounts:?}"));
    assert!(
        Path::new(upper).starts_with(&daemon.root),
        "upper dir {upper} is not under the daemon's root"
    );
    assert_eq!(
        std::fs::read_to_string(Path::new(upper).join("written"))
            .expect("/written in the upper dir"),
        "written\n"
    );

    // The kubelet's teardown order.
    bounded(
        "StopPodSandbox",
        runtime.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        }),
    )
    .await;
    bounded(
        "RemoveContainer",
        runtime.remove_container(cri::RemoveContainerRequest {
            container_id: container.clone(),
        }),
    )
    .await;
    bounded(
        "RemovePodSandbox",
        runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        }),
    )
    .await;
    let left = bounded(
        "ListPodSandbox",
        runtime.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }),
    )
    .await
    .items;
    assert!(left.is_empty(), "pods left: {left:?}");

    // containerd removes the snapshots from the daemon in its garbage
    // collection. The deletions schedule one, but containerd 1.6's scheduler
    // drops a deletion that lands while a collection is running (two removals in
    // a row, as here), leaving it to the next deletion on a busy node. So ask
    // for a collection, as a synchronous lease deletion does, and wait for it.
    containerd.ctr(&["leases", "create", "--id", "rustlayer-e2e-gc"]);
    containerd.ctr(&["leases", "delete", "--sync", "rustlayer-e2e-gc"]);
    for (what, id) in [("sandbox", &pod), ("container", &container)] {
        let gone = within(|| async {
            daemon_snapshots_of(&snapshots, id)
                .await
                .is_empty()
                .then_some(())
        })
        .await;
        assert!(
            gone.is_some(),
            "the daemon still has the {what}'s snapshot {DEADLINE:?} after the pod was removed: {:?}\n\
             --- daemon log\n{}\n--- containerd log\n{}",
            daemon_snapshots_of(&snapshots, id).await,
            tail(&daemon.log(), 30),
            containerd.log(),
        );
    }
    assert!(
        !Path::new(upper).exists(),
        "the container's upper dir {upper} is still on disk"
    );
    // The images' layers stay: the pod is gone, the node keeps its images.
    let committed = snapshots
        .list(&["kind==committed"])
        .await
        .expect("list committed");
    assert_eq!(
        committed.len(),
        4,
        "pause (1) and workload (3) layers: {committed:?}"
    );

    containerd.stop();
    daemon.stop();
}
