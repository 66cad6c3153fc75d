//! The subcommands that talk to ZooKeeper. Each reads and writes the same
//! znodes, with the same locks, as Python Nodepool 11's `nodepoolcmd.py`, so it
//! is safe beside running Python and Rust launchers and builders.
//!
//! Every command returns the process exit code; failures that upstream shows
//! as a traceback are `Err`s here (printed as one line, exit 1).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use np_config::{Config, DriverName};
use np_core::{BuildState, NodeState, UploadState};
use np_zk::{paths, LockOptions, Zk, ZkError};
use serde_json::{Map, Value};
use zookeeper_client::CreateMode;

use crate::cli::Format;
use crate::pyfmt::{now, py_str};
use crate::report::{self, json_text, Listing, NODE_BRIEF_COLUMNS};
use crate::table::Table;
use crate::zkread::{self, Depth};

/// How long `hold` and `delete` wait for a node lock (upstream: 5 s).
pub const NODE_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// What every ZooKeeper command gets.
pub struct Ctx {
    /// The connection.
    pub zk: Zk,
    /// The loaded configuration.
    pub config: Config,
    /// Output format of listings.
    pub format: Format,
}

/// Connects as the configuration says, giving up after `timeout`.
pub async fn connect(config: &Config, timeout: Duration) -> Result<Zk> {
    let zkc = &config.zookeeper;
    if zkc.servers.is_empty() {
        bail!("no zookeeper-servers in the configuration");
    }
    let zk_config = np_daemon::zk_config(zkc, timeout);
    let hosts = zk_config.hosts.clone();
    let tls = if zk_config.tls.is_some() { " (TLS)" } else { "" };
    // The client may keep retrying inside its own timeout; bound the whole attempt.
    match tokio::time::timeout(timeout + Duration::from_secs(1), Zk::connect(zk_config)).await {
        Ok(Ok(zk)) => Ok(zk),
        Ok(Err(e)) => Err(anyhow!(
            "cannot connect to ZooKeeper at {hosts}{tls} within {:.1} s: {}",
            timeout.as_secs_f64(),
            root_cause(&e)
        )),
        Err(_) => Err(anyhow!(
            "cannot connect to ZooKeeper at {hosts}{tls}: no session within {:.1} s",
            timeout.as_secs_f64()
        )),
    }
}

