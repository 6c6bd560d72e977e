//! Storage faults: a root on a filesystem that fills up (blocks, then inodes) and a
//! root on a filesystem that went read-only. Requests that hit a full disk fail with
//! ResourceExhausted and leave nothing half made; freeing space brings the daemon
//! back without a restart; a read-only root stops the daemon at start with a clear
//! message.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::mount::{MountFlags, UnmountFlags};
use rustlayer_api::snapshots as pb;
use rustlayer_e2e::support::{
    code_of, count_entries, labels, sorted_infos, storage_matches_metadata, trash_drains,
};
use rustlayer_e2e::{Client, Mounted, binary, require_root};
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(30);
const ENOSPC: i32 = 28;

/// A tmpfs of its own, unmounted (lazily, so nothing can keep it) when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn new(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fs");
        fs::create_dir(&path).unwrap();
        let data = std::ffi::CString::new(options).unwrap();
        rustix::mount::mount(
            "tmpfs",
            &path,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            Some(data.as_c_str()),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs -o {options} on {}: {e}", path.display()));
        Tmpfs { dir, path }
    }

    fn remount(&self, flags: MountFlags) {
        rustix::mount::mount_remount(&self.path, flags, "")
            .unwrap_or_else(|e| panic!("remount {} {flags:?}: {e}", self.path.display()));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.path, UnmountFlags::DETACH);
    }
}

