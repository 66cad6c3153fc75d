//! The launcher's integration tests, one module per area, linked into one
//! test binary: each separate binary would link the whole launcher with
//! every driver SDK again (about 56 MB and a few seconds of linking each),
//! which costs CI disk and time. nextest still runs every test in its own
//! process. Each module's own docs say what it covers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod aws;
mod common;
mod diskimages;
mod ensemble;
mod faults;
mod hostkeys;
mod kubernetes;
mod launcher;
mod maintenance;
mod openstack;
mod process;
mod python_peer;
mod quota;
mod routing;
mod static_pools;
mod statsd;
mod webapp;
