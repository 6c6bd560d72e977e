//! containerd's `Introspection` service, as far as its clients ask it of a socket
//! that serves snapshots: `ctr` 1.7 and later call `Server` before every command
//! (for deprecation warnings, and `ctr info` for the uuid), `ctr plugins ls` calls
//! `Plugins`. Without it `ctr` warns "Failed to check deprecations" each time.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use rustlayer_api::introspection::{self as pb, introspection_server::Introspection};
use rustlayer_api::types::Platform;
use rustlayer_core::Filters;
use rustlayer_core::filter::Fields;
use rustlayer_snapshotter::Snapshotter;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::service::status_from;

/// The plugin id this socket's snapshotter goes by. containerd knows it by the name
/// of the proxy plugin in its own configuration, which the daemon cannot see.
pub const SNAPSHOTTER_ID: &str = "rustlayer";

const SNAPSHOTTER_PLUGIN: &str = "io.containerd.snapshotter.v1";
const GRPC_PLUGIN: &str = "io.containerd.grpc.v1";

pub struct IntrospectionService {
    plugins: Vec<pb::Plugin>,
    uuid: String,
    pidns: u64,
}

impl IntrospectionService {
    pub fn new(snapshotter: &Snapshotter) -> Self {
        let root = snapshotter
            .metadata_path()
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        let backend = snapshotter.backend();
        let mut capabilities = Vec::new();
        if backend.supports_rebase() {
            capabilities.push("rebase".to_owned());
        }
        let snapshotter_plugin = pb::Plugin {
            r#type: SNAPSHOTTER_PLUGIN.into(),
            id: SNAPSHOTTER_ID.into(),
            platforms: vec![host_platform()],
            exports: [
                ("root".to_owned(), root.display().to_string()),
                ("backend".to_owned(), backend.name().to_owned()),
            ]
            .into(),
            capabilities,
            ..Default::default()
        };
        let service = |id: &str, requires: &[&str]| pb::Plugin {
            r#type: GRPC_PLUGIN.into(),
            id: id.into(),
            requires: requires.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        };
        IntrospectionService {
            plugins: vec![
                snapshotter_plugin,
                service("snapshots", &[SNAPSHOTTER_PLUGIN]),
                service("introspection", &[]),
            ],
            uuid: snapshotter.uuid().to_owned(),
            pidns: pid_namespace(),
        }
    }
}

/// The inode of this process's pid namespace, as containerd reports its own (0 where
/// /proc cannot tell).
fn pid_namespace() -> u64 {
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
}

/// The platform this daemon's layers are for, in OCI's spelling.
fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    Platform {
        os: std::env::consts::OS.into(),
        architecture: architecture.into(),
        ..Default::default()
    }
}

/// containerd's `adaptPlugin`: a plugin is filtered by its type and id.
struct PluginFields<'a>(&'a pb::Plugin);

impl Fields for PluginFields<'_> {
    fn field(&self, path: &[String]) -> Option<&str> {
        let value = match path.first()?.as_str() {
            "type" => &self.0.r#type,
            "id" => &self.0.id,
            _ => return None,
        };
        (!value.is_empty()).then_some(value.as_str())
    }
}

#[tonic::async_trait]
impl Introspection for IntrospectionService {
    async fn plugins(
        &self,
        request: Request<pb::PluginsRequest>,
    ) -> Result<Response<pb::PluginsResponse>, Status> {
        let filters = Filters::parse(&request.into_inner().filters).map_err(|e| status_from(&e))?;
        let plugins = self
            .plugins
            .iter()
            .filter(|p| filters.matches(&PluginFields(p) as &dyn Fields))
            .cloned()
            .collect();
        Ok(Response::new(pb::PluginsResponse { plugins }))
    }

    async fn server(&self, _request: Request<()>) -> Result<Response<pb::ServerResponse>, Status> {
        debug!("introspection: Server");
        Ok(Response::new(pb::ServerResponse {
            uuid: self.uuid.clone(),
            pid: u64::from(std::process::id()),
            pidns: self.pidns,
            // Nothing rustlayer accepts is deprecated.
            deprecations: Vec::new(),
        }))
    }

    /// containerd's answers: the plugin by type and id, `NotFound` for one this
    /// socket does not serve, and `Unimplemented` for the extra information asked
    /// with options, which none of these plugins has.
    async fn plugin_info(
        &self,
        request: Request<pb::PluginInfoRequest>,
    ) -> Result<Response<pb::PluginInfoResponse>, Status> {
        let r = request.into_inner();
        let Some(plugin) = self
            .plugins
            .iter()
            .find(|p| p.r#type == r.r#type && p.id == r.id)
        else {
            return Err(Status::not_found(format!(
                "plugin {}.{} not found",
                r.r#type, r.id
            )));
        };
        if r.options.is_some() {
            return Err(Status::unimplemented(format!(
                "plugin {}.{} has no extra information",
                r.r#type, r.id
            )));
        }
        Ok(Response::new(pb::PluginInfoResponse {
            plugin: Some(plugin.clone()),
            extra: None,
        }))
    }
}
