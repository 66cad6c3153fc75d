//! The builder's integration tests in one test binary (a binary per file
//! would link the builder with the AWS SDK twice): `builder` with the fake
//! provider and `aws` with uploads to moto.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod aws;
mod builder;
mod openstack;
