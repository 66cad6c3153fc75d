//! Python-compatible JSON encoding and tolerant field extraction.
//!
//! Python Nodepool and Zuul write records with `json.dumps(obj)`: separators
//! `", "` and `": "`, `ensure_ascii=True`, floats in `repr` form. Nobody compares
//! bytes, but matching them keeps diffs against Python-written data empty and
//! makes fixture tests exact. [`to_python_json`] produces that encoding for any
//! `Serialize` value.
//!
//! [`Fields`] pulls typed values out of a parsed JSON object, accepting what
//! Python accepts (integers for floats, `null` for absent) and reporting wrong
//! types as [`ModelError`]s. Whatever is left over is kept as "extra" keys so a
//! rewrite loses nothing.

use std::io;

use serde::Serialize;
use serde_json::ser::Formatter;
use serde_json::{Map, Value};

/// An error in a ZooKeeper record: bad JSON, a wrong type or an unknown state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The data is not a JSON document.
    #[error("invalid JSON in {record} record: {message}")]
    InvalidJson { record: &'static str, message: String },
    /// The JSON document is not an object.
    #[error("{record} record is not a JSON object")]
    NotAnObject { record: &'static str },
    /// A key holds a value of the wrong type.
    #[error("{record} record: key '{key}' must be {expected}, found {found}")]
    WrongType { record: &'static str, key: &'static str, expected: &'static str, found: String },
    /// A state string outside the record's state vocabulary.
    #[error("{record} record: unknown state '{state}'")]
    UnknownState { record: &'static str, state: String },
    /// An identifier that does not have the expected format.
    #[error("invalid {what} id '{id}'")]
    InvalidId { what: &'static str, id: String },
}

/// A serde formatter that writes what Python's `json.dumps` writes by default.
#[derive(Debug, Default, Clone, Copy)]
pub struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(python_float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        writer.write_all(python_float_repr(f64::from(value)).as_bytes())
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // ensure_ascii: everything outside printable ASCII becomes \uXXXX
        // (UTF-16 code units, so astral characters become surrogate pairs).
        let mut start = 0;
        for (i, ch) in fragment.char_indices() {
            if (' '..='~').contains(&ch) {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = i + ch.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// Python's `str()` of a JSON value (as `str(value)` prints what
/// `yaml.safe_load` gave): strings bare, `None`/`True`/`False`, lists and
/// dicts with repr'd items. Close enough for cloud tags and image metadata.
pub fn python_str(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => format!("[{}]", a.iter().map(python_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter().map(|(k, v)| format!("'{k}': {}", python_repr(v))).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn python_repr(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        other => python_str(other),
    }
}

/// Formats a float the way Python's `repr(float)` (and so `json.dumps`) does.
///
/// Shortest round-trip digits; positional notation when the decimal exponent is
/// in `-4..16`, otherwise `d.ddde+XX`. Non-finite values use Python's JSON
/// spellings `NaN`, `Infinity` and `-Infinity`.
pub fn python_float_repr(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity".to_owned() } else { "-Infinity".to_owned() };
    }
    if value == 0.0 {
        return if value.is_sign_negative() { "-0.0".to_owned() } else { "0.0".to_owned() };
    }
    // Rust's LowerExp prints the shortest round-trip mantissa, e.g. "1.5e9".
    let formatted = format!("{value:e}");
    let (mantissa, exponent) = formatted.split_once('e').unwrap_or((formatted.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if negative { "-" } else { "" };
    if (-4..16).contains(&exponent) {
        let point = exponent + 1; // position of the decimal point within digits
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat(point.unsigned_abs() as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let mantissa = if rest.is_empty() { first.to_owned() } else { format!("{first}.{rest}") };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exponent.unsigned_abs())
    }
}

/// Serializes `value` exactly as Python's `json.dumps(value)` would.
pub fn to_python_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    // Serializing our own model types into a Vec cannot fail: they hold no
    // non-string map keys and no custom Serialize impls that error.
    if value.serialize(&mut ser).is_err() {
        out.clear();
        out.extend_from_slice(b"null");
    }
    out
}

/// Parses a record's bytes into a JSON object.
pub fn parse_object(record: &'static str, data: &[u8]) -> Result<Map<String, Value>, ModelError> {
    let value: Value = serde_json::from_slice(data)
        .map_err(|e| ModelError::InvalidJson { record, message: e.to_string() })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ModelError::NotAnObject { record }),
    }
}

fn type_name(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number".into(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Typed, tolerant extraction of keys from a JSON object. Every `take_*`
/// removes the key, so [`Fields::into_extra`] returns only unknown keys.
///
/// The entries are kept in their original order, and a key is looked up
/// from where the previous one was found: records are read in about the
/// order Python writes their keys, so a lookup costs one comparison or
/// two, and taking a key moves nothing (an `IndexMap`'s ordered removal
/// shifts every later entry: quadratic in the number of keys).
#[derive(Debug)]
pub struct Fields {
    record: &'static str,
    entries: Vec<Option<(String, Value)>>,
    cursor: usize,
}

impl Fields {
    /// Wraps a parsed object; `record` names the record kind in errors.
    pub fn new(record: &'static str, map: Map<String, Value>) -> Self {
        Self { record, entries: map.into_iter().map(Some).collect(), cursor: 0 }
    }

    /// The position of `key`, searching from the cursor and wrapping.
    fn find(&self, key: &str) -> Option<usize> {
        let n = self.entries.len();
        (0..n)
            .map(|i| (self.cursor + i) % n)
            .find(|&i| self.entries[i].as_ref().is_some_and(|(k, _)| k == key))
    }

    /// Removes `key`, returning its value.
    fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.find(key)?;
        self.cursor = i + 1;
        self.entries[i].take().map(|(_, v)| v)
    }

    /// The value of `key`, left in place.
    fn peek(&self, key: &str) -> Option<&Value> {
        self.find(key).and_then(|i| self.entries[i].as_ref().map(|(_, v)| v))
    }

    fn wrong(&self, key: &'static str, expected: &'static str, found: &Value) -> ModelError {
        ModelError::WrongType { record: self.record, key, expected, found: type_name(found) }
    }

    /// Whether the key is present (even as `null`).
    pub fn contains(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// Removes and returns any JSON value; absent and `null` both give `None`.
    pub fn take_value(&mut self, key: &'static str) -> Option<Value> {
        match self.remove(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// A string or `null`.
    pub fn take_str(&mut self, key: &'static str) -> Result<Option<String>, ModelError> {
        match self.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong(key, "a string or null", &other)),
        }
    }

    /// A number (integer or float) or `null`.
    pub fn take_f64(&mut self, key: &'static str) -> Result<Option<f64>, ModelError> {
        match self.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) => Ok(Some(f)),
                None => Err(self.wrong(key, "a number", &Value::Number(n))),
            },
            Some(other) => Err(self.wrong(key, "a number or null", &other)),
        }
    }

    /// An integer or `null`. Integral floats (`3.0`) are accepted.
    pub fn take_i64(&mut self, key: &'static str) -> Result<Option<i64>, ModelError> {
        match self.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => {
                if let Some(i) = n.as_i64() {
                    return Ok(Some(i));
                }
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
                    _ => Err(self.wrong(key, "an integer", &Value::Number(n))),
                }
            }
            Some(other) => Err(self.wrong(key, "an integer or null", &other)),
        }
    }

    /// A boolean or `null`.
    pub fn take_bool(&mut self, key: &'static str) -> Result<Option<bool>, ModelError> {
        match self.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(self.wrong(key, "a boolean or null", &other)),
        }
    }

    /// An array of strings; `null` or absent gives an empty list.
    pub fn take_str_list(&mut self, key: &'static str) -> Result<Vec<String>, ModelError> {
        match self.remove(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => out.push(s),
                        other => return Err(self.wrong(key, "an array of strings", &other)),
                    }
                }
                Ok(out)
            }
            Some(other) => Err(self.wrong(key, "an array of strings", &other)),
        }
    }

    /// Like [`Fields::take_str_list`], but a bare string is wrapped in a list
    /// (Python Nodepool's node `type` accepts both).
    pub fn take_str_or_list(&mut self, key: &'static str) -> Result<Vec<String>, ModelError> {
        if let Some(Value::String(_)) = self.peek(key) {
            if let Some(Value::String(s)) = self.remove(key) {
                return Ok(vec![s]);
            }
        }
        self.take_str_list(key)
    }

    /// The keys nobody took, in their original order, in a map of their own
    /// size (the parsed one had room for every key: several KiB per record,
    /// kept for as long as the record lives in a cache).
    pub fn into_extra(self) -> Map<String, Value> {
        self.entries.into_iter().flatten().collect()
    }
}

