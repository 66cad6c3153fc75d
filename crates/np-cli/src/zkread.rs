//! Bulk, pipelined reads of the ZooKeeper tree for the listing commands.
//!
//! The Python CLI reads one znode per round trip (and, for `list`, creates a
//! lock directory per node); over thousands of nodes that takes seconds. Here
//! every level of the tree is read in one flight: all requests of a level are
//! sent before any reply is awaited (the client pipelines them on the one
//! connection, and ZooKeeper answers a session's requests in order), so
//! `list` costs two round trips however many nodes there are.
//!
//! The *order* of rows is upstream's: children in ZooKeeper's order where
//! Python does not sort (nodes, builds, uploads), sorted where it does (image
//! names, build providers, request ids). Records that do not parse are skipped
//! with a warning on stderr, as Python skips undecodable JSON.

use futures::future::join_all;
use np_core::{ImageBuild, ImageUpload, Node, NodeRequest};
use np_zk::lock::contender_sequence;
use np_zk::{paths, Stat, Zk, ZkError};
use zookeeper_client::{Error as ZkClientError, MultiReadResult};

/// Sends one `get_data` per path before awaiting any reply. A missing znode is `None`.
pub async fn get_many(zk: &Zk, paths: &[String]) -> Result<Vec<Option<(Vec<u8>, Stat)>>, ZkError> {
    let client = zk.client();
    let pending: Vec<_> = paths.iter().map(|p| client.get_data(p)).collect();
    let mut out = Vec::with_capacity(paths.len());
    for (result, path) in join_all(pending).await.into_iter().zip(paths) {
        match result {
            Ok(v) => out.push(Some(v)),
            Err(ZkClientError::NoNode) => out.push(None),
            Err(e) => return Err(op_error("get", path, e)),
        }
    }
    Ok(out)
}

/// Sends one `get_children` per path before awaiting any reply. A missing znode is `None`.
pub async fn children_many(zk: &Zk, paths: &[String]) -> Result<Vec<Option<Vec<String>>>, ZkError> {
    let client = zk.client();
    let pending: Vec<_> = paths.iter().map(|p| client.list_children(p)).collect();
    let mut out = Vec::with_capacity(paths.len());
    for (result, path) in join_all(pending).await.into_iter().zip(paths) {
        match result {
            Ok(v) => out.push(Some(v)),
            Err(ZkClientError::NoNode) => out.push(None),
            Err(e) => return Err(op_error("list", path, e)),
        }
    }
    Ok(out)
}

/// Sends one `exists` per path before awaiting any reply.
pub async fn stat_many(zk: &Zk, paths: &[String]) -> Result<Vec<Option<Stat>>, ZkError> {
    let client = zk.client();
    let pending: Vec<_> = paths.iter().map(|p| client.check_stat(p)).collect();
    let mut out = Vec::with_capacity(paths.len());
    for (result, path) in join_all(pending).await.into_iter().zip(paths) {
        out.push(result.map_err(|e| op_error("exists", path, e))?);
    }
    Ok(out)
}

fn op_error(op: &'static str, path: &str, source: ZkClientError) -> ZkError {
    ZkError::Op { op, path: path.to_owned(), source }
}

fn warn_malformed(path: &str, error: &dyn std::fmt::Display) {
    eprintln!("WARNING: skipping {path}: {error}");
}

/// A node with whether its lock has contenders.
#[derive(Debug, Clone)]
pub struct NodeRow {
    /// The record.
    pub node: Node,
    /// True when `/nodepool/nodes/<id>/lock` has at least one kazoo contender.
    pub locked: bool,
}

/// Every node, in ZooKeeper's child order, with its lock status.
pub async fn nodes(zk: &Zk) -> Result<Vec<NodeRow>, ZkError> {
    let ids = zk.node_ids().await?;
    nodes_by_id(zk, &ids).await
}

/// Nodes per multi-read request: each costs two operations (the record and
/// its lock's contenders); about 100 KiB per reply at upstream's record size.
const NODES_PER_MULTI_READ: usize = 100;

