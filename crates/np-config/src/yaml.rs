//! A YAML document tree in which every node remembers where it came from.
//!
//! `nodepool.yaml` is read by PyYAML's `SafeLoader` upstream, which implements YAML 1.1.
//! We parse the syntax with `yaml-rust2` (event level, which gives a line and column for
//! every node) and resolve plain scalars ourselves with the YAML 1.1 rules PyYAML uses:
//! `yes`/`no`/`on`/`off` are booleans, `010` is octal, `1e5` (no dot) is a string, and so
//! on. Anchors, aliases and `<<` merge keys are supported, as in PyYAML.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in a YAML text, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// Line, counting from 1.
    pub line: usize,
    /// Column, counting from 1.
    pub column: usize,
}

impl Location {
    fn from_marker(m: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Location { line: m.line(), column: m.col() + 1 }
    }
}

/// One YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The node's value.
    pub value: Value,
    /// Where the node starts in the text.
    pub loc: Location,
}

/// The value of a YAML node after YAML 1.1 scalar resolution.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or an empty value.
    Null,
    /// A boolean (`true`, `yes`, `on`, ...).
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(String),
    /// A scalar PyYAML would turn into something we do not model (a timestamp, an
    /// integer wider than 64 bits); the text is kept for messages.
    Other(&'static str, String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order; duplicate keys are kept (the reader reports them).
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// A short description of the value's type, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Other(k, _) => k,
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// What went wrong.
    pub message: String,
    /// Where, when known.
    pub loc: Option<Location>,
}

/// Parses a YAML text holding at most one document. An empty text gives a `Null` node.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, true) {
        return Err(YamlError {
            message: e.info().to_string(),
            loc: Some(Location::from_marker(*e.marker())),
        });
    }
    if let Some(err) = builder.error {
        return Err(err);
    }
    match builder.docs.len() {
        0 => Ok(Node { value: Value::Null, loc: Location { line: 1, column: 1 } }),
        1 => Ok(builder.docs.remove(0)),
        _ => Err(YamlError {
            message: "expected a single document, found several".to_string(),
            loc: builder.docs.get(1).map(|d| d.loc),
        }),
    }
}

enum Frame {
    Seq { anchor: usize, loc: Location, items: Vec<Node> },
    Map { anchor: usize, loc: Location, entries: Vec<(Node, Node)>, pending_key: Option<Node> },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    docs: Vec<Node>,
    anchors: HashMap<usize, Node>,
    error: Option<YamlError>,
}

/// Marker value used while building a mapping for a plain `<<` key.
const MERGE_KEY: &str = "\u{0}<<merge>>";

impl Builder {
    fn fail(&mut self, message: String, loc: Location) {
        if self.error.is_none() {
            self.error = Some(YamlError { message, loc: Some(loc) });
        }
    }

    fn push_node(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, pending_key, .. }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
    }

    fn finish_map(&mut self, entries: Vec<(Node, Node)>) -> Vec<(Node, Node)> {
        let mut own = Vec::with_capacity(entries.len());
        let mut merged: Vec<(Node, Node)> = Vec::new();
        for (k, v) in entries {
            if matches!(&k.value, Value::Str(s) if s == MERGE_KEY) {
                let sources = match v.value {
                    Value::Map(m) => vec![m],
                    Value::Seq(items) => {
                        let mut maps = Vec::new();
                        for item in items {
                            match item.value {
                                Value::Map(m) => maps.push(m),
                                other => {
                                    self.fail(
                                        format!("a merge key (<<) needs mappings, found {}", other.kind()),
                                        item.loc,
                                    );
                                }
                            }
                        }
                        maps
                    }
                    other => {
                        self.fail(format!("a merge key (<<) needs a mapping, found {}", other.kind()), v.loc);
                        Vec::new()
                    }
                };
                for m in sources {
                    for (mk, mv) in m {
                        if !merged.iter().any(|(k2, _)| k2.value == mk.value) {
                            merged.push((mk, mv));
                        }
                    }
                }
            } else {
                own.push((k, v));
            }
        }
        for (mk, mv) in merged {
            if !own.iter().any(|(k2, _)| k2.value == mk.value) {
                own.push((mk, mv));
            }
        }
        own
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let loc = Location::from_marker(mark);
        match ev {
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(node) => {
                    let node = Node { value: node.value.clone(), loc };
                    self.push_node(node);
                }
                None => self.fail("unknown alias".to_string(), loc),
            },
            Event::Scalar(text, style, anchor, tag) => {
                let in_key_position = matches!(self.stack.last(), Some(Frame::Map { pending_key: None, .. }));
                let value = match resolve_scalar(&text, style, tag.as_ref()) {
                    Ok(Value::Str(s)) if s == "<<" && style == TScalarStyle::Plain && in_key_position => {
                        Value::Str(MERGE_KEY.to_string())
                    }
                    Ok(v) => v,
                    Err(msg) => {
                        self.fail(msg, loc);
                        return;
                    }
                };
                let node = Node { value, loc };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push_node(node);
            }
            Event::SequenceStart(anchor, tag) => {
                if let Some(t) = tag.filter(|t| !is_std_tag(t, "seq")) {
                    self.fail(format!("unsupported YAML tag {}{}", t.handle, t.suffix), loc);
                    return;
                }
                self.stack.push(Frame::Seq { anchor, loc, items: Vec::new() });
            }
            Event::MappingStart(anchor, tag) => {
                if let Some(t) = tag.filter(|t| !is_std_tag(t, "map")) {
                    self.fail(format!("unsupported YAML tag {}{}", t.handle, t.suffix), loc);
                    return;
                }
                self.stack.push(Frame::Map { anchor, loc, entries: Vec::new(), pending_key: None });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { anchor, loc, items }) = self.stack.pop() {
                    let node = Node { value: Value::Seq(items), loc };
                    if anchor > 0 {
                        self.anchors.insert(anchor, node.clone());
                    }
                    self.push_node(node);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map { anchor, loc, entries, .. }) = self.stack.pop() {
                    let entries = self.finish_map(entries);
                    let node = Node { value: Value::Map(entries), loc };
                    if anchor > 0 {
                        self.anchors.insert(anchor, node.clone());
                    }
                    self.push_node(node);
                }
            }
        }
    }
}

