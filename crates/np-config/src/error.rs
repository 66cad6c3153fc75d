//! Configuration errors: what went wrong, in which file, at which line and column, and
//! under which key path (`providers[2].pools[0].labels[1].flavor-name`).
//!
//! Loading never stops at the first problem: every error found in a file is collected
//! into [`ConfigErrors`], whose `Display` prints them one per line.

use std::fmt;

pub use crate::yaml::Location;

/// One step of a [`KeyPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A mapping key.
    Key(String),
    /// A list index, from 0.
    Index(usize),
}

/// Where a value sits in the document, e.g. `providers[2].pools[0].labels[1].flavor-name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(pub Vec<Segment>);

impl KeyPath {
    /// The document root (an empty path).
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// This path followed by a mapping key.
    pub fn key(&self, key: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Key(key.to_string()));
        p
    }

    /// This path followed by a list index.
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Index(i));
        p
    }

    /// Whether this is the document root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) if i == 0 => write!(f, "{k}")?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// What is wrong; the message says what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read.
    #[error("cannot read file: {0}")]
    Io(String),
    /// The text is not valid YAML.
    #[error("invalid YAML: {0}")]
    Yaml(String),
    /// A key that is not part of the schema at this place.
    #[error("unknown key '{key}'{}", suggestion.as_ref().map(|s| format!(" (did you mean '{s}'?)")).unwrap_or_default())]
    UnknownKey {
        /// The key as written.
        key: String,
        /// The closest allowed key, when one is close.
        suggestion: Option<String>,
    },
    /// The same key appears twice in one mapping.
    #[error("duplicate key '{0}' (the earlier value would be silently discarded)")]
    DuplicateKey(String),
    /// A required key is absent.
    #[error("missing required key '{0}'")]
    MissingKey(String),
    /// A value has the wrong type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What the schema wants, e.g. "an integer".
        expected: &'static str,
        /// What the document has, e.g. "a string".
        found: &'static str,
    },
    /// A value has the right type but is not allowed.
    #[error("{0}")]
    InvalidValue(String),
    /// Keys that exclude each other were given together.
    #[error("'{0}' and '{1}' cannot be used together")]
    Exclusive(String, String),
    /// One of several keys is required and none was given.
    #[error("one of {} is required", .0.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", "))]
    OneOfRequired(Vec<String>),
    /// A key upstream accepts that nodepool-rs does not implement (refused rather
    /// than accepted and ignored).
    #[error("key '{key}' is not supported by nodepool-rs: {why}")]
    Unsupported {
        /// The key as written.
        key: String,
        /// Why, and what to do instead.
        why: String,
    },
    /// An upstream driver this version does not implement.
    #[error("driver {0} is not supported by this version")]
    UnsupportedDriver(String),
    /// A driver name nobody knows.
    #[error("unknown driver '{0}' (known drivers: openstack, aws, static, kubernetes, fake)")]
    UnknownDriver(String),
    /// A name defined twice where names must be unique.
    #[error("{what} '{name}' is already defined{}", first.map(|l| format!(" at line {}", l.line)).unwrap_or_default())]
    Duplicate {
        /// "label", "diskimage", "provider", ...
        what: &'static str,
        /// The repeated name.
        name: String,
        /// Where it was first defined.
        first: Option<Location>,
    },
    /// A reference to something that is not defined.
    #[error("{0}")]
    Undefined(String),
    /// Any other semantic problem.
    #[error("{0}")]
    Semantic(String),
}

/// One configuration error with its location.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The file name as given to the loader.
    pub file: String,
    /// Line and column, when known.
    pub location: Option<Location>,
    /// Key path of the offending value (empty for whole-file problems).
    pub path: KeyPath,
    /// What is wrong.
    pub kind: ErrorKind,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(loc) = self.location {
            write!(f, ":{}:{}", loc.line, loc.column)?;
        }
        if !self.path.is_root() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl std::error::Error for ConfigError {}

/// Every error found while loading a configuration (never empty when returned as `Err`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The individual errors, in file order.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    /// How many errors there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}
