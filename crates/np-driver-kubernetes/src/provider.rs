//! The Kubernetes [`Provider`]: client set-up, quota per label, leak listing.
//!
//! The client comes from the kubeconfig (`KUBECONFIG` or `~/.kube/config`)
//! and the provider's `context` (the current context without one), as
//! upstream; when there is no kubeconfig at all the in-cluster service
//! account is used. The cluster has no quota of its own for Nodepool
//! (upstream reports it unlimited): only pool `max-*` and tenant limits
//! apply.
//!
//! Leaks: every namespace named `<pool>-<integer>` for one of this provider's
//! pools is listed with its Kubernetes labels as metadata; the launcher
//! deletes those whose `nodepool_provider_name` is this provider and whose
//! node is gone.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use np_config::KubernetesLabel;
use np_core::Quota;
use np_provider::{
    CreateMachine, DeleteMachine, Instance, LaunchRequest, NothingToDelete, Provider, ProviderError,
    RefusedCreate,
};
use serde_json::Value;
use tracing::{info, warn};

use crate::bodies;
use crate::error::{classify, KubeDriverError};
use crate::machine::{Create, Delete, Waits};

/// What a node's credentials say about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterAccess {
    /// The API server URL (no trailing slash), as upstream's client
    /// configuration `host`.
    pub host: String,
    /// Whether the client skips TLS verification (`insecure-skip-tls-verify`);
    /// without it the node also gets the cluster's CA.
    pub skiptls: bool,
    /// The kubeconfig context: the node's `cloud`.
    pub context: Option<String>,
}

/// One `driver: kubernetes` provider.
pub struct KubernetesProvider {
    name: String,
    client: kube::Client,
    access: Arc<ClusterAccess>,
    config: np_config::KubernetesProvider,
    waits: Waits,
}

impl KubernetesProvider {
    /// Sets up the client from the kubeconfig (`kubeconfig`, else
    /// `KUBECONFIG` or `~/.kube/config`) and the provider's `context`;
    /// without any kubeconfig, from the in-cluster service account.
    pub async fn new(
        name: &str,
        config: &np_config::KubernetesProvider,
        kubeconfig: Option<&Path>,
    ) -> Result<Self, KubeDriverError> {
        let error = |message: String| KubeDriverError::Config {
            provider: name.to_owned(),
            context: config.context.as_ref().map(|c| format!(" (context {c})")).unwrap_or_default(),
            message,
        };
        let options = KubeConfigOptions { context: config.context.clone(), ..KubeConfigOptions::default() };
        // As upstream, the in-cluster account is used only when there is no
        // kubeconfig at all; a kubeconfig that cannot be read or parsed is
        // an error, never a silent switch to another cluster.
        let file = match kubeconfig {
            Some(path) => {
                Some(Kubeconfig::read_from(path).map_err(|e| error(format!("{}: {e}", path.display())))?)
            }
            None if kubeconfig_exists() => Some(Kubeconfig::read().map_err(|e| error(e.to_string()))?),
            None => None,
        };
        let mut client_config = match file {
            Some(file) => kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| error(e.to_string()))?,
            None => kube::Config::incluster()
                .map_err(|e| error(format!("no kubeconfig, and not inside a cluster: {e}")))?,
        };
        // A stuck API server fails the step instead of holding it forever
        // (kube-rs has no read timeout by default); counted from the request,
        // not from when a pooled connection last read.
        client_config.read_timeout = Some(Duration::from_secs(60));
        client_config.reset_reader_on_write = true;
        // 429/503/504 are retried by the state machines, a bounded number of
        // times per step; kube-rs's own retry layer can wait many minutes
        // inside one call.
        client_config.default_retry = false;
        let access = ClusterAccess {
            host: client_config.cluster_url.to_string().trim_end_matches('/').to_owned(),
            skiptls: client_config.accept_invalid_certs,
            context: config.context.clone(),
        };
        let client = kube::Client::try_from(client_config).map_err(|e| error(e.to_string()))?;
        info!(provider = name, host = %access.host, "Kubernetes client ready");
        Ok(Self::with_client(name, config, client, access))
    }

    /// A provider on an existing client (tests).
    pub fn with_client(
        name: &str,
        config: &np_config::KubernetesProvider,
        client: kube::Client,
        access: ClusterAccess,
    ) -> Self {
        KubernetesProvider {
            name: name.to_owned(),
            client,
            access: Arc::new(access),
            config: config.clone(),
            waits: Waits::default(),
        }
    }

    /// Other bounds for the token and pod waits (tests).
    pub fn with_waits(mut self, waits: Waits) -> Self {
        self.waits = waits;
        self
    }

    /// What the nodes' credentials say about the cluster.
    pub fn access(&self) -> &ClusterAccess {
        &self.access
    }

    fn label(&self, pool: &str, label: &str) -> Option<&KubernetesLabel> {
        self.config.pool(pool)?.labels.iter().find(|l| l.name == label)
    }

    /// Whether a namespace name is `<pool>-<integer>` for one of our pools.
    fn is_node_namespace(&self, name: &str) -> bool {
        self.config.pools.iter().any(|p| {
            name.strip_prefix(&p.name)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        })
    }
}

