//! Values printed the way the Python CLI prints them: `str()` and `repr()` of
//! the Python objects that `json.loads` makes, and the `DD:HH:MM:SS` ages.
//!
//! Operators grep and cut these tables, so a dict `external_id` must read
//! `{'instance': 'i-123'}` and a boolean `True`, exactly as Python shows them.

use np_core::json::python_float_repr;
use serde_json::{Number, Value};

/// Python's `str(value)`: strings as they are, everything else as `repr`.
pub fn py_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

/// Python's `repr()` of the object `json.loads` would make of `value`.
pub fn py_repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, value);
    out
}

fn write_repr(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&number_repr(n)),
        Value::String(s) => out.push_str(&str_repr(s)),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&str_repr(k));
                out.push_str(": ");
                write_repr(out, v);
            }
            out.push('}');
        }
    }
}

/// An integer keeps all its digits (Python ints are unbounded); anything with
/// a fraction or exponent is a float and printed as `repr(float)`.
fn number_repr(n: &Number) -> String {
    let text = n.to_string();
    if !text.contains(['.', 'e', 'E']) {
        return text;
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_infinite() => if f > 0.0 { "inf" } else { "-inf" }.to_owned(),
        Ok(f) => python_float_repr(f),
        Err(_) => text,
    }
}

/// Python's `repr(str)`: single quotes unless the text holds a single quote
/// and no double quote; backslash escapes for quotes, `\\`, `\n`, `\r`, `\t`
/// and other non-printable characters.
pub fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) || c == '\u{ad}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if matches!(c as u32, 0x2028 | 0x2029 | 0xfeff | 0x200b..=0x200f) => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// `status.age()`: the time since `timestamp` as `DD:HH:MM:SS`, computed with
/// Python's float `divmod` (floor) and `%02d` (truncation), days uncapped.
pub fn age(timestamp: f64, now: f64) -> String {
    let dt = now - timestamp;
    let (m, s) = divmod(dt, 60.0);
    let (h, m) = divmod(m, 60.0);
    let (d, h) = divmod(h, 24.0);
    format!("{:02}:{:02}:{:02}:{:02}", d.trunc() as i64, h.trunc() as i64, m.trunc() as i64, s.trunc() as i64)
}

fn divmod(a: f64, b: f64) -> (f64, f64) {
    let q = (a / b).floor();
    let r = a - q * b;
    (q, r)
}

/// Python's `int(value)` succeeding, as `status.node_list` tests the port:
/// integers, booleans, finite floats and integer strings pass.
pub fn python_int_ok(value: &Value) -> bool {
    match value {
        Value::Bool(_) => true,
        Value::Number(n) => n.as_f64().is_some_and(f64::is_finite) || n.is_i64() || n.is_u64(),
        Value::String(s) => {
            let t = s.trim();
            let t = t.strip_prefix(['+', '-']).unwrap_or(t);
            !t.is_empty()
                && !t.starts_with('_')
                && !t.ends_with('_')
                && !t.contains("__")
                && t.chars().all(|c| c.is_ascii_digit() || c == '_')
        }
        _ => false,
    }
}

/// The current time as float epoch seconds.
pub fn now() -> f64 {
    np_core::now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reprs() {
        assert_eq!(py_str(&json!({"instance": "i-123"})), "{'instance': 'i-123'}");
        assert_eq!(py_str(&json!("plain")), "plain");
        assert_eq!(py_repr(&json!([1, 2.5, true, null, "it's"])), "[1, 2.5, True, None, \"it's\"]");
        assert_eq!(py_repr(&json!({"a": {"b": 1.0}})), "{'a': {'b': 1.0}}");
        assert_eq!(str_repr("a\nb\\"), "'a\\nb\\\\'");
        let big: Value = serde_json::from_str("123456789012345678901234567890").unwrap();
        assert_eq!(py_repr(&big), "123456789012345678901234567890");
        let exp: Value = serde_json::from_str("1e20").unwrap();
        assert_eq!(py_repr(&exp), "1e+20");
    }

    #[test]
    fn ages() {
        assert_eq!(age(1000.0, 1000.0 + 65.0 + 3600.0 * 2.0 + 86400.0), "01:02:01:05");
        assert_eq!(age(0.0, 100.0 * 86400.0 + 1.5), "100:00:00:01");
        // A timestamp slightly in the future, as Python prints it.
        assert_eq!(age(100.3, 100.0), "-1:23:59:59");
    }

    #[test]
    fn ports() {
        assert!(python_int_ok(&json!(22)));
        assert!(python_int_ok(&json!("22")));
        assert!(python_int_ok(&json!(" 2_2 ")));
        assert!(!python_int_ok(&json!("ssh")));
        assert!(!python_int_ok(&json!({"token": "x"})));
        assert!(!python_int_ok(&json!(null)));
    }
}