/// The records and lock contenders of `ids`, read with ZooKeeper's
/// multi-read (3.6 and later): one request per [`NODES_PER_MULTI_READ`]
/// nodes instead of two per node, all sent before any is awaited. The
/// server handles a batch as one request, which at 10,000 nodes takes it a
/// fraction of the time of 20,000 single reads. `None` when the server does
/// not know the operation (before 3.6): the caller reads one by one.
async fn nodes_multi_read(zk: &Zk, ids: &[String]) -> Result<Option<NodeReads>, ZkError> {
    let client = zk.client();
    let mut pending = Vec::new();
    for chunk in ids.chunks(NODES_PER_MULTI_READ) {
        let mut reader = client.new_multi_reader();
        for id in chunk {
            let node = paths::node(id);
            reader.add_get_data(&node).map_err(|e| op_error("multi-read", &node, e))?;
            let lock = paths::node_lock(id);
            reader.add_get_children(&lock).map_err(|e| op_error("multi-read", &lock, e))?;
        }
        pending.push(reader.commit());
    }
    let mut data = Vec::with_capacity(ids.len());
    let mut locks = Vec::with_capacity(ids.len());
    for (result, chunk) in join_all(pending).await.into_iter().zip(ids.chunks(NODES_PER_MULTI_READ)) {
        let results = match result {
            Ok(r) => r,
            Err(ZkClientError::Unimplemented) => return Ok(None),
            Err(e) => return Err(op_error("multi-read", &paths::node(&chunk[0]), e)),
        };
        // An answer of another shape than asked: read one by one instead.
        if results.len() != chunk.len() * 2 {
            return Ok(None);
        }
        let mut it = results.into_iter();
        for id in chunk {
            match it.next() {
                Some(MultiReadResult::Data { data: d, stat }) => data.push(Some((d, stat))),
                Some(MultiReadResult::Error { err: ZkClientError::NoNode }) => data.push(None),
                Some(MultiReadResult::Error { err }) => return Err(op_error("get", &paths::node(id), err)),
                _ => return Ok(None),
            }
            match it.next() {
                Some(MultiReadResult::Children { children }) => locks.push(Some(children)),
                Some(MultiReadResult::Error { err: ZkClientError::NoNode }) => locks.push(None),
                Some(MultiReadResult::Error { err }) => {
                    return Err(op_error("list", &paths::node_lock(id), err))
                }
                _ => return Ok(None),
            }
        }
    }
    Ok(Some((data, locks)))
}

/// Records (missing ones `None`) and lock contenders, in `ids`' order.
type NodeReads = (Vec<Option<(Vec<u8>, Stat)>>, Vec<Option<Vec<String>>>);

/// The given nodes (missing ones are left out), with their lock status.
pub async fn nodes_by_id(zk: &Zk, ids: &[String]) -> Result<Vec<NodeRow>, ZkError> {
    let (data, locks) = match nodes_multi_read(zk, ids).await? {
        Some(reads) => reads,
        None => {
            let data_paths: Vec<String> = ids.iter().map(|id| paths::node(id)).collect();
            let lock_paths: Vec<String> = ids.iter().map(|id| paths::node_lock(id)).collect();
            // Both flights go out before either is awaited.
            let (data, locks) = futures::join!(get_many(zk, &data_paths), children_many(zk, &lock_paths));
            (data?, locks?)
        }
    };
    let mut out = Vec::with_capacity(ids.len());
    for ((id, data), lock) in ids.iter().zip(data).zip(locks) {
        let Some((bytes, _)) = data else { continue };
        match Node::from_json(id, &bytes) {
            Ok(node) => {
                let locked = lock.unwrap_or_default().iter().any(|c| contender_sequence(c).is_some());
                out.push(NodeRow { node, locked });
            }
            Err(e) => warn_malformed(&paths::node(id), &e),
        }
    }
    Ok(out)
}

