//! Component registration (spec zk-protocol §2.6).
//!
//! A registration is an ephemeral sequential znode
//! `/nodepool/components/<kind>/<hostname><seq>` holding a sorted-keys JSON
//! record. Like Python's `ComponentRegistry`, updates rewrite the whole record
//! with the last known version, and a new session re-registers under a new
//! sequence number. Pool components are readable through [`PoolComponentCache`].

use std::sync::Arc;

use np_core::{ComponentKind, ComponentRecord, ModelError};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zookeeper_client::CreateMode;

use crate::cache::{Cached, TreeCache};
use crate::client::Zk;
use crate::error::ZkError;
use crate::paths;

/// The cache of pool components (`/nodepool/components/pool`).
pub type PoolComponentCache = TreeCache<ComponentRecord>;

impl Cached for ComponentRecord {
    const ROOT: &'static str = "/nodepool/components/pool";
    const TRACK_LOCKS: bool = false;
    fn parse(_id: &str, data: &[u8]) -> Result<Self, ModelError> {
        ComponentRecord::from_json(data)
    }
    type Index = ();
    fn index(_: &mut (), _: &str, _: &crate::cache::Entry<Self>, _: i64) {}
}

struct State {
    record: ComponentRecord,
    /// (path, version, generation) of the live znode.
    znode: Option<(String, i32, u64)>,
}

/// A live registration; re-created automatically after a session expiry.
#[derive(Clone)]
pub struct ComponentRegistration {
    zk: Zk,
    state: Arc<Mutex<State>>,
    cancel: CancellationToken,
}

async fn create(zk: &Zk, record: &ComponentRecord) -> Result<(String, i32, u64), ZkError> {
    let generation = zk.status().generation;
    let prefix = format!("{}/{}", paths::components(record.kind.as_str()), record.hostname);
    let (path, stat) = zk.create(&prefix, &record.to_json(), CreateMode::EphemeralSequential, true).await?;
    Ok((path, stat.version, generation))
}

impl ComponentRegistration {
    /// Registers `record`.
    pub async fn register(zk: &Zk, record: ComponentRecord) -> Result<Self, ZkError> {
        let znode = create(zk, &record).await?;
        info!(path = %znode.0, kind = record.kind.as_str(), "registered component");
        let reg = ComponentRegistration {
            zk: zk.clone(),
            state: Arc::new(Mutex::new(State { record, znode: Some(znode) })),
            cancel: CancellationToken::new(),
        };
        tokio::spawn(reg.clone().follow_sessions());
        Ok(reg)
    }

    async fn follow_sessions(self) {
        let mut status = self.zk.subscribe();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                changed = status.changed() => if changed.is_err() { return; },
            }
            let s = *status.borrow_and_update();
            if s.closed {
                return;
            }
            if !s.connected {
                continue;
            }
            let mut state = self.state.lock().await;
            if state.znode.as_ref().is_some_and(|(_, _, g)| *g == s.generation) {
                continue;
            }
            match create(&self.zk, &state.record).await {
                Ok(znode) => {
                    info!(path = %znode.0, "re-registered component after session loss");
                    state.znode = Some(znode);
                }
                Err(e) => {
                    warn!(error = %e, "component re-registration failed; will retry on next session change")
                }
            }
        }
    }

    /// The znode path of the current registration.
    pub async fn path(&self) -> Option<String> {
        self.state.lock().await.znode.as_ref().map(|(p, _, _)| p.clone())
    }

    /// The current record.
    pub async fn record(&self) -> ComponentRecord {
        self.state.lock().await.record.clone()
    }

    /// Changes the record and writes it with the last known version. Skips the
    /// write when nothing changed.
    pub async fn update(&self, change: impl FnOnce(&mut ComponentRecord)) -> Result<(), ZkError> {
        let mut state = self.state.lock().await;
        let before = state.record.clone();
        change(&mut state.record);
        if state.record == before {
            return Ok(());
        }
        let data = state.record.to_json();
        let Some((path, version, generation)) = state.znode.clone() else { return Ok(()) };
        match self.zk.set(&path, &data, Some(version)).await {
            Ok(stat) => {
                state.znode = Some((path, stat.version, generation));
                Ok(())
            }
            Err(e) if e.is_no_node() => {
                state.znode = Some(create(&self.zk, &state.record).await?);
                Ok(())
            }
            Err(ZkError::Op { source: zookeeper_client::Error::BadVersion, .. }) => {
                // Someone else wrote it; write ours unconditionally.
                let stat = self.zk.set(&path, &data, None).await?;
                state.znode = Some((path, stat.version, generation));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes the registration and stops following sessions.
    pub async fn unregister(&self) -> Result<(), ZkError> {
        self.cancel.cancel();
        let mut state = self.state.lock().await;
        if let Some((path, _, _)) = state.znode.take() {
            self.zk.delete(&path).await?;
        }
        Ok(())
    }
}

impl Zk {
    /// All components of `kind` with their znode names; malformed records are
    /// logged and skipped.
    pub async fn components(&self, kind: ComponentKind) -> Result<Vec<(String, ComponentRecord)>, ZkError> {
        let root = paths::components(kind.as_str());
        let names = self.children(&root).await?.unwrap_or_default();
        let client = self.client();
        let reads: Vec<_> = names.iter().map(|n| client.get_data(&format!("{root}/{n}"))).collect();
        let mut out = Vec::new();
        for (name, read) in names.into_iter().zip(futures::future::join_all(reads).await) {
            match read {
                Ok((data, _)) => match ComponentRecord::from_json(&data) {
                    Ok(rec) => out.push((name, rec)),
                    Err(e) => warn!(name, error = %e, "skipping malformed component"),
                },
                Err(zookeeper_client::Error::NoNode) => {}
                Err(e) => return Err(ZkError::op("get", &format!("{root}/{name}"), e)),
            }
        }
        Ok(out)
    }
}
