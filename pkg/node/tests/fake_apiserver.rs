//! The kube calls themselves, against a local HTTP server that plays the two
//! endpoints of the Kubernetes API we use, asserting the exact requests. The real
//! API server (authentication, RBAC, what `kubectl describe node` shows) is
//! exercised by the kind e2e.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use rustlayer_core::PoolStats;
use rustlayer_node::{Inodes, KubeNode, ReadyLabel, Sample, Settings, Thresholds, start};
use serde_json::{Value, json};

const NODE: &str = "node-a";
const NODE_PATH: &str = "/api/v1/nodes/node-a";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

#[derive(Debug, Clone)]
struct Request {
    method: Method,
    path: String,
    query: Option<String>,
    content_type: Option<String>,
    body: Value,
}

#[derive(Default)]
struct ApiServer {
    requests: Mutex<Vec<Request>>,
    /// The Node's labels, as merge patches left them.
    labels: Mutex<BTreeMap<String, Value>>,
    /// Failures to answer with, per method and path, before behaving.
    failures: Mutex<Vec<(Method, &'static str, StatusCode)>>,
}

impl ApiServer {
    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn to(&self, method: Method, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }
}

fn status(code: StatusCode, message: &str) -> (StatusCode, String) {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "code": code.as_u16(),
    });
    (code, body.to_string())
}

async fn handle(
    State(server): State<Arc<ApiServer>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    server.requests.lock().unwrap().push(Request {
        method: method.clone(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.clone(),
    });
    let failure = {
        let mut failures = server.failures.lock().unwrap();
        let at = failures
            .iter()
            .position(|(m, p, _)| *m == method && *p == uri.path());
        at.map(|at| failures.remove(at).2)
    };
    if let Some(code) = failure {
        return status(code, "injected failure");
    }
    match (method, uri.path()) {
        (Method::PATCH, NODE_PATH) => {
            let mut labels = server.labels.lock().unwrap();
            if let Some(patch) = body.pointer("/metadata/labels").and_then(Value::as_object) {
                for (k, v) in patch {
                    if v.is_null() {
                        labels.remove(k);
                    } else {
                        labels.insert(k.clone(), v.clone());
                    }
                }
            }
            let node = json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": { "name": NODE, "uid": "6f1c0d52-9d3e-4c0e-8a51-0d2f3e4b5a6c", "labels": *labels },
            });
            (StatusCode::OK, node.to_string())
        }
        (Method::POST, EVENTS_PATH) => (StatusCode::CREATED, body.to_string()),
        (Method::PATCH, path) if path.starts_with(EVENTS_PATH) => {
            (StatusCode::OK, body.to_string())
        }
        _ => status(StatusCode::NOT_FOUND, "not played by this test"),
    }
}

async fn api_server() -> (Arc<ApiServer>, kube::Config) {
    let server = Arc::new(ApiServer::default());
    let app = Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    (server, config)
}

/// Polls until `done` holds; the daemon's side runs on its own schedule.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Figures(Arc<Mutex<Sample>>);

impl Figures {
    fn healthy() -> Figures {
        Figures(Arc::new(Mutex::new(Sample {
            root_inodes: Some(Inodes {
                total: 1000,
                free: 500,
            }),
            pool: Some(PoolStats {
                pool: "rustlayer-pool".into(),
                data_used_bytes: 10,
                data_size_bytes: 100,
                metadata_used_bytes: 10,
                metadata_size_bytes: 100,
                thin_devices: 4,
            }),
        })))
    }

    fn sampler(&self) -> impl Fn() -> Sample + Send + Sync + 'static {
        let sample = Arc::clone(&self.0);
        move || sample.lock().unwrap().clone()
    }

    fn set(&self, change: impl FnOnce(&mut Sample)) {
        change(&mut self.0.lock().unwrap());
    }
}

fn settings() -> Settings {
    Settings {
        interval: Duration::from_millis(20),
        ..Settings::new(NODE, Thresholds::default())
    }
}

/// Query pairs, ignoring the empty ones the client's URL builder leaves.
fn query_pairs(request: &Request) -> Vec<&str> {
    let query = request.query.as_deref().unwrap_or_default();
    query.split('&').filter(|p| !p.is_empty()).collect()
}

fn assert_event(request: &Request, type_: &str, reason: &str, action: &str, note_has: &str) {
    assert_event_from(request, NODE, type_, reason, action, note_has);
}

