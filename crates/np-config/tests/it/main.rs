//! Integration tests of np-config: the upstream fixture corpus, error snapshots,
//! hand-written cases, the secure file, diffing and drift against Python.

mod cases;
mod corpus;
mod diffing;
mod python_drift;
mod schema_audit;
mod snapshots;
mod support;
mod upstream;
