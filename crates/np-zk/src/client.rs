//! Connecting to ZooKeeper and keeping a session.
//!
//! [`Zk`] is a cheap, cloneable handle. Behind it a supervisor task follows the
//! session state: on disconnect it reports `connected: false`; on session
//! expiry it builds a **new** session (the `zookeeper-client` crate's sessions
//! are terminal once expired) and bumps [`SessionStatus::generation`]. Everything
//! ephemeral that belonged to an older generation (locks, component
//! registrations) is gone, and its owners learn it from the generation change.
//!
//! **Fencing.** Whatever is written under a lock must go through the session
//! that holds the lock: [`Zk::fenced`] (and [`crate::LockGuard::fenced`]) is
//! a handle bound to one session. Once that session is gone every operation
//! through it fails, even after the supervisor opened a new one, so a process
//! that was frozen or cut off past its session timeout cannot write anything
//! under a lock it no longer holds (the zombie case): ZooKeeper rejects every
//! request of an expired session.
//!
//! When the connection stays down past the session timeout the client gives
//! the session up on its own, while the servers (after a restart, say) may
//! still know it, with our ephemeral locks. The supervisor then closes that
//! old session explicitly once a server answers, so its locks go away at
//! once instead of a session timeout later.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zookeeper_client::{Acls, Client, Connector, CreateMode, CreateOptions, SessionState, Stat, TlsOptions};

use crate::error::ZkError;
use crate::paths;

/// TLS material, as in `zookeeper-tls` of `nodepool.yaml` (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkTls {
    /// CA certificate(s).
    pub ca: PathBuf,
    /// Client certificate.
    pub cert: PathBuf,
    /// Client private key.
    pub key: PathBuf,
}

/// How to reach ZooKeeper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkConfig {
    /// `host:port[,host:port...][/chroot]`, as kazoo takes it.
    pub hosts: String,
    /// TLS files; `None` for a plain connection.
    pub tls: Option<ZkTls>,
    /// Session timeout (Nodepool's `zookeeper-timeout`, default 10 s).
    pub session_timeout: Duration,
    /// How long [`Zk::connect`] tries before it gives up.
    pub connect_timeout: Duration,
}

impl ZkConfig {
    /// A plain configuration with Nodepool's defaults.
    pub fn new(hosts: impl Into<String>) -> Self {
        ZkConfig {
            hosts: hosts.into(),
            tls: None,
            session_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(30),
        }
    }

    /// Builds the kazoo-style host string from Nodepool's `zookeeper-servers`
    /// entries: `host:port` joined by commas, the first chroot appended.
    pub fn hosts_from_servers<'a>(
        servers: impl IntoIterator<Item = (&'a str, u16, Option<&'a str>)>,
    ) -> String {
        let mut chroot = None;
        let mut parts = Vec::new();
        for (host, port, root) in servers {
            if host.contains(':') && !host.starts_with('[') {
                parts.push(format!("[{host}]:{port}"));
            } else {
                parts.push(format!("{host}:{port}"));
            }
            if chroot.is_none() {
                chroot = root.filter(|r| !r.is_empty() && *r != "/");
            }
        }
        let mut hosts = parts.join(",");
        if let Some(root) = chroot {
            if !root.starts_with('/') {
                hosts.push('/');
            }
            hosts.push_str(root.trim_end_matches('/'));
        }
        hosts
    }

    /// The host list without the chroot, and the chroot (if any).
    pub fn split_chroot(&self) -> (&str, Option<&str>) {
        match self.hosts.find('/') {
            Some(i) if i + 1 < self.hosts.len() => (&self.hosts[..i], Some(&self.hosts[i..])),
            Some(i) => (&self.hosts[..i], None),
            None => (&self.hosts, None),
        }
    }
}

/// The session as seen by users of [`Zk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStatus {
    /// Bumped every time a new session replaces an expired one. Ephemeral
    /// znodes created under an older generation no longer exist.
    pub generation: u64,
    /// False while disconnected (the session may still come back).
    pub connected: bool,
    /// True once the handle was closed.
    pub closed: bool,
}

