//! Integration tests of np-config: the upstream fixture corpus, error snapshots,
//! hand-written cases and diffing.

mod support;
mod upstream;
