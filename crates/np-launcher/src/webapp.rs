//! The launcher's status web server (spec launcher §7): upstream's endpoints
//! with upstream's text tables and JSON, plus a Prometheus `/metrics`.
//!
//! * `/ready`: `200 OK` while the launcher's caches are loaded and the
//!   ZooKeeper session is connected, `503` otherwise (upstream's code; its
//!   docs say 500). Never cached.
//! * `/node-list[?node_id=ID]`, `/request-list`, `/label-list`: from the
//!   launcher's caches, never from ZooKeeper.
//! * `/image-list`, `/dib-image-list`, `/image-status`: read from ZooKeeper
//!   (the launcher has no image cache).
//! * `/metrics`: [`Metrics::export`], whatever the `Accept` header says.
//!
//! Like upstream, any method works and only the path matters; the format is
//! chosen from the `Accept` header alone (there is no `.json` suffix), with
//! webob's rules ([`negotiate`]); `fields=a,b` selects text columns; results
//! are cached for one second per path, query and format, and the replies
//! carry `Access-Control-Allow-Origin: *`, `Cache-Control: max-age=1, public`,
//! `Last-Modified` and `Expires`, and honour `If-Modified-Since`. One
//! deliberate difference: an `Accept` header that admits none of text/html,
//! text/plain and application/json gets `406` (upstream crashes with 500).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use np_core::json::to_python_json;
use np_core::{ImageBuild, ImageUpload};
use np_zk::{NodeCache, PoolComponentCache, RequestCache, Zk, ZkError};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::{CacheView, Metrics};

// The `nodepool` CLI prints the same tables; np-cli has no library target, so
// its self-contained PrettyTable and Python-formatting modules are compiled
// in here as well (read-only reuse: they depend on np-core and serde_json only).
#[allow(dead_code)]
#[path = "../../np-cli/src/table.rs"]
mod table;

#[allow(dead_code)]
#[path = "../../np-cli/src/pyfmt.rs"]
mod pyfmt;

/// How long a rendered result is served from memory (upstream `cache_expiry`).
pub const CACHE_EXPIRY: Duration = Duration::from_secs(1);

/// What the web server reads.
#[derive(Clone)]
pub struct Sources {
    /// The ZooKeeper handle (images, session state).
    pub zk: Zk,
    /// The node cache.
    pub nodes: NodeCache,
    /// The request cache.
    pub requests: RequestCache,
    /// The pool-component cache.
    pub pools: PoolComponentCache,
}

/// A running web server.
pub struct WebServer {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for WebServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl WebServer {
    /// Binds `listen_address:port` (port 0 picks a free port) and serves until
    /// `cancel` is cancelled or [`WebServer::stop`] is called. Failing to bind
    /// is an error, as upstream's launcher fails to start then.
    pub async fn start(
        listen: &np_config::WebApp,
        sources: Sources,
        metrics: Metrics,
        cancel: CancellationToken,
    ) -> anyhow::Result<WebServer> {
        let listener =
            TcpListener::bind((listen.listen_address.as_str(), listen.port)).await.with_context(|| {
                format!("web app: cannot listen on {}:{}", listen.listen_address, listen.port)
            })?;
        let addr = listener.local_addr().context("web app: local address")?;
        let app =
            Arc::new(App { sources, metrics, cache: Mutex::new(HashMap::new()), stopping: cancel.clone() });
        let router = Router::new().fallback(handle).with_state(app);
        let task = tokio::spawn(serve(listener, router, cancel.clone()));
        info!(%addr, "web app listening");
        Ok(WebServer { addr, cancel, task })
    }

    /// The bound address (with the real port when port 0 was configured).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, lets requests in flight finish (at most
    /// five seconds), then returns.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task).await.is_err() {
            warn!("web app did not stop within 5 s; aborting it");
            self.task.abort();
        }
    }
}

