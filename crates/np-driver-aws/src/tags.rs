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

/// The request attributes upstream exposes to `dynamic-tags`.
pub const SAFE_ATTRIBUTES: &[&str] = &[
    "id",
    "labels",
    "requestor",
    "requestor_data",
    "relative_priority",
    "event_id",
    "created_time",
    "tenant_name",
];

/// Why a template could not be formatted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{` without `}` or a lone `}`.
    #[error("unbalanced braces in '{0}'")]
    Braces(String),
    /// A field other than `request.<safe attribute>`.
    #[error("unknown field '{0}'")]
    Field(String),
}

pub(crate) use np_core::json::python_str;

/// Formats a `dynamic-tags` template with the request attributes `request`
/// (a JSON object; missing safe attributes read as `None`).
pub fn format_template(template: &str, request: &Value) -> Result<String, TemplateError> {
    let mut out = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '}' => return Err(TemplateError::Braces(template.into())),
            '{' => {
                let mut field = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') | None => return Err(TemplateError::Braces(template.into())),
                        Some(c) => field.push(c),
                    }
                }
                let name = field.split([':', '!']).next().unwrap_or("");
                let attr = name
                    .strip_prefix("request.")
                    .filter(|a| SAFE_ATTRIBUTES.contains(a))
                    .ok_or_else(|| TemplateError::Field(field.clone()))?;
                out.push_str(&python_str(request.get(attr).unwrap_or(&Value::Null)));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

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
    fn templates() {
        let r = json!({"id": "200-0000000001", "requestor": "zuul", "tenant_name": null,
                       "labels": ["a", "b"]});
        assert_eq!(format_template("x-{request.id}-{{y}}", &r).as_deref(), Ok("x-200-0000000001-{y}"));
        assert_eq!(format_template("{request.tenant_name}", &r).as_deref(), Ok("None"));
        assert_eq!(format_template("{request.labels}", &r).as_deref(), Ok("['a', 'b']"));
        assert!(matches!(format_template("{request.secret}", &r), Err(TemplateError::Field(_))));
        assert!(matches!(format_template("{request.id", &r), Err(TemplateError::Braces(_))));
        assert!(matches!(format_template("a}b", &r), Err(TemplateError::Braces(_))));
    }

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