struct Inner {
    config: ZkConfig,
    client: RwLock<Client>,
    status: watch::Sender<SessionStatus>,
    cancel: CancellationToken,
}

/// A ZooKeeper handle shared by a whole process.
#[derive(Clone)]
pub struct Zk {
    inner: Arc<Inner>,
    /// Bound to one session (see [`Zk::fenced`]): its client and generation.
    pinned: Option<(Client, u64)>,
}

impl std::fmt::Debug for Zk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zk").field("hosts", &self.inner.config.hosts).finish()
    }
}

pub(crate) fn open_acl() -> CreateOptions<'static> {
    CreateMode::Persistent.with_acls(Acls::anyone_all())
}

pub(crate) fn mode_options(mode: CreateMode) -> CreateOptions<'static> {
    mode.with_acls(Acls::anyone_all())
}

fn connector(
    config: &ZkConfig,
    session: Option<zookeeper_client::SessionInfo>,
) -> Result<Connector, ZkError> {
    let mut connector = Client::connector()
        .with_session_timeout(config.session_timeout)
        .with_connection_timeout(config.session_timeout.min(Duration::from_secs(5)));
    if let Some(session) = session {
        connector = connector.with_session(session);
    }
    if let Some(tls) = &config.tls {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).map_err(|e| ZkError::Tls(format!("cannot read {}: {e}", p.display())))
        };
        let (ca, cert, key) = (read(&tls.ca)?, read(&tls.cert)?, read(&tls.key)?);
        let options = TlsOptions::new()
            .with_pem_ca(&ca)
            .and_then(|o| o.with_pem_identity(&cert, &key))
            .map_err(|e| ZkError::Tls(e.to_string()))?;
        connector = connector.with_tls(options);
    }
    Ok(connector)
}

async fn connect_with(config: &ZkConfig, connector: Connector) -> Result<Client, ZkError> {
    let (servers, _) = config.split_chroot();
    let connecting = if config.tls.is_some() {
        tokio::time::timeout(config.connect_timeout, connector.secure_connect(servers)).await
    } else {
        tokio::time::timeout(config.connect_timeout, connector.connect(servers)).await
    };
    match connecting {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(source)) => Err(ZkError::Connect { hosts: config.hosts.clone(), source }),
        Err(_) => {
            Err(ZkError::Connect { hosts: config.hosts.clone(), source: zookeeper_client::Error::Timeout })
        }
    }
}

async fn establish(config: &ZkConfig) -> Result<Client, ZkError> {
    let (_, chroot) = config.split_chroot();
    let client = connect_with(config, connector(config, None)?).await?;
    match chroot {
        None => Ok(client),
        Some(root) => {
            client.mkdir(root, &open_acl()).await.map_err(|e| ZkError::op("mkdir", root, e))?;
            client
                .chroot(root.to_owned())
                .map_err(|_| ZkError::Tls(format!("invalid chroot {root}")))
                .map_err(|e| ZkError::Connect {
                    hosts: format!("{} ({e})", config.hosts),
                    source: zookeeper_client::Error::BadArguments(&"invalid chroot"),
                })
        }
    }
}

impl Zk {
    /// Connects, creating the chroot if needed, and starts the session supervisor.
    pub async fn connect(config: ZkConfig) -> Result<Zk, ZkError> {
        let client = establish(&config).await?;
        info!(hosts = %config.hosts, tls = config.tls.is_some(), "connected to ZooKeeper");
        let (status, _) = watch::channel(SessionStatus { generation: 0, connected: true, closed: false });
        let state_watcher = client.state_watcher();
        let inner =
            Arc::new(Inner { config, client: RwLock::new(client), status, cancel: CancellationToken::new() });
        tokio::spawn(supervise(Arc::downgrade(&inner), state_watcher, inner.cancel.clone()));
        Ok(Zk { inner, pinned: None })
    }