/// At most this many connections are served at once; more wait in the
/// listen backlog (status pages and metrics scrapes are few and short).
pub const MAX_CONNECTIONS: usize = 256;
/// A client must send a request's whole head within this time (the first
/// one from when it connects, later ones on a kept-alive connection from
/// when it starts), or the connection is closed: a slow or silent client
/// (slowloris) cannot hold connections open.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `cancel`: HTTP/1.1 with a
/// [`HEADER_READ_TIMEOUT`] and at most [`MAX_CONNECTIONS`] connections. On
/// `cancel`, accepting stops and open connections finish their request in
/// flight and close.
async fn serve(listener: TcpListener, router: Router, cancel: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Wait for a free slot first: a full server leaves new connections
        // in the backlog instead of taking them and starving them.
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, _peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: back off a little.
                    warn!(error = %e, "web app cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let stopping = cancel.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        debug!(error = %e, "web app connection ended with an error");
                    }
                }
                _ = stopping.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
    debug!("web app stopped");
}

struct App {
    sources: Sources,
    metrics: Metrics,
    cache: Mutex<HashMap<String, (SystemTime, Arc<str>)>>,
    stopping: CancellationToken,
}

impl App {
    async fn ready(&self) -> bool {
        let status = self.sources.zk.status();
        !self.stopping.is_cancelled()
            && status.connected
            && !status.closed
            && self.sources.nodes.wait_ready(Duration::ZERO).await
            && self.sources.requests.wait_ready(Duration::ZERO).await
            && self.sources.pools.wait_ready(Duration::ZERO).await
    }

    fn cached(&self, key: &str) -> Option<(SystemTime, Arc<str>)> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(key) {
            Some((at, _)) if SystemTime::now() > *at + CACHE_EXPIRY => {
                cache.remove(key);
                None
            }
            other => other.cloned(),
        }
    }

    fn store(&self, key: String, body: Arc<str>) -> SystemTime {
        let now = SystemTime::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // Unlike upstream, expired entries do not pile up (query strings are
        // arbitrary client input).
        cache.retain(|_, (at, _)| now <= *at + CACHE_EXPIRY);
        cache.insert(key, (now, body));
        now
    }
}

/// The reply format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A left-aligned PrettyTable, `text/plain; charset=UTF-8`.
    Text,
    /// `json.dumps` of a list of objects, `application/json`.
    Json,
}

/// webob's `acceptable_offers` over `[text/html, text/plain, application/json]`,
/// then upstream's rule: JSON if the best offer is `application/json`, text
/// otherwise. No header, or a header that does not parse, accepts everything
/// (text). `None` means no offer is acceptable.
pub fn negotiate(accept: Option<&str>) -> Option<Format> {
    const OFFERS: [(&str, &str); 3] = [("text", "html"), ("text", "plain"), ("application", "json")];
    let Some(ranges) = accept.and_then(parse_accept) else { return Some(Format::Text) };
    let mut acceptable: Vec<(usize, f64)> = Vec::new();
    for (i, (t, s)) in OFFERS.iter().enumerate() {
        let mut best: Option<(u8, f64)> = None;
        for r in ranges.iter().filter(|r| !r.has_params) {
            let specificity = match (r.typ.as_str(), r.sub.as_str()) {
                ("*", "*") => 1,
                (rt, "*") if rt.eq_ignore_ascii_case(t) => 2,
                (rt, rs) if rt.eq_ignore_ascii_case(t) && rs.eq_ignore_ascii_case(s) => 3,
                _ => continue,
            };
            if best.is_none_or(|(b, _)| specificity > b) {
                best = Some((specificity, r.q));
            }
        }
        if let Some((_, q)) = best.filter(|(_, q)| *q > 0.0) {
            acceptable.push((i, q));
        }
    }
    // Stable: equal qualities keep the offers' order (text/html first).
    acceptable.sort_by(|a, b| b.1.total_cmp(&a.1));
    acceptable.first().map(|(i, _)| if *i == 2 { Format::Json } else { Format::Text })
}

struct MediaRange {
    typ: String,
    sub: String,
    q: f64,
    /// Media-type parameters other than `q`: webob matches such a range only
    /// against offers with the same parameters, which ours never have.
    has_params: bool,
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_qvalue(v: &str) -> Option<f64> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let ok = frac.len() <= 3
        && frac.bytes().all(|b| b.is_ascii_digit())
        && match int {
            "0" => true,
            "1" => frac.bytes().all(|b| b == b'0'),
            _ => false,
        };
    if ok {
        v.parse().ok()
    } else {
        None
    }
}

