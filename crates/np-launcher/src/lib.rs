//! The Nodepool launcher: fulfils node requests from ZooKeeper.
//!
//! * [`pool`]: one worker per provider pool, registered as a `pool`
//!   component. It wakes on the request, node and pool-component caches'
//!   change streams (and on its own launch completions), never on a timer:
//!   selection, accept/decline, node reuse, launches, pausing at quota and
//!   fulfilment follow spec launcher §2 and zk-protocol §5.2.
//! * [`launch`]: runs a provider's create state machine for one node, with
//!   retries, timeouts and the quota → `aborted` path.
//! * [`cleanup`]: deletes unlocked nodes in cleanup states, frees nodes
//!   allocated to vanished requests, and keeps `min-ready` nodes.
//! * [`launcher`]: wires everything for one configuration and shuts it down.
//! * [`webapp`]: the status web server (`/node-list`, `/ready`, `/metrics`, ...).
//! * [`metrics`]: Prometheus metrics, recorded by the workers and computed
//!   from the caches at scrape time, and the same measurements as upstream's
//!   statsd keys when `STATSD_HOST` is set.
//! * [`stats`]: the statsd gauge reporter and its stats-leader election.

pub mod cleanup;
pub mod launch;
pub mod launcher;
pub mod maintenance;
pub mod metrics;
pub mod pool;
pub mod stats;
pub mod webapp;

pub use launcher::{Launcher, ProviderSet};

/// The version string written into component records.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (nodepool-rs)");

/// The requestor of the launcher's own min-ready requests.
pub const MIN_READY_REQUESTOR: &str = "NodePool:min-ready";