fn assert_event_from(
    request: &Request,
    reporting_instance: &str,
    type_: &str,
    reason: &str,
    action: &str,
    note_has: &str,
) {
    assert_eq!(request.method, Method::POST);
    assert_eq!(request.path, EVENTS_PATH);
    assert!(query_pairs(request).is_empty(), "{request:?}");
    let e = &request.body;
    assert_eq!(e["apiVersion"], "events.k8s.io/v1");
    assert_eq!(e["kind"], "Event");
    assert_eq!(e["type"], type_);
    assert_eq!(e["reason"], reason);
    assert_eq!(e["action"], action);
    assert_eq!(e["reportingController"], "rustlayer");
    assert_eq!(e["reportingInstance"], reporting_instance);
    assert_eq!(
        e["regarding"],
        json!({ "apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE })
    );
    assert!(e["eventTime"].is_string(), "{e}");
    assert!(
        e["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("node-a.")),
        "{e}"
    );
    let note = e["note"].as_str().unwrap_or_default();
    assert!(note.contains(note_has), "{note:?} lacks {note_has:?}");
}

#[tokio::test]
async fn labels_the_node_posts_events_on_crossings_and_unlabels_on_shutdown() {
    let (server, config) = api_server().await;
    let figures = Figures::healthy();
    let api = KubeNode::from_config(config, NODE, &ReadyLabel::default()).unwrap();
    let running = start(api, figures.sampler(), &settings());

    until("the label", || {
        !server.to(Method::PATCH, NODE_PATH).is_empty()
    })
    .await;
    let label = &server.to(Method::PATCH, NODE_PATH)[0];
    assert_eq!(query_pairs(label), ["fieldManager=rustlayer"]);
    assert_eq!(
        label.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        label.body,
        json!({ "metadata": { "labels": { "rustlayer.io/ready": "true" } } })
    );

    figures.set(|s| s.root_inodes.as_mut().unwrap().free = 50);
    until("InodesLow", || {
        server.to(Method::POST, EVENTS_PATH).len() == 1
    })
    .await;
    assert_event(
        &server.to(Method::POST, EVENTS_PATH)[0],
        "Warning",
        "InodesLow",
        "CheckRootInodes",
        "5.0%",
    );

    figures.set(|s| {
        let pool = s.pool.as_mut().unwrap();
        pool.data_used_bytes = 95;
        pool.metadata_used_bytes = 99;
    });
    until("the pool events", || {
        server.to(Method::POST, EVENTS_PATH).len() == 3
    })
    .await;
    let events = server.to(Method::POST, EVENTS_PATH);
    assert_event(
        &events[1],
        "Warning",
        "ThinPoolDataLow",
        "CheckThinPoolData",
        "95.0% used",
    );
    assert_event(
        &events[2],
        "Warning",
        "ThinPoolMetadataLow",
        "CheckThinPoolMetadata",
        "rustlayer-pool",
    );

    // Many samples at the same figures: no new events.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.to(Method::POST, EVENTS_PATH).len(), 3);

    figures.set(|s| s.root_inodes.as_mut().unwrap().free = 400);
    until("Recovered", || {
        server.to(Method::POST, EVENTS_PATH).len() == 4
    })
    .await;
    assert_event(
        &server.to(Method::POST, EVENTS_PATH)[3],
        "Normal",
        "Recovered",
        "CheckRootInodes",
        "40.0%",
    );

    running.shutdown().await;
    let patches = server.to(Method::PATCH, NODE_PATH);
    assert_eq!(patches.len(), 2, "{patches:#?}");
    assert_eq!(query_pairs(&patches[1]), ["fieldManager=rustlayer"]);
    assert_eq!(
        patches[1].body,
        json!({ "metadata": { "labels": { "rustlayer.io/ready": null } } })
    );
    // Nothing else was asked of the API server.
    assert_eq!(server.requests().len(), 6, "{:#?}", server.requests());
}

#[tokio::test]
async fn api_errors_are_retried_and_nothing_is_lost_or_doubled() {
    let (server, config) = api_server().await;
    server.failures.lock().unwrap().extend([
        (Method::PATCH, NODE_PATH, StatusCode::INTERNAL_SERVER_ERROR),
        (Method::POST, EVENTS_PATH, StatusCode::FORBIDDEN),
    ]);
    let figures = Figures::healthy();
    figures.set(|s| s.root_inodes.as_mut().unwrap().free = 0);
    let api = KubeNode::from_config(config, NODE, &ReadyLabel::default()).unwrap();
    let running = start(api, figures.sampler(), &settings());

    until("a label and an event", || {
        server.to(Method::PATCH, NODE_PATH).len() == 2
            && server.to(Method::POST, EVENTS_PATH).len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = server.to(Method::POST, EVENTS_PATH);
    assert_eq!(events.len(), 2, "posted once after the failure, then quiet");
    assert_eq!(events[0].body["reason"], events[1].body["reason"]);
    assert_event(
        &events[1],
        "Warning",
        "InodesLow",
        "CheckRootInodes",
        "0.0%",
    );
    let labels = server.to(Method::PATCH, NODE_PATH);
    assert_eq!(labels[0].body, labels[1].body);

    running.shutdown().await;
    assert_eq!(server.to(Method::PATCH, NODE_PATH).len(), 3);
}

#[tokio::test]
async fn shutdown_with_no_api_server_is_bounded() {
    // Nothing listens on this port once the listener is dropped.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let api = KubeNode::from_config(config, NODE, &ReadyLabel::default()).unwrap();
    let running = start(api, Figures::healthy().sampler(), &settings());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let began = std::time::Instant::now();
    running.shutdown().await;
    assert!(began.elapsed() <= rustlayer_node::UNLABEL_DEADLINE + Duration::from_secs(1));
}

fn labels_on_the_node(server: &ApiServer) -> Vec<String> {
    server.labels.lock().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn two_daemons_on_one_node_keep_to_their_own_labels() {
    let (server, config) = api_server().await;
    let limited_label = ReadyLabel::new("rustlayer.io/ready-rustlayer-limited").unwrap();
    let default = Figures::healthy();
    let limited = Figures::healthy();
    let first = start(
        KubeNode::from_config(config.clone(), NODE, &ReadyLabel::default()).unwrap(),
        default.sampler(),
        &settings(),
    );
    let second = start(
        KubeNode::from_config(config, NODE, &limited_label).unwrap(),
        limited.sampler(),
        &Settings {
            ready_label: limited_label,
            ..settings()
        },
    );
    until("both labels", || labels_on_the_node(&server).len() == 2).await;
    assert_eq!(
        labels_on_the_node(&server),
        ["rustlayer.io/ready", "rustlayer.io/ready-rustlayer-limited"]
    );

    // Each daemon's patch names its label alone, under its own field manager.
    let patches = server.to(Method::PATCH, NODE_PATH);
    let by_manager = |manager: &str| -> Vec<Value> {
        patches
            .iter()
            .filter(|p| query_pairs(p) == [manager])
            .map(|p| p.body.clone())
            .collect()
    };
    assert_eq!(
        by_manager("fieldManager=rustlayer"),
        [json!({ "metadata": { "labels": { "rustlayer.io/ready": "true" } } })]
    );
    assert_eq!(
        by_manager("fieldManager=rustlayer%3Arustlayer.io%2Fready-rustlayer-limited"),
        [json!({ "metadata": { "labels": { "rustlayer.io/ready-rustlayer-limited": "true" } } })]
    );

    // Their Events say which daemon posted them.
    limited.set(|s| s.root_inodes.as_mut().unwrap().free = 50);
    until("the second daemon's InodesLow", || {
        server.to(Method::POST, EVENTS_PATH).len() == 1
    })
    .await;
    assert_event_from(
        &server.to(Method::POST, EVENTS_PATH)[0],
        "node-a:rustlayer.io/ready-rustlayer-limited",
        "Warning",
        "InodesLow",
        "CheckRootInodes",
        "5.0%",
    );
    default.set(|s| s.root_inodes.as_mut().unwrap().free = 40);
    until("the first daemon's InodesLow", || {
        server.to(Method::POST, EVENTS_PATH).len() == 2
    })
    .await;
    assert_event(
        &server.to(Method::POST, EVENTS_PATH)[1],
        "Warning",
        "InodesLow",
        "CheckRootInodes",
        "4.0%",
    );

    // The second daemon's clean shutdown takes its label away, and only its label.
    second.shutdown().await;
    assert_eq!(labels_on_the_node(&server), ["rustlayer.io/ready"]);
    assert_eq!(
        server.to(Method::PATCH, NODE_PATH).last().unwrap().body,
        json!({ "metadata": { "labels": { "rustlayer.io/ready-rustlayer-limited": null } } })
    );
    first.shutdown().await;
    assert!(labels_on_the_node(&server).is_empty());
}
