//! kazoo's exclusive `Lock` recipe, wire-compatible with Zuul and Python
//! Nodepool (spec zk-protocol §4).
//!
//! A lock is a directory znode; each contender creates one ephemeral
//! sequential child `<uuidhex>__lock__<10 digits>` holding its identifier. The
//! contender with the smallest suffix (compared as a string, as kazoo does)
//! holds the lock; the others watch their immediate predecessor. Children
//! without the `__lock__` marker are ignored, exactly as kazoo ignores them.
//!
//! Differences in *round trips*, not in behaviour: the contender create and
//! the children listing are pipelined in one flight (ZooKeeper executes a
//! session's requests in order), and the lock directory is only created when
//! the first create reports it missing. A non-blocking attempt therefore costs
//! one round trip when the lock is free, plus one delete when it is not.
//!
//! # Guarantees
//! * A [`LockGuard`] remembers the session it was acquired in;
//!   [`LockGuard::is_valid`] turns false, and [`LockGuard::lost`] resolves, once
//!   that session expired (its ephemeral contender is gone).
//! * [`LockGuard::fenced`] is a handle bound to that session: writes made
//!   through it fail once the lock is lost, even after a new session was
//!   opened (see [`crate::client`], "Fencing"). Everything written under a
//!   lock goes through it.
//! * Dropping a guard without [`LockGuard::release`] still deletes the
//!   contender in the background.
//!
//! # Caveat
//! Locking a node lock (`/nodepool/nodes/<id>/lock`) with `make_parents` would
//! resurrect a just-deleted node as an empty znode (spec §4.7). Use
//! [`LockOptions::make_parents`] = false for such paths: then only the lock
//! directory itself may be created, and a missing parent is reported as
//! [`ZkError::NoNode`].

use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};
use zookeeper_client::CreateMode;

use crate::client::{mode_options, open_acl, Zk};
use crate::error::ZkError;

const LOCK_MARKER: &str = "__lock__";

/// How to take a lock.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// Wait for the lock. `false` is kazoo's `blocking=False`.
    pub blocking: bool,
    /// With `blocking`, give up after this long (`None`: wait forever).
    pub timeout: Option<Duration>,
    /// Data of the contender znode (kazoo's `identifier`), usually empty.
    pub identifier: String,
    /// Ephemeral contender (the default); `false` only for metastatic-style
    /// persistent locks.
    pub ephemeral: bool,
    /// Create missing ancestors of the lock directory (kazoo's `ensure_path`).
    pub make_parents: bool,
}

impl LockOptions {
    /// A non-blocking attempt (`blocking=False`).
    pub fn try_once() -> Self {
        LockOptions {
            blocking: false,
            timeout: None,
            identifier: String::new(),
            ephemeral: true,
            make_parents: true,
        }
    }

    /// A blocking attempt, optionally bounded.
    pub fn blocking(timeout: Option<Duration>) -> Self {
        LockOptions { blocking: true, timeout, ..LockOptions::try_once() }
    }

    /// Do not create missing ancestors (see the module's caveat).
    pub fn no_parents(mut self) -> Self {
        self.make_parents = false;
        self
    }

    /// Sets the identifier.
    pub fn identifier(mut self, identifier: impl Into<String>) -> Self {
        self.identifier = identifier.into();
        self
    }
}

/// The 10-digit (or negative, after wrap) suffix of a kazoo contender name.
pub fn contender_sequence(name: &str) -> Option<&str> {
    let idx = name.rfind(LOCK_MARKER)?;
    let seq = &name[idx + LOCK_MARKER.len()..];
    let digits = seq.strip_prefix('-').unwrap_or(seq);
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(seq)
}

/// A held lock.
#[derive(Debug)]
pub struct LockGuard {
    zk: Zk,
    lock_path: String,
    node_path: String,
    generation: u64,
    ephemeral: bool,
    released: bool,
}

impl LockGuard {
    /// The lock directory.
    pub fn lock_path(&self) -> &str {
        &self.lock_path
    }

    /// Our contender znode.
    pub fn contender_path(&self) -> &str {
        &self.node_path
    }

    /// False once the session that created the (ephemeral) contender expired.
    pub fn is_valid(&self) -> bool {
        !self.ephemeral || (self.zk.status().generation == self.generation && self.zk.session_alive())
    }

    /// A handle bound to the session that holds this lock: every write made
    /// under the lock goes through it, so none can land once the lock is
    /// lost (it fails with `SessionExpired` instead).
    pub fn fenced(&self) -> Zk {
        self.zk.clone()
    }

    /// Resolves when the lock is lost to a session expiry (never for
    /// persistent locks).
    pub async fn lost(&self) {
        if !self.ephemeral {
            return std::future::pending().await;
        }
        let generation = self.generation;
        let mut rx = self.zk.subscribe();
        let _ = rx.wait_for(|s| s.generation != generation || s.closed).await;
    }