/// A JSON value holding `Option<String>` as string-or-null.
pub(crate) fn opt_str(v: &Option<String>) -> Value {
    match v {
        Some(s) => Value::String(s.clone()),
        None => Value::Null,
    }
}

/// A JSON number for a float, or `null` for NaN/absent.
pub(crate) fn float(v: f64) -> Value {
    // With arbitrary_precision a Number keeps its text, so build it from
    // Python's repr to get Python's spelling (e.g. `1e+16`).
    if !v.is_finite() {
        return Value::Null;
    }
    serde_json::from_str::<serde_json::Number>(&python_float_repr(v))
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

pub(crate) fn opt_float(v: Option<f64>) -> Value {
    v.map(float).unwrap_or(Value::Null)
}

pub(crate) fn str_list(v: &[String]) -> Value {
    Value::Array(v.iter().cloned().map(Value::String).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1726600041.5512345, "1726600041.5512345"),
            (1726600000.0, "1726600000.0"),
            (0.5, "0.5"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.6, "123456789012345.6"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5, "-2.5"),
            (100.0, "100.0"),
            (f64::INFINITY, "Infinity"),
        ];
        for (value, expected) in cases {
            assert_eq!(python_float_repr(value), expected, "{value}");
        }
    }

    #[test]
    fn python_separators_and_ascii_escapes() {
        let v: Value = serde_json::from_str(r#"{"a": [1, 2.5, "é😀\u007f"], "b": {"c": null}}"#).unwrap();
        let out = String::from_utf8(to_python_json(&v)).unwrap();
        assert_eq!(out, r#"{"a": [1, 2.5, "\u00e9\ud83d\ude00\u007f"], "b": {"c": null}}"#);
    }

    #[test]
    fn big_integers_survive() {
        let text = r#"{"trace_id": 215112374629468731405815305233457823345, "x": 1.5, "y": -0.25}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        let out = String::from_utf8(to_python_json(&v)).unwrap();
        assert_eq!(out, text);
    }

    #[test]
    fn wrong_types_are_errors() {
        let map = parse_object("node", br#"{"a": 5, "b": [1]}"#).unwrap();
        let mut f = Fields::new("node", map);
        assert!(matches!(f.take_str("a"), Err(ModelError::WrongType { key: "a", .. })));
        assert!(f.take_str_list("b").is_err());
        assert!(parse_object("node", b"[]").is_err());
        assert!(parse_object("node", b"{").is_err());
    }
}
