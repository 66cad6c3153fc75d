//! Component records, `/nodepool/components/<kind>/<hostname><seq>` (spec zk-protocol §2.6).
//!
//! Written with `sort_keys=True`. A `pool` component's `id` is the pool id used
//! in `declined_by` and `Node.launcher`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::json::{parse_object, str_list, to_python_json, Fields, ModelError};

/// `model_api` this implementation speaks (Nodepool 11: 0).
pub const MODEL_API: i64 = 0;

/// Component kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ComponentKind {
    /// One per launcher process.
    Launcher,
    /// One per builder process.
    Builder,
    /// One per provider pool worker.
    Pool,
}

impl ComponentKind {
    /// The wire spelling, also the directory name.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Launcher => "launcher",
            ComponentKind::Builder => "builder",
            ComponentKind::Pool => "pool",
        }
    }
}

impl FromStr for ComponentKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "launcher" => Ok(ComponentKind::Launcher),
            "builder" => Ok(ComponentKind::Builder),
            "pool" => Ok(ComponentKind::Pool),
            _ => Err(ModelError::WrongType {
                record: "component",
                key: "kind",
                expected: "launcher, builder or pool",
                found: s.to_owned(),
            }),
        }
    }
}

/// Component states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ComponentState {
    Initializing,
    Running,
    Paused,
    Stopped,
}

impl ComponentState {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentState::Initializing => "initializing",
            ComponentState::Running => "running",
            ComponentState::Paused => "paused",
            ComponentState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for ComponentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ComponentState {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        Ok(match s {
            "initializing" => ComponentState::Initializing,
            "running" => ComponentState::Running,
            "paused" => ComponentState::Paused,
            "stopped" => ComponentState::Stopped,
            _ => return Err(ModelError::UnknownState { record: "component", state: s.to_owned() }),
        })
    }
}

/// The extra keys of a `pool` component.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolInfo {
    /// `<fqdn>-PoolWorker.<provider>-<pool>-<uuidhex>`.
    pub id: String,
    pub name: String,
    pub provider_name: String,
    pub supported_labels: Vec<String>,
    /// Lower wins.
    pub priority: i64,
    /// True while the pool is paused at quota.
    pub paused: bool,
}

/// A component record.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentRecord {
    pub kind: ComponentKind,
    pub hostname: String,
    pub state: ComponentState,
    pub version: String,
    pub model_api: i64,
    /// Present for `pool` components.
    pub pool: Option<PoolInfo>,
    /// Unknown keys.
    pub extra: BTreeMap<String, Value>,
}

impl ComponentRecord {
    /// A new record of `kind` in `state`.
    pub fn new(kind: ComponentKind, hostname: &str, version: &str, state: ComponentState) -> Self {
        ComponentRecord {
            kind,
            hostname: hostname.to_owned(),
            state,
            version: version.to_owned(),
            model_api: MODEL_API,
            pool: None,
            extra: BTreeMap::new(),
        }
    }

    /// Parses component JSON. Missing pool keys get upstream's initial values.
    pub fn from_json(data: &[u8]) -> Result<ComponentRecord, ModelError> {
        let mut f = Fields::new("component", parse_object("component", data)?);
        let kind: ComponentKind = f.take_str("kind")?.unwrap_or_default().parse()?;
        let hostname = f.take_str("hostname")?.unwrap_or_default();
        let state = match f.take_str("state")? {
            Some(s) => s.parse()?,
            None => ComponentState::Stopped,
        };
        let version = f.take_str("version")?.unwrap_or_default();
        let model_api = f.take_i64("model_api")?.unwrap_or(MODEL_API);
        let pool = if kind == ComponentKind::Pool {
            Some(PoolInfo {
                id: f.take_str("id")?.unwrap_or_default(),
                name: f.take_str("name")?.unwrap_or_default(),
                provider_name: f.take_str("provider_name")?.unwrap_or_default(),
                supported_labels: f.take_str_list("supported_labels")?,
                priority: f.take_i64("priority")?.unwrap_or(100),
                paused: f.take_bool("paused")?.unwrap_or(false),
            })
        } else {
            None
        };
        Ok(ComponentRecord {
            kind,
            hostname,
            state,
            version,
            model_api,
            pool,
            extra: f.into_extra().into_iter().collect(),
        })
    }

    /// The bytes to store (keys sorted, as `json.dumps(sort_keys=True)`).
    pub fn to_json(&self) -> Vec<u8> {
        let mut m: BTreeMap<String, Value> = self.extra.clone();
        m.insert("hostname".into(), Value::from(self.hostname.as_str()));
        m.insert("kind".into(), Value::from(self.kind.as_str()));
        m.insert("state".into(), Value::from(self.state.as_str()));
        m.insert("version".into(), Value::from(self.version.as_str()));
        m.insert("model_api".into(), Value::from(self.model_api));
        if let Some(p) = &self.pool {
            m.insert("id".into(), Value::from(p.id.as_str()));
            m.insert("name".into(), Value::from(p.name.as_str()));
            m.insert("provider_name".into(), Value::from(p.provider_name.as_str()));
            m.insert("supported_labels".into(), str_list(&p.supported_labels));
            m.insert("priority".into(), Value::from(p.priority));
            m.insert("paused".into(), Value::Bool(p.paused));
        }
        to_python_json(&m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_component_matches_python_bytes() {
        let text = r#"{"hostname": "nl01.example.com", "id": "nl01.example.com-PoolWorker.rax-dfw-main-4f1e2d3c4b5a69788796a5b4c3d2e1f0", "kind": "pool", "model_api": 0, "name": "main", "paused": false, "priority": 100, "provider_name": "rax-dfw", "state": "running", "supported_labels": ["ubuntu-jammy", "ubuntu-noble"], "version": "11.0.0"}"#;
        let c = ComponentRecord::from_json(text.as_bytes()).unwrap();
        assert_eq!(c.pool.as_ref().unwrap().supported_labels.len(), 2);
        assert_eq!(String::from_utf8(c.to_json()).unwrap(), text);
    }

    #[test]
    fn launcher_component() {
        let c = ComponentRecord::new(ComponentKind::Launcher, "h", "11.0.0", ComponentState::Running);
        assert_eq!(
            String::from_utf8(c.to_json()).unwrap(),
            r#"{"hostname": "h", "kind": "launcher", "model_api": 0, "state": "running", "version": "11.0.0"}"#
        );
        assert!(ComponentRecord::from_json(br#"{"kind": "pool", "priority": "high"}"#).is_err());
    }
}
