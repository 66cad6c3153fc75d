//! Schema-checking readers over the located YAML tree.
//!
//! Instead of deserializing with serde (which stops at the first error), each typed
//! section is read with a [`MapReader`]: every getter checks the type of one key and
//! records an error (with line, column and key path) when it is wrong, and
//! [`MapReader::finish`] reports every key nobody asked for. The result is that all
//! schema errors of a file are collected in one pass.

use std::collections::BTreeMap;

use crate::error::{ConfigError, ErrorKind, KeyPath, Location, Segment};
use crate::yaml::{Node, Value};

/// How the schema treats a key (see [`crate::schema_keys`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyUse {
    /// Read into the typed configuration.
    Read,
    /// Accepted by upstream's schema but refused here with a located error.
    Refused,
}

/// Collects errors for one file.
pub(crate) struct Ctx {
    pub(crate) file: String,
    pub(crate) errors: Vec<ConfigError>,
    /// The schema of the provider being read (`openstack` for `fake` too), so that
    /// the keys it asks for are recorded under `providers(<schema>)`.
    pub(crate) schema: Option<&'static str>,
    /// `secure` while reading the secure file.
    pub(crate) file_kind: Option<&'static str>,
    /// When set, every key a reader asks for, by section (see [`crate::schema_keys`]).
    pub(crate) record: Option<BTreeMap<(String, String), KeyUse>>,
}

impl Ctx {
    pub(crate) fn new(file: &str) -> Self {
        Ctx { file: file.to_string(), errors: Vec::new(), schema: None, file_kind: None, record: None }
    }

    /// The section name of a mapping at `path`: its keys without list indices,
    /// `providers` qualified by the provider's schema, e.g.
    /// `providers(aws).pools.labels`; `top` for the document root.
    pub(crate) fn section(&self, path: &KeyPath) -> String {
        let mut parts: Vec<String> = self.file_kind.map(str::to_string).into_iter().collect();
        for seg in &path.0 {
            if let Segment::Key(k) = seg {
                match (parts.len(), self.schema) {
                    (0, Some(schema)) if k == "providers" => parts.push(format!("providers({schema})")),
                    _ => parts.push(k.clone()),
                }
            }
        }
        if parts.is_empty() {
            "top".to_string()
        } else {
            parts.join(".")
        }
    }

    fn record_keys(&mut self, path: &KeyPath, asked: &[&'static str], refused: &[&'static str]) {
        if self.record.is_none() {
            return;
        }
        let section = self.section(path);
        let Some(record) = self.record.as_mut() else { return };
        for key in asked {
            let use_ = if refused.contains(key) { KeyUse::Refused } else { KeyUse::Read };
            let entry = record.entry((section.clone(), (*key).to_string())).or_insert(use_);
            *entry = (*entry).max(use_);
        }
    }

    pub(crate) fn error(&mut self, loc: Option<Location>, path: &KeyPath, kind: ErrorKind) {
        self.errors.push(ConfigError { file: self.file.clone(), location: loc, path: path.clone(), kind });
    }

    pub(crate) fn wrong_type(&mut self, node: &Node, path: &KeyPath, expected: &'static str) {
        self.error(Some(node.loc), path, ErrorKind::WrongType { expected, found: node.value.kind() });
    }
}

/// Reads one mapping, tracking which keys were consumed.
pub(crate) struct MapReader<'n> {
    pub(crate) path: KeyPath,
    pub(crate) loc: Location,
    entries: Vec<(&'n str, &'n Node, Location)>,
    used: Vec<bool>,
    asked: Vec<&'static str>,
    refused: Vec<&'static str>,
}

