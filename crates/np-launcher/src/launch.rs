//! Running one node's launch through a provider's create state machine.
//!
//! The generic policy lives here, once for every driver: the launch timeout,
//! `launch-retries`, writing `external_id` to ZooKeeper as soon as the cloud
//! assigns it (so a crash cannot leak the instance: cleanup finds the id on
//! the node), deleting the half-created instance of a failed attempt, and the
//! quota path (node `aborted`, the pool pauses and relaunches later).
//!
//! A launch writes through the node lock's session (the `zk` it is given is
//! fenced). When that session is lost the launch stops at its next step,
//! deletes the instance it created, if any, and writes nothing: the node is
//! no longer ours, and whoever cleans it up finds no instance to leak.

use std::sync::Arc;
use std::time::{Duration, Instant};

use np_core::{Node, NodeState};
use np_provider::{LaunchRequest, Provider, ProviderError, Step};
use np_zk::Zk;
use tracing::{debug, info, warn};

/// The launch policy and node settings come with the driver's pool
/// descriptions.
pub use np_provider::{LabelSettings, LaunchPolicy};

/// The error of an attempt that ran out of `launch-timeout`.
const LAUNCH_TIMEOUT: &str = "launch timeout";

/// What a launch passes on to the driver besides the node.
#[derive(Debug, Clone, Default)]
pub struct LaunchContext {
    /// The request's safe attributes (for templated driver properties).
    pub request_attributes: Option<serde_json::Value>,
    /// The cloud id of the diskimage upload to boot, for diskimage labels.
    pub image_external_id: Option<String>,
    /// The zone chosen for the request's nodes (every attempt uses it).
    pub az: Option<String>,
    /// Where each failed attempt is recorded (upstream records every
    /// attempt's outcome, not only the launch's).
    pub stats: Option<AttemptStats>,
}

/// Records failed launch attempts as upstream's `recordLaunchStats` does.
#[derive(Debug, Clone)]
pub struct AttemptStats {
    /// The launcher's metrics.
    pub metrics: crate::metrics::Metrics,
    /// The provider.
    pub provider: String,
    /// The request's requestor.
    pub requestor: Option<String>,
    /// When the launch began (the timers run from here, as upstream's).
    pub started: Instant,
}

impl AttemptStats {
    fn failed(&self, label: &str, az: Option<&str>, result: crate::metrics::LaunchResult) {
        self.metrics.record_launch(&crate::metrics::Launch {
            provider: &self.provider,
            label,
            az,
            requestor: self.requestor.as_deref(),
            result,
            duration: self.started.elapsed(),
        });
    }
}

/// How a launch ended. The node has been written to ZooKeeper in every case.
#[derive(Debug)]
pub enum LaunchOutcome {
    /// The node is `ready`.
    Ready(Node),
    /// The cloud refused for quota; the node is `aborted`.
    Aborted(Node),
    /// All attempts failed; the node is `failed`.
    Failed(Node, String),
    /// The node lock went with the ZooKeeper session; nothing was written
    /// and the instance (if one was made) deleted.
    LockLost(Node),
}

/// Stops a launch whose node lock is gone: deletes what it created.
async fn abandon(provider: &dyn Provider, node: Node) -> LaunchOutcome {
    warn!(node = %node.id, "node lock lost with the ZooKeeper session; abandoning the launch");
    if let Some(id) = &node.external_id {
        if let Err(e) = delete_instance(provider, id).await {
            warn!(node = %node.id, error = %e, "cannot delete the abandoned instance; leak cleanup will");
        }
    }
    LaunchOutcome::LockLost(node)
}

/// Deletes an instance, stepping its delete machine until done.
pub async fn delete_instance(
    provider: &dyn Provider,
    external_id: &serde_json::Value,
) -> Result<(), ProviderError> {
    drive_delete(provider.delete(external_id)).await
}

