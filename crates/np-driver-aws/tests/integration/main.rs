//! The AWS driver's tests against moto in one test binary (a binary per
//! file would link the SDKs twice): `moto` for instances, quota, leaks and
//! fleets, `imports` for image uploads. `support` starts and resets moto.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod imports;
mod moto;