impl<'n> MapReader<'n> {
    /// Opens `node` as a mapping; reports an error and returns `None` otherwise.
    pub(crate) fn new(cx: &mut Ctx, node: &'n Node, path: KeyPath) -> Option<Self> {
        let Value::Map(pairs) = &node.value else {
            cx.wrong_type(node, &path, "a mapping");
            return None;
        };
        let mut entries: Vec<(&'n str, &'n Node, Location)> = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            match &k.value {
                Value::Str(s) => {
                    if let Some((_, _, first)) = entries.iter().find(|(e, _, _)| *e == s.as_str()) {
                        let _ = first;
                        cx.error(Some(k.loc), &path.key(s), ErrorKind::DuplicateKey(s.clone()));
                        continue;
                    }
                    entries.push((s.as_str(), v, k.loc));
                }
                other => {
                    cx.error(
                        Some(k.loc),
                        &path,
                        ErrorKind::WrongType { expected: "a string key", found: other.kind() },
                    );
                }
            }
        }
        let used = vec![false; entries.len()];
        Some(MapReader { path, loc: node.loc, entries, used, asked: Vec::new(), refused: Vec::new() })
    }

    /// The raw node of `key`, marking it as consumed. A `null` value counts as present.
    pub(crate) fn node(&mut self, key: &'static str) -> Option<&'n Node> {
        self.asked.push(key);
        let i = self.entries.iter().position(|(k, _, _)| *k == key)?;
        self.used[i] = true;
        Some(self.entries[i].1)
    }

    /// Whether `key` is present (without consuming it).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _, _)| *k == key)
    }

    /// Location of `key` itself, when present.
    pub(crate) fn key_loc(&self, key: &str) -> Option<Location> {
        self.entries.iter().find(|(k, _, _)| *k == key).map(|(_, _, l)| *l)
    }

    /// Reports a missing required key at the mapping's location.
    pub(crate) fn missing(&self, cx: &mut Ctx, key: &str) {
        cx.error(Some(self.loc), &self.path, ErrorKind::MissingKey(key.to_string()));
    }

    /// Reads `key` with `conv`, reporting a type error when `conv` returns `None`.
    fn typed<T>(
        &mut self,
        cx: &mut Ctx,
        key: &'static str,
        expected: &'static str,
        conv: impl Fn(&Value) -> Option<T>,
    ) -> Option<T> {
        let node = self.node(key)?;
        match conv(&node.value) {
            Some(v) => Some(v),
            None => {
                cx.wrong_type(node, &self.path.key(key), expected);
                None
            }
        }
    }

    pub(crate) fn str(&mut self, cx: &mut Ctx, key: &'static str) -> Option<String> {
        self.typed(cx, key, "a string", as_str)
    }

    pub(crate) fn req_str(&mut self, cx: &mut Ctx, key: &'static str) -> Option<String> {
        if !self.has(key) {
            self.missing(cx, key);
        }
        self.str(cx, key)
    }

    pub(crate) fn int(&mut self, cx: &mut Ctx, key: &'static str) -> Option<i64> {
        self.typed(cx, key, "an integer", |v| match v {
            Value::Int(i) => Some(*i),
            _ => None,
        })
    }

    /// A non-negative integer (counts, quotas, timeouts).
    pub(crate) fn uint(&mut self, cx: &mut Ctx, key: &'static str) -> Option<u64> {
        let node = self.node(key)?;
        match &node.value {
            Value::Int(i) if *i >= 0 => Some(*i as u64),
            Value::Int(i) => {
                cx.error(
                    Some(node.loc),
                    &self.path.key(key),
                    ErrorKind::InvalidValue(format!("expected a non-negative integer, found {i}")),
                );
                None
            }
            _ => {
                cx.wrong_type(node, &self.path.key(key), "a non-negative integer");
                None
            }
        }
    }

    /// A TCP port (1-65535).
    pub(crate) fn port(&mut self, cx: &mut Ctx, key: &'static str) -> Option<u16> {
        let node = self.node(key)?;
        match &node.value {
            Value::Int(i) => match u16::try_from(*i) {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    cx.error(
                        Some(node.loc),
                        &self.path.key(key),
                        ErrorKind::InvalidValue(format!("expected a port number (1-65535), found {i}")),
                    );
                    None
                }
            },
            _ => {
                cx.wrong_type(node, &self.path.key(key), "an integer (port number)");
                None
            }
        }
    }

    /// A number; integers are accepted where upstream's schema says `float`.
    pub(crate) fn number(&mut self, cx: &mut Ctx, key: &'static str) -> Option<f64> {
        self.typed(cx, key, "a number", |v| match v {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        })
    }

    pub(crate) fn bool(&mut self, cx: &mut Ctx, key: &'static str) -> Option<bool> {
        self.typed(cx, key, "a boolean", |v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        })
    }

    pub(crate) fn str_list(&mut self, cx: &mut Ctx, key: &'static str) -> Option<Vec<String>> {
        let node = self.node(key)?;
        let path = self.path.key(key);
        str_list(cx, node, &path)
    }

    /// A string or a list of strings.
    pub(crate) fn str_or_list(&mut self, cx: &mut Ctx, key: &'static str) -> Option<Vec<String>> {
        let node = self.node(key)?;
        match &node.value {
            Value::Str(s) => Some(vec![s.clone()]),
            Value::Seq(_) => str_list(cx, node, &self.path.key(key)),
            _ => {
                cx.wrong_type(node, &self.path.key(key), "a string or a list of strings");
                None
            }
        }
    }

    /// Any mapping, converted to JSON (free-form dictionaries).
    pub(crate) fn dict(
        &mut self,
        cx: &mut Ctx,
        key: &'static str,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        let node = self.node(key)?;
        match to_json(&node.value) {
            serde_json::Value::Object(m) if matches!(node.value, Value::Map(_)) => Some(m),
            _ => {
                cx.wrong_type(node, &self.path.key(key), "a mapping");
                None
            }
        }
    }

    /// Any list, converted to JSON.
    pub(crate) fn any_list(&mut self, cx: &mut Ctx, key: &'static str) -> Option<Vec<serde_json::Value>> {
        let node = self.node(key)?;
        match &node.value {
            Value::Seq(items) => Some(items.iter().map(|n| to_json(&n.value)).collect()),
            _ => {
                cx.wrong_type(node, &self.path.key(key), "a list");
                None
            }
        }
    }

    /// A mapping of string keys to string values.
    pub(crate) fn str_map(&mut self, cx: &mut Ctx, key: &'static str) -> Option<BTreeMap<String, String>> {
        let node = self.node(key)?;
        let path = self.path.key(key);
        typed_map(cx, node, &path, "a string", as_str)
    }

    /// A mapping of string keys to integer values.
    pub(crate) fn int_map(&mut self, cx: &mut Ctx, key: &'static str) -> Option<BTreeMap<String, i64>> {
        let node = self.node(key)?;
        let path = self.path.key(key);
        typed_map(cx, node, &path, "an integer", |v| match v {
            Value::Int(i) => Some(*i),
            _ => None,
        })
    }

    /// A list of items, each handed to the caller with its node and path.
    pub(crate) fn list(&mut self, cx: &mut Ctx, key: &'static str) -> Option<Vec<(&'n Node, KeyPath)>> {
        let node = self.node(key)?;
        let path = self.path.key(key);
        match &node.value {
            Value::Seq(items) => Some(items.iter().enumerate().map(|(i, n)| (n, path.index(i))).collect()),
            _ => {
                cx.wrong_type(node, &path, "a list");
                None
            }
        }
    }

    /// A nested mapping.
    pub(crate) fn map(&mut self, cx: &mut Ctx, key: &'static str) -> Option<MapReader<'n>> {
        let node = self.node(key)?;
        MapReader::new(cx, node, self.path.key(key))
    }

    /// Declares keys this reader takes, for the schema record, without consuming
    /// them (keys read only on some paths, e.g. either spelling of a key).
    pub(crate) fn declare(&mut self, keys: &[&'static str]) {
        self.asked.extend_from_slice(keys);
    }

    /// A key upstream's schema accepts that nodepool-rs does not implement: when
    /// present it is an error at its location saying so and `why`, never a key
    /// accepted and silently dropped.
    pub(crate) fn refuse(&mut self, cx: &mut Ctx, key: &'static str, why: &str) {
        self.refused.push(key);
        if let Some(node) = self.node(key) {
            let loc = self.key_loc(key).unwrap_or(node.loc);
            cx.error(
                Some(loc),
                &self.path.key(key),
                ErrorKind::Unsupported { key: key.to_string(), why: why.to_string() },
            );
        }
    }

    /// Returns the keys nobody asked for, without reporting them.
    pub(crate) fn take_unused(&mut self) -> Vec<(&'n str, &'n Node, Location)> {
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if !self.used[i] {
                out.push(*e);
            }
        }
        for u in self.used.iter_mut() {
            *u = true;
        }
        out
    }

    /// Reports every key nobody asked for.
    pub(crate) fn finish(mut self, cx: &mut Ctx) {
        let asked = std::mem::take(&mut self.asked);
        cx.record_keys(&self.path, &asked, &self.refused);
        for (key, _, loc) in self.take_unused() {
            let suggestion = suggest(key, &asked);
            cx.error(
                Some(loc),
                &self.path.key(key),
                ErrorKind::UnknownKey { key: key.to_string(), suggestion },
            );
        }
    }
}