    /// Forgets the lock without a round trip: for when the contender is known
    /// to be gone already (e.g. deleted together with the locked node).
    pub fn disarm(mut self) {
        self.released = true;
    }

    /// Releases the lock: deletes our contender (a missing one is fine).
    /// If the connection drops while the session lives on, the contender is
    /// deleted in the background once the connection is back (an error is
    /// not returned then: the lock will be released; leaving it would block
    /// every other holder until the session ends).
    pub async fn release(mut self) -> Result<(), ZkError> {
        self.released = true;
        if !self.is_valid() {
            return Ok(());
        }
        match self.zk.delete(&self.node_path).await {
            Err(e) if e.is_connection_error() && self.is_valid() => {
                warn!(path = %self.node_path, error = %e, "lock release interrupted; retrying when reconnected");
                let zk = self.zk.clone();
                let path = std::mem::take(&mut self.node_path);
                let generation = self.generation;
                tokio::spawn(async move {
                    loop {
                        if zk.status().generation != generation || zk.status().closed {
                            return; // the session (and the ephemeral contender) is gone
                        }
                        if zk.wait_connected(Duration::from_secs(60)).await.is_ok() {
                            match zk.delete(&path).await {
                                Err(e) if e.is_connection_error() => {}
                                _ => return,
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
                Ok(())
            }
            other => other,
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released || !self.is_valid() {
            return;
        }
        let zk = self.zk.clone();
        let path = std::mem::take(&mut self.node_path);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = zk.delete(&path).await {
                    warn!(path, error = %e, "failed to release dropped lock");
                }
            });
        }
    }
}

impl Zk {
    /// Takes the kazoo lock at `lock_path`. `Ok(None)`: not acquired (busy
    /// for a non-blocking attempt, or the timeout passed for a blocking one).
    pub async fn lock(&self, lock_path: &str, options: &LockOptions) -> Result<Option<LockGuard>, ZkError> {
        let deadline = options.timeout.map(|t| Instant::now() + t);
        let prefix = format!("{}{LOCK_MARKER}", uuid::Uuid::new_v4().simple());
        let mode = if options.ephemeral {
            CreateMode::EphemeralSequential
        } else {
            CreateMode::PersistentSequential
        };
        let mut own: Option<(String, u64, zookeeper_client::Client)> = None; // (child name, generation, its session)
        let mut dir_known = false;
        loop {
            let (client, generation) = self.session_pair();
            let lock_child_prefix = format!("{lock_path}/{prefix}");
            // Create (first pass, or after our contender vanished) and list in one flight.
            let (created, listed) = if own.as_ref().is_none_or(|(_, g, _)| *g != generation) {
                // First flight: the lock directory (new requests and nodes have
                // none yet; an existing one answers NodeExists), our contender
                // and the listing, all in one round trip.
                let dir = (!dir_known).then(|| client.create(lock_path, &[], &open_acl()));
                let create =
                    client.create(&lock_child_prefix, options.identifier.as_bytes(), &mode_options(mode));
                let list = client.list_children(lock_path);
                let dir = async move {
                    match dir {
                        Some(d) => Some(d.await),
                        None => None,
                    }
                };
                let (d, c, l) = tokio::join!(dir, create, list);
                if matches!(d, Some(Ok(_)) | Some(Err(zookeeper_client::Error::NodeExists))) {
                    dir_known = true;
                }
                (Some(c), l)
            } else {
                (None, client.list_children(lock_path).await)
            };
            if let Some(created) = created {
                match created {
                    Ok((_, seq)) => own = Some((format!("{prefix}{seq}"), generation, client.clone())),
                    Err(zookeeper_client::Error::NoNode) => {
                        self.create_lock_dir(lock_path, options.make_parents).await?;
                        dir_known = true;
                        continue;
                    }
                    Err(e) if is_retryable(&e) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        // Protected create: after a connection loss our child may exist.
                        self.wait_connected(remaining(deadline).unwrap_or(Duration::from_secs(60))).await?;
                        let (client, generation) = self.session_pair();
                        own = self.find_own(lock_path, &prefix).await?.map(|n| (n, generation, client));
                        continue;
                    }
                    Err(e) => return Err(ZkError::op("create", &lock_child_prefix, e)),
                }
            }
            let children = match listed {
                Ok(children) => children,
                Err(e) if is_retryable(&e) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    self.wait_connected(remaining(deadline).unwrap_or(Duration::from_secs(60))).await?;
                    continue;
                }
                Err(e) => return Err(ZkError::op("list", lock_path, e)),
            };
            let Some((own_name, own_generation, own_client)) = own.clone() else { continue };
            let Some(own_seq) = contender_sequence(&own_name) else { continue };
            if !children.contains(&own_name) {
                // Our contender vanished (session expired): start over.
                debug!(lock_path, "lock contender vanished, recreating");
                own = None;
                continue;
            }
            let predecessor = children
                .iter()
                .filter_map(|c| contender_sequence(c).map(|s| (s, c)))
                .filter(|(s, _)| *s < own_seq)
                .max_by(|a, b| a.0.cmp(b.0))
                .map(|(_, c)| c.clone());
            let own_path = format!("{lock_path}/{own_name}");
            let Some(predecessor) = predecessor else {
                return Ok(Some(LockGuard {
                    zk: self.pinned_to(own_client, own_generation),
                    lock_path: lock_path.to_owned(),
                    node_path: own_path,
                    generation: own_generation,
                    ephemeral: options.ephemeral,
                    released: false,
                }));
            };
            if !options.blocking {
                self.delete(&own_path).await?;
                return Ok(None);
            }
            let pred_path = format!("{lock_path}/{predecessor}");
            let (stat, watcher) = match client.check_and_watch_stat(&pred_path).await {
                Ok(v) => v,
                Err(e) if is_retryable(&e) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(ZkError::op("watch", &pred_path, e)),
            };
            if stat.is_none() {
                continue;
            }
            let mut status = self.subscribe();
            let wait = async {
                tokio::select! {
                    _ = watcher.changed() => {}
                    _ = status.changed() => {}
                }
            };
            match remaining(deadline) {
                None if deadline.is_none() => wait.await,
                None => {
                    let _ = self.delete(&own_path).await;
                    return Ok(None);
                }
                Some(left) => {
                    if tokio::time::timeout(left, wait).await.is_err() {
                        let _ = self.delete(&own_path).await;
                        return Ok(None);
                    }
                }
            }
        }
    }

    async fn create_lock_dir(&self, lock_path: &str, make_parents: bool) -> Result<(), ZkError> {
        if make_parents {
            return self.ensure_path(lock_path).await;
        }
        match self.client().create(lock_path, &[], &open_acl()).await {
            Ok(_) | Err(zookeeper_client::Error::NodeExists) => Ok(()),
            Err(e) => Err(ZkError::op("create", lock_path, e)),
        }
    }

    async fn find_own(&self, lock_path: &str, prefix: &str) -> Result<Option<String>, ZkError> {
        // The server we reconnected to may lag the one that took the create.
        self.sync(lock_path).await?;
        Ok(self.children(lock_path).await?.unwrap_or_default().into_iter().find(|c| c.starts_with(prefix)))
    }

    /// The identifiers of the contenders of a lock, in lock order (kazoo's
    /// `Lock.contenders()`).
    pub async fn lock_contenders(&self, lock_path: &str) -> Result<Vec<String>, ZkError> {
        let mut children: Vec<(String, String)> = self
            .children(lock_path)
            .await?
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| contender_sequence(&c).map(|s| (s.to_owned(), c.clone())))
            .collect();
        children.sort();
        let mut out = Vec::with_capacity(children.len());
        for (_, child) in children {
            if let Some((data, _)) = self.get(&format!("{lock_path}/{child}")).await? {
                out.push(String::from_utf8_lossy(&data).into_owned());
            }
        }
        Ok(out)
    }

