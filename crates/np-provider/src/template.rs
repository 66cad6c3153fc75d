//! Python format-string templates over a node request's safe attributes:
//! AWS `dynamic-tags`, Kubernetes `dynamic-labels` and the like.
//!
//! A value such as `{request.tenant_name}-ci` is formatted as Python's
//! `str.format(request=...)` would with upstream's safe attributes (`{{` and
//! `}}` escape braces; values are written as Python's `str()` writes them).
//! Drivers skip a template that cannot be formatted, with a warning, as
//! upstream logs and skips it.

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

use np_core::json::python_str;

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

#[cfg(test)]
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
}