    /// The current client (for a fenced handle: its session's, even when
    /// that session is gone). Cheap (reference counted).
    pub fn client(&self) -> Client {
        if let Some((client, _)) = &self.pinned {
            return client.clone();
        }
        self.current().0
    }

    /// The client and generation operations of this handle go to: a fenced
    /// handle's own, else the current ones.
    pub(crate) fn session_pair(&self) -> (Client, u64) {
        match &self.pinned {
            Some((client, generation)) => (client.clone(), *generation),
            None => self.current(),
        }
    }

    /// The current client with its generation, read together.
    fn current(&self) -> (Client, u64) {
        let client = match self.inner.client.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        // Read while the supervisor swaps sessions, the pair may not match;
        // a fenced handle made from such a pair only ever looks dead (its
        // generation is not current, or its client is the expired one),
        // never alive with another session's client.
        (client, self.inner.status.borrow().generation)
    }

    /// A handle bound to the current session: every operation through it
    /// goes to that session, and fails once it is gone (see the module's
    /// "Fencing"). A fenced handle stays fenced to its session.
    pub fn fenced(&self) -> Zk {
        if self.pinned.is_some() {
            return self.clone();
        }
        let (client, generation) = self.current();
        Zk { inner: self.inner.clone(), pinned: Some((client, generation)) }
    }

    /// A handle bound to `client` of session `generation` (for locks).
    pub(crate) fn pinned_to(&self, client: Client, generation: u64) -> Zk {
        Zk { inner: self.inner.clone(), pinned: Some((client, generation)) }
    }

    /// The session generation a fenced handle is bound to (`None`: not fenced).
    pub fn fenced_generation(&self) -> Option<u64> {
        self.pinned.as_ref().map(|(_, g)| *g)
    }

    /// False once the session of a fenced handle is gone (always true for
    /// an unfenced one).
    pub fn session_alive(&self) -> bool {
        match &self.pinned {
            Some((client, generation)) => {
                *generation == self.status().generation && !client.state().is_terminated()
            }
            None => !self.status().closed,
        }
    }

    /// An unfenced handle on the same connection.
    pub fn unfenced(&self) -> Zk {
        Zk { inner: self.inner.clone(), pinned: None }
    }

    /// The configuration this handle was made from.
    pub fn config(&self) -> &ZkConfig {
        &self.inner.config
    }

    /// The current session status.
    pub fn status(&self) -> SessionStatus {
        *self.inner.status.borrow()
    }

    /// A receiver that sees every session status change.
    pub fn subscribe(&self) -> watch::Receiver<SessionStatus> {
        self.inner.status.subscribe()
    }

