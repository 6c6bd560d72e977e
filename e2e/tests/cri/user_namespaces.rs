//! Pods in user namespaces (`hostUsers: false`) on the `rustlayer` handler of
//! containerd 2.x, with this test as the kubelet: the proxy plugin declares
//! `remap-ids` and the daemon runs with `remap_ids = true`, so containerd hands
//! the pod's mapping to rustlayer as snapshot labels and idmaps the layers that
//! rustlayer's mounts name (`uidmap=`/`gidmap=`) instead of chowning a copy of
//! the image.
//!
//! containerd 2.x's CRI plugin reports a handler as supporting user namespaces
//! (`RuntimeHandlerFeatures.user_namespaces`, which the kubelet reads before it
//! runs such a pod) only when `runc features` lists the user namespace and
//! idmapped mounts, which runc has from 1.2 (Debian 12's is 1.1.5); and such a
//! pod's network namespace is made inside its user namespace, never the node's,
//! so CRI calls CNI (the test's own plugin, e2e/cri/cni). hack/runc-fetch.sh
//! provides sid's runc and hack/cri-e2e.sh names its directory in CRI_E2E_RUNC.
//! These tests need containerd ≥ 2.0 (image volumes ≥ 2.1) and fail on older
//! releases rather than pass: hack/cri-e2e.sh runs them on 2.x only.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustlayer_core::{GID_MAPPING_LABEL, UID_MAPPING_LABEL};
use rustlayer_e2e::{Client, PbKind, require_root};
use rustlayer_e2e_cri::v1::{self as cri, NamespaceMode};

use super::{
    CGROUP_PARENT, DEADLINE, HANDLER, Node, RUNTIME_HANDLER_ANNOTATION, Release,
    UserNamespaceRuntime, added_snapshots, bounded, daemon_committed_names, daemon_snapshots,
    eventually, layers_of, pull_for_handler, tail, within,
};

/// The size of every pod's id range, as the kubelet allocates them.
pub(super) const RANGE: u32 = 65536;

/// A node as these tests need it: the daemon with `remap_ids`, containerd with
/// `remap-ids`, a runc with idmapped mounts and a pod network, and the sandbox
/// and workload images pulled for the handler.
pub(super) struct UserNamespaceNode {
    node: Node,
    /// What PullImage answered for the workload image: what the kubelet puts
    /// in an image volume's ImageSpec.
    pub workload_ref: String,
    /// The layers of both images, sorted: all the daemon may hold committed.
    pub layers: Vec<String>,
}

impl std::ops::Deref for UserNamespaceNode {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

/// A runc's version line, and whether its `runc features` list both the user
/// namespace and idmapped mounts: what containerd 2.1's CRI requires before it
/// reports a handler as supporting user namespaces (runc >= 1.2).
fn runc_features(runc: &Path) -> (String, bool) {
    let run = |arg: &str| {
        let out = std::process::Command::new(runc)
            .arg(arg)
            .output()
            .unwrap_or_else(|e| panic!("{} {arg}: {e}", runc.display()));
        assert!(out.status.success(), "{} {arg}: {out:?}", runc.display());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let version = run("--version")
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let features: serde_json::Value =
        serde_json::from_str(&run("features")).expect("runc features prints JSON");
    let linux = &features["linux"];
    let userns = linux["namespaces"]
        .as_array()
        .is_some_and(|n| n.iter().any(|n| n == "user"));
    let idmap = linux["mountExtensions"]["idmap"]["enabled"] == true;
    (version, userns && idmap)
}

/// A path from the environment hack/cri-e2e.sh sets up.
fn env_path(name: &str, what: &str) -> PathBuf {
    let path = std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("{name} is not set: {what} (hack/cri-e2e.sh fetches it with hack/runc-fetch.sh)")
        });
    assert!(path.exists(), "{name}={}: not there", path.display());
    path
}

