//! The node request record, `/nodepool/requests/<PPP>-<seq>` (spec zk-protocol §2.2).

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::json::{float, opt_float, opt_str, parse_object, str_list, to_python_json, Fields, ModelError};

/// Request states (`requested`, `pending`, `fulfilled`, `failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestState {
    /// Waiting for a launcher.
    Requested,
    /// Accepted by a launcher, which holds the request lock.
    Pending,
    /// Every node is ready and listed in `nodes`.
    Fulfilled,
    /// Every registered pool declined it.
    Failed,
}

impl RequestState {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Requested => "requested",
            RequestState::Pending => "pending",
            RequestState::Fulfilled => "fulfilled",
            RequestState::Failed => "failed",
        }
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RequestState {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        Ok(match s {
            "requested" => RequestState::Requested,
            "pending" => RequestState::Pending,
            "fulfilled" => RequestState::Fulfilled,
            "failed" => RequestState::Failed,
            _ => return Err(ModelError::UnknownState { record: "request", state: s.to_owned() }),
        })
    }
}

/// A node request. The id is the znode name and is not part of the JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRequest {
    /// `<PPP>-<seq>`; empty until created.
    pub id: String,
    pub state: RequestState,
    pub state_time: f64,
    /// Pool ids that declined the request.
    pub declined_by: Vec<String>,
    /// Requested labels, in order, duplicates allowed.
    pub node_types: Vec<String>,
    /// Node ids, in `node_types` order, once fulfilled.
    pub nodes: Vec<String>,
    /// `false`: do not hand out existing ready nodes.
    pub reuse: bool,
    pub requestor: Option<String>,
    /// Opaque to Nodepool; kept exactly (128-bit trace ids inside).
    pub requestor_data: Option<Value>,
    /// Preferred provider.
    pub provider: Option<String>,
    pub relative_priority: i64,
    pub event_id: Option<String>,
    pub created_time: Option<f64>,
    pub tenant_name: Option<String>,
    /// Keys we do not know (Zuul preserves its own), written back after the known ones.
    pub extra: Map<String, Value>,
}

impl NodeRequest {
    /// A new `requested` request for `node_types`.
    pub fn new(node_types: Vec<String>) -> Self {
        NodeRequest {
            id: String::new(),
            state: RequestState::Requested,
            state_time: crate::now(),
            declined_by: Vec::new(),
            node_types,
            nodes: Vec::new(),
            reuse: true,
            requestor: None,
            requestor_data: None,
            provider: None,
            relative_priority: 0,
            event_id: None,
            created_time: None,
            tenant_name: None,
            extra: Map::new(),
        }
    }

    /// Sets the state and refreshes `state_time`.
    pub fn set_state(&mut self, state: RequestState) {
        self.state = state;
        self.state_time = crate::now();
    }

    /// Parses request JSON.
    pub fn from_json(id: &str, data: &[u8]) -> Result<NodeRequest, ModelError> {
        let map = parse_object("request", data)?;
        let mut f = Fields::new("request", map);
        let state = match f.take_str("state")? {
            Some(s) => s.parse()?,
            None => RequestState::Requested,
        };
        let state_time = f.take_f64("state_time")?.unwrap_or_else(crate::now);
        let declined_by = f.take_str_list("declined_by")?;
        let node_types = f.take_str_list("node_types")?;
        let nodes = f.take_str_list("nodes")?;
        let reuse = f.take_bool("reuse")?.unwrap_or(true);
        let requestor = f.take_str("requestor")?;
        let requestor_data = f.take_value("requestor_data");
        let provider = f.take_str("provider")?;
        let relative_priority = f.take_i64("relative_priority")?.unwrap_or(0);
        let event_id = f.take_str("event_id")?;
        let created_time = f.take_f64("created_time")?;
        let tenant_name = f.take_str("tenant_name")?;
        Ok(NodeRequest {
            id: id.to_owned(),
            state,
            state_time,
            declined_by,
            node_types,
            nodes,
            reuse,
            requestor,
            requestor_data,
            provider,
            relative_priority,
            event_id,
            created_time,
            tenant_name,
            extra: f.into_extra(),
        })
    }

