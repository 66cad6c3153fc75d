//! Reading and writing Nodepool's records (spec zk-protocol §1, §7.3).
//!
//! Writes are unconditional `set`s, like Python Nodepool's: correctness rests
//! on the locks, not on znode versions. New nodes and requests are created
//! with their JSON in the same `create` call (never an empty node znode).

use np_core::{ImageBuild, ImageUpload, Node, NodeRequest, NodeState};
use zookeeper_client::{CreateMode, Stat};

use crate::client::Zk;
use crate::error::ZkError;
use crate::lock::{LockGuard, LockOptions};
use crate::paths;

fn last_component(path: &str) -> String {
    path.rsplit('/').next().unwrap_or_default().to_owned()
}

fn malformed(path: String, source: np_core::ModelError) -> ZkError {
    ZkError::Malformed { path, source }
}

impl Zk {
    // === nodes ===

    /// Creates a new node znode (persistent sequential) and sets `node.id`.
    /// `created_time` defaults to `state_time`, as upstream does.
    pub async fn create_node(&self, node: &mut Node) -> Result<Stat, ZkError> {
        if node.created_time.is_none() {
            node.created_time = Some(node.state_time);
        }
        let prefix = format!("{}/", paths::NODES);
        let (path, stat) =
            self.create(&prefix, &node.to_json(), CreateMode::PersistentSequential, true).await?;
        node.id = last_component(&path);
        Ok(stat)
    }

