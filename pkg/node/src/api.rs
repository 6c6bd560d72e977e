use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{self, Recorder, Reporter};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::label::{FIELD_MANAGER, ReadyLabel};
use crate::watch::{EventType, NodeEvent};

/// None of our requests is a watch, so a slow answer means a sick API server; a
/// shutdown must not wait on it for the client's default of minutes.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// The two things we ask of the API server. Behind a trait so the scheduling,
/// retrying and shutdown logic is tested without one.
pub trait NodeApi: Send + Sync + 'static {
    /// Sets our label on the Node (`ready`) or removes it.
    fn set_ready_label(&self, ready: bool) -> impl Future<Output = Result<()>> + Send;

    /// Posts an Event about the Node.
    fn publish(&self, event: &NodeEvent) -> impl Future<Output = Result<()>> + Send;
}

/// [`NodeApi`] on a real API server.
#[derive(Clone)]
pub struct KubeNode {
    nodes: Api<Node>,
    name: String,
    label: ReadyLabel,
    field_manager: String,
    recorder: Recorder,
    regarding: ObjectReference,
}

impl KubeNode {
    /// The in-cluster service account, or a kubeconfig when run by hand.
    pub async fn connect(node_name: &str, label: &ReadyLabel) -> Result<KubeNode> {
        let config = kube::Config::infer()
            .await
            .map_err(|err| Error::Config(Box::new(err)))?;
        KubeNode::from_config(config, node_name, label)
    }

    /// Must be called inside a tokio runtime: the client starts a task.
    pub fn from_config(
        mut config: kube::Config,
        node_name: &str,
        label: &ReadyLabel,
    ) -> Result<KubeNode> {
        config.connect_timeout = Some(API_TIMEOUT);
        config.read_timeout = Some(API_TIMEOUT);
        config.write_timeout = Some(API_TIMEOUT);
        let client = Client::try_from(config).map_err(|err| Error::Client(Box::new(err)))?;
        Ok(KubeNode::new(client, node_name, label))
    }

    /// Labels `node_name` with `label`; the label also tells this daemon's patches
    /// and Events from those of another daemon on the same node.
    pub fn new(client: Client, node_name: &str, label: &ReadyLabel) -> KubeNode {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: Some(label.reporting_instance(node_name)),
        };
        KubeNode {
            nodes: Api::all(client.clone()),
            name: node_name.to_owned(),
            label: label.clone(),
            field_manager: label.field_manager(),
            recorder: Recorder::new(client, reporter),
            regarding: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Node".to_owned()),
                name: Some(node_name.to_owned()),
                // The kubelet refers to its Node by name as uid, and `kubectl describe
                // node` looks events up that way; the real uid would hide ours.
                uid: Some(node_name.to_owned()),
                ..ObjectReference::default()
            },
        }
    }
}

async fn bounded<T>(what: &'static str, call: impl Future<Output = kube::Result<T>>) -> Result<T> {
    match tokio::time::timeout(API_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(Error::Api {
            what,
            source: Box::new(source),
        }),
        Err(_) => Err(Error::Timeout {
            what,
            timeout: API_TIMEOUT,
        }),
    }
}

/// A merge patch touching only our label: `null` deletes it, and nothing else on
/// the Node is sent back, so no other writer's change (another daemon's label
/// included) can be undone.
pub fn label_patch(label: &ReadyLabel, ready: bool) -> Value {
    let value = if ready { json!("true") } else { Value::Null };
    json!({ "metadata": { "labels": { label.as_str(): value } } })
}

impl NodeApi for KubeNode {
    async fn set_ready_label(&self, ready: bool) -> Result<()> {
        let params = PatchParams {
            field_manager: Some(self.field_manager.clone()),
            ..PatchParams::default()
        };
        let patch = label_patch(&self.label, ready);
        let what = if ready { "label node" } else { "unlabel node" };
        bounded(
            what,
            self.nodes.patch(&self.name, &params, &Patch::Merge(&patch)),
        )
        .await
        .map(drop)
    }

    async fn publish(&self, event: &NodeEvent) -> Result<()> {
        let event = events::Event {
            type_: match event.type_ {
                EventType::Normal => events::EventType::Normal,
                EventType::Warning => events::EventType::Warning,
            },
            reason: event.reason.to_owned(),
            note: Some(event.note.clone()),
            action: event.action.to_owned(),
            secondary: None,
        };
        bounded("post event", self.recorder.publish(&event, &self.regarding)).await
    }
}