/// Every request, sorted by id (priority first), as Python's `getNodeRequests`.
pub async fn requests(zk: &Zk) -> Result<Vec<NodeRequest>, ZkError> {
    let mut ids = zk.request_ids().await?;
    ids.sort();
    let data_paths: Vec<String> = ids.iter().map(|id| paths::request(id)).collect();
    let data = get_many(zk, &data_paths).await?;
    let mut out = Vec::with_capacity(ids.len());
    for (id, data) in ids.iter().zip(data) {
        let Some((bytes, _)) = data else { continue };
        match NodeRequest::from_json(id, &bytes) {
            Ok(r) => out.push(r),
            Err(e) => warn_malformed(&paths::request(id), &e),
        }
    }
    Ok(out)
}

/// One upload znode.
#[derive(Debug, Clone)]
pub struct UploadEntry {
    /// Upload number (znode name).
    pub id: String,
    /// The raw JSON text (for export).
    pub raw: Vec<u8>,
    /// The parsed record; `None` if it did not parse.
    pub record: Option<ImageUpload>,
}

/// The uploads of one build in one provider.
#[derive(Debug, Clone)]
pub struct ProviderEntry {
    /// Provider name.
    pub name: String,
    /// Upload znodes in ZooKeeper's child order (`lock` excluded).
    pub uploads: Vec<UploadEntry>,
}

/// One build znode.
#[derive(Debug, Clone)]
pub struct BuildEntry {
    /// Build id (znode name).
    pub id: String,
    /// Raw JSON and stat; `None` when the znode vanished while reading.
    pub raw: Option<(Vec<u8>, Stat)>,
    /// The parsed record, if it parsed.
    pub record: Option<ImageBuild>,
    /// Providers with uploads, sorted by name.
    pub providers: Vec<ProviderEntry>,
}

/// A manual build request (`request-build`).
#[derive(Debug, Clone, Copy)]
pub struct BuildRequest {
    /// Creation time of the request znode, epoch seconds.
    pub created: f64,
    /// True while no build has been created since the build lock appeared.
    pub pending: bool,
}

/// One image with everything below it.
#[derive(Debug, Clone)]
pub struct ImageEntry {
    /// Image name.
    pub name: String,
    /// `pause` znode present.
    pub paused: bool,
    /// The manual build request, if any.
    pub request: Option<BuildRequest>,
    /// Builds in ZooKeeper's child order (`lock` excluded).
    pub builds: Vec<BuildEntry>,
}

/// How deep to read the image tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Depth {
    /// Names, pause flags and build requests.
    Images,
    /// Plus build records.
    Builds,
    /// Plus providers and upload records.
    Uploads,
}

