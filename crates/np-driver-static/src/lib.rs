//! The `static` driver: pools of pre-existing hosts (spec drivers §4).
//!
//! Nothing is ever launched. Every configured host is registered in ZooKeeper
//! as `max-parallel-jobs` `ready` node records (slots `0..n`), which the
//! launcher hands out like any other ready node. When Zuul returns a node
//! (`used`) the launcher's cleanup deletes the record and [`sync`] registers
//! the slot again from the *current* configuration.
//!
//! * [`keyscan`]: SSH host-key scanning and port checks (`nodeutils.nodescan`),
//!   generic enough for the cloud drivers' host-key checks;
//! * [`provider`]: [`StaticProvider`], the `np_provider::Provider` of a static
//!   provider (never launches, deletes nothing, unlimited quota);
//! * [`sync`]: [`StaticSync`], the event-driven registration task that keeps
//!   ZooKeeper in line with the configuration, including live reloads.

/// SSH host-key scanning (in `np-provider`: cloud nodes are scanned too).
pub use np_provider::keyscan;
pub mod provider;
pub mod sync;

pub use keyscan::{scan_host_keys, wait_for_port, wait_for_ssh, KeyType, KeyscanError};
pub use provider::{pools, StaticProvider};
pub use sync::{
    free_ready_nodes_by_label, run_sync, NodeTuple, StaticSync, StaticSyncHandle, SyncError, SyncOptions,
    STATIC_LAUNCHER,
};