impl UserNamespaceNode {
    /// `need` says which release the caller's feature came with, as
    /// (major, minor, what): an older containerd fails the test, loudly.
    pub async fn start(need: (u32, u32, &str)) -> UserNamespaceNode {
        require_root();
        let release = Release::of_containerd_on_path();
        let (major, minor, what) = need;
        assert!(
            release.at_least(major, minor),
            "{what} needs containerd >= {major}.{minor}; the one on PATH is {release} \
             (hack/cri-e2e.sh runs this test on 2.x only)"
        );
        let user_namespaces = UserNamespaceRuntime {
            runc: env_path("CRI_E2E_RUNC", "a runc >= 1.2").join("runc"),
        };
        let node = Node::start(what, Some(&user_namespaces)).await;

        // The kubelet runs a pod with hostUsers: false only on a handler whose
        // features say it can; containerd says so only for a runc with idmapped
        // mounts.
        let status = bounded(
            "CRI Status",
            node.runtime
                .clone()
                .status(cri::StatusRequest { verbose: false }),
        )
        .await;
        let supports_userns = |handler: &str| {
            status
                .runtime_handlers
                .iter()
                .find(|h| h.name == handler)
                .and_then(|h| h.features)
                .unwrap_or_else(|| panic!("CRI Status lists no features of {handler}: {status:?}"))
                .user_namespaces
        };
        assert!(
            supports_userns(HANDLER),
            "containerd {release} says handler {HANDLER} (runc {}) cannot run pods in user \
             namespaces: {status:?}",
            user_namespaces.runc.display()
        );
        // The node's other handler runs the runc on PATH (Debian 12's 1.1.5):
        // containerd's answer for it is what that runc's features say.
        let (plain_runc, expected) = runc_features(Path::new("runc"));
        assert_eq!(
            supports_userns("runc"),
            expected,
            "containerd's user-namespace answer for the handler running {plain_runc}"
        );
        eprintln!(
            "CRI Status: handler {HANDLER} ({}) supports user namespaces; handler runc \
             ({plain_runc}): {expected}",
            runc_features(&user_namespaces.runc).0
        );

        let annotated = pod_config("pull", "uid-pull", Path::new("/"), None);
        let pulled = [&node.sandbox_image, &node.workload_image];
        let workload_ref = pull_for_handler(&node.images, pulled, &annotated)
            .await
            .pop()
            .expect("the workload's PullImage answer");
        let layers = layers_of(pulled);
        assert_eq!(
            daemon_committed_names(&node.snapshots).await,
            layers,
            "the pulls unpacked each layer into rustlayer once"
        );
        UserNamespaceNode {
            node,
            workload_ref,
            layers,
        }
    }

    /// A pod's log directory, made.
    pub fn log_directory(&self, pod: &str) -> PathBuf {
        let dir = self.containerd.path().join("pods").join(pod);
        std::fs::create_dir_all(&dir).expect("pod log dir");
        dir
    }

    /// RunPodSandbox for the handler, timed.
    pub async fn run_pod(&self, config: &cri::PodSandboxConfig) -> (String, Duration) {
        let started = Instant::now();
        let pod = bounded(
            "RunPodSandbox",
            self.runtime
                .clone()
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: HANDLER.into(),
                }),
        )
        .await
        .pod_sandbox_id;
        (pod, started.elapsed())
    }

    /// CreateContainer, timed.
    pub async fn create(
        &self,
        pod: &str,
        sandbox: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<(String, Duration), tonic::Status> {
        let started = Instant::now();
        let id = tokio::time::timeout(
            DEADLINE,
            self.runtime
                .clone()
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod.into(),
                    config: Some(config),
                    sandbox_config: Some(sandbox.clone()),
                }),
        )
        .await
        .expect("CreateContainer answers")?
        .into_inner()
        .container_id;
        Ok((id, started.elapsed()))
    }

    /// StartContainer, timed.
    pub async fn start_container(&self, id: &str) -> Duration {
        let started = Instant::now();
        bounded(
            "StartContainer",
            self.runtime
                .clone()
                .start_container(cri::StartContainerRequest {
                    container_id: id.into(),
                }),
        )
        .await;
        started.elapsed()
    }

    /// The kubelet's teardown of a pod, then containerd's garbage collection
    /// until none of `keys` is left in the daemon; the images' layers stay.
    pub async fn remove_pod(&self, pod: &str, containers: &[&str], keys: &[String]) {
        let mut runtime = self.runtime.clone();
        bounded(
            "StopPodSandbox",
            runtime.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.into(),
            }),
        )
        .await;
        for id in containers {
            bounded(
                "RemoveContainer",
                runtime.remove_container(cri::RemoveContainerRequest {
                    container_id: (*id).into(),
                }),
            )
            .await;
        }
        bounded(
            "RemovePodSandbox",
            runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            }),
        )
        .await;
        // A collection of its own (see the pod test in cri.rs for why).
        self.containerd
            .ctr(&["leases", "create", "--id", "rustlayer-e2e-gc"]);
        self.containerd
            .ctr(&["leases", "delete", "--sync", "rustlayer-e2e-gc"]);
        let left = within(|| async {
            let names: BTreeSet<String> = daemon_snapshots(&self.snapshots)
                .await
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            keys.iter().all(|k| !names.contains(k)).then_some(())
        })
        .await;
        assert!(
            left.is_some(),
            "the daemon still has the pod's snapshots {DEADLINE:?} after it was removed: {:?}\n\
             --- daemon log\n{}\n--- containerd log\n{}",
            daemon_snapshots(&self.snapshots).await,
            tail(&self.daemon.log(), 30),
            self.containerd.log(),
        );
        assert_eq!(
            daemon_committed_names(&self.snapshots).await,
            self.layers,
            "the images' layers stay"
        );
    }
}

