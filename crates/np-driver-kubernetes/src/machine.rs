//! The create and delete state machines: one API call per step.
//!
//! Create: namespace → service account → token secret → (wait for the token)
//! → role → role binding → for pod labels: pod → (wait until it runs). The
//! namespace name becomes the node's `external_id` once its creation
//! succeeded, or may have succeeded (a lost answer, a server error), so the
//! launcher deletes it whatever later step fails. A namespace of that name
//! that exists already is adopted only if it carries this node's id and
//! provider (the answer to our own POST was lost); anybody else's is never
//! claimed, so never deleted. A launcher crash leaves nothing the leak
//! cleanup cannot find.
//!
//! The API server's "try again" answers (429, 503, 504) are retried by the
//! step itself, at most [`BUSY_RETRIES`] times with the waits' backoff, so a
//! step is bounded in time (kube-rs's own retry layer is off: it waits up
//! to many minutes inside one call).
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

/// How often one step retries a 429, 503 or 504 before the attempt fails.
pub const BUSY_RETRIES: u32 = 5;

/// Whether `e` is one of the API server's "try again" answers.
fn is_busy(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if matches!(s.code, 429 | 503 | 504))
}

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

/// Creates `obj` as a `K` in the node's namespace; an object that exists
/// already (this step's earlier try whose answer was lost: the namespace is
/// this node's alone) counts as created.
async fn create<K>(client: &kube::Client, namespace: &str, obj: &DynamicObject) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = ()>,
{
    match api::<K>(client, Some(namespace)).create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(e) if is_conflict(&e) => Ok(()),
        Err(e) => Err(e),
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
    busy: u32,
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
            busy: 0,
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
        bodies::is_pod(&self.label)
    }

    fn advance(&mut self, next: State) -> Step<Instance> {
        self.state = next;
        self.tries = 0;
        self.deadline = None;
        self.busy = 0;
        Step::Pending(Duration::ZERO)
    }

    /// The same step again after a busy answer, or the error.
    fn busy_or(&mut self, what: &str, e: &kube::Error) -> Result<Step<Instance>, ProviderError> {
        if is_busy(e) && self.busy < BUSY_RETRIES {
            self.busy += 1;
            debug!(namespace = %self.namespace, what, error = %e, "API server busy; trying again");
            return Ok(Step::Pending(backoff(self.busy)));
        }
        Err(classify(what, e))
    }

    /// After a 409 on the namespace: whether the namespace there is the one
    /// this node's earlier POST made (its labels name this node and
    /// provider, and it is not being deleted).
    async fn is_ours(&self) -> Result<bool, ProviderError> {
        let found = api::<Namespace>(&self.client, None).get(&self.namespace).await;
        let ns = match found {
            Ok(ns) => ns,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(classify("read Namespace", &e)),
        };
        let labels = ns.metadata.labels.unwrap_or_default();
        let same = |k: &str| labels.get(k) == self.labels.get(k);
        Ok(ns.metadata.deletion_timestamp.is_none()
            && same(np_provider::META_NODE_ID)
            && same(np_provider::META_PROVIDER)
            && same(np_provider::META_POOL))
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
            connection_type: Some(bodies::connection_type(&self.label).to_owned()),
            connection_port: Some(self.resource(token, ca_crt)),
            ..Instance::default()
        })
    }

    async fn read_token(&mut self) -> Result<Step<Instance>, ProviderError> {
        let secret = match api::<Secret>(&self.client, Some(&self.namespace)).get(bodies::USER).await {
            Ok(secret) => secret,
            Err(e) => return self.busy_or("read Secret", &e),
        };
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
        let pod = match api::<Pod>(&self.client, Some(&self.namespace)).get(&self.label.name).await {
            Ok(pod) => pod,
            Err(e) => return self.busy_or("read Pod", &e),
        };
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
        let pod = self.pod_label();
        let (kind, body, next) = match self.state {
            State::Namespace => {
                let obj = object(bodies::namespace(&ns, &self.labels))?;
                return match api::<Namespace>(&self.client, None).create(&PostParams::default(), &obj).await {
                    Ok(_) => {
                        self.sent = true;
                        Ok(self.advance(State::ServiceAccount))
                    }
                    Err(e) if is_conflict(&e) => {
                        if self.is_ours().await? {
                            self.sent = true;
                            Ok(self.advance(State::ServiceAccount))
                        } else {
                            // Somebody else's, or ours still being deleted
                            // after an earlier attempt: not claimed.
                            Err(classify("create Namespace", &e))
                        }
                    }
                    Err(e) => {
                        // The namespace may exist after a server error or a
                        // lost answer; a definite refusal made nothing.
                        let made_maybe = !matches!(&e, kube::Error::Api(s) if s.code < 500);
                        self.sent |= made_maybe;
                        self.busy_or("create Namespace", &e)
                    }
                };
            }
            State::Token => return self.read_token().await,
            State::PodRunning => return self.read_pod().await,
            State::ServiceAccount => ("ServiceAccount", bodies::service_account(), State::Secret),
            State::Secret => ("Secret", bodies::token_secret(), State::Token),
            State::Role => ("Role", bodies::role(pod), State::RoleBinding),
            State::RoleBinding => ("RoleBinding", bodies::role_binding(&ns, pod), State::Pod),
            State::Pod => ("Pod", bodies::pod(&self.label, &self.labels), State::PodRunning),
        };
        let obj = object(body)?;
        let created = match self.state {
            State::ServiceAccount => create::<ServiceAccount>(&self.client, &ns, &obj).await,
            State::Secret => create::<Secret>(&self.client, &ns, &obj).await,
            State::Role => create::<Role>(&self.client, &ns, &obj).await,
            State::RoleBinding => create::<RoleBinding>(&self.client, &ns, &obj).await,
            _ => create::<Pod>(&self.client, &ns, &obj).await,
        };
        match created {
            Err(e) => self.busy_or(&format!("create {kind}"), &e),
            Ok(()) if next == State::Pod && !pod => Ok(Step::Done(self.instance(None)?)),
            Ok(()) => Ok(self.advance(next)),
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
                // Already being deleted (an earlier delete): wait for it.
                Err(e) if is_conflict(&e) => {
                    self.requested = true;
                    Ok(Step::Pending(Duration::ZERO))
                }
                Err(e) if is_busy(&e) && self.tries < BUSY_RETRIES => {
                    self.tries += 1;
                    Ok(Step::Pending(backoff(self.tries)))
                }
                Err(e) => Err(classify("delete Namespace", &e)),
            };
        }
        match namespaces.get(&self.namespace).await {
            Err(e) if is_not_found(&e) => Ok(Step::Done(())),
            // Busy: read again later (the wait is bounded by the caller).
            Err(e) if is_busy(&e) => {
                let pause = backoff(self.tries);
                self.tries += 1;
                Ok(Step::Pending(pause))
            }
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