/// Parses an `Accept` header; `None` if it is not valid.
fn parse_accept(header: &str) -> Option<Vec<MediaRange>> {
    let mut out = Vec::new();
    for (i, element) in header.split(',').enumerate() {
        let element = element.trim_matches([' ', '\t']);
        if element.is_empty() {
            if i == 0 && header.contains(',') {
                return None;
            }
            continue;
        }
        let mut parts = element.split(';');
        let range = parts.next().unwrap_or_default().trim_matches([' ', '\t']);
        let (typ, sub) = range.split_once('/')?;
        if !is_token(typ) || !is_token(sub) {
            return None;
        }
        let mut q = 1.0;
        let mut seen_q = false;
        let mut has_params = false;
        for p in parts {
            let (name, value) = p.trim_matches([' ', '\t']).split_once('=')?;
            let (name, value) = (name.trim_end_matches([' ', '\t']), value.trim_start_matches([' ', '\t']));
            let quoted = value.len() >= 2 && value.starts_with('"') && value.ends_with('"');
            if !is_token(name) || !(quoted || is_token(value)) {
                return None;
            }
            if name.eq_ignore_ascii_case("q") && !seen_q {
                q = parse_qvalue(value)?;
                seen_q = true;
            } else if !seen_q {
                has_params = true;
            }
        }
        out.push(MediaRange { typ: typ.to_owned(), sub: sub.to_owned(), q, has_params });
    }
    Some(out)
}

/// Rows of one endpoint: JSON values per column, as upstream's `status.py`
/// builds them; the text table is derived from the same values.
struct Listing {
    columns: &'static [(&'static str, &'static str)],
    rows: Vec<Vec<Value>>,
}

const NODE_COLUMNS: &[(&str, &str)] = &[
    ("id", "ID"),
    ("provider", "Provider"),
    ("label", "Label"),
    ("server_id", "Server ID"),
    ("public_ipv4", "Public IPv4"),
    ("ipv6", "IPv6"),
    ("state", "State"),
    ("age", "Age"),
    ("locked", "Locked"),
    ("pool", "Pool"),
    ("hostname", "Hostname"),
    ("private_ipv4", "Private IPv4"),
    ("AZ", "AZ"),
    ("username", "Username"),
    ("connection_port", "Port"),
    ("launcher", "Launcher"),
    ("allocated_to", "Allocated To"),
    ("hold_job", "Hold Job"),
    ("comment", "Comment"),
    ("user_data", "User Data"),
    ("driver_data", "Driver Data"),
];

const REQUEST_COLUMNS: &[(&str, &str)] = &[
    ("id", "Request ID"),
    ("relative_priority", "Priority"),
    ("state", "State"),
    ("requestor", "Requestor"),
    ("node_types", "Node Types"),
    ("nodes", "Nodes"),
    ("declined_by", "Declined By"),
    ("event_id", "Event ID"),
];

const LABEL_COLUMNS: &[(&str, &str)] = &[("label", "Label")];

const IMAGE_COLUMNS: &[(&str, &str)] = &[
    ("id", "Build ID"),
    ("upload_id", "Upload ID"),
    ("provider", "Provider"),
    ("image", "Image"),
    ("external_name", "Provider Image Name"),
    ("external_id", "Provider Image ID"),
    ("state", "State"),
    ("age", "Age"),
];

const DIB_IMAGE_COLUMNS: &[(&str, &str)] = &[
    ("id", "ID"),
    ("image", "Image"),
    ("builder", "Builder"),
    ("formats", "Formats"),
    ("state", "State"),
    ("age", "Age"),
];

const IMAGE_STATUS_COLUMNS: &[(&str, &str)] = &[
    ("image", "Image"),
    ("paused", "Paused"),
    ("build_request", "Build Request"),
    ("build_request_age", "Build Request Age"),
];

fn opt(s: Option<&str>) -> Value {
    s.map_or(Value::Null, Value::from)
}

fn strings(items: &[String]) -> Value {
    Value::from(items.to_vec())
}

/// A listing as upstream's JSON: an array with one object per row, its
/// keys the column names in column order.
struct JsonRows<'a>(&'a Listing);