pub(crate) fn as_str(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s.clone()),
        _ => None,
    }
}

pub(crate) fn str_list(cx: &mut Ctx, node: &Node, path: &KeyPath) -> Option<Vec<String>> {
    let Value::Seq(items) = &node.value else {
        cx.wrong_type(node, path, "a list of strings");
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match &item.value {
            Value::Str(s) => out.push(s.clone()),
            _ => {
                cx.wrong_type(item, &path.index(i), "a string");
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn typed_map<T>(
    cx: &mut Ctx,
    node: &Node,
    path: &KeyPath,
    expected: &'static str,
    conv: impl Fn(&Value) -> Option<T>,
) -> Option<BTreeMap<String, T>> {
    let Value::Map(pairs) = &node.value else {
        cx.wrong_type(node, path, "a mapping");
        return None;
    };
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (k, v) in pairs {
        let Value::Str(key) = &k.value else {
            cx.error(
                Some(k.loc),
                path,
                ErrorKind::WrongType { expected: "a string key", found: k.value.kind() },
            );
            ok = false;
            continue;
        };
        match conv(&v.value) {
            Some(val) => {
                out.insert(key.clone(), val);
            }
            None => {
                cx.wrong_type(v, &path.key(key), expected);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// Converts a YAML value to JSON. Non-string keys are stringified; NaN becomes null.
pub(crate) fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
        Value::Str(s) => J::String(s.clone()),
        Value::Other(_, s) => J::String(s.clone()),
        Value::Seq(items) => J::Array(items.iter().map(|n| to_json(&n.value)).collect()),
        Value::Map(pairs) => {
            let mut m = serde_json::Map::new();
            for (k, val) in pairs {
                let key = match &k.value {
                    Value::Str(s) => s.clone(),
                    other => match to_json(other) {
                        J::String(s) => s,
                        j => j.to_string(),
                    },
                };
                m.insert(key, to_json(&val.value));
            }
            J::Object(m)
        }
    }
}

/// The closest of `candidates` to `key`, if it is close enough to be a likely typo.
pub(crate) fn suggest(key: &str, candidates: &[&'static str]) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(key, c);
        if d <= 2.max(key.len() / 4) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(suggest("max-servrs", &["max-servers", "max-cores"]), Some("max-servers".into()));
        assert_eq!(suggest("listen-address", &["port", "listen_address"]), Some("listen_address".into()));
        assert_eq!(suggest("nothandled", &["labels", "providers"]), None);
    }
}