    /// Creates a node record like [`Zk::create_node`], but survives a
    /// connection loss that cuts off the reply (a ZooKeeper restart or a
    /// leader change while the create is in flight): the create may or may
    /// not have been made, so before creating again the records created
    /// after sequence `after` (the caller's node-cache watermark, see
    /// [`crate::TreeCache::wait_created`]) are read, and one whose data is
    /// byte for byte ours and still at version 0 is taken as ours. A
    /// sequential create retried blindly would leave an `init` record
    /// nobody owns. Other errors, and a session that is gone, are returned.
    pub async fn create_node_once(&self, node: &mut Node, after: u64) -> Result<Stat, ZkError> {
        if node.created_time.is_none() {
            node.created_time = Some(node.state_time);
        }
        let data = node.to_json();
        let prefix = format!("{}/", paths::NODES);
        let window = self.config().session_timeout + self.config().connect_timeout;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let err = match self.create(&prefix, &data, CreateMode::PersistentSequential, true).await {
                Ok((path, stat)) => {
                    node.id = last_component(&path);
                    return Ok(stat);
                }
                Err(e) if e.is_interrupted() && self.session_alive() && attempts < 5 => e,
                Err(e) => return Err(e),
            };
            tracing::warn!(error = %err, "node create interrupted; looking for it before creating again");
            self.wait_connected(window).await?;
            if let Some((id, stat)) = self.find_created(paths::NODES, &data, after).await? {
                tracing::info!(node = %id, "the interrupted node create had been made");
                node.id = id;
                return Ok(stat);
            }
        }
    }

    /// The record under `root` created after sequence `after` whose data is
    /// `data` and that nobody has changed since (version 0).
    async fn find_created(
        &self,
        root: &str,
        data: &[u8],
        after: u64,
    ) -> Result<Option<(String, Stat)>, ZkError> {
        // The server we reconnected to may lag the leader: catch up first.
        self.sync(root).await?;
        let mut fresh: Vec<(u64, String)> = self
            .children(root)
            .await?
            .unwrap_or_default()
            .into_iter()
            .filter_map(|id| crate::cache::record_sequence(&id).filter(|s| *s > after).map(|s| (s, id)))
            .collect();
        fresh.sort();
        for (_, id) in fresh {
            if let Some((bytes, stat)) = self.get(&format!("{root}/{id}")).await? {
                if bytes == data && stat.version == 0 {
                    return Ok(Some((id, stat)));
                }
            }
        }
        Ok(None)
    }

    /// Reads a node; `Ok(None)` if it does not exist.
    pub async fn get_node(&self, id: &str) -> Result<Option<(Node, Stat)>, ZkError> {
        let path = paths::node(id);
        match self.get(&path).await? {
            None => Ok(None),
            Some((data, stat)) => {
                Node::from_json(id, &data).map(|n| Some((n, stat))).map_err(|e| malformed(path, e))
            }
        }
    }

    /// Writes an existing node (unconditionally). Fails with `NoNode` if it was deleted.
    pub async fn update_node(&self, node: &Node) -> Result<Stat, ZkError> {
        self.set(&paths::node(&node.id), &node.to_json(), None).await
    }

    /// Deletes a node with its lock directory in one atomic transaction
    /// (list the lock contenders, then one multi-delete of contenders, lock
    /// directory and node). Upstream writes `state: deleted` first and then
    /// deletes recursively, so that a half-finished delete is recognisable;
    /// with a single transaction there is no half-finished state, so the
    /// extra write is skipped. If the transaction fails (a contender arrived
    /// meanwhile, or unexpected children), upstream's sequence is used.
    pub async fn delete_node(&self, node: &mut Node) -> Result<(), ZkError> {
        let path = paths::node(&node.id);
        let lock = paths::node_lock(&node.id);
        let contenders = self.children(&lock).await?;
        let client = self.client();
        let mut multi = client.new_multi_writer();
        let mut queued = Ok(());
        if let Some(contenders) = &contenders {
            for c in contenders {
                queued = queued.and(multi.add_delete(&format!("{lock}/{c}"), None));
            }
            queued = queued.and(multi.add_delete(&lock, None));
        }
        queued = queued.and(multi.add_delete(&path, None));
        if queued.is_ok() && multi.commit().await.is_ok() {
            return Ok(());
        }
        node.set_state(NodeState::Deleted);
        match self.update_node(node).await {
            Ok(_) => {}
            Err(e) if e.is_no_node() => return Ok(()),
            Err(e) => return Err(e),
        }
        self.delete_recursive(&path).await
    }

    /// Deletes a node this process holds locked, with the lock: usually one
    /// transaction (our contender, the lock directory, the node) and no
    /// listing, since nobody else contends for a node being deleted. If
    /// someone does, [`Zk::delete_node`]'s listing sequence follows. The
    /// lock is gone afterwards either way. Everything goes through the
    /// lock's session: once the lock is lost nothing is deleted.
    pub async fn delete_locked_node(&self, node: &mut Node, lock: crate::LockGuard) -> Result<(), ZkError> {
        let path = paths::node(&node.id);
        let fenced = lock.fenced();
        let client = fenced.client();
        let mut multi = client.new_multi_writer();
        let queued = multi
            .add_delete(lock.contender_path(), None)
            .and(multi.add_delete(lock.lock_path(), None))
            .and(multi.add_delete(&path, None));
        if queued.is_ok() {
            match multi.commit().await {
                Ok(_) => {
                    lock.disarm();
                    return Ok(());
                }
                // Open outcome: gone means it landed.
                Err(zookeeper_client::MultiWriteError::RequestFailed { source })
                    if crate::client::is_transient(&source) =>
                {
                    if let Ok(None) = fenced.exists(&path).await {
                        lock.disarm();
                        return Ok(());
                    }
                }
                Err(_) => {}
            }
        }
        if !lock.is_valid() {
            return Err(ZkError::op("delete", &path, zookeeper_client::Error::SessionExpired));
        }
        let result = fenced.delete_node(node).await;
        if result.is_ok() {
            lock.disarm();
        } else {
            let _ = lock.release().await;
        }
        result
    }

    /// [`Zk::update_node`] for a node this process holds locked, keeping
    /// `cache` current without the read its watch event would cause. With
    /// `version`, the write only succeeds over that znode version (a
    /// `BadVersion` error otherwise).
    pub async fn update_node_cached(
        &self,
        cache: &crate::NodeCache,
        node: &Node,
        version: Option<i32>,
    ) -> Result<Stat, ZkError> {
        self.set_cached(cache, &node.id, node, &node.to_json(), version).await
    }

    /// [`Zk::update_request`] for a request this process holds locked,
    /// keeping `cache` current without the read its watch event would cause.
    pub async fn update_request_cached(
        &self,
        cache: &crate::RequestCache,
        request: &NodeRequest,
        version: Option<i32>,
    ) -> Result<Stat, ZkError> {
        self.set_cached(cache, &request.id, request, &request.to_json(), version).await
    }

    /// Writes record `id` (serialized as `data`) under `T::ROOT`, announced
    /// to `cache` beforehand and noted in it afterwards.
    async fn set_cached<T: crate::Cached>(
        &self,
        cache: &crate::TreeCache<T>,
        id: &str,
        value: &T,
        data: &[u8],
        version: Option<i32>,
    ) -> Result<Stat, ZkError> {
        cache.expect_write(id);
        match self.set(&format!("{}/{id}", T::ROOT), data, version).await {
            Ok(stat) => {
                cache.note_write(id, value.clone(), &stat);
                Ok(stat)
            }
            Err(e) => {
                cache.cancel_write(id);
                Err(e)
            }
        }
    }

    /// Fulfils a request the way upstream does (unlock every node, write the
    /// request, release the request lock), in that order but as one
    /// transaction: Zuul sees `fulfilled` only with every node already
    /// unlocked, and it costs one round trip instead of one per step. On
    /// failure (e.g. the request was deleted, or a lock was lost) nothing
    /// changed and the locks are handed back so the caller can step.
    ///
    /// The transaction goes through the request lock's session, so it cannot
    /// land once that lock is lost. A connection loss while it is under way
    /// leaves its outcome open: once reconnected (same session), our request
    /// lock contender tells, as only this transaction deletes it: gone means
    /// it landed, still there means it did not, and it is sent again.
    #[allow(clippy::type_complexity)]
    pub async fn fulfil_request(
        &self,
        cache: &crate::RequestCache,
        request: &NodeRequest,
        node_locks: Vec<LockGuard>,
        request_lock: LockGuard,
    ) -> Result<(), (ZkError, Vec<LockGuard>, LockGuard)> {
        let path = paths::request(&request.id);
        if !request_lock.is_valid() || node_locks.iter().any(|l| !l.is_valid()) {
            let e = ZkError::op("multi", &path, zookeeper_client::Error::SessionExpired);
            return Err((e, node_locks, request_lock));
        }
        let fenced = request_lock.fenced();
        let client = fenced.client();
        let data = request.to_json();
        let mut attempts = 0;
        let committed = loop {
            attempts += 1;
            let mut multi = client.new_multi_writer();
            let mut queued = Ok(());
            for lock in &node_locks {
                queued = queued.and(multi.add_delete(lock.contender_path(), None));
            }
            queued = queued.and(multi.add_set_data(&path, &data, None));
            queued = queued.and(multi.add_delete(request_lock.contender_path(), None));
            if let Err(e) = queued {
                return Err((ZkError::op("multi", &path, e), node_locks, request_lock));
            }
            cache.expect_write(&request.id);
            match multi.commit().await {
                Err(zookeeper_client::MultiWriteError::RequestFailed { source })
                    if crate::client::is_transient(&source) && attempts < 10 =>
                {
                    // Open outcome: ask our lock contender once reconnected.
                    cache.cancel_write(&request.id);
                    let timeout = self.config().session_timeout + self.config().connect_timeout;
                    let landed = match self.wait_connected(timeout).await {
                        Ok(_) if request_lock.is_valid() => {
                            match fenced.exists(request_lock.contender_path()).await {
                                Ok(None) => Some(true),
                                Ok(Some(_)) => Some(false),
                                Err(_) => None,
                            }
                        }
                        _ => None,
                    };
                    match landed {
                        Some(true) => break Ok(None),
                        Some(false) => continue,
                        None => {
                            let e = ZkError::op("multi", &path, source);
                            return Err((e, node_locks, request_lock));
                        }
                    }
                }
                other => break other.map(Some),
            }
        };
        match committed {
            Ok(None) => {
                // It landed while we were cut off: the cache reads the
                // request again (cancel_write above asked for that).
                for lock in node_locks {
                    lock.disarm();
                }
                request_lock.disarm();
                Ok(())
            }
            Ok(Some(results)) => {
                for r in results {
                    if let zookeeper_client::MultiWriteResult::SetData { stat } = r {
                        cache.note_write(&request.id, request.clone(), &stat);
                    }
                }
                for lock in node_locks {
                    lock.disarm();
                }
                request_lock.disarm();
                Ok(())
            }
            Err(e) => {
                cache.cancel_write(&request.id);
                let source = match e {
                    zookeeper_client::MultiWriteError::OperationFailed { source, .. } => source,
                    zookeeper_client::MultiWriteError::RequestFailed { source } => source,
                };
                Err((ZkError::op("multi", &path, source), node_locks, request_lock))
            }
        }
    }

    /// The ids of all nodes.
    pub async fn node_ids(&self) -> Result<Vec<String>, ZkError> {
        Ok(self.children(paths::NODES).await?.unwrap_or_default())
    }

    /// Locks a node. Never resurrects a deleted node: if the node znode is
    /// gone this fails with `NoNode`.
    pub async fn lock_node(&self, id: &str, options: LockOptions) -> Result<Option<LockGuard>, ZkError> {
        self.lock(&paths::node_lock(id), &options.no_parents()).await
    }

    // === requests ===

    /// Creates a request under `/nodepool/requests/<priority>-` and sets `request.id`.
    /// Nodepool's own requests are ephemeral; Zuul's are persistent.
    /// Like upstream, a missing `event_id` gets a fresh uuid.
    pub async fn create_request(
        &self,
        request: &mut NodeRequest,
        priority: u32,
        ephemeral: bool,
    ) -> Result<Stat, ZkError> {
        if request.event_id.is_none() {
            request.event_id = Some(uuid::Uuid::new_v4().simple().to_string());
        }
        let prefix = format!("{}/{priority:0>3}-", paths::REQUESTS);
        let mode = if ephemeral { CreateMode::EphemeralSequential } else { CreateMode::PersistentSequential };
        let (path, stat) = self.create(&prefix, &request.to_json(), mode, true).await?;
        request.id = last_component(&path);
        Ok(stat)
    }

    /// Reads a request; `Ok(None)` if it does not exist.
    pub async fn get_request(&self, id: &str) -> Result<Option<(NodeRequest, Stat)>, ZkError> {
        let path = paths::request(id);
        match self.get(&path).await? {
            None => Ok(None),
            Some((data, stat)) => {
                NodeRequest::from_json(id, &data).map(|r| Some((r, stat))).map_err(|e| malformed(path, e))
            }
        }
    }

    /// Writes an existing request (unconditionally). `NoNode` if Zuul deleted it.
    pub async fn update_request(&self, request: &NodeRequest) -> Result<Stat, ZkError> {
        self.set(&paths::request(&request.id), &request.to_json(), None).await
    }

    /// Deletes a request. Only for requests this process created (never Zuul's).
    pub async fn delete_request(&self, id: &str) -> Result<(), ZkError> {
        self.delete(&paths::request(id)).await
    }

    /// The ids of all requests.
    pub async fn request_ids(&self) -> Result<Vec<String>, ZkError> {
        Ok(self.children(paths::REQUESTS).await?.unwrap_or_default())
    }

    /// Locks a request (`/nodepool/requests-lock/<id>`).
    pub async fn lock_request(&self, id: &str, options: LockOptions) -> Result<Option<LockGuard>, ZkError> {
        self.lock(&paths::request_lock(id), &options).await
    }

    // === images ===

    /// Image names.
    pub async fn image_names(&self) -> Result<Vec<String>, ZkError> {
        Ok(self.children(paths::IMAGES).await?.unwrap_or_default())
    }

    /// Build ids of an image (the `lock` child excluded).
    pub async fn build_ids(&self, image: &str) -> Result<Vec<String>, ZkError> {
        let mut ids = self.children(&paths::builds(image)).await?.unwrap_or_default();
        ids.retain(|id| np_core::is_build_id(id));
        Ok(ids)
    }

    /// Reads a build.
    pub async fn get_build(&self, image: &str, build: &str) -> Result<Option<(ImageBuild, Stat)>, ZkError> {
        let path = paths::build(image, build);
        match self.get(&path).await? {
            None => Ok(None),
            Some((data, stat)) => {
                ImageBuild::from_json(&data).map(|b| Some((b, stat))).map_err(|e| malformed(path, e))
            }
        }
    }

    /// Stores a build; with `build_id: None` a new uuid-hex id is made and the
    /// znode created. Returns the build id.
    pub async fn store_build(
        &self,
        image: &str,
        build_id: Option<&str>,
        build: &ImageBuild,
    ) -> Result<String, ZkError> {
        match build_id {
            Some(id) => {
                self.set(&paths::build(image, id), &build.to_json(), None).await?;
                Ok(id.to_owned())
            }
            None => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                self.create(&paths::build(image, &id), &build.to_json(), CreateMode::Persistent, true)
                    .await?;
                Ok(id)
            }
        }
    }

    /// Providers that have uploads of a build.
    pub async fn build_providers(&self, image: &str, build: &str) -> Result<Vec<String>, ZkError> {
        Ok(self.children(&format!("{}/providers", paths::build(image, build))).await?.unwrap_or_default())
    }

    /// Upload ids of a build in a provider.
    pub async fn upload_ids(&self, image: &str, build: &str, provider: &str) -> Result<Vec<String>, ZkError> {
        let mut ids = self.children(&paths::uploads(image, build, provider)).await?.unwrap_or_default();
        ids.retain(|id| np_core::is_node_id(id));
        Ok(ids)
    }

    /// Reads an upload.
    pub async fn get_upload(
        &self,
        image: &str,
        build: &str,
        provider: &str,
        upload: &str,
    ) -> Result<Option<(ImageUpload, Stat)>, ZkError> {
        let path = paths::upload(image, build, provider, upload);
        match self.get(&path).await? {
            None => Ok(None),
            Some((data, stat)) => {
                ImageUpload::from_json(&data).map(|u| Some((u, stat))).map_err(|e| malformed(path, e))
            }
        }
    }

    /// The newest `ready` upload of `image` in `provider` (by `state_time`,
    /// as upstream's `getMostRecentImageUpload`), with its znode path, which
    /// nodes record as their `image_id`. Unreadable uploads are skipped.
    pub async fn most_recent_upload(
        &self,
        image: &str,
        provider: &str,
    ) -> Result<Option<(String, ImageUpload)>, ZkError> {
        let mut best: Option<(String, ImageUpload)> = None;
        for build in self.build_ids(image).await? {
            for id in self.upload_ids(image, &build, provider).await? {
                let upload = match self.get_upload(image, &build, provider, &id).await {
                    Ok(Some((u, _))) => u,
                    Ok(None) => continue,
                    Err(e) if e.is_malformed() => continue,
                    Err(e) => return Err(e),
                };
                if upload.state != np_core::UploadState::Ready {
                    continue;
                }
                if best.as_ref().is_none_or(|(_, b)| b.state_time < upload.state_time) {
                    best = Some((paths::upload(image, &build, provider, &id), upload));
                }
            }
        }
        Ok(best)
    }

    /// Every upload of every image in `provider`, as `<build id>-<upload id>`
    /// (upstream's unique upload key for leak cleanup).
    pub async fn provider_upload_keys(
        &self,
        provider: &str,
    ) -> Result<std::collections::HashSet<String>, ZkError> {
        let mut keys = std::collections::HashSet::new();
        for image in self.image_names().await? {
            for build in self.build_ids(&image).await? {
                for upload in self.upload_ids(&image, &build, provider).await? {
                    keys.insert(format!("{build}-{upload}"));
                }
            }
        }
        Ok(keys)
    }

    /// Stores an upload; `upload_id: None` creates a new sequential znode.
    pub async fn store_upload(
        &self,
        image: &str,
        build: &str,
        provider: &str,
        upload_id: Option<&str>,
        upload: &ImageUpload,
    ) -> Result<String, ZkError> {
        match upload_id {
            Some(id) => {
                self.set(&paths::upload(image, build, provider, id), &upload.to_json(), None).await?;
                Ok(id.to_owned())
            }
            None => {
                let prefix = format!("{}/", paths::uploads(image, build, provider));
                let (path, _) =
                    self.create(&prefix, &upload.to_json(), CreateMode::PersistentSequential, true).await?;
                Ok(last_component(&path))
            }
        }
    }

    /// Deletes an upload record with its lock directory.
    pub async fn delete_upload(
        &self,
        image: &str,
        build: &str,
        provider: &str,
        upload: &str,
    ) -> Result<(), ZkError> {
        self.delete_recursive(&paths::upload(image, build, provider, upload)).await
    }

    /// Deletes a build record and everything below it.
    pub async fn delete_build(&self, image: &str, build: &str) -> Result<(), ZkError> {
        self.delete_recursive(&paths::build(image, build)).await
    }

    /// Whether `image-pause` is set for an image.
    pub async fn is_image_paused(&self, image: &str) -> Result<bool, ZkError> {
        Ok(self.exists(&paths::image_pause(image)).await?.is_some())
    }

    /// Sets or clears the pause flag.
    pub async fn set_image_paused(&self, image: &str, paused: bool) -> Result<(), ZkError> {
        let path = paths::image_pause(image);
        if paused {
            match self.create(&path, &[], CreateMode::Persistent, true).await {
                Ok(_) => Ok(()),
                Err(ZkError::Op { source: zookeeper_client::Error::NodeExists, .. }) => Ok(()),
                Err(e) => Err(e),
            }
        } else {
            self.delete(&path).await
        }
    }

    /// Asks the builders for a build of `image` (`request-build`).
    pub async fn request_image_build(&self, image: &str) -> Result<(), ZkError> {
        self.ensure_path(&paths::image_build_request(image)).await
    }
}