impl serde::Serialize for JsonRows<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct Row<'a>(&'a [(&'static str, &'static str)], &'a [Value]);
        impl serde::Serialize for Row<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0.len()))?;
                for ((key, _), value) in self.0.iter().zip(self.1) {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
        let mut seq = serializer.serialize_seq(Some(self.0.rows.len()))?;
        for row in &self.0.rows {
            seq.serialize_element(&Row(self.0.columns, row))?;
        }
        seq.end()
    }
}

impl Listing {
    /// `status.output`: JSON has every column; text only `fields` (in table
    /// order) when given.
    fn render(&self, format: Format, fields: Option<&BTreeSet<&str>>, now: f64) -> String {
        match format {
            Format::Json => {
                // Serialized straight from the rows: no copy of the table as
                // JSON objects (at 10,000 nodes that copy was 30 MB).
                let bytes = to_python_json(&JsonRows(self));
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            }
            Format::Text => {
                let shown: Vec<usize> = (0..self.columns.len())
                    .filter(|i| fields.is_none_or(|f| f.contains(self.columns[*i].0)))
                    .collect();
                if shown.is_empty() {
                    // PrettyTable without columns: borders only, one empty line per row.
                    return format!("++\n||\n++{}\n++", "\n".repeat(self.rows.len()));
                }
                let mut t = table::Table::new(shown.iter().map(|i| self.columns[*i].1));
                for row in &self.rows {
                    t.add_row(shown.iter().map(|i| text_cell(self.columns[*i].0, &row[*i], now)).collect());
                }
                t.render()
            }
        }
    }
}

/// One table cell as `status._to_pretty_table` writes it: `age` and non-null
/// `*_age` columns as `DD:HH:MM:SS` (unless already a string), lists joined
/// with `,`, `None` empty, anything else as Python's `str()`.
fn text_cell(key: &str, value: &Value, now: f64) -> String {
    let is_age = key == "age" || (key.ends_with("_age") && !value.is_null());
    match value {
        Value::Number(n) if is_age => match n.as_f64() {
            Some(ts) => pyfmt::age(ts.trunc(), now),
            None => pyfmt::py_str(value),
        },
        Value::Array(items) => items.iter().map(pyfmt::py_str).collect::<Vec<_>>().join(","),
        Value::Null => String::new(),
        other => pyfmt::py_str(other),
    }
}

fn node_list(nodes: &NodeCache, node_id: Option<&str>, now: f64) -> Listing {
    let mut entries = match node_id {
        Some(id) => nodes.get(id).into_iter().collect(),
        None => nodes.entries(),
    };
    entries.sort_by(|a, b| a.value.id.cmp(&b.value.id));
    let rows = entries
        .iter()
        .map(|e| {
            let n = &e.value;
            let port = if pyfmt::python_int_ok(&n.connection_port) {
                n.connection_port.clone()
            } else {
                // k8s carries credentials in the port field: never shown.
                Value::from("redacted")
            };
            vec![
                Value::from(n.id.as_str()),
                opt(n.provider.as_deref()),
                strings(&n.node_type),
                n.external_id.clone().unwrap_or(Value::Null),
                opt(n.public_ipv4.as_deref()),
                opt(n.public_ipv6.as_deref()),
                Value::from(n.state.as_str()),
                Value::from(pyfmt::age(n.state_time, now)),
                Value::from(if e.is_locked() { "locked" } else { "unlocked" }),
                opt(n.pool.as_deref()),
                opt(n.hostname.as_deref()),
                opt(n.private_ipv4.as_deref()),
                opt(n.az.as_deref()),
                opt(n.username.as_deref()),
                port,
                opt(n.launcher.as_deref()),
                opt(n.allocated_to.as_deref()),
                opt(n.hold_job.as_deref()),
                opt(n.comment.as_deref()),
                n.user_data.clone().unwrap_or(Value::Null),
                n.driver_data.clone().unwrap_or(Value::Null),
            ]
        })
        .collect();
    Listing { columns: NODE_COLUMNS, rows }
}

