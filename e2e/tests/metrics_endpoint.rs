//! The metrics endpoint of a running daemon: figures move with real requests,
//! probes answer, and nothing listens unless asked.

use std::net::TcpListener;

use rustlayer_e2e::support::{free_port, http_get as get, metric_value as value};
use rustlayer_e2e::{Daemon, require_root};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn metrics_follow_requests() {
    require_root();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start_with(&["--metrics-address", &address]);
    assert_eq!(get(port, "/healthz").0, 200);
    assert_eq!(get(port, "/readyz").0, 200);

    let c = daemon.client().await;
    c.prepare("a", "").await.unwrap();
    c.commit("c", "a").await.unwrap();
    assert!(c.prepare("a2", "missing").await.is_err());

    let (status, text) = get(port, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        value(
            &text,
            "rustlayer_grpc_requests_total{code=\"OK\",method=\"Prepare\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "rustlayer_grpc_requests_total{code=\"NotFound\",method=\"Prepare\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "rustlayer_grpc_request_duration_seconds_count{method=\"Commit\"}"
        ),
        Some(1.0)
    );
    assert!(value(&text, "rustlayer_root_filesystem_size_bytes").unwrap() > 0.0);
    assert!(
        value(
            &text,
            "rustlayer_build_info{backend=\"overlay\",version=\"0.1.0\"}"
        )
        .is_some()
    );
    drop(c);
    daemon.stop();
}

#[test]
#[ignore = "needs root: the daemon mounts overlayfs"]
fn a_taken_metrics_port_fails_the_start() {
    require_root();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(rustlayer_e2e::binary())
        .args(["serve", "--metrics-address", &addr, "--root"])
        .arg(dir.path().join("root"))
        .arg("--address")
        .arg(dir.path().join("s.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("metrics listener"));
}
