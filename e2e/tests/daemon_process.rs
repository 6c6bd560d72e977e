//! The daemon as an operator meets it: socket permissions, signals, restarts after
//! crashes, refusals at start, the config file.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::{Command, Output};

use rustix::process::Signal;
use rustlayer_e2e::{Daemon, binary, require_root};

fn serve(args: &[&str]) -> Output {
    Command::new(binary())
        .arg("serve")
        .args(args)
        .output()
        .expect("run rustlayer")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn socket_is_private_and_removed_on_sigterm() {
    require_root();
    let mut daemon = Daemon::start();
    let meta = std::fs::symlink_metadata(&daemon.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.uid(), 0);
    daemon.stop();
    assert!(!daemon.socket.exists(), "socket left behind after SIGTERM");
    assert!(daemon.log().contains("shut down cleanly"));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn state_survives_sigkill_and_the_stale_socket_is_replaced() {
    require_root();
    let mut daemon = Daemon::start();
    {
        let c = daemon.client().await;
        c.prepare("a", "").await.unwrap();
        c.commit("layer", "a").await.unwrap();
        c.prepare("ctr", "layer").await.unwrap();
    }
    let status = daemon.stop_with(Signal::KILL);
    assert!(!status.success());
    assert!(daemon.socket.exists(), "a crash leaves its socket file");
    daemon.restart();
    let c = daemon.client().await;
    assert_eq!(c.names(&[]).await, ["ctr", "layer"]);
    assert_eq!(c.stat("ctr").await.unwrap().parent, "layer");
    drop(c);
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn a_live_socket_is_not_stolen() {
    require_root();
    let daemon = Daemon::start();
    let other_root = daemon.dir.path().join("other");
    let out = serve(&[
        "--root",
        other_root.to_str().unwrap(),
        "--address",
        daemon.socket.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already serves"), "{stderr}");
    let c = daemon.client().await;
    assert!(
        c.names(&[]).await.is_empty(),
        "the first daemon still serves"
    );
}

#[test]
#[ignore = "needs root: the daemon mounts overlayfs"]
fn unsafe_roots_are_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let sock = dir.path().join("s.sock");
    let out = serve(&[
        "--root",
        link.to_str().unwrap(),
        "--address",
        sock.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("symlink"));

    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = serve(&[
        "--root",
        real.to_str().unwrap(),
        "--address",
        sock.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("world-writable"));
    assert!(!sock.exists());
}

#[test]
#[ignore = "needs root: the daemon mounts overlayfs"]
fn corrupt_metadata_stops_the_daemon_with_a_clear_error() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(
        root.join("metadata.db"),
        b"this is not an sqlite file at all, but it is long enough",
    )
    .unwrap();
    let sock = dir.path().join("s.sock");
    let out = serve(&[
        "--root",
        root.to_str().unwrap(),
        "--address",
        sock.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("corrupt"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn config_file_settings_and_flags_that_override_them() {
    require_root();
    let defaults = Command::new(binary())
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(defaults.status.success());
    let text = String::from_utf8(defaults.stdout).unwrap();
    assert!(text.contains("root = \"/var/lib/rustlayer\""));

    let dir = tempfile::tempdir().unwrap();
    let from_file = dir.path().join("from-file");
    let sock = dir.path().join("cfg.sock");
    let config = dir.path().join("config.toml");
    let text = text
        .replace("/var/lib/rustlayer", from_file.to_str().unwrap())
        .replace("/run/rustlayer/rustlayer.sock", sock.to_str().unwrap());
    std::fs::write(&config, text).unwrap();

    let mut child = Command::new(binary())
        .args(["serve", "--config", config.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "daemon exited");
        assert!(started.elapsed().as_secs() < 30, "not ready");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        from_file.join("metadata.db").exists(),
        "root taken from the file"
    );
    rustix::process::kill_process(rustix::process::Pid::from_child(&child), Signal::TERM).unwrap();
    assert!(child.wait().unwrap().success());

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "rooot = \"/x\"\n").unwrap();
    let out = serve(&["--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn garbage_on_the_socket_does_not_hurt_the_daemon() {
    require_root();
    let mut daemon = Daemon::start();
    let mut seed = 0x9e3779b97f4a7c15u64;
    for round in 0..32 {
        let mut stream = UnixStream::connect(&daemon.socket).unwrap();
        let junk: Vec<u8> = (0..(round * 97 + 1))
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = stream.write_all(&junk);
        // HTTP/2 preface followed by junk frames.
        let mut stream = UnixStream::connect(&daemon.socket).unwrap();
        let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let _ = stream.write_all(&junk);
    }
    let c = daemon.client().await;
    c.prepare("still-works", "").await.unwrap();
    drop(c);
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn the_socket_group_is_configurable() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    // Any gid works for the check; 4242 needs no group entry to exist.
    std::fs::write(&config, "socket_group = 4242\n").unwrap();
    let mut daemon = Daemon::start_with(&["--config", config.to_str().unwrap()]);
    let meta = std::fs::symlink_metadata(&daemon.socket).unwrap();
    assert_eq!(meta.gid(), 4242);
    assert_eq!(meta.uid(), 0);
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    daemon.stop();
}