fn request_list(requests: &RequestCache) -> Listing {
    let mut all = requests.values();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    let rows = all
        .iter()
        .map(|r| {
            vec![
                Value::from(r.id.as_str()),
                Value::from(r.relative_priority),
                Value::from(r.state.as_str()),
                opt(r.requestor.as_deref()),
                strings(&r.node_types),
                strings(&r.nodes),
                strings(&r.declined_by),
                opt(r.event_id.as_deref()),
            ]
        })
        .collect();
    Listing { columns: REQUEST_COLUMNS, rows }
}

fn label_list(pools: &PoolComponentCache) -> Listing {
    let labels: BTreeSet<String> = pools
        .values()
        .iter()
        .filter_map(|c| c.pool.as_ref())
        .flat_map(|p| p.supported_labels.clone())
        .collect();
    Listing { columns: LABEL_COLUMNS, rows: labels.into_iter().map(|l| vec![Value::from(l)]).collect() }
}

/// Skips a record that does not parse (logged); other errors fail the page.
fn tolerate<T>(result: Result<Option<T>, ZkError>) -> Result<Option<T>, ZkError> {
    match result {
        Err(ZkError::Malformed { path, source }) => {
            warn!(path, error = %source, "skipping malformed image record");
            Ok(None)
        }
        other => other,
    }
}

struct BuildInfo {
    image: String,
    id: String,
    build: ImageBuild,
    image_paused: bool,
    uploads: Vec<(String, String, ImageUpload)>,
}

/// Every build (and, with `uploads`, every upload) under `/nodepool/images`.
async fn read_builds(zk: &Zk, uploads: bool) -> Result<Vec<BuildInfo>, ZkError> {
    let mut names = zk.image_names().await?;
    names.sort();
    let mut out = Vec::new();
    for image in names {
        let image_paused = zk.is_image_paused(&image).await?;
        for id in zk.build_ids(&image).await? {
            let Some((build, _)) = tolerate(zk.get_build(&image, &id).await)? else { continue };
            let mut found = Vec::new();
            if uploads {
                let mut providers = zk.build_providers(&image, &id).await?;
                providers.sort();
                for provider in providers {
                    for upload_id in zk.upload_ids(&image, &id, &provider).await? {
                        if let Some((u, _)) =
                            tolerate(zk.get_upload(&image, &id, &provider, &upload_id).await)?
                        {
                            found.push((provider.clone(), upload_id, u));
                        }
                    }
                }
            }
            out.push(BuildInfo { image: image.clone(), id, build, image_paused, uploads: found });
        }
    }
    Ok(out)
}

async fn image_list(zk: &Zk) -> Result<Listing, ZkError> {
    let mut rows = Vec::new();
    for b in read_builds(zk, true).await? {
        for (provider, upload_id, u) in b.uploads {
            rows.push(vec![
                Value::from(b.id.as_str()),
                Value::from(upload_id),
                Value::from(provider),
                Value::from(b.image.as_str()),
                opt(u.external_name.as_deref()),
                opt(u.external_id.as_deref()),
                Value::from(u.state.as_str()),
                Value::from(u.state_time.trunc() as i64),
            ]);
        }
    }
    Ok(Listing { columns: IMAGE_COLUMNS, rows })
}

async fn dib_image_list(zk: &Zk) -> Result<Listing, ZkError> {
    let rows = read_builds(zk, false)
        .await?
        .into_iter()
        .map(|b| {
            vec![
                Value::from(format!("{}-{}", b.image, b.id)),
                Value::from(b.image.as_str()),
                opt(b.build.builder.as_deref()),
                strings(&b.build.formats),
                Value::from(if b.image_paused { "paused" } else { b.build.state.as_str() }),
                Value::from(b.build.state_time.trunc() as i64),
            ]
        })
        .collect();
    Ok(Listing { columns: DIB_IMAGE_COLUMNS, rows })
}