/// Whether a kubeconfig file is there to read: `KUBECONFIG` is set, or
/// `~/.kube/config` exists.
fn kubeconfig_exists() -> bool {
    if std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty()) {
        return true;
    }
    std::env::var_os("HOME").is_some_and(|home| Path::new(&home).join(".kube/config").exists())
}

#[async_trait]
impl Provider for KubernetesProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn create(&self, request: LaunchRequest) -> Box<dyn CreateMachine> {
        let Some(label) = self.label(&request.pool, &request.label) else {
            return Box::new(RefusedCreate(format!(
                "provider {}: pool {} has no label {}",
                self.name, request.pool, request.label
            )));
        };
        let labels = bodies::k8s_labels(label, request.request_attributes.as_ref(), &request.metadata);
        let namespace = bodies::namespace_name(&request.pool, &request.node_id);
        Box::new(Create::new(
            self.client.clone(),
            self.access.clone(),
            label.clone(),
            namespace,
            labels,
            self.waits,
        ))
    }

    fn delete(&self, external_id: &Value) -> Box<dyn DeleteMachine> {
        match external_id.as_str() {
            Some(ns) if !ns.is_empty() => Box::new(Delete::new(self.client.clone(), ns.to_owned())),
            _ => {
                warn!(provider = %self.name, %external_id, "not a namespace name; nothing to delete");
                Box::new(NothingToDelete)
            }
        }
    }

    async fn list_instances(&self) -> Result<Vec<Instance>, ProviderError> {
        let api: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &ApiResource::erase::<Namespace>(&()));
        let list = api.list(&ListParams::default()).await.map_err(|e| classify("list Namespaces", &e))?;
        let mut out = Vec::new();
        for ns in list.items {
            let Some(name) = ns.metadata.name.clone() else { continue };
            if !self.is_node_namespace(&name) {
                continue;
            }
            let metadata: BTreeMap<String, String> =
                ns.metadata.labels.clone().unwrap_or_default().into_iter().collect();
            out.push(Instance {
                external_id: Value::from(name),
                cloud: self.access.context.clone(),
                metadata,
                // A leaked namespace counts as upstream's `leaked.nodes`.
                node_properties: Some(serde_json::json!({"resource": "node"})),
                ..Instance::default()
            });
        }
        Ok(out)
    }

    async fn quota_limits(&self) -> Result<Quota, ProviderError> {
        Ok(Quota::unlimited())
    }

    fn quota_for_label(&self, pool: &str, label: &str) -> Quota {
        self.label(pool, label)
            .map(bodies::label_quota)
            .unwrap_or_else(|| Quota::new(None, Some(1.0), None, 0.0))
    }
}