/// One id mapping line as the kubelet sends it: container 0.. onto host `host`..
pub(super) fn mapping(host: u32) -> Vec<cri::IdMapping> {
    vec![cri::IdMapping {
        host_id: host,
        container_id: 0,
        length: RANGE,
    }]
}

/// A pod's namespaces as the kubelet asks for them: its own network namespace
/// (CNI), and with `host` a user namespace mapping 0..65536 onto it.
pub(super) fn namespaces(host: Option<u32>) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        userns_options: host.map(|host| cri::UserNamespace {
            mode: NamespaceMode::Pod as i32,
            uids: mapping(host),
            gids: mapping(host),
        }),
        ..Default::default()
    }
}

/// A pod of the handler, annotated as the kubelet's pods are for 2.1's pulls.
pub(super) fn pod_config(
    name: &str,
    uid: &str,
    log_directory: &Path,
    host: Option<u32>,
) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_directory.to_str().expect("utf-8").into(),
        annotations: [(RUNTIME_HANDLER_ANNOTATION.to_owned(), HANDLER.to_owned())].into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("/{CGROUP_PARENT}"),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(host)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container of `image` running `script` under sh, in the pod's namespaces
/// (containerd refuses a container whose user namespace differs from its pod's).
pub(super) fn container_config(
    name: &str,
    image: &str,
    script: &str,
    host: Option<u32>,
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}/0.log"),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces(host)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The text of a CRI log's lines ("<time> <stream> <P|F> <text>" each).
pub(super) fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_owned))
        .collect()
}

/// The value of `key=` in the first log line that has it.
pub(super) fn logged(lines: &[String], key: &str) -> Option<String> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_owned())
}

/// Waits until the container's log has a `key=` line and returns all lines.
pub(super) async fn log_with(path: &Path, key: &str) -> Vec<String> {
    eventually(&format!("{} logs {key}=", path.display()), || async {
        let lines = log_lines(path);
        logged(&lines, key).is_some().then_some(lines)
    })
    .await
}

/// The snapshots one CRI call added to the daemon, all active.
pub(super) fn added_actives(
    before: &BTreeSet<(String, i32)>,
    after: &BTreeSet<(String, i32)>,
    what: &str,
) -> Vec<String> {
    let added = added_snapshots(before, after, what);
    assert!(
        added.iter().all(|(_, kind)| *kind == PbKind::Active as i32),
        "{what} added a committed snapshot to the daemon (a copy of a layer): {added:?}"
    );
    added.into_iter().map(|(key, _)| key).collect()
}

/// The snapshot's mapping labels as the daemon stored them: (uid, gid).
pub(super) async fn mapping_labels(snapshots: &Client, key: &str) -> (String, String) {
    let info = snapshots.stat(key).await.expect("Stat");
    let get = |label: &str| info.labels.get(label).cloned().unwrap_or_default();
    (get(UID_MAPPING_LABEL), get(GID_MAPPING_LABEL))
}

/// The upper directory the daemon's mounts of `key` name.
pub(super) async fn upper_dir(snapshots: &Client, key: &str) -> PathBuf {
    let mounts = snapshots.mounts(key).await.expect("Mounts");
    mounts
        .iter()
        .flat_map(|m| m.options.iter())
        .find_map(|o| o.strip_prefix("upperdir="))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no upperdir in {mounts:?}"))
}