fn is_std_tag(tag: &Tag, name: &str) -> bool {
    (tag.handle == "!!" || tag.handle == "tag:yaml.org,2002:") && tag.suffix == name
}

fn resolve_scalar(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    if let Some(tag) = tag {
        let std = tag.handle == "!!" || tag.handle == "tag:yaml.org,2002:";
        if !std {
            return Err(format!("unsupported YAML tag {}{}", tag.handle, tag.suffix));
        }
        return match tag.suffix.as_str() {
            "str" => Ok(Value::Str(text.to_string())),
            "null" => Ok(Value::Null),
            "bool" => {
                resolve_bool(text).map(Value::Bool).ok_or_else(|| format!("invalid !!bool value '{text}'"))
            }
            "int" => match resolve_int(text) {
                Some(v) => Ok(v),
                None => Err(format!("invalid !!int value '{text}'")),
            },
            "float" => match resolve_float(text).or_else(|| resolve_int(text)) {
                Some(Value::Int(i)) => Ok(Value::Float(i as f64)),
                Some(v) => Ok(v),
                None => Err(format!("invalid !!float value '{text}'")),
            },
            other => Err(format!("unsupported YAML tag !!{other}")),
        };
    }
    if style != TScalarStyle::Plain {
        return Ok(Value::Str(text.to_string()));
    }
    Ok(resolve_plain(text))
}

/// Resolves a plain (unquoted, untagged) scalar the way PyYAML's YAML 1.1 resolver does.
pub(crate) fn resolve_plain(text: &str) -> Value {
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Value::Null;
    }
    if let Some(b) = resolve_bool(text) {
        return Value::Bool(b);
    }
    if let Some(v) = resolve_int(text) {
        return v;
    }
    if let Some(v) = resolve_float(text) {
        return v;
    }
    if is_timestamp(text) {
        return Value::Other("a timestamp", text.to_string());
    }
    Value::Str(text.to_string())
}

