//! The tags put on instances, volumes and hosts, and `dynamic-tags` templates.
//!
//! Order of precedence, as upstream: the label's `tags`, then its formatted
//! `dynamic-tags`, then the Nodepool metadata (`nodepool_provider_name`,
//! `nodepool_pool_name`, `nodepool_node_id`), then `Name = np<node id>`,
//! which always wins.
//!
//! `dynamic-tags` values are Python format strings over the request's safe
//! attributes (`{request.id}`, `{request.requestor}`, `{request.tenant_name}`,
//! ...). A template that cannot be formatted (unknown attribute, bad braces)
//! is skipped with a warning, as upstream logs and skips it.

use std::collections::BTreeMap;

use serde_json::Value;

pub use np_provider::template::{format_template, TemplateError, SAFE_ATTRIBUTES};

pub(crate) use np_core::json::python_str;

/// The complete tag set of a node's resources.
pub fn node_tags(
    label_tags: &serde_json::Map<String, Value>,
    dynamic_tags: &serde_json::Map<String, Value>,
    request: Option<&Value>,
    metadata: &BTreeMap<String, String>,
    hostname: &str,
) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    for (k, v) in label_tags {
        tags.insert(k.clone(), python_str(v));
    }
    let empty = Value::Object(serde_json::Map::new());
    let request = request.unwrap_or(&empty);
    for (k, v) in dynamic_tags {
        let template = python_str(v);
        match format_template(&template, request) {
            Ok(value) => {
                tags.insert(k.clone(), value);
            }
            Err(e) => tracing::warn!(tag = %k, error = %e, "cannot format dynamic tag; skipped"),
        }
    }
    for (k, v) in metadata {
        tags.insert(k.clone(), v.clone());
    }
    tags.insert("Name".into(), hostname.into());
    tags
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn precedence() {
        let tags = json!({"Name": "mine", "team": "ci", "nodepool_node_id": "x"});
        let dynamic = json!({"req": "{request.requestor}", "bad": "{nope}"});
        let mut meta = BTreeMap::new();
        meta.insert("nodepool_node_id".to_string(), "0000000001".to_string());
        let out = node_tags(
            tags.as_object().unwrap(),
            dynamic.as_object().unwrap(),
            Some(&json!({"requestor": "zuul"})),
            &meta,
            "np0000000001",
        );
        assert_eq!(out["Name"], "np0000000001");
        assert_eq!(out["team"], "ci");
        assert_eq!(out["req"], "zuul");
        assert_eq!(out["nodepool_node_id"], "0000000001");
        assert!(!out.contains_key("bad"));
    }
}
