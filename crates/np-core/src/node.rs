//! The node record, `/nodepool/nodes/<id>` (spec zk-protocol §2.3).

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::json::{float, opt_float, opt_str, parse_object, str_list, to_python_json, Fields, ModelError};

/// Node states, exactly Python Nodepool's `VALID_STATES` for nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeState {
    /// Znode created, not yet locked by its launcher.
    Init,
    /// The cloud resource is being created.
    Building,
    /// Defined upstream but never set.
    Testing,
    /// Available for (or allocated to) a request.
    Ready,
    /// Zuul is running a job on it.
    InUse,
    /// Zuul is done with it; Nodepool deletes it.
    Used,
    /// Held for debugging by an autohold or `nodepool hold`.
    Hold,
    /// Being deleted.
    Deleting,
    /// The launch failed.
    Failed,
    /// The launch hit a cloud quota error and will be retried.
    Aborted,
    /// Written just before the znode is removed.
    Deleted,
}

impl NodeState {
    /// Every state, in upstream's order.
    pub const ALL: [NodeState; 11] = [
        NodeState::Init,
        NodeState::Building,
        NodeState::Testing,
        NodeState::Ready,
        NodeState::InUse,
        NodeState::Used,
        NodeState::Hold,
        NodeState::Deleting,
        NodeState::Failed,
        NodeState::Aborted,
        NodeState::Deleted,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Init => "init",
            NodeState::Building => "building",
            NodeState::Testing => "testing",
            NodeState::Ready => "ready",
            NodeState::InUse => "in-use",
            NodeState::Used => "used",
            NodeState::Hold => "hold",
            NodeState::Deleting => "deleting",
            NodeState::Failed => "failed",
            NodeState::Aborted => "aborted",
            NodeState::Deleted => "deleted",
        }
    }

    /// States in which an *unlocked* node is deleted by the launcher's
    /// deleted-node worker (spec zk-protocol §3.1, pitfall 6).
    pub fn is_cleanup_state(self) -> bool {
        matches!(
            self,
            NodeState::Used
                | NodeState::InUse
                | NodeState::Building
                | NodeState::Failed
                | NodeState::Deleting
                | NodeState::Deleted
                | NodeState::Aborted
        )
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeState {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        NodeState::ALL
            .iter()
            .copied()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ModelError::UnknownState { record: "node", state: s.to_owned() })
    }
}

/// A node record. The id is the znode name and is not part of the JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The 10-digit znode name (empty until the node is created).
    pub id: String,
    pub state: NodeState,
    /// Float epoch seconds of the last state change.
    pub state_time: f64,
    pub cloud: Option<String>,
    /// Provider name; `None` marks an empty, resurrected znode (spec §4.7).
    pub provider: Option<String>,
    pub pool: Option<String>,
    /// Labels.
    pub node_type: Vec<String>,
    /// Request id the node is reserved for.
    pub allocated_to: Option<String>,
    pub az: Option<String>,
    pub region: Option<String>,
    pub public_ipv4: Option<String>,
    pub private_ipv4: Option<String>,
    pub public_ipv6: Option<String>,
    pub host_id: Option<String>,
    pub interface_ip: Option<String>,
    /// An integer port, or (Kubernetes) a credentials object. Also written as `ssh_port`.
    pub connection_port: Value,
    pub image_id: Option<String>,
    pub launcher: Option<String>,
    pub created_time: Option<f64>,
    /// A string, or an object for AWS (`{"instance": .., "host": ..}`).
    pub external_id: Option<Value>,
    pub hostname: Option<String>,
    pub comment: Option<String>,
    pub user_data: Option<Value>,
    pub hold_job: Option<String>,
    pub host_keys: Vec<String>,
    pub username: Option<String>,
    pub connection_type: Option<String>,
    pub shell_type: Option<String>,
    /// Seconds, counted from `state_time` of the `hold` state; 0/None = no limit.
    pub hold_expiration: Option<i64>,
    pub resources: Option<Value>,
    pub slot: Option<i64>,
    pub attributes: Option<Value>,
    pub python_path: Option<String>,
    pub tenant_name: Option<String>,
    pub driver_data: Option<Value>,
    pub requestor: Option<String>,
    /// Nodepool 11 only; new nodes get `{}`.
    pub node_properties: Option<Value>,
    /// Keys we do not know, written back unchanged after the known ones.
    pub extra: Map<String, Value>,
}

impl Default for Node {
    fn default() -> Self {
        Node::new(NodeState::Init)
    }
}

