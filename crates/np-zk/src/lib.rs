//! Nodepool's ZooKeeper layer: the only crate that talks to ZooKeeper.
//!
//! * [`client`]: connecting (plain or TLS, with chroot), session supervision and
//!   transparent reconnection after session expiry, with a session *generation*
//!   counter that tells lock holders and caches when ephemeral state was lost;
//! * [`paths`]: the znode layout of spec zk-protocol §1;
//! * [`lock`]: kazoo's `Lock` recipe, wire-compatible with Zuul and Python Nodepool;
//! * [`store`]: create/read/update/delete of node, request, image and component records;
//! * [`cache`]: tree caches over persistent recursive watches, with a change stream;
//! * [`locks`]: who holds the request locks (a cache of `/nodepool/requests-lock`,
//!   with a change stream), so that a freed or lost request is seen at once;
//! * [`components`]: component registration that survives reconnects.
//!
//! The JSON written here is an external contract: it comes from `np-core`'s
//! record types only.

pub mod cache;
pub mod client;
pub mod components;
pub mod error;
pub mod lock;
pub mod locks;
pub mod node_index;
pub mod paths;
pub mod store;

pub use cache::{drain_events, CacheEvent, CacheEventKind, Cached, NodeCache, RequestCache, TreeCache};
pub use client::{rewatch, SessionStatus, Zk, ZkConfig, ZkTls};
pub use components::{ComponentRegistration, PoolComponentCache};
pub use error::ZkError;
pub use lock::{LockGuard, LockOptions};
pub use locks::{LockDirCache, RequestLockCache};
pub use node_index::NodeIndex;
pub use zookeeper_client::Stat;