/// The value of a mount option of `key`'s overlay mount (`uidmap`, ...).
async fn mount_option(snapshots: &Client, key: &str, option: &str) -> Option<String> {
    let mounts = snapshots.mounts(key).await.expect("Mounts");
    mounts
        .iter()
        .flat_map(|m| m.options.iter())
        .find_map(|o| o.strip_prefix(option)?.strip_prefix('='))
        .map(str::to_owned)
}

/// The host ids a process runs as: the real ids from /proc/PID/status.
fn host_ids(pid: u32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let id = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
    };
    (id("Uid:"), id("Gid:"))
}

/// The container's init process on the host, from CRI's verbose status.
async fn container_pid(node: &UserNamespaceNode, id: &str) -> u32 {
    let status = bounded(
        "ContainerStatus (verbose)",
        node.runtime
            .clone()
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            }),
    )
    .await;
    let info: serde_json::Value = serde_json::from_str(
        status
            .info
            .get("info")
            .unwrap_or_else(|| panic!("no info in {status:?}")),
    )
    .expect("the verbose info is JSON");
    info["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .filter(|&p| p > 0)
        .unwrap_or_else(|| panic!("no pid in {info}"))
}

/// What the container reports about itself, then stays up for the host's look.
const PROBE: &str = "echo uid=$(id -u) gid=$(id -g); \
     echo map=$(cat /proc/self/uid_map); \
     echo owners=$(stat -c %u:%g / /etc/motd /bin/busybox); \
     echo written >/written && echo wrote=yes; \
     exec sleep 2147483647";

/// One pod with one container running [`PROBE`], in a user namespace mapped
/// onto `host` or none; returns what the test checks.
struct ProbedPod {
    pod: String,
    container: String,
    sandbox_key: String,
    container_key: String,
    lines: Vec<String>,
    pid: u32,
    /// RunPodSandbox, CreateContainer, StartContainer, and StartContainer's
    /// return to the container's first words in its log.
    timings: [Duration; 4],
}

async fn run_probe(node: &UserNamespaceNode, name: &str, host: Option<u32>) -> ProbedPod {
    let log_directory = node.log_directory(name);
    let sandbox = pod_config(name, &format!("uid-{name}"), &log_directory, host);
    let before = daemon_snapshots(&node.snapshots).await;
    let (pod, run) = node.run_pod(&sandbox).await;
    let after = daemon_snapshots(&node.snapshots).await;
    let added = added_actives(&before, &after, "RunPodSandbox");
    assert!(
        added.len() == 1 && added[0].contains(&pod),
        "{name}: the sandbox adds one active snapshot keyed by its id: {added:?}"
    );
    let sandbox_key = added[0].clone();

    let config = container_config("probe", &node.workload_image.name, PROBE, host);
    let (container, create) = node
        .create(&pod, &sandbox, config)
        .await
        .unwrap_or_else(|s| panic!("{name}: CreateContainer: {s:?}"));
    let before = after;
    let after = daemon_snapshots(&node.snapshots).await;
    let added = added_actives(&before, &after, "CreateContainer");
    assert!(
        added.len() == 1 && added[0].contains(&container),
        "{name}: the container adds one active snapshot keyed by its id: {added:?}"
    );
    let container_key = added[0].clone();
    let start = node.start_container(&container).await;
    let started = Instant::now();
    let lines = log_with(&log_directory.join("probe/0.log"), "wrote").await;
    let first_words = started.elapsed();
    let pid = container_pid(node, &container).await;
    ProbedPod {
        pod,
        container,
        sandbox_key,
        container_key,
        lines,
        pid,
        timings: [run, create, start, first_words],
    }
}