async fn image_status(zk: &Zk) -> Result<Listing, ZkError> {
    let mut names = zk.image_names().await?;
    names.sort();
    let mut rows = Vec::new();
    for image in names {
        let paused = zk.is_image_paused(&image).await?;
        let (request, request_age) = match zk.exists(&np_zk::paths::image_build_request(&image)).await? {
            None => (Value::Null, Value::Null),
            Some(req) => {
                // Pending unless the build lock is held and the latest build
                // (the first child, as upstream picks it) is newer than the lock.
                let mut pending = true;
                let lock = zk.exists(&np_zk::paths::image_build_lock(&image)).await?;
                if let Some(lock) = lock.filter(|l| l.num_children > 0) {
                    pending = match zk.build_ids(&image).await?.first() {
                        None => true,
                        Some(first) => match zk.exists(&np_zk::paths::build(&image, first)).await? {
                            None => true,
                            Some(build) => build.ctime < lock.ctime,
                        },
                    };
                }
                (Value::from(if pending { "pending" } else { "building" }), Value::from(req.ctime / 1000))
            }
        };
        rows.push(vec![Value::from(image), Value::Bool(paused), request, request_age]);
    }
    Ok(Listing { columns: IMAGE_STATUS_COLUMNS, rows })
}

fn plain(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=UTF-8"));
    r
}