impl Node {
    /// A new node in `state`, with the defaults Python Nodepool 11 uses.
    pub fn new(state: NodeState) -> Self {
        Node {
            id: String::new(),
            state,
            state_time: crate::now(),
            cloud: None,
            provider: None,
            pool: None,
            node_type: Vec::new(),
            allocated_to: None,
            az: None,
            region: None,
            public_ipv4: None,
            private_ipv4: None,
            public_ipv6: None,
            host_id: None,
            interface_ip: None,
            connection_port: Value::from(22),
            image_id: None,
            launcher: None,
            created_time: None,
            external_id: None,
            hostname: None,
            comment: None,
            user_data: None,
            hold_job: None,
            host_keys: Vec::new(),
            username: Some("zuul".to_owned()),
            connection_type: None,
            shell_type: None,
            hold_expiration: None,
            resources: None,
            slot: None,
            attributes: None,
            python_path: None,
            tenant_name: None,
            driver_data: None,
            requestor: None,
            node_properties: Some(Value::Object(Map::new())),
            extra: Map::new(),
        }
    }

    /// Sets the state and refreshes `state_time`, as Python's state setter does.
    pub fn set_state(&mut self, state: NodeState) {
        self.state = state;
        self.state_time = crate::now();
    }

    /// Parses node JSON read from `/nodepool/nodes/<id>`.
    pub fn from_json(id: &str, data: &[u8]) -> Result<Node, ModelError> {
        let map = parse_object("node", data)?;
        let mut f = Fields::new("node", map);
        let state = match f.take_str("state")? {
            Some(s) => s.parse()?,
            None => NodeState::Init,
        };
        let state_time = f.take_f64("state_time")?.unwrap_or_else(crate::now);
        let cloud = f.take_str("cloud")?;
        let provider = f.take_str("provider")?;
        let pool = f.take_str("pool")?;
        let node_type = f.take_str_or_list("type")?;
        let allocated_to = f.take_str("allocated_to")?;
        let az = f.take_str("az")?;
        let region = f.take_str("region")?;
        let public_ipv4 = f.take_str("public_ipv4")?;
        let private_ipv4 = f.take_str("private_ipv4")?;
        let public_ipv6 = f.take_str("public_ipv6")?;
        let host_id = f.take_str("host_id")?;
        let interface_ip = f.take_str("interface_ip")?;
        let connection_port = f.take_value("connection_port");
        let ssh_port = f.take_value("ssh_port");
        let connection_port = connection_port.or(ssh_port).unwrap_or_else(|| Value::from(22));
        let image_id = f.take_str("image_id")?;
        let launcher = f.take_str("launcher")?;
        let created_time = f.take_f64("created_time")?;
        let external_id = f.take_value("external_id");
        let hostname = f.take_str("hostname")?;
        let comment = f.take_str("comment")?;
        let user_data = f.take_value("user_data");
        let hold_job = f.take_str("hold_job")?;
        let host_keys = f.take_str_list("host_keys")?;
        // Python: `d.get('username', 'zuul')`, so an explicit null stays null.
        let username = if f.contains("username") { f.take_str("username")? } else { Some("zuul".to_owned()) };
        let connection_type = f.take_str("connection_type")?;
        let shell_type = f.take_str("shell_type")?;
        let hold_expiration = parse_hold_expiration(f.take_value("hold_expiration"));
        let resources = f.take_value("resources");
        let slot = f.take_i64("slot")?;
        let attributes = f.take_value("attributes");
        let python_path = f.take_str("python_path")?;
        let tenant_name = f.take_str("tenant_name")?;
        let driver_data = f.take_value("driver_data");
        let requestor = f.take_str("requestor")?;
        let node_properties = f.take_value("node_properties");
        Ok(Node {
            id: id.to_owned(),
            state,
            state_time,
            cloud,
            provider,
            pool,
            node_type,
            allocated_to,
            az,
            region,
            public_ipv4,
            private_ipv4,
            public_ipv6,
            host_id,
            interface_ip,
            connection_port,
            image_id,
            launcher,
            created_time,
            external_id,
            hostname,
            comment,
            user_data,
            hold_job,
            host_keys,
            username,
            connection_type,
            shell_type,
            hold_expiration,
            resources,
            slot,
            attributes,
            python_path,
            tenant_name,
            driver_data,
            requestor,
            node_properties,
            extra: f.into_extra(),
        })
    }