fn print_timings(what: &str, t: &[Duration; 4]) {
    eprintln!(
        "{what}: RunPodSandbox {:?}, CreateContainer {:?}, StartContainer {:?}: pod up in {:?}; \
         its first output seen {:?} later (polled every 100 ms)",
        t[0],
        t[1],
        t[2],
        t[..3].iter().sum::<Duration>(),
        t[3],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, containerd >= 2.0 with CRI, a runc >= 1.2 and CNI plugins: hack/cri-e2e.sh runs it on 2.x"]
async fn kubelet_runs_a_pod_in_a_user_namespace_on_idmapped_layers() {
    let node = UserNamespaceNode::start((2, 0, "a CRI pod in a user namespace on the proxy")).await;

    // A pod without a user namespace first, on the same node: the baseline
    // for the start times, and the container's root is the host's.
    let plain = run_probe(&node, "plain", None).await;
    assert_eq!(
        logged(&plain.lines, "uid").as_deref(),
        Some("0 gid=0"),
        "{:?}",
        plain.lines
    );
    assert_eq!(host_ids(plain.pid), (0, 0), "without a user namespace");
    print_timings("pod without a user namespace", &plain.timings);
    node.remove_pod(
        &plain.pod,
        &[&plain.container],
        &[plain.sandbox_key.clone(), plain.container_key.clone()],
    )
    .await;

    // The kubelet gives each pod its own 65536 ids, a multiple of 65536.
    let host = 17 * RANGE;
    let map = format!("0:{host}:{RANGE}");
    let userns = run_probe(&node, "userns", Some(host)).await;
    print_timings("pod in a user namespace", &userns.timings);
    let lines = &userns.lines;

    // Inside: root, in a user namespace, over root's image.
    assert_eq!(
        logged(lines, "uid").as_deref(),
        Some("0 gid=0"),
        "id -u and id -g inside: {lines:?}"
    );
    assert_eq!(
        logged(lines, "map")
            .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
            .as_deref(),
        Some(format!("0 {host} {RANGE}").as_str()),
        "the container's /proc/self/uid_map: {lines:?}"
    );
    assert_eq!(
        logged(lines, "owners").as_deref(),
        Some("0:0 0:0 0:0"),
        "/, /etc/motd and /bin/busybox are root's inside: {lines:?}"
    );
    assert_eq!(logged(lines, "wrote").as_deref(), Some("yes"), "{lines:?}");

    // Outside: the container's process runs as the mapped ids.
    assert_eq!(
        host_ids(userns.pid),
        (host, host),
        "/proc/{}/status of the container's process",
        userns.pid
    );

    // containerd handed rustlayer the mapping, and rustlayer's mounts carry it.
    for key in [&userns.sandbox_key, &userns.container_key] {
        assert_eq!(
            mapping_labels(&node.snapshots, key).await,
            (map.clone(), map.clone()),
            "the mapping labels on {key}"
        );
        assert_eq!(
            (
                mount_option(&node.snapshots, key, "uidmap").await,
                mount_option(&node.snapshots, key, "gidmap").await
            ),
            (Some(map.clone()), Some(map.clone())),
            "{key}'s mounts name the mapping for containerd to idmap its lower layers"
        );
    }

    // The write is in the container's upper directory, owned by the mapped root.
    let upper = upper_dir(&node.snapshots, &userns.container_key).await;
    assert!(
        upper.starts_with(&node.daemon.root),
        "{} is not under the daemon's root",
        upper.display()
    );
    let written = upper.join("written");
    assert_eq!(
        std::fs::read_to_string(&written).expect("/written in the upper dir"),
        "written\n"
    );
    for path in [&upper, &written] {
        let meta = std::fs::metadata(path).expect("stat");
        assert_eq!(
            (meta.uid(), meta.gid()),
            (host, host),
            "{} is the mapped root's",
            path.display()
        );
    }

    // No remapped copy of the image: the daemon holds the images' layers as
    // pulled and the pod's two active snapshots, nothing else.
    assert_eq!(daemon_committed_names(&node.snapshots).await, node.layers);
    let actives: Vec<String> = daemon_snapshots(&node.snapshots)
        .await
        .into_iter()
        .filter(|(_, kind)| *kind == PbKind::Active as i32)
        .map(|(key, _)| key)
        .collect();
    let mut expected = vec![userns.sandbox_key.clone(), userns.container_key.clone()];
    expected.sort();
    assert_eq!(actives, expected, "the daemon's active snapshots");

    node.remove_pod(
        &userns.pod,
        &[&userns.container],
        &[userns.sandbox_key.clone(), userns.container_key.clone()],
    )
    .await;
    assert!(
        !upper.exists(),
        "the container's upper dir {} is still on disk",
        upper.display()
    );
    eprintln!(
        "user namespaces on containerd {}: mapping {map}, no copy of the image",
        node.release
    );
}