    /// Whether anyone holds or waits for the lock (any kazoo contender exists).
    pub async fn is_locked(&self, lock_path: &str) -> Result<bool, ZkError> {
        Ok(self
            .children(lock_path)
            .await?
            .unwrap_or_default()
            .iter()
            .any(|c| contender_sequence(c).is_some()))
    }
}

fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    let deadline = deadline?;
    let now = Instant::now();
    (deadline > now).then(|| deadline - now)
}

/// A connection loss (in any of the shapes zookeeper-client reports it,
/// including the socket's own I/O error when a server dies mid-request),
/// or a session that ended: the lock attempt starts over on the session
/// there is then, looking for its own contender first.
fn is_retryable(e: &zookeeper_client::Error) -> bool {
    crate::client::is_transient(e)
        || matches!(e, zookeeper_client::Error::SessionExpired | zookeeper_client::Error::ClientClosed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kazoo_contender_names() {
        assert_eq!(
            contender_sequence("3f9a1c0e5b7d4e2f8a6c9b1d0e3f5a7c__lock__0000000004"),
            Some("0000000004")
        );
        assert_eq!(contender_sequence("x__lock__-000000001"), None);
        assert_eq!(contender_sequence("x__lock__-0000000001"), Some("-0000000001"));
        assert_eq!(contender_sequence("0000000004"), None);
        assert_eq!(contender_sequence("abc__rlock__0000000004"), None);
        // String order, as kazoo compares: negative (wrapped) sequences first.
        assert!("-0000000001" < "0000000000");
    }
}