/// Steps a delete machine until the instance is gone (bounded to 10 minutes).
pub async fn drive_delete(mut machine: Box<dyn np_provider::DeleteMachine>) -> Result<(), ProviderError> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let step =
            np_provider::with_deadline("delete step", np_provider::CLOUD_CALL_TIMEOUT, machine.step()).await;
        match step {
            Ok(Step::Done(())) | Err(ProviderError::NotFound(_)) => return Ok(()),
            Ok(Step::Pending(d)) => {
                if Instant::now() > deadline {
                    return Err(ProviderError::Transient("delete did not finish in time".into()));
                }
                tokio::time::sleep(d.max(Duration::from_millis(1))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Scans the node's SSH host keys when checking is on, the connection type
/// uses SSH and the driver did not supply keys (upstream's nodescan; winrm
/// nodes are never scanned).
async fn scan_keys(node: &mut Node, policy: &LaunchPolicy, host_key_checking: bool) -> Result<(), String> {
    let ssh = matches!(node.connection_type.as_deref(), None | Some("ssh") | Some("network_cli"));
    if !host_key_checking || !ssh || !node.host_keys.is_empty() {
        return Ok(());
    }
    let Some(ip) = node.interface_ip.clone() else {
        return Err("no interface ip to scan".into());
    };
    let port = node.connection_port.as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(22);
    let keys = np_provider::keyscan::wait_for_ssh(&ip, port, policy.boot_timeout, None)
        .await
        .map_err(|e| e.to_string())?;
    if keys.is_empty() {
        return Err(format!("no host keys from {ip}:{port}"));
    }
    node.host_keys = keys;
    Ok(())
}

/// Logs the console of an instance whose host-key scan failed, line by
/// line, when the driver has it (upstream: OpenStack labels with
/// `console-log`), before the instance is deleted.
async fn log_console(provider: &dyn Provider, pool: &str, label: &str, external_id: &serde_json::Value) {
    let read =
        tokio::time::timeout(np_provider::CLOUD_CALL_TIMEOUT, provider.console_log(pool, label, external_id))
            .await;
    let Ok(Some(console)) = read else { return };
    info!(external_id = %external_id, "console log from external id {external_id}:");
    for line in console.lines() {
        info!(external_id = %external_id, "{}", line.trim_end());
    }
}

/// Launches `node` (locked by the caller, state `building`).
pub async fn run_launch(
    zk: Zk,
    nodes: np_zk::NodeCache,
    provider: Arc<dyn Provider>,
    mut node: Node,
    policy: LaunchPolicy,
    host_key_checking: bool,
    context: LaunchContext,
) -> LaunchOutcome {
    let label = node.node_type.first().cloned().unwrap_or_default();
    let pool = node.pool.clone().unwrap_or_default();
    let mut last_error = String::new();
    for attempt in 1..=policy.retries.max(1) {
        let mut request = LaunchRequest::new(&node.id, provider.name(), &pool, &label);
        request.request_attributes = context.request_attributes.clone();
        request.image_external_id = context.image_external_id.clone();
        request.az = context.az.clone();
        let mut machine = provider.create(request);
        let deadline = Instant::now() + policy.timeout;
        let result = loop {
            if !zk.session_alive() {
                if let Some(id) = machine.external_id() {
                    node.external_id = Some(id);
                }
                return abandon(provider.as_ref(), node).await;
            }
            // One step may not outlive the attempt (nor hang on a cloud
            // that stopped answering).
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
            let step = np_provider::with_deadline(
                "launch step",
                left.min(np_provider::CLOUD_CALL_TIMEOUT),
                machine.step(),
            )
            .await;
            if let Some(id) = machine.external_id() {
                if node.external_id.as_ref() != Some(&id) {
                    node.external_id = Some(id);
                    if let Err(e) = zk.update_node_cached(&nodes, &node, None).await {
                        warn!(node = %node.id, error = %e, "cannot record external id");
                    }
                }
            }
            match step {
                Ok(Step::Done(instance)) => break Ok(instance),
                Ok(Step::Pending(wait)) => {
                    if Instant::now() > deadline {
                        break Err(ProviderError::Transient(LAUNCH_TIMEOUT.into()));
                    }
                    if !wait.is_zero() {
                        tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
                    }
                }
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(instance) => {
                node.external_id = Some(instance.external_id.clone());
                node.interface_ip = instance.interface_ip;
                node.public_ipv4 = instance.public_ipv4;
                node.private_ipv4 = instance.private_ipv4;
                node.public_ipv6 = instance.public_ipv6;
                node.az = instance.az;
                node.region = instance.region;
                node.host_id = instance.host_id;
                if instance.cloud.is_some() {
                    node.cloud = instance.cloud;
                }
                node.host_keys = instance.host_keys;
                if let Some(t) = instance.connection_type {
                    node.connection_type = Some(t);
                }
                if let Some(port) = instance.connection_port {
                    node.connection_port = port;
                }
                if !zk.session_alive() {
                    return abandon(provider.as_ref(), node).await;
                }
                if let Err(e) = scan_keys(&mut node, &policy, host_key_checking).await {
                    warn!(node = %node.id, label, attempt, error = %e, "host-key scan failed");
                    if let Some(stats) = &context.stats {
                        stats.failed(&label, node.az.as_deref(), crate::metrics::LaunchResult::Keyscan);
                    }
                    last_error = e;
                    log_console(provider.as_ref(), &pool, &label, &instance.external_id).await;
                    if let Some(id) = node.external_id.take() {
                        if let Err(e) = delete_instance(provider.as_ref(), &id).await {
                            warn!(node = %node.id, error = %e, "cannot delete unreachable instance");
                            node.external_id = Some(id);
                        }
                    }
                    continue;
                }
                if let Some(props) = instance.node_properties {
                    node.node_properties = Some(props);
                }
                node.set_state(NodeState::Ready);
                if !zk.session_alive() {
                    return abandon(provider.as_ref(), node).await;
                }
                if let Err(e) = zk.update_node_cached(&nodes, &node, None).await {
                    if !zk.session_alive() {
                        return abandon(provider.as_ref(), node).await;
                    }
                    last_error = format!("cannot store ready node: {e}");
                    warn!(node = %node.id, error = %e, "cannot store ready node");
                    if let Some(stats) = &context.stats {
                        stats.failed(&label, node.az.as_deref(), crate::metrics::LaunchResult::Unknown);
                    }
                    break;
                }
                info!(node = %node.id, label, attempt, "node ready");
                return LaunchOutcome::Ready(node);
            }
            Err(ProviderError::Quota(msg)) => {
                info!(node = %node.id, label, %msg, "launch hit cloud quota; node aborted");
                node.set_state(NodeState::Aborted);
                let _ = zk.update_node_cached(&nodes, &node, None).await;
                return LaunchOutcome::Aborted(node);
            }
            Err(e) => {
                warn!(node = %node.id, label, attempt, error = %e, "launch attempt failed");
                if let Some(stats) = &context.stats {
                    let result = match &e {
                        ProviderError::Transient(m) if m == LAUNCH_TIMEOUT => {
                            crate::metrics::LaunchResult::ServerCreateTimeout
                        }
                        e => crate::metrics::LaunchResult::from_error(e),
                    };
                    stats.failed(&label, context.az.as_deref(), result);
                }
                last_error = e.to_string();
                if let Some(id) = node.external_id.take() {
                    if let Err(e) = delete_instance(provider.as_ref(), &id).await {
                        // Keep the id on the node so cleanup deletes it later.
                        warn!(node = %node.id, error = %e, "cannot delete failed instance");
                        node.external_id = Some(id);
                    }
                }
                // A cloud that is busy or short of capacity gets a moment
                // before the next attempt (1 s, doubling, at most 16 s):
                // attempts in a row within milliseconds all meet the same
                // throttling or outage.
                if attempt < policy.retries.max(1)
                    && matches!(e, ProviderError::Transient(_) | ProviderError::Capacity(_))
                {
                    let pause = Duration::from_secs(1 << (attempt - 1).min(4));
                    debug!(node = %node.id, ?pause, "retrying launch after a pause");
                    tokio::time::sleep(pause).await;
                } else {
                    debug!(node = %node.id, "retrying launch");
                }
            }
        }
    }
    if !zk.session_alive() {
        return abandon(provider.as_ref(), node).await;
    }
    node.set_state(NodeState::Failed);
    let _ = zk.update_node_cached(&nodes, &node, None).await;
    LaunchOutcome::Failed(node, last_error)
}