    /// Waits until connected (or `timeout` passes). Returns the status then.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<SessionStatus, ZkError> {
        let mut rx = self.subscribe();
        let result = tokio::time::timeout(timeout, rx.wait_for(|s| s.connected || s.closed)).await;
        match result {
            Ok(Ok(status)) if status.connected => Ok(*status),
            _ => Err(ZkError::Op {
                op: "wait for connection",
                path: String::new(),
                source: zookeeper_client::Error::ConnectionLoss,
            }),
        }
    }

    /// Stops the supervisor and closes the session (ephemeral znodes go away
    /// once the last clone of the client is dropped).
    pub fn close(&self) {
        self.inner.cancel.cancel();
        self.inner.status.send_modify(|s| {
            s.connected = false;
            s.closed = true;
        });
    }

    /// Forces the current session to expire, as a server-side timeout would:
    /// a second connection takes over the session and closes it. Used by tests
    /// and the chaos tooling; the supervisor then reconnects.
    ///
    /// The thief gets a single try inside the client library (a resumed
    /// session has no reconnect budget before it is established), so a
    /// connection loss or a slow handshake on a loaded machine is retried here
    /// until `connect_timeout`. A session that is already gone counts as done.
    pub async fn expire_session(&self) -> Result<(), ZkError> {
        let session = self.client().session().clone();
        let deadline = tokio::time::Instant::now() + self.inner.config.connect_timeout;
        loop {
            match connect_with(&self.inner.config, connector(&self.inner.config, Some(session.clone()))?)
                .await
            {
                Ok(thief) => {
                    drop(thief);
                    return Ok(());
                }
                Err(ZkError::Connect { source: zookeeper_client::Error::SessionExpired, .. }) => {
                    return Ok(())
                }
                Err(ZkError::Connect {
                    source: zookeeper_client::Error::Timeout | zookeeper_client::Error::ConnectionLoss,
                    ..
                }) if tokio::time::Instant::now() < deadline => {
                    debug!("expire_session: the thief connection failed, trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `op` on this handle's client, again after a connection loss,
    /// for as long as the handle's session can come back (a ZooKeeper
    /// restart or leader change shorter than the session timeout): the
    /// operations retried this way are idempotent. A fenced handle stops
    /// once its session is gone (the error is then `SessionExpired`).
    pub(crate) async fn retrying<T, F, Fut>(&self, op: F) -> Result<T, zookeeper_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, zookeeper_client::Error>>,
    {
        let window = self.inner.config.session_timeout + self.inner.config.connect_timeout;
        let deadline = tokio::time::Instant::now() + window;
        loop {
            match op(self.client()).await {
                Err(e) if is_transient(&e) && self.session_alive() => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return Err(e);
                    }
                    debug!(error = %e, "ZooKeeper operation interrupted; retrying once reconnected");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if self.wait_connected(left).await.is_err() {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    // === thin wrappers with path-carrying errors ===

    /// `mkdir -p` with open ACLs and empty data.
    pub async fn ensure_path(&self, path: &str) -> Result<(), ZkError> {
        self.retrying(|c| async move { c.mkdir(path, &open_acl()).await })
            .await
            .map_err(|e| ZkError::op("mkdir", path, e))
    }

    /// Creates a znode; with `make_parents`, missing parents are created
    /// (persistent, empty) as kazoo's `makepath=True` does. Returns the created
    /// path (with the sequence suffix for sequential modes) and its stat.
    /// A sequential create is never retried after a connection loss (it may
    /// have been made: the caller decides).
    pub async fn create(
        &self,
        path: &str,
        data: &[u8],
        mode: CreateMode,
        make_parents: bool,
    ) -> Result<(String, Stat), ZkError> {
        let client = self.client();
        let options = mode_options(mode);
        let mut result = client.create(path, data, &options).await;
        if make_parents && result == Err(zookeeper_client::Error::NoNode) {
            if let Some(parent) = paths::parent(path) {
                self.ensure_path(parent).await?;
            }
            result = client.create(path, data, &options).await;
        }
        let (stat, seq) = result.map_err(|e| ZkError::op("create", path, e))?;
        let sequential = matches!(mode, CreateMode::PersistentSequential | CreateMode::EphemeralSequential);
        let created = if sequential { format!("{path}{seq}") } else { path.to_owned() };
        Ok((created, stat))
    }

    /// Brings the server this session talks to up to date with the leader
    /// (ZooKeeper's `sync`), so that the next read sees every write
    /// committed before it.
    pub async fn sync(&self, path: &str) -> Result<(), ZkError> {
        self.retrying(|c| async move { c.sync(path).await }).await.map_err(|e| ZkError::op("sync", path, e))
    }

    /// Reads a znode; `Ok(None)` when it does not exist.
    pub async fn get(&self, path: &str) -> Result<Option<(Vec<u8>, Stat)>, ZkError> {
        match self.retrying(|c| async move { c.get_data(path).await }).await {
            Ok(v) => Ok(Some(v)),
            Err(zookeeper_client::Error::NoNode) => Ok(None),
            Err(e) => Err(ZkError::op("get", path, e)),
        }
    }

    /// Writes a znode (`version: None` is unconditional, like Python's
    /// writers). Retried after a connection loss: a versioned write whose
    /// first try landed then fails with `BadVersion`, which callers of
    /// versioned writes handle by reading again.
    pub async fn set(&self, path: &str, data: &[u8], version: Option<i32>) -> Result<Stat, ZkError> {
        self.retrying(|c| async move { c.set_data(path, data, version).await })
            .await
            .map_err(|e| ZkError::op("set", path, e))
    }

    /// Lists children; `Ok(None)` when the parent does not exist.
    pub async fn children(&self, path: &str) -> Result<Option<Vec<String>>, ZkError> {
        match self.retrying(|c| async move { c.list_children(path).await }).await {
            Ok(v) => Ok(Some(v)),
            Err(zookeeper_client::Error::NoNode) => Ok(None),
            Err(e) => Err(ZkError::op("list", path, e)),
        }
    }

    /// The stat of a znode, if it exists.
    pub async fn exists(&self, path: &str) -> Result<Option<Stat>, ZkError> {
        self.retrying(|c| async move { c.check_stat(path).await })
            .await
            .map_err(|e| ZkError::op("exists", path, e))
    }

    /// Deletes a znode; a missing znode is not an error (so a delete whose
    /// first try landed before a connection loss is simply done).
    pub async fn delete(&self, path: &str) -> Result<(), ZkError> {
        match self.retrying(|c| async move { c.delete(path, None).await }).await {
            Ok(()) | Err(zookeeper_client::Error::NoNode) => Ok(()),
            Err(e) => Err(ZkError::op("delete", path, e)),
        }
    }

    /// Deletes a znode and everything below it, children first (kazoo's
    /// `delete(recursive=True)`). Races with concurrent creators are retried.
    pub async fn delete_recursive(&self, path: &str) -> Result<(), ZkError> {
        for _ in 0..10 {
            let mut stack = vec![path.to_owned()];
            let mut order = Vec::new();
            while let Some(p) = stack.pop() {
                if let Some(kids) = self.children(&p).await? {
                    for k in kids {
                        stack.push(format!("{p}/{k}"));
                    }
                }
                order.push(p);
            }
            let client = self.client();
            // Deepest first; issue all deletes before awaiting (pipelined).
            let pending: Vec<_> = order.iter().rev().map(|p| client.delete(p, None)).collect();
            let mut retry = false;
            for (result, p) in futures::future::join_all(pending).await.into_iter().zip(order.iter().rev()) {
                match result {
                    Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
                    Err(zookeeper_client::Error::NotEmpty) => retry = true,
                    Err(e) => return Err(ZkError::op("delete", p, e)),
                }
            }
            if !retry {
                return Ok(());
            }
        }
        Err(ZkError::op("delete", path, zookeeper_client::Error::NotEmpty))
    }
}

/// Closes a session we gave up, if the servers still have it: a connection
/// resumes it and is dropped at once (which closes it). A session the servers
/// expired already answers `SessionExpired`: nothing to do.
async fn close_session(config: ZkConfig, session: zookeeper_client::SessionInfo) {
    let Ok(connector) = connector(&config, Some(session)) else { return };
    match connect_with(&config, connector).await {
        Ok(resumed) => {
            info!("closed the previous ZooKeeper session, which the servers still held");
            drop(resumed);
        }
        Err(e) => debug!(error = %e, "previous ZooKeeper session already gone"),
    }
}

/// A connection loss (or a request timed out on one): the session may still
/// be there once the client reconnected.
pub(crate) fn is_transient(e: &zookeeper_client::Error) -> bool {
    // zookeeper-client fails the requests in flight when a connection breaks
    // with the socket's I/O error (`Custom`: "connection reset by peer",
    // "peer closed connection without sending TLS close_notify"), not with
    // `ConnectionLoss`; it is the same event (the chaos suite's ZooKeeper
    // restart turned such writes into failed launches).
    use zookeeper_client::Error as E;
    matches!(e, E::ConnectionLoss | E::Timeout | E::Throttled | E::Custom(_))
}

async fn supervise(
    inner: Weak<Inner>,
    mut watcher: zookeeper_client::StateWatcher,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let state = tokio::select! {
            _ = cancel.cancelled() => return,
            state = watcher.changed() => state,
        };
        let Some(inner_ref) = inner.upgrade() else { return };
        debug!(%state, "ZooKeeper session state");
        match state {
            SessionState::Disconnected => {
                warn!(hosts = %inner_ref.config.hosts, "ZooKeeper connection lost, reconnecting");
                inner_ref.status.send_modify(|s| s.connected = false);
            }
            SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                info!("ZooKeeper connection re-established");
                inner_ref.status.send_modify(|s| s.connected = true);
            }
            SessionState::Closed => return,
            SessionState::Expired | SessionState::AuthFailed => {
                warn!(%state, "ZooKeeper session ended; ephemeral locks and registrations are lost");
                inner_ref.status.send_modify(|s| s.connected = false);
                let config = inner_ref.config.clone();
                let old_session = match inner_ref.client.read() {
                    Ok(c) => c.session().clone(),
                    Err(poisoned) => poisoned.into_inner().session().clone(),
                };
                drop(inner_ref);
                loop {
                    let attempt = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = establish(&config) => r,
                    };
                    match attempt {
                        Ok(client) => {
                            let Some(inner_ref) = inner.upgrade() else { return };
                            watcher = client.state_watcher();
                            match inner_ref.client.write() {
                                Ok(mut c) => *c = client,
                                Err(poisoned) => *poisoned.into_inner() = client,
                            }
                            inner_ref.status.send_modify(|s| {
                                s.generation += 1;
                                s.connected = true;
                            });
                            info!(generation = inner_ref.status.borrow().generation, "new ZooKeeper session");
                            backoff = Duration::from_millis(100);
                            // The servers may still hold the old session (we
                            // gave it up while they were unreachable): close
                            // it, so that its locks go now.
                            tokio::spawn(close_session(config.clone(), old_session.clone()));
                            break;
                        }
                        Err(e) => {
                            warn!(error = %e, "ZooKeeper reconnect failed");
                            tokio::select! {
                                _ = cancel.cancelled() => return,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            }
        }
    }
}

/// Adds the persistent watch on `path` again, on the connection the session
/// has now, and returns its watcher: the caller replaces its old watcher with
/// it (dropping the old one then sends nothing, as the new one shares path
/// and mode).
///
/// Why: ZooKeeper keeps watches per connection, and a client that resumes its
/// session on a new connection (a server restart or a leader change shorter
/// than the session timeout, or any reconnect) must send them again.
/// zookeeper-client 0.11.2 sends only the one-shot watches then (its
/// `resend_watches` never chooses the `SetWatches2` form that carries
/// persistent ones), so a persistent watch silently stops firing after such a
/// reconnect. The chaos suite found this: a launcher that heard nothing after
/// a ZooKeeper restart. Every persistent watch of the project calls this on
/// `SyncConnected`; `AddWatch` is idempotent on the server.
pub async fn rewatch(
    client: &Client,
    path: &str,
    mode: zookeeper_client::AddWatchMode,
) -> Result<zookeeper_client::PersistentWatcher, ZkError> {
    client.watch(path, mode).await.map_err(|e| ZkError::op("watch", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_strings() {
        let hosts = ZkConfig::hosts_from_servers([("zk1", 2181, Some("/nodepool")), ("zk2", 2281, None)]);
        assert_eq!(hosts, "zk1:2181,zk2:2281/nodepool");
        let cfg = ZkConfig::new(hosts);
        assert_eq!(cfg.split_chroot(), ("zk1:2181,zk2:2281", Some("/nodepool")));
        assert_eq!(ZkConfig::new("127.0.0.1:2181").split_chroot(), ("127.0.0.1:2181", None));
        assert_eq!(ZkConfig::hosts_from_servers([("::1", 2181, None)]), "[::1]:2181");
    }
}
