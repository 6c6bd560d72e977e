//! `containerd.io/snapshot/max-size` and the usage of active snapshots, through the
//! real daemon.
//!
//! On a root without project quotas (this host's temporary directory): usage is
//! walked, the label is ignored, or refused with `enforce_size`, and the daemon
//! says so at start, in `rustlayer check` and in a metric. On a root with them (an
//! xfs filesystem mounted `prjquota`, which only the VM tier's kernel has, named by
//! `RUSTLAYER_QUOTA_ROOT`): the label is a hard limit, usage comes from the
//! filesystem's counters, and no limit outlives its snapshot, crashes included.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustlayer_core::{MAX_SIZE_LABEL, Mount, SnapshotId};
use rustlayer_e2e::support::{code_of, free_port, http_get, labels, metric_value};
use rustlayer_e2e::{Client, Daemon, Mounted, binary, require_root};
use rustlayer_mount::{LinuxProjectQuota, ProjectQuota};
use tonic::Code;

const MIB: u64 = 1 << 20;

fn max_size(bytes: u64) -> rustlayer_e2e::Labels {
    labels(&[(MAX_SIZE_LABEL, &bytes.to_string())])
}

fn config_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    fs::write(&path, text).unwrap();
    path
}

/// The snapshot id behind an active snapshot's mounts: its upper directory is
/// `<root>/snapshots/<id>/fs`.
fn snapshot_id(mounts: &[Mount]) -> SnapshotId {
    let upper = mounts[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .expect("an active snapshot's overlay has an upper directory");
    let id = Path::new(upper)
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no id in {upper}"));
    SnapshotId::new(id)
}

/// Writes `bytes` into a new file, in 1 MiB writes; the error of the first write
/// that fails.
fn write_file(path: &Path, bytes: u64) -> std::io::Result<()> {
    let mut file = fs::File::create(path)?;
    let chunk = vec![0xa5u8; MIB as usize];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(MIB) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

/// Polls `/metrics` until the collector has run once, then returns the text.
fn collected_metrics(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = http_get(port, "/metrics");
        if status == 200
            && metric_value(&text, "rustlayer_collector_last_success_timestamp_seconds")
                .is_some_and(|t| t > 0.0)
        {
            return text;
        }
        assert!(Instant::now() < deadline, "no collection in 30 s:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A daemon on a root under `base` with `config` and metrics on a free port, whose
/// start-up log says project quotas are `state` ("on" or "off").
fn daemon_with_metrics(base: &Path, config: &Path, state: &str) -> (Daemon, u16) {
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let daemon = Daemon::start_in(
        base,
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics-address",
            &metrics,
        ],
    );
    assert!(
        daemon.log().contains(&format!("project quotas: {state}")),
        "the start-up log says whether project quotas are on:\n{}",
        daemon.log()
    );
    (daemon, port)
}

fn check_report(daemon: &Daemon, config: &Path) -> String {
    let out = Command::new(binary())
        .args(["check", "--root"])
        .arg(&daemon.root)
        .arg("--address")
        .arg(&daemon.socket)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run rustlayer check");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `rustlayer usage -o json KEY`'s one row.
fn cli_usage(daemon: &Daemon, key: &str) -> serde_json::Value {
    let out = Command::new(binary())
        .args(["usage", "-o", "json", "--address"])
        .arg(&daemon.socket)
        .arg(key)
        .output()
        .expect("run rustlayer usage");
    assert!(out.status.success(), "{out:?}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows[0].clone()
}

/// `rustlayer usage`'s table row for `key`, split into cells.
fn cli_usage_row(daemon: &Daemon, key: &str) -> Vec<String> {
    let out = Command::new(binary())
        .args(["usage", "--address"])
        .arg(&daemon.socket)
        .output()
        .expect("run rustlayer usage");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let header = text.lines().next().unwrap_or_default();
    assert!(
        header.contains("LIMIT") && header.contains("USED") && header.contains("MEASURED"),
        "{text}"
    );
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no row for {key} in:\n{text}"))
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Polls `/metrics` until `name` reads `want` (the collector runs every 10 s).
fn metric_reaches(port: u16, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = http_get(port, "/metrics");
        if metric_value(&text, name) == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached {want} in 30 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn project_quota_line(report: &str) -> &str {
    report
        .lines()
        .find(|l| l.starts_with("project quotas"))
        .unwrap_or_else(|| panic!("no project quotas check in:\n{report}"))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn without_project_quotas_usage_is_walked_and_max_size_ignored_unless_enforced() {
    require_root();
    let scratch = tempfile::tempdir().unwrap();
    assert!(
        LinuxProjectQuota.probe(scratch.path()).is_err(),
        "this test needs a temporary directory without project quotas; {} has them",
        scratch.path().display()
    );
    let config = config_file(scratch.path(), "");
    let (daemon, port) = daemon_with_metrics(&std::env::temp_dir(), &config, "off");
    let c = daemon.client().await;

    for bad in ["0", "-1", "ten", "1GiB"] {
        let refused = c
            .prepare_labeled("bad", "", labels(&[(MAX_SIZE_LABEL, bad)]))
            .await;
        assert_eq!(code_of(&refused), Code::InvalidArgument, "{bad:?}");
        assert_eq!(code_of(&c.stat("bad").await), Code::NotFound);
    }

    let mounts = c
        .prepare_labeled("a", "", max_size(64 * 1024))
        .await
        .unwrap();
    assert_eq!(
        c.stat("a")
            .await
            .unwrap()
            .labels
            .get(MAX_SIZE_LABEL)
            .map(String::as_str),
        Some("65536"),
        "the label stays on the snapshot"
    );
    {
        let mounted = Mounted::new(&mounts);
        write_file(&mounted.path().join("big"), 2 * MIB)
            .expect("nothing enforces the limit without project quotas");
    }
    let usage = c.usage("a").await.unwrap();
    assert!(
        usage.size >= 2 * MIB as i64 && usage.inodes >= 2,
        "walked: {usage:?}"
    );

    let text = collected_metrics(port);
    assert_eq!(metric_value(&text, "rustlayer_project_quotas"), Some(0.0));
    assert_eq!(
        metric_value(&text, "rustlayer_limited_snapshots"),
        Some(0.0)
    );
    assert_eq!(
        metric_value(&text, "rustlayer_snapshots_near_limit"),
        Some(0.0)
    );

    // The operator sees the label held to nothing: no limit, usage walked.
    let row = cli_usage(&daemon, "a");
    assert_eq!(row["method"], "walked", "{row}");
    assert!(row.get("limit_bytes").is_none(), "{row}");
    assert!(row.get("used_fraction").is_none(), "{row}");
    let cells = cli_usage_row(&daemon, "a");
    assert_eq!(cells[4..], ["-", "-", "walked"], "{cells:?}");

    let report = check_report(&daemon, &config);
    let line = project_quota_line(&report);
    assert!(line.contains(" ok ") && line.contains("off"), "{line}");
    assert!(line.contains("is ignored"), "{line}");

    // With enforce_size the label is refused, precisely and without side effects.
    let enforcing_dir = tempfile::tempdir().unwrap();
    let enforcing = config_file(enforcing_dir.path(), "[overlay]\nenforce_size = true\n");
    let strict = Daemon::start_with(&["--config", enforcing.to_str().unwrap()]);
    let c = strict.client().await;
    let refused = c.prepare_labeled("a", "", max_size(MIB)).await;
    assert_eq!(code_of(&refused), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(code_of(&c.stat("a").await), Code::NotFound);
    assert_eq!(
        rustlayer_e2e::support::count_entries(&strict.root.join("snapshots")),
        0
    );
    c.prepare("a", "")
        .await
        .expect("no label, nothing to refuse");
    let line_text = check_report(&strict, &enforcing);
    assert!(
        project_quota_line(&line_text).contains("is refused"),
        "{line_text}"
    );

    // A default size nobody can enforce, with enforcement asked for: no start.
    let defaults = config_file(
        enforcing_dir.path(),
        "[overlay]\nenforce_size = true\ndefault_size = \"1GiB\"\n",
    );
    let root = enforcing_dir.path().join("root");
    let mut child = Command::new(binary())
        .args(["serve", "--root"])
        .arg(&root)
        .arg("--address")
        .arg(enforcing_dir.path().join("never.sock"))
        .arg("--config")
        .arg(&defaults)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon started with a default size it cannot enforce");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("cannot be applied"), "{stderr}");
}

/// The directory on a filesystem with project quotas the VM tier made, or a loud
/// failure: this test proves nothing anywhere else.
fn require_project_quotas() -> PathBuf {
    require_root();
    let Some(base) = std::env::var_os("RUSTLAYER_QUOTA_ROOT").map(PathBuf::from) else {
        panic!(
            "RUSTLAYER_QUOTA_ROOT is unset: run this in the VM tier (hack/vm-test.sh), which \
             mounts xfs with prjquota there"
        );
    };
    if let Err(err) = LinuxProjectQuota.probe(&base) {
        panic!("{} has no project quotas: {err}", base.display());
    }
    base
}

/// What a write past a project's block limit fails with: EDQUOT on ext4, but ENOSPC
/// on xfs, which reports a full project the way a full filesystem is reported.
fn over_quota_errno(root: &Path) -> i32 {
    const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
    let magic = rustix::fs::statfs(root).unwrap().f_type as i64;
    if magic == XFS_SUPER_MAGIC {
        rustix::io::Errno::NOSPC.raw_os_error()
    } else {
        rustix::io::Errno::DQUOT.raw_os_error()
    }
}

/// Every project with a limit on the root's filesystem, by id.
fn limited_projects(root: &Path) -> Vec<u32> {
    LinuxProjectQuota
        .projects(root, 1)
        .unwrap()
        .into_iter()
        .filter(|(_, usage)| !usage.limits.is_none())
        .map(|(id, _)| id)
        .collect()
}

fn project(id: SnapshotId) -> u32 {
    u32::try_from(id.get()).unwrap()
}

async fn usage_of(c: &Client, key: &str) -> (u64, u64) {
    let usage = c.usage(key).await.unwrap();
    (usage.size as u64, usage.inodes as u64)
}

/// The walk the counters stand in for: the layer and overlay's work directory.
fn walked(root: &Path, id: SnapshotId) -> (u64, u64) {
    let dir = root.join("snapshots").join(id.to_string());
    let fs = rustlayer_overlay::disk_usage(&dir.join("fs")).unwrap();
    let work = rustlayer_overlay::disk_usage(&dir.join("work")).unwrap();
    (fs.bytes + work.bytes, fs.inodes + work.inodes)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs project quotas: xfs mounted prjquota at RUSTLAYER_QUOTA_ROOT (the VM tier)"]
async fn max_size_is_a_hard_limit_and_usage_comes_from_the_counters_with_project_quotas() {
    let base = require_project_quotas();
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_file(config_dir.path(), "[overlay]\ndefault_size = \"32MiB\"\n");
    let (mut daemon, port) = daemon_with_metrics(&base, &config, "on");
    let root = daemon.root.clone();
    let c = daemon.client().await;

    let limited_mounts = c
        .prepare_labeled("limited", "", max_size(8 * MIB))
        .await
        .unwrap();
    let other_mounts = c.prepare("other", "").await.unwrap();
    let limited = snapshot_id(&limited_mounts);
    let other = snapshot_id(&other_mounts);
    let quota = LinuxProjectQuota;
    assert_eq!(
        quota.usage(&root, project(limited)).unwrap().limits.bytes,
        Some(8 * MIB)
    );
    assert_eq!(
        quota.usage(&root, project(other)).unwrap().limits.bytes,
        Some(32 * MIB),
        "the configured default applies without the label"
    );
    {
        let m = Mounted::new(&limited_mounts);
        write_file(&m.path().join("fits"), 4 * MIB).expect("under the limit");
        let err = write_file(&m.path().join("too-much"), 8 * MIB).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(over_quota_errno(&root)), "{err}");
        let o = Mounted::new(&other_mounts);
        write_file(&o.path().join("elsewhere"), 12 * MIB)
            .expect("another snapshot is untouched by the first one's limit");
        fs::remove_file(m.path().join("too-much")).unwrap();
    }

    // The operator sees each limit and the fraction of it used.
    let row = cli_usage(&daemon, "limited");
    assert_eq!(row["method"], "counted", "{row}");
    assert_eq!(row["limit_bytes"].as_u64(), Some(8 * MIB), "{row}");
    let fraction = row["used_fraction"].as_f64().unwrap();
    assert!((0.5..0.6).contains(&fraction), "4 MiB of 8 MiB: {row}");
    let cells = cli_usage_row(&daemon, "limited");
    assert_eq!(
        cells[4..],
        ["8.0 MiB", &format!("{:.0}%", fraction * 100.0), "counted"],
        "{cells:?}"
    );
    assert_eq!(
        cli_usage(&daemon, "other")["limit_bytes"].as_u64(),
        Some(32 * MIB),
        "the default shows as the limit"
    );

    // Filling a snapshot to 90 % of its limit shows in the metric, without naming it.
    metric_reaches(port, "rustlayer_limited_snapshots", 2.0);
    metric_reaches(port, "rustlayer_snapshots_near_limit", 0.0);
    {
        let m = Mounted::new(&limited_mounts);
        write_file(&m.path().join("nearly-full"), 3 * MIB + MIB / 2).expect("7.5 of 8 MiB");
    }
    metric_reaches(port, "rustlayer_snapshots_near_limit", 1.0);
    {
        let m = Mounted::new(&limited_mounts);
        fs::remove_file(m.path().join("nearly-full")).unwrap();
    }

    // The counters are what a walk finds, without the walk.
    for (key, id) in [("limited", limited), ("other", other)] {
        rustix::fs::sync();
        let counted = usage_of(&c, key).await;
        assert_eq!(counted, walked(&root, id), "{key}");
    }
    let (bytes, _) = usage_of(&c, "other").await;
    assert!(bytes >= 12 * MIB, "{bytes}");

    // Commit of a layer with a parent takes its usage from the counters too.
    c.commit("base", "limited").await.unwrap();
    let child_mounts = c
        .prepare_labeled("child", "base", max_size(16 * MIB))
        .await
        .unwrap();
    let child = snapshot_id(&child_mounts);
    {
        let m = Mounted::new(&child_mounts);
        write_file(&m.path().join("layer"), 3 * MIB).unwrap();
    }
    rustix::fs::sync();
    let before_commit = walked(&root, child);
    c.commit("child-layer", "child").await.unwrap();
    let committed = usage_of(&c, "child-layer").await;
    assert_eq!(committed, before_commit);

    let text = collected_metrics(port);
    assert_eq!(metric_value(&text, "rustlayer_project_quotas"), Some(1.0));
    let report = check_report(&daemon, &config);
    assert!(project_quota_line(&report).contains("on:"), "{report}");

    // Remove releases the project's limits.
    c.remove("other").await.unwrap();
    assert!(quota.usage(&root, project(other)).unwrap().limits.is_none());
    assert!(!limited_projects(&root).contains(&project(other)));

    // A crash leaves a limit no snapshot owns (as between a Remove's metadata and
    // its storage): the next start's Cleanup clears it; live snapshots keep theirs.
    let crashed = c
        .prepare_labeled("crashed", "", max_size(4 * MIB))
        .await
        .unwrap();
    let crashed = snapshot_id(&crashed);
    let orphan = project(SnapshotId::MAX) - 1;
    quota
        .set_limits(
            &root,
            orphan,
            rustlayer_mount::ProjectLimits {
                bytes: Some(MIB),
                inodes: None,
            },
        )
        .unwrap();
    drop(c);
    daemon.stop_with(rustix::process::Signal::KILL);
    daemon.restart();
    let c = daemon.client().await;
    for key in ["base", "child-layer", "crashed"] {
        c.stat(key).await.expect("acknowledged before the crash");
    }
    // Committed layers keep their project (and limit) until removed.
    let mut live = vec![project(limited), project(child), project(crashed)];
    live.sort_unstable();
    assert_eq!(
        limited_projects(&root),
        live,
        "no limit outlives its snapshot"
    );
    for key in ["child-layer", "crashed", "base"] {
        c.remove(key).await.unwrap();
    }
    c.cleanup().await.unwrap();
    assert!(limited_projects(&root).is_empty());
}

/// Usage of an active layer of many files: from the counters, in constant time,
/// against the walk it replaces. Prints both times (the benchmark's row 8 compares
/// them with containerd's overlayfs); fails if the figures differ from the walk's
/// or the daemon did not count them.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs project quotas: xfs mounted prjquota at RUSTLAYER_QUOTA_ROOT (the VM tier)"]
async fn usage_from_counters_does_not_grow_with_the_layer_with_project_quotas() {
    let base = require_project_quotas();
    let daemon = Daemon::start_in(&base, &[]);
    let c = daemon.client().await;
    let mounts = c.prepare("many", "").await.unwrap();
    let id = snapshot_id(&mounts);
    let files: usize = std::env::var("RUSTLAYER_USAGE_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let upper = daemon
        .root
        .join("snapshots")
        .join(id.to_string())
        .join("fs");
    // Written straight into the layer (the same project as through the mount),
    // 1000 to a directory.
    for dir in 0..files.div_ceil(1000) {
        let d = upper.join(format!("d{dir}"));
        fs::create_dir(&d).unwrap();
        for f in 0..1000.min(files - dir * 1000) {
            fs::write(d.join(format!("f{f}")), b"x").unwrap();
        }
    }
    rustix::fs::sync();
    // The fastest of a few calls, so the connection's first request does not count.
    let mut counted = Duration::MAX;
    let mut figures = (0, 0);
    for _ in 0..5 {
        let started = Instant::now();
        figures = usage_of(&c, "many").await;
        counted = counted.min(started.elapsed());
    }
    let (bytes, inodes) = figures;
    let started = Instant::now();
    LinuxProjectQuota.usage(&daemon.root, project(id)).unwrap();
    let quotactl = started.elapsed();
    let started = Instant::now();
    let walk = walked(&daemon.root, id);
    let walking = started.elapsed();
    println!(
        "usage of an active layer of {files} files: Usage through the daemon from the \
         counters {counted:?} (the quotactl alone {quotactl:?}; {bytes} bytes, {inodes} \
         inodes), walk {walking:?} ({} bytes, {} inodes)",
        walk.0, walk.1
    );
    assert_eq!((bytes, inodes), walk);
    let row = cli_usage(&daemon, "many");
    assert_eq!(row["method"], "counted", "{row}");
}
