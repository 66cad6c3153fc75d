//! Identifier formats (spec zk-protocol §2.1).
//!
//! * node: the 10-digit sequence suffix, e.g. `0000004711`;
//! * request: `<PPP>-<10 digits>`, a 3-character zero-padded priority, e.g. `200-0000012345`;
//! * image build: 32 lower-case hex digits (`uuid4().hex`), or 10 digits in legacy data;
//! * image upload: 10 digits.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::json::ModelError;

fn is_digits(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `id` is a node id (10 digits; 19 after a 64-bit sequence wrap).
pub fn is_node_id(id: &str) -> bool {
    is_digits(id, 10) || is_digits(id, 19)
}

/// Whether `id` is an image build id (uuid hex, or 10 digits in old data).
pub fn is_build_id(id: &str) -> bool {
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())) || is_digits(id, 10)
}

/// A node request id: priority prefix and sequence.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId {
    priority: String,
    sequence: String,
}

impl RequestId {
    /// Builds an id from a numeric priority (formatted `{:0>3}` like Zuul) and a sequence.
    pub fn new(priority: u32, sequence: &str) -> Self {
        RequestId { priority: format!("{priority:0>3}"), sequence: sequence.to_owned() }
    }

    /// The priority prefix as written (e.g. `"099"`). Lower sorts first.
    pub fn priority(&self) -> &str {
        &self.priority
    }

    /// The sequence part.
    pub fn sequence(&self) -> &str {
        &self.sequence
    }

    /// The order in which launchers consider requests with equal label fit
    /// and relative priority: by priority prefix, then sequence, both as strings
    /// (as Python Nodepool sorts).
    pub fn precedence_cmp(&self, other: &RequestId) -> Ordering {
        (self.priority.as_str(), self.sequence.as_str())
            .cmp(&(other.priority.as_str(), other.sequence.as_str()))
    }
}

impl FromStr for RequestId {
    type Err = ModelError;
    /// Python splits on `-` and requires exactly two parts; Zuul requires the
    /// dash at index 3. We require both.
    fn from_str(s: &str) -> Result<Self, ModelError> {
        let invalid = || ModelError::InvalidId { what: "request", id: s.to_owned() };
        let (priority, sequence) = s.split_once('-').ok_or_else(invalid)?;
        if priority.len() != 3 || sequence.contains('-') || sequence.is_empty() {
            return Err(invalid());
        }
        if !priority.bytes().all(|b| b.is_ascii_digit()) || !sequence.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        Ok(RequestId { priority: priority.to_owned(), sequence: sequence.to_owned() })
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.priority, self.sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        let id: RequestId = "200-0000012345".parse().unwrap();
        assert_eq!(id.priority(), "200");
        assert_eq!(id.sequence(), "0000012345");
        assert_eq!(id.to_string(), "200-0000012345");
        assert_eq!(RequestId::new(99, "0000000001").to_string(), "099-0000000001");
        for bad in ["2000000012345", "20-0000012345", "200-00-1", "abc-0000000001", "200-"] {
            assert!(bad.parse::<RequestId>().is_err(), "{bad}");
        }
        let a: RequestId = "099-0000000009".parse().unwrap();
        let b: RequestId = "100-0000000001".parse().unwrap();
        assert_eq!(a.precedence_cmp(&b), Ordering::Less);
    }

    #[test]
    fn node_and_build_ids() {
        assert!(is_node_id("0000004711"));
        assert!(!is_node_id("4711"));
        assert!(!is_node_id("lock"));
        assert!(is_build_id("8e0f3a4c2b1d4e5f9a8b7c6d5e4f3a2b"));
        assert!(is_build_id("0000000001"));
        assert!(!is_build_id("lock"));
    }
}
