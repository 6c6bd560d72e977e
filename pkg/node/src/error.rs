// kube's errors are large; boxed, a Result stays cheap on the happy path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("node integration is on but no node name was given (--node-name or NODE_NAME)")]
    NoNodeName,
    #[error("unknown node integration mode {0:?}: expected auto, on or off")]
    Mode(String),
    #[error("ready label {key:?} is no Kubernetes label key ([prefix/]name): {problem}")]
    Label { key: String, problem: String },
    #[error("no Kubernetes client configuration (in-cluster or kubeconfig): {0}")]
    Config(#[source] Box<kube::config::InferConfigError>),
    #[error("kubernetes client: {0}")]
    Client(#[source] Box<kube::Error>),
    #[error("kubernetes API, {what}: {source}")]
    Api {
        what: &'static str,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("kubernetes API, {what}: no answer within {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: std::time::Duration,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