    /// The record as an ordered JSON object (Nodepool 11's `toDict` order,
    /// then unknown keys).
    pub fn to_value(&self) -> Value {
        let mut m = Map::with_capacity(40 + self.extra.len());
        m.insert("state".into(), Value::from(self.state.as_str()));
        m.insert("state_time".into(), float(self.state_time));
        m.insert("cloud".into(), opt_str(&self.cloud));
        m.insert("provider".into(), opt_str(&self.provider));
        m.insert("pool".into(), opt_str(&self.pool));
        m.insert("type".into(), str_list(&self.node_type));
        m.insert("allocated_to".into(), opt_str(&self.allocated_to));
        m.insert("az".into(), opt_str(&self.az));
        m.insert("region".into(), opt_str(&self.region));
        m.insert("public_ipv4".into(), opt_str(&self.public_ipv4));
        m.insert("private_ipv4".into(), opt_str(&self.private_ipv4));
        m.insert("public_ipv6".into(), opt_str(&self.public_ipv6));
        m.insert("host_id".into(), opt_str(&self.host_id));
        m.insert("interface_ip".into(), opt_str(&self.interface_ip));
        m.insert("connection_port".into(), self.connection_port.clone());
        m.insert("ssh_port".into(), self.connection_port.clone());
        m.insert("image_id".into(), opt_str(&self.image_id));
        m.insert("launcher".into(), opt_str(&self.launcher));
        m.insert("created_time".into(), opt_float(self.created_time));
        m.insert("external_id".into(), self.external_id.clone().unwrap_or(Value::Null));
        m.insert("hostname".into(), opt_str(&self.hostname));
        m.insert("comment".into(), opt_str(&self.comment));
        m.insert("user_data".into(), self.user_data.clone().unwrap_or(Value::Null));
        m.insert("hold_job".into(), opt_str(&self.hold_job));
        m.insert("host_keys".into(), str_list(&self.host_keys));
        m.insert("username".into(), opt_str(&self.username));
        m.insert("connection_type".into(), opt_str(&self.connection_type));
        m.insert("shell_type".into(), opt_str(&self.shell_type));
        m.insert("hold_expiration".into(), self.hold_expiration.map(Value::from).unwrap_or(Value::Null));
        m.insert("resources".into(), self.resources.clone().unwrap_or(Value::Null));
        m.insert("slot".into(), self.slot.map(Value::from).unwrap_or(Value::Null));
        m.insert("attributes".into(), self.attributes.clone().unwrap_or(Value::Null));
        m.insert("python_path".into(), opt_str(&self.python_path));
        m.insert("tenant_name".into(), opt_str(&self.tenant_name));
        m.insert("driver_data".into(), self.driver_data.clone().unwrap_or(Value::Null));
        m.insert("requestor".into(), opt_str(&self.requestor));
        m.insert("node_properties".into(), self.node_properties.clone().unwrap_or(Value::Null));
        for (k, v) in &self.extra {
            if !m.contains_key(k) {
                m.insert(k.clone(), v.clone());
            }
        }
        Value::Object(m)
    }

    /// The bytes to store in ZooKeeper.
    pub fn to_json(&self) -> Vec<u8> {
        to_python_json(&self.to_value())
    }

    /// Whether the node carries `label`.
    pub fn has_label(&self, label: &str) -> bool {
        self.node_type.iter().any(|t| t == label)
    }
}

