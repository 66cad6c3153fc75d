//! Image upload to Glance v2 for the builder: create the image record with
//! the builder's metadata as properties, stream the file into it
//! (`PUT /v2/images/{id}/file`), then wait until Glance says `active`. An
//! upload that fails or times out deletes its image record, so nothing is
//! left behind; deleting an image that is gone succeeds.

use std::time::{Duration, Instant};

use np_provider::{ImageUploadRequest, ProviderError};
use reqwest::Method;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::client::{Service, Session};
use crate::provider::encode;

/// Uploads `request` and returns the Glance image id.
pub async fn upload(
    session: &Session,
    provider: &str,
    timeout: Duration,
    request: &ImageUploadRequest,
) -> Result<String, ProviderError> {
    let mut body = serde_json::Map::new();
    body.insert("name".into(), json!(request.name));
    body.insert("disk_format".into(), json!(request.format));
    body.insert("container_format".into(), json!("bare"));
    body.insert("visibility".into(), json!("private"));
    for (k, v) in &request.metadata {
        body.insert(k.clone(), json!(v));
    }
    // openstacksdk's checksum properties, so a later upload of the same
    // file can be recognised.
    if let Some(md5) = &request.md5 {
        body.insert("owner_specified.openstack.md5".into(), json!(md5));
    }
    if let Some(sha) = &request.sha256 {
        body.insert("owner_specified.openstack.sha256".into(), json!(sha));
    }
    body.insert("owner_specified.openstack.object".into(), json!(format!("images/{}", request.name)));
    let (_, created) = session
        .call(Service::Image, Method::POST, "images", Some(&Value::Object(body)))
        .await
        .map_err(|e| e.classify("create image"))?;
    let Some(id) = created["id"].as_str().map(str::to_owned) else {
        return Err(ProviderError::Transient("Glance created an image without an id".into()));
    };
    match put_and_wait(session, &id, timeout, request).await {
        Ok(()) => {
            info!(provider, image = %id, name = %request.name, "image uploaded");
            Ok(id)
        }
        Err(e) => {
            warn!(provider, image = %id, error = %e, "image upload failed; deleting the image record");
            if let Err(d) = delete(session, &id).await {
                warn!(provider, image = %id, error = %d, "cannot delete the failed image");
            }
            Err(e)
        }
    }
}

async fn put_and_wait(
    session: &Session,
    id: &str,
    timeout: Duration,
    request: &ImageUploadRequest,
) -> Result<(), ProviderError> {
    let file = tokio::fs::File::open(&request.path)
        .await
        .map_err(|e| ProviderError::Fatal(format!("cannot open {}: {e}", request.path.display())))?;
    let stream = tokio_util::io::ReaderStream::new(file);
    session
        .raw(
            Service::Image,
            Method::PUT,
            &format!("images/{}/file", encode(id)),
            "application/octet-stream",
            reqwest::Body::wrap_stream(stream),
        )
        .await
        .map_err(|e| e.classify("upload image data"))?;
    let deadline = Instant::now() + timeout;
    let mut wait = Duration::from_millis(200);
    loop {
        let (_, v) = session
            .call(Service::Image, Method::GET, &format!("images/{}", encode(id)), None)
            .await
            .map_err(|e| e.classify("get image"))?;
        match v["status"].as_str().unwrap_or("") {
            "active" => return Ok(()),
            s @ ("killed" | "deleted" | "deactivated") => {
                return Err(ProviderError::Fatal(format!("Glance image {id} ended {s}")));
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(ProviderError::Transient(format!("Glance image {id} not active after {timeout:?}")));
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Deletes an image; one that is already gone is not an error.
pub async fn delete(session: &Session, id: &str) -> Result<(), ProviderError> {
    match session.call(Service::Image, Method::DELETE, &format!("images/{}", encode(id)), None).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_gone() => Ok(()),
        Err(e) => Err(e.classify("delete image")),
    }
}

/// A Glance image as the CLI's `alien-image-list` reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct GlanceImage {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its status (`active`, `queued`, ...).
    pub status: String,
    /// Every other key of the image: Glance v2 puts custom properties
    /// (`nodepool_build_id`, ...) at the top level.
    pub properties: serde_json::Map<String, Value>,
}

/// Glance's own keys, which are not properties.
const IMAGE_KEYS: &[&str] = &["id", "name", "status"];

/// Every image the project sees (`GET /v2/images`, following `next`).
pub async fn list(session: &Session) -> Result<Vec<GlanceImage>, ProviderError> {
    let mut out = Vec::new();
    let mut path = "images?limit=100".to_owned();
    let mut seen = std::collections::HashSet::new();
    loop {
        let (_, v) = session
            .call(Service::Image, Method::GET, &path, None)
            .await
            .map_err(|e| e.classify("list images"))?;
        for image in v["images"].as_array().into_iter().flatten() {
            let Some(obj) = image.as_object() else { continue };
            let Some(id) = obj.get("id").and_then(Value::as_str) else { continue };
            out.push(GlanceImage {
                id: id.to_owned(),
                name: obj.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                status: obj.get("status").and_then(Value::as_str).unwrap_or_default().to_owned(),
                properties: obj
                    .iter()
                    .filter(|(k, _)| !IMAGE_KEYS.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            });
        }
        seen.insert(path.clone());
        // `next` is relative to the service root (`/v2/images?marker=..`);
        // the session's endpoint already ends in `/v2`.
        let Some(next) = v["next"].as_str() else { break };
        let next = next.trim_start_matches('/');
        let next = next.strip_prefix("v2/").unwrap_or(next).to_owned();
        if seen.contains(&next) {
            return Err(ProviderError::Transient(format!("image listing links back to {next}")));
        }
        path = next;
    }
    Ok(out)
}