/// The daemon started by hand, on a root of our choosing.
struct Proc {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl Proc {
    fn spawn(root: &Path, socket: &Path, log: &Path) -> Proc {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log");
        let child = Command::new(binary())
            .arg("serve")
            .arg("--root")
            .arg(root)
            .arg("--address")
            .arg(socket)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start rustlayer");
        Proc {
            child: Some(child),
            socket: socket.to_owned(),
            log: log.to_owned(),
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the daemon accepts connections (Ok) or exits (Err with status).
    fn ready(&mut self) -> Result<(), ExitStatus> {
        let started = Instant::now();
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Err(status);
            }
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            assert!(
                started.elapsed() < DEADLINE,
                "daemon neither ready nor gone after {DEADLINE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start(root: &Path, socket: &Path, log: &Path) -> Proc {
        let mut p = Proc::spawn(root, socket, log);
        if let Err(status) = p.ready() {
            panic!("daemon exited during start with {status}:\n{}", p.log());
        }
        p
    }

    /// SIGTERM; the exit must be clean.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!("daemon ignored SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "daemon exited with {status}:\n{}",
            self.log()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn write_small(mounts: &[rustlayer_core::Mount], name: &str) {
    let m = Mounted::new(mounts);
    fs::write(m.path().join(name), name).unwrap();
}

/// Writes into `dir` until the filesystem refuses with ENOSPC.
fn fill_blocks(dir: &Path) -> u64 {
    let mut f = File::create(dir.join("blob")).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => panic!("write returned 0"),
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(ENOSPC) => return written,
            Err(e) => panic!("filling: {e}"),
        }
        assert!(written < 64 << 20, "wrote 64 MiB into an 8 MiB filesystem");
    }
}

/// Creates empty files in `dir` until the filesystem runs out of inodes.
fn fill_inodes(dir: &Path) -> usize {
    for i in 0..100_000 {
        match File::create(dir.join(format!("f{i}"))) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(ENOSPC) => return i,
            Err(e) => panic!("filling inodes: {e}"),
        }
    }
    panic!("100000 files fit in a filesystem of 2000 inodes");
}

/// One request on a full filesystem. It may succeed (it needed no new space), or fail
/// with ResourceExhausted, changing nothing. Returns its code.
async fn on_full_disk<T>(
    c: &Client,
    root: &Path,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, tonic::Status>>,
    wrong: &mut Vec<String>,
) -> Code {
    let before = sorted_infos(c).await;
    let result = fut.await;
    match &result {
        Ok(_) => Code::Ok,
        Err(s) => {
            if s.code() != Code::ResourceExhausted {
                wrong.push(format!("{what}: {:?}: {}", s.code(), s.message()));
            }
            let after = sorted_infos(c).await;
            if after != before {
                wrong.push(format!(
                    "{what}: failed with {:?} but changed the metadata",
                    s.code()
                ));
            }
            // A refused create discards what it staged before answering.
            let staged = count_entries(&root.join("staging"));
            if staged != 0 {
                wrong.push(format!(
                    "{what}: failed, leaving {staged} entries in staging/"
                ));
            }
            s.code()
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn a_full_filesystem_gives_resource_exhausted_and_recovers() {
    require_root();
    let tmpfs = Tmpfs::new("size=8m,nr_inodes=2000,mode=0755");
    let root = tmpfs.path.join("root");
    let socket = tmpfs.dir.path().join("rl.sock");
    let log = tmpfs.dir.path().join("daemon.log");
    let mut daemon = Proc::start(&root, &socket, &log);
    let c = Client::connect(&socket).await;
    let mut wrong = Vec::new();

    // Some state to aim at, made while there is room.
    let m = c.prepare("base-a", "").await.unwrap();
    write_small(&m, "base");
    c.commit("base", "base-a").await.unwrap();
    for key in ["pending-1", "pending-2", "pending-3"] {
        let m = c.prepare(key, "base").await.unwrap();
        write_small(&m, key);
    }

    // --- Blocks: fill the disk through an active snapshot. ----------------------
    let filler = c.prepare("filler", "").await.unwrap();
    let mounted = Mounted::new(&filler);
    let written = fill_blocks(mounted.path());
    drop(mounted);
    let st = rustix::fs::statvfs(&tmpfs.path).unwrap();
    println!(
        "filled {written} bytes; {} blocks of {} left",
        st.f_bavail, st.f_blocks
    );

    let mut codes = Vec::new();
    codes.push((
        "Prepare",
        on_full_disk(
            &c,
            &root,
            "Prepare on a full disk",
            c.prepare("full-1", ""),
            &mut wrong,
        )
        .await,
    ));
    codes.push((
        "Prepare child",
        on_full_disk(
            &c,
            &root,
            "Prepare child on a full disk",
            c.prepare("full-2", "base"),
            &mut wrong,
        )
        .await,
    ));
    codes.push((
        "View",
        on_full_disk(
            &c,
            &root,
            "View on a full disk",
            c.view("full-v", "base"),
            &mut wrong,
        )
        .await,
    ));
    codes.push((
        "Commit",
        on_full_disk(
            &c,
            &root,
            "Commit on a full disk",
            c.commit("committed-1", "pending-1"),
            &mut wrong,
        )
        .await,
    ));
    let mut raw = c.raw.clone();
    let update = raw.update(pb::UpdateSnapshotRequest {
        snapshotter: String::new(),
        info: Some(pb::Info {
            name: "base".into(),
            labels: labels(&[("big", &"x".repeat(4000))]),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["labels".into()],
        }),
    });
    codes.push((
        "Update",
        on_full_disk(&c, &root, "Update on a full disk", update, &mut wrong).await,
    ));
    // Reads still work.
    c.stat("base").await.unwrap();
    c.usage("pending-2").await.unwrap();
    c.mounts("pending-2").await.unwrap();
    println!("on a full disk (blocks): {codes:?}");
    if !codes.iter().any(|(_, c)| *c == Code::ResourceExhausted) {
        wrong.push(format!(
            "no request hit the full disk: {codes:?} (the fill did not fill?)"
        ));
    }
    storage_matches_metadata(&c, &root, "full disk (blocks)").await;

    // Free space by hand (Remove on a full disk has its own test), then Remove.
    {
        let m = Mounted::new(&c.mounts("filler").await.unwrap());
        fs::remove_file(m.path().join("blob")).unwrap();
    }
    c.remove("filler").await.expect("Remove once space is back");
    trash_drains(&root).await;
    let m = c
        .prepare("after-blocks", "base")
        .await
        .expect("Prepare after freeing space");
    write_small(&m, "after-blocks");
    c.commit("after-blocks-c", "after-blocks")
        .await
        .expect("Commit after freeing space");
    if c.stat("pending-1").await.is_ok() {
        c.commit("committed-1", "pending-1")
            .await
            .expect("the Commit refused on a full disk works once space is back");
    }
    c.stat("committed-1").await.unwrap();
    storage_matches_metadata(&c, &root, "after freeing blocks").await;

    // --- Inodes: exhaust them through an active snapshot. -----------------------
    let ifill = c.prepare("ifill", "").await.unwrap();
    let mounted = Mounted::new(&ifill);
    let files = fill_inodes(mounted.path());
    drop(mounted);
    let st = rustix::fs::statvfs(&tmpfs.path).unwrap();
    println!(
        "created {files} files; {} inodes of {} left",
        st.f_favail, st.f_files
    );

    let mut codes = Vec::new();
    codes.push((
        "Prepare",
        on_full_disk(
            &c,
            &root,
            "Prepare without inodes",
            c.prepare("ifull-1", ""),
            &mut wrong,
        )
        .await,
    ));
    codes.push((
        "Prepare child",
        on_full_disk(
            &c,
            &root,
            "Prepare child without inodes",
            c.prepare("ifull-2", "base"),
            &mut wrong,
        )
        .await,
    ));
    codes.push((
        "View",
        on_full_disk(
            &c,
            &root,
            "View without inodes",
            c.view("ifull-v", "committed-1"),
            &mut wrong,
        )
        .await,
    ));
    codes.push((
        "Commit",
        on_full_disk(
            &c,
            &root,
            "Commit without inodes",
            c.commit("committed-2", "pending-2"),
            &mut wrong,
        )
        .await,
    ));
    println!("on a full disk (inodes): {codes:?}");
    for (op, code) in &codes {
        // Each of these makes a directory or a link: none can succeed.
        if *code != Code::ResourceExhausted {
            wrong.push(format!("{op} without inodes answered {code:?}"));
        }
    }
    storage_matches_metadata(&c, &root, "no inodes").await;

    c.remove("ifill").await.expect("Remove without inodes");
    trash_drains(&root).await;
    c.prepare("after-inodes", "committed-1")
        .await
        .expect("Prepare after freeing inodes");
    c.commit("committed-2", "pending-2")
        .await
        .expect("the Commit refused without inodes works once they are back");
    storage_matches_metadata(&c, &root, "after freeing inodes").await;

    // Layers written before the faults are intact.
    let m = c.view("check", "committed-2").await.unwrap();
    {
        let m = Mounted::new(&m);
        assert_eq!(fs::read_to_string(m.path().join("base")).unwrap(), "base");
        assert_eq!(
            fs::read_to_string(m.path().join("pending-2")).unwrap(),
            "pending-2"
        );
    }
    drop(c);
    daemon.stop();
    // And the metadata opens again.
    let mut again = Proc::start(&root, &socket, &log);
    let c = Client::connect(&socket).await;
    assert!(c.stat("committed-2").await.is_ok());
    drop(c);
    again.stop();
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    assert!(!log_text.contains("panicked"), "{log_text}");
    assert!(
        wrong.is_empty(),
        "faults handled wrongly:\n{}",
        wrong.join("\n")
    );
}

/// containerd's garbage collector frees space only through Remove: on a full disk,
/// Remove must work, and Prepare must work again once the trash is reaped.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn remove_frees_space_on_a_full_filesystem() {
    require_root();
    let tmpfs = Tmpfs::new("size=8m,nr_inodes=2000,mode=0755");
    let root = tmpfs.path.join("root");
    let socket = tmpfs.dir.path().join("rl.sock");
    let log = tmpfs.dir.path().join("daemon.log");
    let mut daemon = Proc::start(&root, &socket, &log);
    let c = Client::connect(&socket).await;
    let m = c.prepare("base-a", "").await.unwrap();
    write_small(&m, "base");
    c.commit("base", "base-a").await.unwrap();
    c.view("a-view", "base").await.unwrap();

    let filler = c.prepare("filler", "base").await.unwrap();
    {
        let mounted = Mounted::new(&filler);
        fill_blocks(mounted.path());
    }
    assert_eq!(
        code_of(&c.prepare("refused", "").await),
        Code::ResourceExhausted,
        "the disk is full"
    );

    let mut wrong = Vec::new();
    for key in ["a-view", "filler"] {
        if let Err(s) = c.remove(key).await {
            wrong.push(format!(
                "Remove {key:?} on a full disk: {:?}: {}",
                s.code(),
                s.message()
            ));
        }
    }
    if wrong.is_empty() {
        trash_drains(&root).await;
        c.prepare("after", "base")
            .await
            .expect("Prepare once Remove has freed space");
        storage_matches_metadata(&c, &root, "after Remove freed space").await;
    } else {
        // Free space by hand so that the daemon can stop cleanly.
        let m = Mounted::new(&c.mounts("filler").await.unwrap());
        fs::remove_file(m.path().join("blob")).unwrap();
    }
    drop(c);
    daemon.stop();
    assert!(
        wrong.is_empty(),
        "freeing space must not need space:\n{}",
        wrong.join("\n")
    );
}

/// SIGTERM while the disk is full: everything acknowledged is already durable in the
/// write-ahead log, so the daemon exits cleanly (a checkpoint that cannot grow the
/// main file is no reason to fail) and a restart, once there is room, has it all.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn sigterm_on_a_full_disk_exits_cleanly_and_loses_nothing() {
    require_root();
    let tmpfs = Tmpfs::new("size=8m,nr_inodes=2000,mode=0755");
    let root = tmpfs.path.join("root");
    let socket = tmpfs.dir.path().join("rl.sock");
    let log = tmpfs.dir.path().join("daemon.log");
    let mut daemon = Proc::start(&root, &socket, &log);
    let c = Client::connect(&socket).await;
    let m = c.prepare("base-a", "").await.unwrap();
    write_small(&m, "base");
    c.commit("base", "base-a").await.unwrap();
    for i in 0..20 {
        c.prepare(&format!("ctr-{i}"), "base").await.unwrap();
    }
    let filler = c.prepare("filler", "").await.unwrap();
    let blob = {
        let mounted = Mounted::new(&filler);
        fill_blocks(mounted.path());
        // The layer's own directory is the overlay's upper: find it under the root.
        let upper = filler[0]
            .options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(PathBuf::from)
            .expect("an active snapshot has an upper directory");
        assert!(upper.starts_with(&root), "{filler:?}");
        upper.join("blob")
    };
    assert!(blob.exists());
    let before = sorted_infos(&c).await;
    drop(c);

    // The stop itself: compare its exit with a clean one.
    let mut child = daemon.child.take().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < DEADLINE, "daemon ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = fs::read_to_string(&log).unwrap_or_default();
    let exit_line = text
        .lines()
        .rfind(|l| l.starts_with("rustlayer:"))
        .unwrap_or("")
        .to_owned();

    // Room again, then everything is there.
    fs::remove_file(&blob).unwrap();
    let mut again = Proc::start(&root, &socket, &log);
    let c = Client::connect(&socket).await;
    assert_eq!(
        sorted_infos(&c).await,
        before,
        "state lost across a stop on a full disk"
    );
    drop(c);
    again.stop();
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        status.success(),
        "SIGTERM on a full disk: exit {status}: {exit_line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn a_read_only_root_stops_the_daemon_at_start() {
    require_root();
    let tmpfs = Tmpfs::new("size=8m,mode=0755");
    let root = tmpfs.path.join("root");
    let socket = tmpfs.dir.path().join("rl.sock");
    let log = tmpfs.dir.path().join("daemon.log");
    {
        let mut d = Proc::start(&root, &socket, &log);
        let c = Client::connect(&socket).await;
        let m = c.prepare("a", "").await.unwrap();
        write_small(&m, "a");
        c.commit("layer", "a").await.unwrap();
        drop(c);
        d.stop();
    }

    tmpfs.remount(MountFlags::RDONLY);
    let ro_log = tmpfs.dir.path().join("read-only.log");
    let mut d = Proc::spawn(&root, &socket, &ro_log);
    let status = match d.ready() {
        Ok(()) => panic!("daemon serves on a read-only root:\n{}", d.log()),
        Err(status) => status,
    };
    let text = d.log();
    assert!(!status.success(), "exit {status}:\n{text}");
    assert!(
        status.code().is_some(),
        "killed by a signal: {status}:\n{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    let last = text
        .lines()
        .rfind(|l| l.starts_with("rustlayer:"))
        .unwrap_or_else(|| panic!("no error line on stderr:\n{text}"));
    assert!(
        last.to_lowercase().contains("read-only"),
        "the error does not say the root is read-only: {last}"
    );
    assert!(
        UnixStream::connect(&socket).is_err(),
        "something serves on the socket"
    );
    println!("read-only root refused: {status}: {last}");

    // Writable again, the same root serves what it held.
    tmpfs.remount(MountFlags::empty());
    let mut d = Proc::start(&root, &socket, &log);
    let c = Client::connect(&socket).await;
    assert_eq!(
        c.stat("layer").await.unwrap().kind,
        pb::Kind::Committed as i32
    );
    drop(c);
    d.stop();
}
