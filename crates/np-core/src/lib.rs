//! The Nodepool domain model shared by every binary of this project.
//!
//! Everything here is pure: no I/O, no async, no ZooKeeper client. The types in
//! [`node`], [`request`], [`image`] and [`component`] are the JSON records that
//! Zuul and Python Nodepool read from ZooKeeper, so their serialization is an
//! **external contract** (see `ARCHITECTURE.md` and `doc/zk-records.md`):
//!
//! * every field Python Nodepool writes is written, with explicit `null`s, in
//!   Python's key order and with Python's `json.dumps` separators;
//! * parsing is tolerant (defaults for missing keys, integers accepted where
//!   floats are expected) and lossless: unknown keys are kept and written back,
//!   and opaque values (`requestor_data`, `user_data`, `driver_data`, object
//!   `connection_port`) keep arbitrary-precision numbers exactly;
//! * malformed input is a [`ModelError`], never a panic.

pub mod component;
pub mod ids;
pub mod image;
pub mod json;
pub mod node;
pub mod quota;
pub mod request;

pub use component::{ComponentKind, ComponentRecord, ComponentState, PoolInfo};
pub use ids::{is_build_id, is_node_id, RequestId};
pub use image::{BuildState, ImageBuild, ImageUpload, UploadState};
pub use json::ModelError;
pub use node::{Node, NodeState};
pub use quota::Quota;
pub use request::{NodeRequest, RequestState};

/// The current time as float seconds since the Unix epoch, like Python's `time.time()`.
pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
