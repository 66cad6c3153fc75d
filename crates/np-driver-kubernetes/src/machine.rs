//! The create and delete state machines: one API call per step.
//!
//! Create: namespace → service account → token secret → (wait for the token)
//! → role → role binding → for pod labels: pod → (wait until it runs). The
//! namespace name is the node's `external_id` from the moment its creation is
//! sent, so the launcher deletes it whatever step fails, and a launcher crash
//! leaves nothing the leak cleanup cannot find.
//!
//! Waiting steps read the object again after a short, growing pause (0.1 s
//! doubling up to 1 s: a fast cluster answers well under upstream's fixed
//! one-second sleeps) until upstream's bounds: 30 s for the token, 300 s for
//! the pod. A pod that ends (`Failed` or `Succeeded`) fails the attempt at
//! once instead of running out the clock.
//!
//! Delete: `DELETE` the namespace with background propagation, then read it
//! until it is gone (the cluster finalises its contents first).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use np_config::KubernetesLabel;
use np_provider::{CreateMachine, DeleteMachine, Instance, ProviderError, Step};
use serde_json::{json, Value};
use tokio::time::Instant;
use tracing::debug;

use crate::bodies;
use crate::error::{classify, is_conflict, is_not_found};
use crate::provider::ClusterAccess;

/// How long the token controller has to fill the secret (upstream: 30 reads,
/// a second apart).
pub const TOKEN_WAIT: Duration = Duration::from_secs(30);
/// How long a pod has to start running (upstream: 300 reads, a second apart).
pub const POD_WAIT: Duration = Duration::from_secs(300);

/// The bounds of the waiting steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    /// For the service account token ([`TOKEN_WAIT`]).
    pub token: Duration,
    /// For the pod to run ([`POD_WAIT`]).
    pub pod: Duration,
}

impl Default for Waits {
    fn default() -> Self {
        Waits { token: TOKEN_WAIT, pod: POD_WAIT }
    }
}

fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<DynamicObject>
where
    K: kube::Resource<DynamicType = ()>,
{
    let resource = ApiResource::erase::<K>(&());
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

fn object(body: Value) -> Result<DynamicObject, ProviderError> {
    serde_json::from_value(body).map_err(|e| ProviderError::Fatal(format!("cannot build the object: {e}")))
}

/// Creates `body` as a `K`; an object that exists already (this attempt's
/// own earlier try whose answer was lost) counts as created.
async fn create<K>(client: &kube::Client, namespace: Option<&str>, body: Value) -> Result<(), ProviderError>
where
    K: kube::Resource<DynamicType = ()>,
{
    let kind = K::kind(&());
    let obj = object(body)?;
    match api::<K>(client, namespace).create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(e) if is_conflict(&e) => Ok(()),
        Err(e) => Err(classify(&format!("create {kind}"), &e)),
    }
}

/// The next pause of a waiting step: 0.1 s, doubling, at most 1 s.
fn backoff(tries: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << tries.min(4))).min(Duration::from_secs(1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Namespace,
    ServiceAccount,
    Secret,
    Token,
    Role,
    RoleBinding,
    Pod,
    PodRunning,
}

/// A node being created.
pub struct Create {
    client: kube::Client,
    access: Arc<ClusterAccess>,
    label: KubernetesLabel,
    namespace: String,
    labels: std::collections::BTreeMap<String, String>,
    state: State,
    sent: bool,
    token: Option<(String, String)>,
    tries: u32,
    deadline: Option<Instant>,
    waits: Waits,
}

impl Create {
    pub(crate) fn new(
        client: kube::Client,
        access: Arc<ClusterAccess>,
        label: KubernetesLabel,
        namespace: String,
        labels: std::collections::BTreeMap<String, String>,
        waits: Waits,
    ) -> Self {
        Create {
            waits,
            client,
            access,
            label,
            namespace,
            labels,
            state: State::Namespace,
            sent: false,
            token: None,
            tries: 0,
            deadline: None,
        }
    }

    fn pod_label(&self) -> bool {
        self.label.kind == "pod"
    }

    fn advance(&mut self, next: State) -> Step<Instance> {
        self.state = next;
        self.tries = 0;
        self.deadline = None;
        Step::Pending(Duration::ZERO)
    }

    /// Waits once more (until `limit` from the first wait), or fails.
    fn wait_again(
        &mut self,
        limit: Duration,
        failure: impl FnOnce() -> String,
    ) -> Result<Step<Instance>, ProviderError> {
        let deadline = *self.deadline.get_or_insert_with(|| Instant::now() + limit);
        if Instant::now() >= deadline {
            return Err(ProviderError::Fatal(failure()));
        }
        let pause = backoff(self.tries);
        self.tries += 1;
        Ok(Step::Pending(pause))
    }

    /// Upstream's `connection_port` object (field order as upstream's dict).
    fn resource(&self, token: &str, ca_crt: &str) -> Value {
        let mut r = serde_json::Map::new();
        r.insert("name".into(), json!(self.namespace));
        r.insert("namespace".into(), json!(self.namespace));
        r.insert("host".into(), json!(self.access.host));
        r.insert("skiptls".into(), json!(self.access.skiptls));
        r.insert("token".into(), json!(token));
        r.insert("user".into(), json!(bodies::USER));
        if !self.access.skiptls {
            r.insert("ca_crt".into(), json!(ca_crt));
        }
        if self.pod_label() {
            r.insert("pod".into(), json!(self.label.name));
        }
        Value::Object(r)
    }

    fn instance(&self, host_id: Option<String>) -> Result<Instance, ProviderError> {
        let (token, ca_crt) =
            self.token.as_ref().ok_or_else(|| ProviderError::Fatal("no service account token".into()))?;
        let pod = self.pod_label();
        Ok(Instance {
            external_id: json!(self.namespace),
            interface_ip: pod.then(|| self.label.name.clone()),
            host_id,
            cloud: self.access.context.clone(),
            metadata: self.labels.clone(),
            connection_type: Some(if pod { "kubectl" } else { "namespace" }.to_owned()),
            connection_port: Some(self.resource(token, ca_crt)),
            ..Instance::default()
        })
    }

    async fn read_token(&mut self) -> Result<Step<Instance>, ProviderError> {
        let secret = api::<Secret>(&self.client, Some(&self.namespace))
            .get(bodies::USER)
            .await
            .map_err(|e| classify("read Secret", &e))?;
        let data = secret.data.get("data");
        let field = |k: &str| data.and_then(|d| d.get(k)).and_then(Value::as_str).filter(|s| !s.is_empty());
        if let (Some(token), Some(ca_crt)) = (field("token"), field("ca.crt")) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ProviderError::Fatal(format!("{}: the token is not base64 text", self.namespace))
                })?;
            self.token = Some((decoded, ca_crt.to_owned()));
            return Ok(self.advance(State::Role));
        }
        let namespace = self.namespace.clone();
        self.wait_again(self.waits.token, || {
            format!("{namespace}: couldn't find token for secret {}", bodies::USER)
        })
    }

    async fn read_pod(&mut self) -> Result<Step<Instance>, ProviderError> {
        let pod = api::<Pod>(&self.client, Some(&self.namespace))
            .get(&self.label.name)
            .await
            .map_err(|e| classify("read Pod", &e))?;
        let phase = pod.data.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Unknown").to_owned();
        match phase.as_str() {
            "Running" => {
                let node = pod.data.pointer("/spec/nodeName").and_then(Value::as_str).map(str::to_owned);
                Ok(Step::Done(self.instance(node)?))
            }
            "Failed" | "Succeeded" => {
                Err(ProviderError::Fatal(format!("{}: pod failed to initialize ({phase})", self.namespace)))
            }
            _ => {
                debug!(namespace = %self.namespace, phase, "pod not running yet");
                let namespace = self.namespace.clone();
                self.wait_again(self.waits.pod, || format!("{namespace}: pod failed to initialize ({phase})"))
            }
        }
    }
}