fn resolve_bool(text: &str) -> Option<bool> {
    match text {
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Some(true),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

fn split_sign(text: &str) -> (bool, &str) {
    if let Some(rest) = text.strip_prefix('-') {
        (true, rest)
    } else if let Some(rest) = text.strip_prefix('+') {
        (false, rest)
    } else {
        (false, text)
    }
}

fn resolve_int(text: &str) -> Option<Value> {
    let (neg, body) = split_sign(text);
    if body.is_empty() {
        return None;
    }
    let digits_ok = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c == '_' || c.is_digit(radix));
    let (digits, radix): (String, u32) = if let Some(b) = body.strip_prefix("0b") {
        if !digits_ok(b, 2) {
            return None;
        }
        (b.replace('_', ""), 2)
    } else if let Some(h) = body.strip_prefix("0x") {
        if !digits_ok(h, 16) {
            return None;
        }
        (h.replace('_', ""), 16)
    } else if body.len() > 1 && body.starts_with('0') {
        if !digits_ok(&body[1..], 8) {
            return None;
        }
        (body[1..].replace('_', ""), 8)
    } else if body.contains(':') {
        // Sexagesimal (base 60), e.g. 1:30 == 90.
        let mut parts = body.split(':');
        let first = parts.next()?;
        if first.is_empty() || first.starts_with('0') || !digits_ok(first, 10) {
            return None;
        }
        let mut acc: i128 = first.replace('_', "").parse().ok()?;
        for p in parts {
            if p.is_empty() || p.len() > 2 || !p.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let d: i128 = p.parse().ok()?;
            if d > 59 {
                return None;
            }
            acc = acc.checked_mul(60)?.checked_add(d)?;
        }
        return Some(to_int_value(if neg { -acc } else { acc }, text));
    } else {
        if !body.starts_with(|c: char| c.is_ascii_digit()) || !digits_ok(body, 10) {
            return None;
        }
        (body.replace('_', ""), 10)
    };
    if digits.is_empty() {
        return Some(Value::Int(0));
    }
    match i128::from_str_radix(&digits, radix) {
        Ok(v) => Some(to_int_value(if neg { -v } else { v }, text)),
        Err(_) => Some(Value::Other("an integer too large", text.to_string())),
    }
}

fn to_int_value(v: i128, text: &str) -> Value {
    match i64::try_from(v) {
        Ok(i) => Value::Int(i),
        Err(_) => Value::Other("an integer too large", text.to_string()),
    }
}

fn resolve_float(text: &str) -> Option<Value> {
    let (neg, body) = split_sign(text);
    let sign = if neg { -1.0 } else { 1.0 };
    match body {
        ".inf" | ".Inf" | ".INF" => return Some(Value::Float(sign * f64::INFINITY)),
        ".nan" | ".NaN" | ".NAN" if text == body => return Some(Value::Float(f64::NAN)),
        _ => {}
    }
    // [0-9][0-9_]*\.[0-9_]*([eE][-+][0-9]+)?  or  \.[0-9_]+([eE][-+][0-9]+)?
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let dot = mantissa.find('.')?;
    let (int_part, frac_part) = (&mantissa[..dot], &mantissa[dot + 1..]);
    let ok_digits = |s: &str| s.chars().all(|c| c == '_' || c.is_ascii_digit());
    if int_part.is_empty() {
        if neg
            || text.starts_with('+')
            || frac_part.is_empty()
            || !frac_part.starts_with(|c: char| c.is_ascii_digit())
        {
            return None;
        }
    } else if !int_part.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if !ok_digits(int_part) || !ok_digits(frac_part) {
        return None;
    }
    if let Some(exp) = exponent {
        let digits = exp.strip_prefix(['-', '+'])?;
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
    }
    let clean: String = body.chars().filter(|c| *c != '_').collect();
    let clean = if clean.starts_with('.') { format!("0{clean}") } else { clean };
    clean.parse::<f64>().ok().map(|f| Value::Float(sign * f))
}

fn is_timestamp(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 8
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5].is_ascii_digit()
        && (b[6] == b'-' || (b[6].is_ascii_digit() && b.get(7) == Some(&b'-')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(s: &str) -> Value {
        resolve_plain(s)
    }

    #[test]
    fn yaml11_scalars() {
        assert_eq!(plain("yes"), Value::Bool(true));
        assert_eq!(plain("Off"), Value::Bool(false));
        assert_eq!(plain("010"), Value::Int(8));
        assert_eq!(plain("0x1f"), Value::Int(31));
        assert_eq!(plain("1_000"), Value::Int(1000));
        assert_eq!(plain("1:30"), Value::Int(90));
        assert_eq!(plain("-5"), Value::Int(-5));
        assert_eq!(plain("10.0"), Value::Float(10.0));
        assert_eq!(plain("1e5"), Value::Str("1e5".into()));
        assert_eq!(plain("1.5e+3"), Value::Float(1500.0));
        assert_eq!(plain(".5"), Value::Float(0.5));
        assert_eq!(plain("~"), Value::Null);
        assert_eq!(plain("0.0.0.0"), Value::Str("0.0.0.0".into()));
        assert_eq!(plain("2001-12-14").kind(), "a timestamp");
        assert_eq!(plain("v2.0"), Value::Str("v2.0".into()));
        assert_eq!(plain("1.2.3"), Value::Str("1.2.3".into()));
    }

    #[test]
    fn locations_and_quotes() {
        let doc = parse("a: 1\nb:\n  - '1'\n  - x\n").unwrap_or_else(|e| panic!("{e:?}"));
        let Value::Map(entries) = &doc.value else { panic!("not a map") };
        assert_eq!(entries[1].0.loc, Location { line: 2, column: 1 });
        let Value::Seq(items) = &entries[1].1.value else { panic!("not a seq") };
        assert_eq!(items[0].value, Value::Str("1".into()));
        assert_eq!(items[1].loc, Location { line: 4, column: 5 });
    }

    #[test]
    fn anchors_and_merge() {
        let doc = parse("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n").unwrap_or_else(|e| panic!("{e:?}"));
        let Value::Map(entries) = &doc.value else { panic!("not a map") };
        let Value::Map(c) = &entries[1].1.value else { panic!("not a map") };
        let keys: Vec<_> = c.iter().map(|(k, v)| (k.value.clone(), v.value.clone())).collect();
        assert_eq!(
            keys,
            vec![(Value::Str("y".into()), Value::Int(3)), (Value::Str("x".into()), Value::Int(1)),]
        );
    }

    #[test]
    fn syntax_error_has_location() {
        let err = parse("a:\n  b: 1\n - c\n").err().unwrap_or_else(|| panic!("no error"));
        assert_eq!(err.loc.map(|l| l.line), Some(3));
    }

    #[test]
    fn empty_is_null() {
        assert_eq!(parse("").map(|n| n.value), Ok(Value::Null));
        assert_eq!(parse("# only a comment\n").map(|n| n.value), Ok(Value::Null));
    }
}