/// Python does `int(value)` and falls back to 0 on `ValueError`.
fn parse_hold_expiration(value: Option<Value>) -> Option<i64> {
    let value = value?;
    let parsed = match &value {
        Value::Number(n) => {
            n.as_i64().or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f.trunc() as i64))
        }
        Value::String(s) => s.trim().parse::<i64>().ok(),
        Value::Bool(b) => Some(i64::from(*b)),
        _ => None,
    };
    Some(parsed.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const READY_NODE: &str = r#"{"state": "ready", "state_time": 1726600041.5512345, "cloud": "rax", "provider": "rax-dfw", "pool": "main", "type": ["ubuntu-jammy"], "allocated_to": "200-0000012345", "az": "nova", "region": "DFW", "public_ipv4": "203.0.113.17", "private_ipv4": "10.0.0.17", "public_ipv6": "2001:db8::17", "host_id": "f3e9d2c1b0a9", "interface_ip": "203.0.113.17", "connection_port": 22, "ssh_port": 22, "image_id": "/nodepool/images/ubuntu-jammy/builds/8e0f3a4c2b1d4e5f9a8b7c6d5e4f3a2b/providers/rax-dfw/images/0000000003", "launcher": "nl01.example.com-PoolWorker.rax-dfw-main-4f1e2d3c4b5a69788796a5b4c3d2e1f0", "created_time": 1726600010.0123, "external_id": "6b1c4f0e-2d3a-4b5c-8d9e-0f1a2b3c4d5e", "hostname": null, "comment": null, "user_data": null, "hold_job": null, "host_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKey", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABExampleKey"], "username": "zuul", "connection_type": "ssh", "shell_type": null, "hold_expiration": null, "resources": {"cores": 8, "instances": 1, "ram": 8192}, "slot": null, "attributes": {"executor-zone": "dfw"}, "python_path": "auto", "tenant_name": "example-tenant", "driver_data": null, "requestor": "6d1f3c0a9b8e4d2f8a7c5b3e1d0f9a8b", "node_properties": {}}"#;

    #[test]
    fn round_trips_python_bytes_exactly() {
        let node = Node::from_json("0000004711", READY_NODE.as_bytes()).unwrap();
        assert_eq!(node.state, NodeState::Ready);
        assert_eq!(node.allocated_to.as_deref(), Some("200-0000012345"));
        assert_eq!(String::from_utf8(node.to_json()).unwrap(), READY_NODE);
    }

    #[test]
    fn minimal_json_gets_python_defaults() {
        let node = Node::from_json("0000000001", br#"{"state": "building"}"#).unwrap();
        let v = node.to_value();
        let m = v.as_object().unwrap();
        assert_eq!(m.len(), 37);
        assert_eq!(m["connection_port"], Value::from(22));
        assert_eq!(m["ssh_port"], Value::from(22));
        assert_eq!(m["username"], Value::from("zuul"));
        assert_eq!(m["type"], Value::Array(vec![]));
        assert_eq!(m["host_keys"], Value::Array(vec![]));
        assert!(m["state_time"].is_number());
        // Absent node_properties becomes null on rewrite, as in Python 11.
        assert_eq!(m["node_properties"], Value::Null);
        assert_eq!(m.keys().next().map(String::as_str), Some("state"));
    }

    #[test]
    fn zuul_rewrite_with_id_and_unknown_keys_is_lossless() {
        let zuul = r#"{"id": "0000004711", "state": "in-use", "hold_job": null, "comment": null, "user_data": {"zuul_system": "abc", "project_name": "p", "n": 215112374629468731405815305233457823345}, "tenant_name": "t", "requestor": "r", "state_time": 1726600100, "type": "ubuntu", "connection_port": {"name": "x", "namespace": "ns", "skiptls": true, "token": "tok"}, "future_key": [1, 2]}"#;
        let node = Node::from_json("0000004711", zuul.as_bytes()).unwrap();
        assert_eq!(node.node_type, vec!["ubuntu".to_owned()]);
        assert_eq!(node.state_time, 1726600100.0);
        let out = String::from_utf8(node.to_json()).unwrap();
        assert!(out.contains(r#""n": 215112374629468731405815305233457823345"#), "{out}");
        assert!(
            out.contains(r#""ssh_port": {"name": "x", "namespace": "ns", "skiptls": true, "token": "tok"}"#)
        );
        assert!(out.ends_with(r#""id": "0000004711", "future_key": [1, 2]}"#), "{out}");
        let again = Node::from_json("0000004711", out.as_bytes()).unwrap();
        assert_eq!(again, node);
    }

    #[test]
    fn hold_expiration_is_coerced_like_python_int() {
        let n = Node::from_json("1", br#"{"state": "hold", "hold_expiration": "3600"}"#).unwrap();
        assert_eq!(n.hold_expiration, Some(3600));
        let n = Node::from_json("1", br#"{"state": "hold", "hold_expiration": "soon"}"#).unwrap();
        assert_eq!(n.hold_expiration, Some(0));
        let n = Node::from_json("1", br#"{"state": "hold", "hold_expiration": 7.9}"#).unwrap();
        assert_eq!(n.hold_expiration, Some(7));
    }

    #[test]
    fn malformed_nodes_are_errors_not_panics() {
        for bad in [
            &b"not json"[..],
            br#"{"state": "exploded"}"#,
            br#"{"state": 3}"#,
            br#"{"state": "ready", "type": 7}"#,
            br#"{"state": "ready", "state_time": "yesterday"}"#,
            br#"{"state": "ready", "host_keys": [1]}"#,
            br#"["state"]"#,
        ] {
            assert!(Node::from_json("1", bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn cleanup_states() {
        assert!(NodeState::Used.is_cleanup_state());
        assert!(!NodeState::Ready.is_cleanup_state());
        assert!(!NodeState::Hold.is_cleanup_state());
        assert_eq!("in-use".parse::<NodeState>().unwrap(), NodeState::InUse);
    }
}