fn http_date(t: SystemTime) -> HeaderValue {
    // An HTTP date is plain ASCII; the fallback is never used.
    HeaderValue::from_str(&httpdate::fmt_http_date(t)).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Upstream's reply: body, content type, CORS and cache headers, and
/// webob's conditional response (304 when not modified since).
fn reply(method: &Method, headers: &HeaderMap, format: Format, at: SystemTime, body: &str) -> Response {
    let lm_secs = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let last_modified = UNIX_EPOCH + Duration::from_secs(lm_secs);
    let not_modified = matches!(*method, Method::GET | Method::HEAD)
        && headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .is_some_and(|since| last_modified <= since);
    let mut r = if not_modified {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(Body::from(body.to_owned()))
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(match format {
            Format::Json => "application/json",
            Format::Text => "text/plain; charset=UTF-8",
        }),
    );
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=1, public"));
    h.insert(header::LAST_MODIFIED, http_date(at));
    h.insert(header::EXPIRES, http_date(at + CACHE_EXPIRY));
    r
}

async fn handle(State(app): State<Arc<App>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    debug!(%method, %uri, "web request");
    if path == "/metrics" {
        let s = &app.sources;
        let status = s.zk.status();
        let text = app.metrics.export(CacheView {
            nodes: &s.nodes,
            requests: &s.requests,
            pools: &s.pools,
            zk_connected: status.connected && !status.closed,
        });
        let mut r = Response::new(Body::from(text));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(prometheus::TEXT_FORMAT));
        return r;
    }
    // Repeated headers are one list (as in the WSGI environ); a header that is
    // not valid text does not parse, so everything is acceptable.
    let accept: Option<Result<Vec<&str>, _>> = headers
        .contains_key(header::ACCEPT)
        .then(|| headers.get_all(header::ACCEPT).iter().map(|v| v.to_str()).collect());
    let format = match accept {
        None => negotiate(None),
        Some(Ok(values)) => negotiate(Some(&values.join(", "))),
        Some(Err(_)) => Some(Format::Text),
    };
    let Some(format) = format else {
        return plain(
            StatusCode::NOT_ACCEPTABLE,
            "406 Not Acceptable\n\nAvailable: text/html, text/plain, application/json.\n".into(),
        );
    };
    if path == "/ready" {
        if !app.ready().await {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 Service Unavailable\n\nThe launcher is not ready.\n".into(),
            );
        }
        return reply(&method, &headers, format, SystemTime::now(), "OK");
    }
    if !matches!(
        path,
        "/node-list" | "/request-list" | "/label-list" | "/image-list" | "/dib-image-list" | "/image-status"
    ) {
        return plain(StatusCode::NOT_FOUND, "404 Not Found\n\nThe resource could not be found.\n".into());
    }

    // Query parameters: the last value of a repeated key wins, as webob's `get`.
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        params.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    let param = |k: &str| params.get(k).and_then(|v| v.last()).map(String::as_str).filter(|v| !v.is_empty());
    let key = format!("{path}.{params:?}.{format:?}");
    if let Some((at, body)) = app.cached(&key) {
        return reply(&method, &headers, format, at, &body);
    }

    let now = np_core::now();
    let s = &app.sources;
    let listing = match path {
        "/node-list" => Ok(node_list(&s.nodes, param("node_id"), now)),
        "/request-list" => Ok(request_list(&s.requests)),
        "/label-list" => Ok(label_list(&s.pools)),
        "/image-list" => image_list(&s.zk).await,
        "/dib-image-list" => dib_image_list(&s.zk).await,
        _ => image_status(&s.zk).await,
    };
    let listing = match listing {
        Ok(l) => l,
        Err(e) => {
            warn!(path, error = %e, "web app: cannot read ZooKeeper");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, format!("500 Internal Server Error\n\n{e}\n"));
        }
    };
    let fields: Option<BTreeSet<&str>> = param("fields").map(|f| f.split(',').collect());
    let body: Arc<str> = listing.render(format, fields.as_ref(), now).into();
    let at = app.store(key, body.clone());
    reply(&method, &headers, format, at, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_webob() {
        let cases: &[(Option<&str>, Option<Format>)] = &[
            (None, Some(Format::Text)),
            (Some("application/json"), Some(Format::Json)),
            (Some("APPLICATION/JSON"), Some(Format::Json)),
            (Some("application/*"), Some(Format::Json)),
            // Equal quality: the offers' order decides, text first.
            (Some("application/json, text/plain"), Some(Format::Text)),
            (Some("*/*"), Some(Format::Text)),
            (Some("*/*, application/json"), Some(Format::Text)),
            (Some("text/plain;q=0.9, application/json"), Some(Format::Json)),
            (Some("application/json;q=0.5, text/*;q=0.4"), Some(Format::Json)),
            (Some("application/json;q=0.3, */*"), Some(Format::Text)),
            (Some("application/json;Q=0.5, text/plain;q=0.4"), Some(Format::Json)),
            (Some("application/json , text/plain ; q=0.2"), Some(Format::Json)),
            (Some("application/json;charset=utf-8, */*;q=0.5"), Some(Format::Text)),
            (Some("application/json;q=0.5, application/json;q=0.9"), Some(Format::Json)),
            (Some("application/json,"), Some(Format::Json)),
            // Not acceptable (upstream: 500).
            (Some("application/xml"), None),
            (Some(""), None),
            (Some("application/json;q=0"), None),
            (Some("application/json; charset=utf-8"), None),
            (Some("*/json"), None),
            // Invalid headers accept everything.
            (Some("json"), Some(Format::Text)),
            (Some(",application/json"), Some(Format::Text)),
            (Some("application/json;q=1.5"), Some(Format::Text)),
            (Some("application/json;q=0.50000"), Some(Format::Text)),
        ];
        for (header, want) in cases {
            assert_eq!(negotiate(*header), *want, "{header:?}");
        }
    }

    #[test]
    fn text_cells_follow_status_py() {
        assert_eq!(text_cell("label", &serde_json::json!(["a", "b"]), 0.0), "a,b");
        assert_eq!(text_cell("comment", &Value::Null, 0.0), "");
        assert_eq!(text_cell("paused", &Value::Bool(true), 0.0), "True");
        assert_eq!(text_cell("age", &Value::from(100), 100.0 + 86400.0 + 3661.0), "01:01:01:01");
        assert_eq!(text_cell("age", &Value::from("00:00:00:05"), 0.0), "00:00:00:05");
        assert_eq!(text_cell("build_request_age", &Value::Null, 0.0), "");
        assert_eq!(text_cell("user_data", &serde_json::json!({"k": 1}), 0.0), "{'k': 1}");
    }

    #[test]
    fn fields_select_text_columns_only() {
        let l =
            Listing { columns: LABEL_COLUMNS, rows: vec![vec![Value::from("a")], vec![Value::from("b")]] };
        let all = l.render(Format::Text, None, 0.0);
        assert_eq!(all, "+-------+\n| Label |\n+-------+\n| a     |\n| b     |\n+-------+");
        let none: BTreeSet<&str> = ["nope"].into_iter().collect();
        assert_eq!(l.render(Format::Text, Some(&none), 0.0), "++\n||\n++\n\n\n++");
        assert_eq!(l.render(Format::Json, Some(&none), 0.0), "[{\"label\": \"a\"}, {\"label\": \"b\"}]");
    }
}
