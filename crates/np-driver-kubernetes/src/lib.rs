//! The `kubernetes` driver.
//!
//! Each node is a Kubernetes **namespace** named `<pool>-<node id>` (its
//! `external_id`), as upstream:
//!
//! * a `type: namespace` label gets an empty namespace with a `zuul-worker`
//!   service account, its token, and a `zuul` role with all verbs on the usual
//!   workload resources: the node's `connection_type` is `namespace`;
//! * a `type: pod` label (any type but `namespace`, as upstream) gets the
//!   same namespace with the restricted
//!   `zuul-restricted` role and one pod named after the label, running
//!   `sleep` (or the label's own `spec`): `connection_type` `kubectl`, the
//!   pod name as `interface_ip` and the Kubernetes node as `host_id`.
//!
//! The credentials (API server, token, CA) go into the node's
//! `connection_port` as upstream's JSON object; the web API and the CLI show
//! it as `redacted`.
//!
//! [`bodies`] builds the objects; [`machine`] has the create and delete state
//! machines; [`provider`] the [`np_provider::Provider`]; [`error`] classifies
//! API errors. The client is kube-rs: a kubeconfig `context` with tokens,
//! client certificates or exec credential plugins, and without any
//! kubeconfig the in-cluster service account.

pub mod bodies;
pub mod error;
pub mod machine;
pub mod pools;
pub mod provider;

pub use error::KubeDriverError;
pub use pools::pools;
pub use provider::{ClusterAccess, KubernetesProvider};
