//! `rustlayer ls | tree | usage | check` against a running daemon.

use std::fs;
use std::process::{Command, Output};

use rustlayer_e2e::{Daemon, Mounted, binary, require_root};

fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("run rustlayer")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn inspect_a_running_daemon() {
    require_root();
    let mut daemon = Daemon::start();
    let sock = daemon.socket.to_str().unwrap().to_owned();
    {
        let c = daemon.client().await;
        let m = c.prepare("base-a", "").await.unwrap();
        {
            let m = Mounted::new(&m);
            fs::write(m.path().join("blob"), vec![1u8; 300 * 1024]).unwrap();
        }
        c.commit("base", "base-a").await.unwrap();
        c.prepare("mid-a", "base").await.unwrap();
        c.commit("mid", "mid-a").await.unwrap();
        c.prepare("ctr", "mid").await.unwrap();
        c.view("peek", "base").await.unwrap();
    }

    let table = stdout(&run(&["ls", "--address", &sock]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert_eq!(lines.len(), 5, "{table}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ctr ") && l.contains("active") && l.contains("mid"))
    );

    let json: serde_json::Value = serde_json::from_str(&stdout(&run(&[
        "ls",
        "--address",
        &sock,
        "-o",
        "json",
        "--filter",
        "kind==committed",
    ])))
    .unwrap();
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "mid"]);

    let tree = stdout(&run(&["tree", "--address", &sock]));
    let expected_shape = [
        "base (committed, 3",
        "├── mid (committed,",
        "│   └── ctr (active)",
        "└── peek (view)",
    ];
    for (line, prefix) in tree.lines().zip(expected_shape) {
        assert!(
            line.starts_with(prefix),
            "{line:?} should start with {prefix:?} in:\n{tree}"
        );
    }

    let usage = stdout(&run(&["usage", "--address", &sock, "-o", "json", "base"]));
    let usage: serde_json::Value = serde_json::from_str(&usage).unwrap();
    assert!(usage[0]["bytes"].as_i64().unwrap() >= 300 * 1024);
    assert_eq!(usage[0]["inodes"].as_i64().unwrap(), 2);
    assert_eq!(usage[0]["method"], "recorded", "cached at Commit: {usage}");
    assert!(usage[0].get("limit_bytes").is_none(), "{usage}");
    let total = stdout(&run(&["usage", "--address", &sock]));
    assert!(
        total
            .lines()
            .last()
            .unwrap()
            .starts_with("TOTAL (4 snapshots)"),
        "{total}"
    );

    let root = daemon.root.to_str().unwrap().to_owned();
    let checked = run(&["check", "--address", &sock, "--root", &root]);
    let report = String::from_utf8_lossy(&checked.stdout).into_owned();
    let room = has_room(&daemon.root);
    assert_eq!(checked.status.success(), room, "{report}");
    let verdict = |check: &str, ok: bool| {
        let word = if ok { " ok " } else { " FAIL " };
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(check) && l.contains(word)),
            "{check} should say{word}in:\n{report}"
        );
    };
    for check in ["kernel", "root", "d_type", "overlay mount", "daemon"] {
        verdict(check, true);
    }
    verdict("root filesystem", room);
    assert!(report.contains("with 4 snapshots"), "{report}");

    daemon.stop();
    let down = run(&["check", "--address", &sock, "--root", &root, "-o", "json"]);
    assert_eq!(down.status.code(), Some(2));
    let results: serde_json::Value = serde_json::from_slice(&down.stdout).unwrap();
    let daemon_row = results
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["check"] == "daemon")
        .unwrap();
    assert_eq!(daemon_row["ok"], false);
    let ls = run(&["ls", "--address", &sock]);
    assert!(!ls.status.success());
    assert!(String::from_utf8_lossy(&ls.stderr).contains("is the daemon running"));
}

/// Without device-mapper in the kernel (this host; the VM tier checks a live pool),
/// `check --backend devmapper` says so and why, and still checks the rest.
#[test]
fn check_of_the_devmapper_backend_names_what_is_missing() {
    if std::path::Path::new("/dev/mapper/control").exists() {
        eprintln!(
            "skipped check_of_the_devmapper_backend_names_what_is_missing: this kernel has device-mapper; pkg/devmapper's thin_pool tests check a live pool"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let sock = dir.path().join("none.sock");
    let out = run(&[
        "check",
        "--backend",
        "devmapper",
        "--root",
        root.to_str().unwrap(),
        "--address",
        sock.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(2), "a failed check exits 2");
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |name: &str| {
        results
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["check"] == name)
            .unwrap_or_else(|| panic!("no {name} row in {results}"))
            .clone()
    };
    let dm = row("device-mapper");
    assert_eq!(dm["ok"], false);
    assert!(
        dm["detail"]
            .as_str()
            .unwrap()
            .contains("/dev/mapper/control"),
        "{dm}"
    );
    assert_eq!(row("thin pool")["ok"], false);
    assert_eq!(row("root filesystem")["ok"], has_room(dir.path()));
}

/// What `check` must say of the filesystem, worked out here on its own: at least 5%
/// of its space and of its inodes free (a filesystem without an inode table, such as
/// btrfs, reports none).
fn has_room(path: &std::path::Path) -> bool {
    let st = rustix::fs::statvfs(path).unwrap();
    let share = |part: u64, whole: u64| whole == 0 || part as f64 / whole as f64 >= 0.05;
    share(st.f_bavail, st.f_blocks) && share(st.f_favail, st.f_files)
}
