//! Errors of the ZooKeeper layer.

use np_core::ModelError;

/// What went wrong talking to ZooKeeper or reading its data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZkError {
    /// Could not establish a session.
    #[error("cannot connect to ZooKeeper at {hosts}: {source}")]
    Connect {
        hosts: String,
        #[source]
        source: zookeeper_client::Error,
    },
    /// TLS material could not be read or used.
    #[error("ZooKeeper TLS setup failed: {0}")]
    Tls(String),
    /// A ZooKeeper operation failed.
    #[error("ZooKeeper {op} {path} failed: {source}")]
    Op {
        op: &'static str,
        path: String,
        #[source]
        source: zookeeper_client::Error,
    },
    /// The znode does not exist.
    #[error("{path} does not exist")]
    NoNode { path: String },
    /// The znode holds data that is not a valid record.
    #[error("malformed data at {path}: {source}")]
    Malformed {
        path: String,
        #[source]
        source: ModelError,
    },
    /// A blocking lock was not acquired in time.
    #[error("timed out waiting for lock {path}")]
    LockTimeout { path: String },
    /// The operation was cancelled (shutdown).
    #[error("cancelled")]
    Cancelled,
}

impl ZkError {
    pub(crate) fn op(op: &'static str, path: &str, source: zookeeper_client::Error) -> ZkError {
        if source == zookeeper_client::Error::NoNode {
            return ZkError::NoNode { path: path.to_owned() };
        }
        ZkError::Op { op, path: path.to_owned(), source }
    }

    /// True when a versioned write lost to another writer.
    pub fn is_bad_version(&self) -> bool {
        matches!(self, ZkError::Op { source: zookeeper_client::Error::BadVersion, .. })
    }

    /// A znode whose data could not be parsed.
    pub fn is_malformed(&self) -> bool {
        matches!(self, ZkError::Malformed { .. })
    }

    /// True when the error means the znode is missing.
    pub fn is_no_node(&self) -> bool {
        matches!(self, ZkError::NoNode { .. })
    }

    /// True for connection loss or session expiry: the operation may be retried
    /// once the session is back.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            ZkError::Op {
                source: zookeeper_client::Error::ConnectionLoss
                    | zookeeper_client::Error::SessionExpired
                    | zookeeper_client::Error::ClientClosed
                    | zookeeper_client::Error::Timeout,
                ..
            }
        )
    }

    /// True when the operation was cut off by a connection loss (a server
    /// restart, a leader change) and the session may still be there: a
    /// write may or may not have been made.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, ZkError::Op { source, .. } if crate::client::is_transient(source))
    }
}