fn root_cause(e: &ZkError) -> String {
    match e {
        ZkError::Connect { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

fn print_listing(ctx: &Ctx, listing: &Listing, shown: Option<usize>) {
    let text = match ctx.format {
        Format::Table => listing.table(shown).render(),
        Format::Json => listing.json(),
    };
    write_stdout(&text);
}

/// Writes `text` and a newline to stdout in one go (a closed pipe is not an error).
pub fn write_stdout(text: &str) {
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let _ = lock.write_all(text.as_bytes());
    let _ = lock.write_all(b"\n");
    let _ = lock.flush();
}

/// `list [--detail]`.
pub async fn list(ctx: &Ctx, detail: bool) -> Result<i32> {
    let rows = zkread::nodes(&ctx.zk).await?;
    let listing = report::node_list(&rows, now());
    print_listing(ctx, &listing, if detail { None } else { Some(NODE_BRIEF_COLUMNS) });
    Ok(0)
}

/// Prints the `list` table of one node (empty if it is gone), as `hold` and `delete` do.
async fn list_one(ctx: &Ctx, id: &str) -> Result<()> {
    let rows = zkread::nodes_by_id(&ctx.zk, &[id.to_owned()]).await?;
    let listing = report::node_list(&rows, now());
    print_listing(ctx, &listing, Some(NODE_BRIEF_COLUMNS));
    Ok(())
}

/// `hold ID` and `delete ID [--now]`: lock (5 s), set the state, store, unlock.
pub async fn set_node_state(ctx: &Ctx, id: &str, state: NodeState, now_flag: bool) -> Result<i32> {
    let zk = &ctx.zk;
    if zk.get_node(id).await.with_context(|| format!("reading node {id}"))?.is_none() {
        println!("Node id {id} not found");
        return Ok(1);
    }
    let lock = match zk.lock_node(id, LockOptions::blocking(Some(NODE_LOCK_TIMEOUT))).await {
        Ok(Some(lock)) => lock,
        Ok(None) => bail!(
            "node {id} is locked by another process (a launcher or Zuul); gave up after {} s",
            NODE_LOCK_TIMEOUT.as_secs()
        ),
        Err(e) if e.is_no_node() => {
            println!("Node id {id} not found");
            return Ok(1);
        }
        Err(e) => return Err(e).with_context(|| format!("locking node {id}")),
    };
    // Re-read under the lock, as upstream's lockNode refreshes the node.
    let Some((mut node, _)) = zk.get_node(id).await? else {
        let _ = lock.release().await;
        println!("Node id {id} not found");
        return Ok(1);
    };
    if now_flag {
        let provider = node.provider.clone().unwrap_or_default();
        if ctx.config.provider(&provider).is_none() {
            let _ = lock.release().await;
            println!("Provider {provider} for node {id} not defined on this launcher");
            return Ok(0);
        }
        let _ = lock.release().await;
        let driver = ctx.config.provider(&provider).map(|p| p.driver_name().as_str()).unwrap_or("");
        bail!(
            "delete --now is not supported for driver {driver} by this CLI (it has no cloud drivers); \
             run `nodepool delete {id}` and let the launcher delete it"
        );
    }
    node.set_state(state);
    zk.update_node(&node).await.with_context(|| format!("storing node {id}"))?;
    lock.release().await.with_context(|| format!("unlocking node {id}"))?;
    list_one(ctx, id).await?;
    Ok(0)
}

/// `request-list`.
pub async fn request_list(ctx: &Ctx) -> Result<i32> {
    let requests = zkread::requests(&ctx.zk).await?;
    print_listing(ctx, &report::request_list(&requests), None);
    Ok(0)
}

/// `image-list`.
pub async fn image_list(ctx: &Ctx) -> Result<i32> {
    let images = zkread::images(&ctx.zk, Depth::Uploads).await?;
    print_listing(ctx, &report::image_list(&images, now()), None);
    Ok(0)
}

/// `dib-image-list`.
pub async fn dib_image_list(ctx: &Ctx) -> Result<i32> {
    let images = zkread::images(&ctx.zk, Depth::Builds).await?;
    print_listing(ctx, &report::dib_image_list(&images, now()), None);
    Ok(0)
}

/// `image-status`.
pub async fn image_status(ctx: &Ctx) -> Result<i32> {
    let images = zkread::images(&ctx.zk, Depth::Images).await?;
    print_listing(ctx, &report::image_status(&images, now()), None);
    Ok(0)
}

/// `image-build IMAGE`: creates `request-build` for a non-abstract,
/// non-paused diskimage of the configuration.
pub async fn image_build(ctx: &Ctx, image: &str) -> Result<i32> {
    let Some(diskimage) = ctx.config.diskimage(image) else {
        bail!("Trying to build a non disk-image-builder image: {image}");
    };
    if diskimage.pause {
        bail!("Skipping build request for image {image}; paused");
    }
    ctx.zk.request_image_build(image).await?;
    Ok(0)
}

/// `image-pause` / `image-unpause`.
/// Like upstream, pausing needs `/nodepool/images/<image>` to exist (the flag
/// is created without parents), but the name is not checked against the config.
pub async fn image_pause(ctx: &Ctx, image: &str, paused: bool) -> Result<i32> {
    if paused && ctx.zk.exists(&paths::image(image)).await?.is_none() {
        bail!("image {image} has no data in ZooKeeper ({} does not exist)", paths::image(image));
    }
    ctx.zk.set_image_paused(image, paused).await?;
    Ok(0)
}

/// `dib-image-delete IMAGE-BUILD`.
pub async fn dib_image_delete(ctx: &Ctx, id: &str) -> Result<i32> {
    let Some((image, build_id)) = id.rsplit_once('-') else {
        bail!("invalid dib image id {id:?}: expected <image>-<build id>");
    };
    let Some((mut build, _)) = ctx.zk.get_build(image, build_id).await? else {
        println!("Build {id} not found");
        return Ok(0);
    };
    if build.state == BuildState::Building {
        println!("Cannot delete a build in progress");
        return Ok(0);
    }
    build.state = BuildState::Deleting;
    build.state_time = now();
    ctx.zk.store_build(image, Some(build_id), &build).await?;
    Ok(0)
}

/// `image-delete --provider P --image I --build-id B --upload-id U`.
pub async fn image_delete(ctx: &Ctx, provider: &str, image: &str, build: &str, upload: &str) -> Result<i32> {
    let Some((mut record, _)) = ctx.zk.get_upload(image, build, provider, upload).await? else {
        println!("Image upload not found");
        return Ok(0);
    };
    if record.state == UploadState::Uploading {
        println!("Cannot delete because image upload in progress");
        return Ok(0);
    }
    record.state = UploadState::Deleting;
    record.state_time = now();
    ctx.zk.store_upload(image, build, provider, Some(upload), &record).await?;
    Ok(0)
}

/// `info PROVIDER`.
pub async fn info(ctx: &Ctx, provider: &str) -> Result<i32> {
    let images = zkread::images(&ctx.zk, Depth::Uploads).await?;
    // image -> build -> upload ids, for builds that have this provider.
    let mut data: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for image in &images {
        for b in &image.builds {
            if let Some(p) = b.providers.iter().find(|p| p.name == provider) {
                let mut ids: Vec<String> =
                    p.uploads.iter().filter(|u| u.record.is_some()).map(|u| u.id.clone()).collect();
                ids.sort();
                data.entry(image.name.clone()).or_default().insert(b.id.clone(), ids);
            }
        }
    }
    let nodes: Vec<_> = zkread::nodes(&ctx.zk)
        .await?
        .into_iter()
        .filter(|r| r.node.provider.as_deref() == Some(provider))
        .collect();
    let server_id = |v: &Option<Value>| v.clone().unwrap_or(Value::Null);
    if ctx.format == Format::Json {
        let mut image_rows = Vec::new();
        for (image, builds) in &data {
            for (build, uploads) in builds {
                let mut m = Map::new();
                m.insert("image".into(), Value::from(image.as_str()));
                m.insert("build_id".into(), Value::from(build.as_str()));
                m.insert("upload_ids".into(), Value::from(uploads.clone()));
                image_rows.push(Value::Object(m));
            }
        }
        let node_rows: Vec<Value> = nodes
            .iter()
            .map(|r| {
                let mut m = Map::new();
                m.insert("id".into(), Value::from(r.node.id.as_str()));
                m.insert("server_id".into(), server_id(&r.node.external_id));
                Value::Object(m)
            })
            .collect();
        let mut doc = Map::new();
        doc.insert("provider".into(), Value::from(provider));
        doc.insert("images".into(), Value::Array(image_rows));
        doc.insert("nodes".into(), Value::Array(node_rows));
        write_stdout(&json_text(&Value::Object(doc)));
        return Ok(0);
    }
    let mut out = format!("ZooKeeper data for provider {provider}\n\nImage data:\n");
    let mut t = Table::new(["Image Name", "Build ID", "Upload IDs"]);
    for (image, builds) in &data {
        for (build, uploads) in builds {
            t.add_row(vec![image.clone(), build.clone(), uploads.join(",")]);
        }
    }
    out.push_str(&t.render());
    out.push_str("\n\nNodes:\n");
    let mut t = Table::new(["ID", "Server ID"]);
    for r in &nodes {
        // Python's str(): a missing id shows as `None` here, unlike in `list`.
        t.add_row(vec![r.node.id.clone(), py_str(&server_id(&r.node.external_id))]);
    }
    out.push_str(&t.render());
    write_stdout(&out);
    Ok(0)
}

/// `erase PROVIDER [--force]`.
pub async fn erase(ctx: &Ctx, provider: &str, force: bool) -> Result<i32> {
    let zk = &ctx.zk;
    // What to erase is decided before asking, as upstream does.
    let images = zkread::images(zk, Depth::Uploads).await?;
    let mut build_dirs = Vec::new();
    for image in &images {
        for b in &image.builds {
            if b.providers.iter().any(|p| p.name == provider) {
                build_dirs.push(format!("{}/providers/{provider}", paths::build(&image.name, &b.id)));
            }
        }
    }
    let nodes: Vec<_> = zkread::nodes(zk)
        .await?
        .into_iter()
        .filter(|r| r.node.provider.as_deref() == Some(provider))
        .collect();
    if !force {
        print!(
            "\nWARNING! This action is not reversible!\nErase ZooKeeper data for provider {provider}? [N/y] "
        );
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let read = std::io::stdin().lock().read_line(&mut answer).context("reading the answer")?;
        if read == 0 {
            println!();
            bail!("no answer (end of input); nothing erased");
        }
        if answer.trim_end_matches(['\n', '\r']).to_lowercase() != "y" {
            println!("Aborting. No data erased.");
            return Ok(0);
        }
    }
    println!("Erasing build data for {provider}...");
    for dir in &build_dirs {
        zk.delete_recursive(dir).await?;
    }
    println!("Erasing node data for {provider}...");
    for row in nodes {
        let mut node = row.node;
        zk.delete_node(&mut node).await?;
    }
    Ok(0)
}

/// `alien-image-list [PROVIDER]`: images in a provider's cloud that carry
/// Nodepool's `nodepool_build_id` property but are no `ready` upload
/// ZooKeeper knows for that provider (upstream's columns: Provider, Name,
/// Image ID). As upstream, only OpenStack clouds are listed (Glance); a
/// listing that fails is a warning and shows nothing for that provider;
/// other drivers have no image listing (a warning; upstream's fake cloud
/// lives in the launcher's memory, so a fresh CLI sees nothing there).
pub async fn alien_image_list(ctx: &Ctx, provider: Option<&str>) -> Result<i32> {
    let mut t = Table::new(["Provider", "Name", "Image ID"]);
    let mut rows: Vec<[String; 3]> = Vec::new();
    let mut images = None;
    for p in &ctx.config.providers {
        if provider.is_some_and(|want| want != p.name) {
            continue;
        }
        let listed = match &p.driver {
            np_config::ProviderDriver::OpenStack(os) => openstack_nodepool_images(&p.name, os).await,
            _ if p.driver_name() == DriverName::Fake => continue,
            _ => Err(format!("driver {} has no image listing", p.driver_name().as_str())),
        };
        let cloud_images = match listed {
            Ok(i) => i,
            Err(e) => {
                eprintln!("WARNING: Exception listing alien images for {}: {e}", p.name);
                Vec::new()
            }
        };
        if images.is_none() {
            images = Some(zkread::images(&ctx.zk, Depth::Uploads).await?);
        }
        // The ready uploads ZooKeeper records for this provider, of the
        // diskimages it lists.
        let wanted = p.diskimage_names();
        let known: std::collections::HashSet<String> = images
            .iter()
            .flatten()
            .filter(|i| wanted.contains(&i.name))
            .flat_map(|i| &i.builds)
            .flat_map(|b| &b.providers)
            .filter(|bp| bp.name == p.name)
            .flat_map(|bp| &bp.uploads)
            .filter_map(|u| u.record.as_ref())
            .filter(|u| u.state == UploadState::Ready)
            .filter_map(|u| u.external_id.clone())
            .collect();
        for image in cloud_images.into_iter().filter(|i| !known.contains(&i.id)) {
            rows.push([p.name.clone(), image.name, image.id]);
        }
    }
    match ctx.format {
        Format::Table => {
            for [provider, name, id] in &rows {
                t.add_row(vec![provider.clone(), name.clone(), id.clone()]);
            }
            write_stdout(&t.render());
        }
        Format::Json => {
            let list: Vec<Value> = rows
                .iter()
                .map(|[provider, name, id]| serde_json::json!({"provider": provider, "name": name, "image_id": id}))
                .collect();
            write_stdout(&json_text(&Value::Array(list)));
        }
    }
    Ok(0)
}

/// The Glance images of an OpenStack provider that carry
/// `nodepool_build_id`, read through the driver's own client.
async fn openstack_nodepool_images(
    name: &str,
    config: &np_config::OpenStackProvider,
) -> std::result::Result<Vec<np_driver_openstack::image::GlanceImage>, String> {
    let provider =
        np_driver_openstack::OpenStackProvider::new(name, config).await.map_err(|e| e.to_string())?;
    provider.nodepool_images().await.map_err(|e| e.to_string())
}

/// `export-image-data PATH`: a JSON object from znode path to data text: the
/// pause flags, every build and every upload.
pub async fn export_image_data(ctx: &Ctx, path: &Path) -> Result<i32> {
    let images = zkread::images(&ctx.zk, Depth::Uploads).await?;
    let mut doc = Map::new();
    for image in &images {
        if image.paused {
            doc.insert(paths::image_pause(&image.name), Value::from(""));
        }
        for b in &image.builds {
            let Some((raw, _)) = &b.raw else { continue };
            doc.insert(paths::build(&image.name, &b.id), Value::from(utf8(raw, &b.id)?));
            for p in &b.providers {
                for u in &p.uploads {
                    doc.insert(
                        paths::upload(&image.name, &b.id, &p.name, &u.id),
                        Value::from(utf8(&u.raw, &u.id)?),
                    );
                }
            }
        }
    }
    let text = json_text(&Value::Object(doc));
    write_private(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(0)
}

fn utf8(raw: &[u8], what: &str) -> Result<String> {
    String::from_utf8(raw.to_vec()).map_err(|_| anyhow!("znode {what} does not hold UTF-8 text"))
}

#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(data)
}

#[cfg(not(unix))]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, data)
}

/// `import-image-data PATH`: restores an export. Upload sequence counters are
/// advanced past the highest imported upload number first (as upstream does),
/// so later uploads cannot collide with imported ones.
pub async fn import_image_data(ctx: &Ctx, path: &Path) -> Result<i32> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let Value::Object(doc) = doc else { bail!("{}: expected a JSON object", path.display()) };
    let mut entries = Vec::with_capacity(doc.len());
    for (p, v) in &doc {
        let Value::String(data) = v else { bail!("{}: value of {p} is not a string", path.display()) };
        if !p.starts_with(&format!("{}/", paths::IMAGES)) || p.contains("//") || p.ends_with('/') {
            bail!("{}: refusing to import {p}: not below {}", path.display(), paths::IMAGES);
        }
        entries.push((p.clone(), data.clone()));
    }
    // /nodepool/images/<image>/builds/<build>/providers/<provider>/images/<n>
    let mut highest: BTreeMap<String, u64> = BTreeMap::new();
    for (p, _) in &entries {
        let parts: Vec<&str> = p.split('/').collect();
        if parts.len() == 10 {
            let num: u64 = parts[9].parse().with_context(|| format!("upload number in {p}"))?;
            let dir = parts[..9].join("/");
            let e = highest.entry(dir).or_insert(num);
            *e = (*e).max(num);
        }
    }
    let zk = &ctx.zk;
    for (dir, num) in &highest {
        for _ in 0..*num {
            let (created, _) =
                zk.create(&format!("{dir}/"), &[], CreateMode::PersistentSequential, true).await?;
            if !doc.contains_key(&created) {
                zk.delete(&created).await?;
            }
        }
    }
    for (p, data) in &entries {
        if zk.exists(p).await?.is_some() {
            zk.set(p, data.as_bytes(), None).await?;
        } else {
            zk.create(p, data.as_bytes(), CreateMode::Persistent, true).await?;
        }
    }
    Ok(0)
}