    /// The record as an ordered JSON object (Nodepool's `toDict` order, then unknown keys).
    pub fn to_value(&self) -> Value {
        let mut m = Map::with_capacity(13 + self.extra.len());
        m.insert("state".into(), Value::from(self.state.as_str()));
        m.insert("state_time".into(), float(self.state_time));
        m.insert("declined_by".into(), str_list(&self.declined_by));
        m.insert("node_types".into(), str_list(&self.node_types));
        m.insert("nodes".into(), str_list(&self.nodes));
        m.insert("reuse".into(), Value::Bool(self.reuse));
        m.insert("requestor".into(), opt_str(&self.requestor));
        m.insert("requestor_data".into(), self.requestor_data.clone().unwrap_or(Value::Null));
        m.insert("provider".into(), opt_str(&self.provider));
        m.insert("relative_priority".into(), Value::from(self.relative_priority));
        m.insert("event_id".into(), opt_str(&self.event_id));
        m.insert("created_time".into(), opt_float(self.created_time));
        m.insert("tenant_name".into(), opt_str(&self.tenant_name));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZUUL_SUBMIT: &str = r#"{"requestor_data": {"build_set_uuid": "a3f0c2e1b4d5468f9e7d6c5b4a392817", "tenant_name": "example-tenant", "pipeline_name": "check", "job_uuid": "0192b8d4c3a27f1e9d5c6b7a8f9e0d1c", "job_name": "tox-py311", "span_info": {"name": "RequestNodes", "trace_id": 215112374629468731405815305233457823345, "span_id": 13451738231587532214, "trace_flags": 1, "start_time": 1726600000123456000, "parent": null}}, "node_types": ["ubuntu-jammy", "ubuntu-jammy"], "requestor": "6d1f3c0a9b8e4d2f8a7c5b3e1d0f9a8b", "created_time": 1726600000.123456, "provider": null, "state": "requested", "state_time": 1726600000.1234, "relative_priority": 0, "event_id": "5f2e8c1d9a7b4e3f8c6d2a1b0e9f8d7c", "tenant_name": "example-tenant"}"#;

    const FULFILLED: &str = r#"{"state": "fulfilled", "state_time": 1726600042.987654, "declined_by": ["nl01.example.com-PoolWorker.rax-dfw-main-4f1e2d3c4b5a69788796a5b4c3d2e1f0"], "node_types": ["ubuntu-jammy", "ubuntu-jammy"], "nodes": ["0000004711", "0000004712"], "reuse": true, "requestor": "6d1f3c0a9b8e4d2f8a7c5b3e1d0f9a8b", "requestor_data": {"build_set_uuid": "a3f0c2e1b4d5468f9e7d6c5b4a392817", "tenant_name": "example-tenant", "pipeline_name": "check", "job_uuid": "0192b8d4c3a27f1e9d5c6b7a8f9e0d1c", "job_name": "tox-py311", "span_info": {"name": "RequestNodes", "trace_id": 215112374629468731405815305233457823345, "span_id": 13451738231587532214, "trace_flags": 1, "start_time": 1726600000123456000, "parent": null}}, "provider": null, "relative_priority": 0, "event_id": "5f2e8c1d9a7b4e3f8c6d2a1b0e9f8d7c", "created_time": 1726600000.123456, "tenant_name": "example-tenant"}"#;

    #[test]
    fn fulfilment_of_a_zuul_request_matches_python_bytes() {
        let mut req = NodeRequest::from_json("200-0000012345", ZUUL_SUBMIT.as_bytes()).unwrap();
        assert!(req.reuse && req.declined_by.is_empty() && req.nodes.is_empty());
        req.declined_by
            .push("nl01.example.com-PoolWorker.rax-dfw-main-4f1e2d3c4b5a69788796a5b4c3d2e1f0".into());
        req.nodes = vec!["0000004711".into(), "0000004712".into()];
        req.state = RequestState::Fulfilled;
        req.state_time = 1726600042.987654;
        assert_eq!(String::from_utf8(req.to_json()).unwrap(), FULFILLED);
    }

    #[test]
    fn every_key_is_written_and_unknown_keys_kept() {
        let req = NodeRequest::from_json("100-0000000001", br#"{"state": "requested", "x-zuul": {"a": 1}}"#)
            .unwrap();
        let v = req.to_value();
        let m = v.as_object().unwrap();
        assert_eq!(m.len(), 14);
        for key in
            ["state", "state_time", "event_id", "requestor_data", "requestor", "node_types", "provider"]
        {
            assert!(m.contains_key(key), "{key}");
        }
        assert_eq!(m["x-zuul"], serde_json::json!({"a": 1}));
    }

    #[test]
    fn relative_priority_must_be_integral() {
        assert!(NodeRequest::from_json("1", br#"{"relative_priority": 1.5}"#).is_err());
        let r = NodeRequest::from_json("1", br#"{"relative_priority": 2.0}"#).unwrap();
        assert_eq!(r.relative_priority, 2);
        assert!(NodeRequest::from_json("1", br#"{"state": "bogus"}"#).is_err());
        assert!(NodeRequest::from_json("1", br#"{"node_types": "x"}"#).is_err());
    }
}
