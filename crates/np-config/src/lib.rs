//! Typed `nodepool.yaml` configuration (work in progress).