/// Reads `/nodepool/images`, level by level, one flight per level.
pub async fn images(zk: &Zk, depth: Depth) -> Result<Vec<ImageEntry>, ZkError> {
    let mut names = zk.image_names().await?;
    names.sort();
    let pause_paths: Vec<String> = names.iter().map(|n| paths::image_pause(n)).collect();
    let request_paths: Vec<String> = names.iter().map(|n| paths::image_build_request(n)).collect();
    let lock_paths: Vec<String> = names.iter().map(|n| paths::image_build_lock(n)).collect();
    let build_dirs: Vec<String> = names.iter().map(|n| paths::builds(n)).collect();
    let (pauses, requests, locks, builds) = futures::join!(
        stat_many(zk, &pause_paths),
        stat_many(zk, &request_paths),
        stat_many(zk, &lock_paths),
        children_many(zk, &build_dirs)
    );
    let (pauses, requests, locks, builds) = (pauses?, requests?, locks?, builds?);

    let mut images: Vec<ImageEntry> = Vec::with_capacity(names.len());
    let mut first_builds = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let build_ids: Vec<String> =
            builds[i].clone().unwrap_or_default().into_iter().filter(|b| b != "lock").collect();
        if let Some(first) = build_ids.first() {
            first_builds.push((i, paths::build(name, first)));
        }
        images.push(ImageEntry {
            name: name.clone(),
            paused: pauses[i].is_some(),
            request: None,
            builds: build_ids
                .into_iter()
                .map(|id| BuildEntry { id, raw: None, record: None, providers: Vec::new() })
                .collect(),
        });
    }

    // Build requests: pending unless the build lock has contenders and a build
    // (the first child, as upstream picks it) was created after the lock.
    let first_paths: Vec<String> = first_builds.iter().map(|(_, p)| p.clone()).collect();
    let first_stats = stat_many(zk, &first_paths).await?;
    let mut first_stat_of = vec![None; names.len()];
    for ((i, _), stat) in first_builds.iter().zip(first_stats) {
        first_stat_of[*i] = stat;
    }
    for (i, image) in images.iter_mut().enumerate() {
        let Some(req) = &requests[i] else { continue };
        let mut pending = true;
        if let Some(lock) = locks[i].as_ref().filter(|l| l.num_children > 0) {
            pending = match &first_stat_of[i] {
                None => true,
                Some(build) => build.ctime < lock.ctime,
            };
        }
        image.request = Some(BuildRequest { created: req.ctime as f64 / 1000.0, pending });
    }
    if depth == Depth::Images {
        return Ok(images);
    }

    // Build records and their provider lists.
    let mut build_paths = Vec::new();
    for image in &images {
        for b in &image.builds {
            build_paths.push(paths::build(&image.name, &b.id));
        }
    }
    let provider_paths: Vec<String> = build_paths.iter().map(|p| format!("{p}/providers")).collect();
    let (datas, providers) = if depth >= Depth::Uploads {
        let (d, p) = futures::join!(get_many(zk, &build_paths), children_many(zk, &provider_paths));
        (d?, p?)
    } else {
        (get_many(zk, &build_paths).await?, vec![None; build_paths.len()])
    };
    let mut datas = datas.into_iter();
    let mut providers = providers.into_iter();
    for image in &mut images {
        for b in &mut image.builds {
            let path = paths::build(&image.name, &b.id);
            b.raw = datas.next().flatten();
            if let Some((bytes, _)) = &b.raw {
                match ImageBuild::from_json(bytes) {
                    Ok(r) => b.record = Some(r),
                    Err(e) => warn_malformed(&path, &e),
                }
            }
            let mut names = providers.next().flatten().unwrap_or_default();
            names.sort();
            b.providers = names.into_iter().map(|name| ProviderEntry { name, uploads: Vec::new() }).collect();
        }
    }
    if depth == Depth::Builds {
        return Ok(images);
    }

    // Upload numbers, then upload records.
    let mut upload_dirs = Vec::new();
    for image in &images {
        for b in &image.builds {
            for p in &b.providers {
                upload_dirs.push(paths::uploads(&image.name, &b.id, &p.name));
            }
        }
    }
    let mut upload_lists = children_many(zk, &upload_dirs).await?.into_iter();
    let mut upload_paths = Vec::new();
    for image in &mut images {
        for b in &mut image.builds {
            for p in &mut b.providers {
                let ids = upload_lists.next().flatten().unwrap_or_default();
                for id in ids.into_iter().filter(|u| u != "lock") {
                    upload_paths.push(paths::upload(&image.name, &b.id, &p.name, &id));
                    p.uploads.push(UploadEntry { id, raw: Vec::new(), record: None });
                }
            }
        }
    }
    let mut upload_data = get_many(zk, &upload_paths).await?.into_iter();
    let mut upload_path_iter = upload_paths.iter();
    for image in &mut images {
        for b in &mut image.builds {
            for p in &mut b.providers {
                p.uploads.retain_mut(|u| {
                    let path = upload_path_iter.next().cloned().unwrap_or_default();
                    match upload_data.next().flatten() {
                        None => false,
                        Some((bytes, _)) => {
                            match ImageUpload::from_json(&bytes) {
                                Ok(r) => u.record = Some(r),
                                Err(e) => warn_malformed(&path, &e),
                            }
                            u.raw = bytes;
                            true
                        }
                    }
                });
            }
        }
    }
    Ok(images)
}