#[async_trait]
impl CreateMachine for Create {
    async fn step(&mut self) -> Result<Step<Instance>, ProviderError> {
        let ns = self.namespace.clone();
        match self.state {
            State::Namespace => {
                self.sent = true;
                let obj = object(bodies::namespace(&ns, &self.labels))?;
                match api::<Namespace>(&self.client, None).create(&PostParams::default(), &obj).await {
                    Ok(_) => Ok(self.advance(State::ServiceAccount)),
                    // Still there from an earlier attempt (terminating): the
                    // launcher deletes it and tries again.
                    Err(e) => Err(classify("create Namespace", &e)),
                }
            }
            State::ServiceAccount => {
                create::<ServiceAccount>(&self.client, Some(&ns), bodies::service_account()).await?;
                Ok(self.advance(State::Secret))
            }
            State::Secret => {
                create::<Secret>(&self.client, Some(&ns), bodies::token_secret()).await?;
                Ok(self.advance(State::Token))
            }
            State::Token => self.read_token().await,
            State::Role => {
                create::<Role>(&self.client, Some(&ns), bodies::role(self.pod_label())).await?;
                Ok(self.advance(State::RoleBinding))
            }
            State::RoleBinding => {
                create::<RoleBinding>(&self.client, Some(&ns), bodies::role_binding(&ns, self.pod_label()))
                    .await?;
                if self.pod_label() {
                    Ok(self.advance(State::Pod))
                } else {
                    Ok(Step::Done(self.instance(None)?))
                }
            }
            State::Pod => {
                create::<Pod>(&self.client, Some(&ns), bodies::pod(&self.label, &self.labels)).await?;
                Ok(self.advance(State::PodRunning))
            }
            State::PodRunning => self.read_pod().await,
        }
    }

    fn external_id(&self) -> Option<Value> {
        self.sent.then(|| json!(self.namespace))
    }

    fn state(&self) -> &'static str {
        match self.state {
            State::Namespace => "namespace",
            State::ServiceAccount => "service-account",
            State::Secret => "secret",
            State::Token => "token",
            State::Role => "role",
            State::RoleBinding => "role-binding",
            State::Pod => "pod",
            State::PodRunning => "pod-running",
        }
    }
}

/// A node's namespace being deleted.
pub struct Delete {
    client: kube::Client,
    namespace: String,
    requested: bool,
    tries: u32,
}

impl Delete {
    pub(crate) fn new(client: kube::Client, namespace: String) -> Self {
        Delete { client, namespace, requested: false, tries: 0 }
    }
}

#[async_trait]
impl DeleteMachine for Delete {
    async fn step(&mut self) -> Result<Step<()>, ProviderError> {
        let namespaces = api::<Namespace>(&self.client, None);
        if !self.requested {
            return match namespaces.delete(&self.namespace, &DeleteParams::background()).await {
                Ok(_) => {
                    self.requested = true;
                    Ok(Step::Pending(Duration::ZERO))
                }
                Err(e) if is_not_found(&e) => Ok(Step::Done(())),
                Err(e) => Err(classify("delete Namespace", &e)),
            };
        }
        match namespaces.get(&self.namespace).await {
            Err(e) if is_not_found(&e) => Ok(Step::Done(())),
            Err(e) => Err(classify("read Namespace", &e)),
            Ok(_) => {
                let pause = backoff(self.tries);
                self.tries += 1;
                Ok(Step::Pending(pause))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_a_second() {
        let waits: Vec<u64> = (0..7).map(|t| backoff(t).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000, 1000]);
    }
}
