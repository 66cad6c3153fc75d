//! The launcher's web app end to end: a launcher with a fake cloud on the test
//! ZooKeeper, its web server on 127.0.0.1 (port 0), and plain HTTP/1.1
//! requests over TCP checking every endpoint in text and JSON, the headers,
//! `/ready` and `/metrics`.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use np_core::{BuildState, ImageBuild, ImageUpload, NodeRequest, RequestState, UploadState};
use np_driver_fake::{FakeCloud, FakeSettings};
use np_launcher::metrics::{Launch, LaunchResult, Metrics};
use np_launcher::webapp::{Sources, WebServer};
use np_launcher::Launcher;
use np_testing::{eventually, TestZk};
use np_zk::{NodeCache, PoolComponentCache, RequestCache};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::common::{self, FakeConfig};

fn config() -> np_config::Config {
    let mut config = FakeConfig::new(&["small", "large"]).pool("max-servers: 10").load();
    // Port 0 (any free port) is not valid in a file, only here.
    config.webapp = np_config::WebApp { port: 0, listen_address: "127.0.0.1".into() };
    config
}

async fn start(t: &TestZk) -> (Launcher, SocketAddr) {
    let config = config();
    let cloud = FakeCloud::new("fake-provider", FakeSettings::default());
    let mut launcher = common::start_fake(t, &config, &cloud, None).await;
    let addr = launcher.start_webapp().await.unwrap();
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);
    assert_eq!(launcher.webapp_addr(), Some(addr));
    (launcher, addr)
}

async fn fulfilled_request(t: &TestZk, labels: &[&str]) -> NodeRequest {
    let id = common::submit(t, labels).await;
    assert!(
        common::reaches(t, &id, RequestState::Fulfilled, Duration::from_secs(15)).await,
        "request {id} not fulfilled"
    );
    t.zk.get_request(&id).await.unwrap().unwrap().0
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn text(&self) -> &str {
        assert_eq!(self.status, 200, "{self:?}");
        assert_eq!(self.header("content-type"), Some("text/plain; charset=UTF-8"), "{self:?}");
        &self.body
    }
}

/// One HTTP/1.1 exchange with `Connection: close`.
async fn http(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v == "chunked");
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    Reply { status, headers, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

async fn get(addr: SocketAddr, target: &str) -> Reply {
    http(addr, "GET", target, &[]).await
}

async fn get_json(addr: SocketAddr, target: &str) -> Value {
    let r = http(addr, "GET", target, &[("Accept", "application/json")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

/// The header row of a PrettyTable, split into column names.
fn columns(table: &str) -> Vec<String> {
    table
        .lines()
        .nth(1)
        .unwrap()
        .split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The data rows of a PrettyTable, split into cells.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(3)
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<String> = l.split('|').map(|c| c.trim().to_owned()).collect();
            cells[1..cells.len() - 1].to_vec()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_request_and_label_lists_in_text_and_json() {
    let t = TestZk::new().await;
    let (launcher, addr) = start(&t).await;
    let req = fulfilled_request(&t, &["small", "large"]).await;
    assert_eq!(req.nodes.len(), 2);

    // /node-list, text: every upstream column, one row per node.
    let r = get(addr, "/node-list").await;
    let text = r.text();
    assert_eq!(
        columns(text),
        [
            "ID",
            "Provider",
            "Label",
            "Server ID",
            "Public IPv4",
            "IPv6",
            "State",
            "Age",
            "Locked",
            "Pool",
            "Hostname",
            "Private IPv4",
            "AZ",
            "Username",
            "Port",
            "Launcher",
            "Allocated To",
            "Hold Job",
            "Comment",
            "User Data",
            "Driver Data"
        ]
    );
    let table = rows(text);
    assert_eq!(table.len(), 2, "{text}");
    let mut ids: Vec<&str> = table.iter().map(|r| r[0].as_str()).collect();
    ids.sort();
    let mut want = req.nodes.clone();
    want.sort();
    assert_eq!(ids, want);
    for row in &table {
        assert_eq!(row[1], "fake-provider");
        assert!(row[2] == "small" || row[2] == "large");
        assert_eq!(row[6], "ready");
        assert!(row[7].len() == 11 && row[7].starts_with("00:00:"), "age {}", row[7]);
        assert_eq!(row[9], "main");
        assert_eq!(row[16], req.id);
    }

    // JSON: every field, label a list, age a string, AZ upper-case.
    let nodes = get_json(addr, "/node-list").await;
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    for n in nodes {
        assert!(req.nodes.contains(&n["id"].as_str().unwrap().to_owned()));
        assert_eq!(n["state"], "ready");
        assert_eq!(n["provider"], "fake-provider");
        assert!(n["label"].is_array());
        assert!(n["age"].is_string());
        assert!(n["locked"] == "locked" || n["locked"] == "unlocked");
        assert!(n.as_object().unwrap().contains_key("AZ"));
        assert_eq!(n.as_object().unwrap().len(), 21);
    }

    // node_id filter, in both forms; an unknown id gives an empty list.
    let one = get_json(addr, &format!("/node-list?node_id={}", req.nodes[0])).await;
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["id"], req.nodes[0].as_str());
    assert_eq!(rows(get(addr, &format!("/node-list?node_id={}", req.nodes[1])).await.text()).len(), 1);
    assert_eq!(get_json(addr, "/node-list?node_id=9999999999").await, serde_json::json!([]));

    // fields= limits text columns (in table order), never JSON.
    let r = get(addr, "/node-list?fields=state,id,nope").await;
    assert_eq!(columns(r.text()), ["ID", "State"]);
    let all = get_json(addr, "/node-list?fields=state,id").await;
    assert_eq!(all[0].as_object().unwrap().len(), 21);

    // /request-list.
    let r = get(addr, "/request-list").await;
    let text = r.text();
    assert_eq!(
        columns(text),
        ["Request ID", "Priority", "State", "Requestor", "Node Types", "Nodes", "Declined By", "Event ID"]
    );
    let row = rows(text).into_iter().find(|r| r[0] == req.id).unwrap();
    assert_eq!(row[1], req.relative_priority.to_string());
    assert_eq!(row[2], "fulfilled");
    assert_eq!(row[4], "small,large");
    assert_eq!(row[5], req.nodes.join(","));
    let requests = get_json(addr, "/request-list").await;
    let mine = requests.as_array().unwrap().iter().find(|r| r["id"] == req.id.as_str()).unwrap();
    assert_eq!(mine["state"], "fulfilled");
    assert_eq!(mine["relative_priority"], req.relative_priority);
    assert_eq!(mine["node_types"], serde_json::json!(["small", "large"]));
    assert_eq!(mine["nodes"], serde_json::json!(req.nodes));
    assert_eq!(mine["event_id"], serde_json::json!(req.event_id));

    // /label-list: labels of the registered pools.
    let r = get(addr, "/label-list").await;
    assert_eq!(columns(r.text()), ["Label"]);
    assert_eq!(rows(r.text()), [["large"], ["small"]]);
    assert_eq!(
        get_json(addr, "/label-list").await,
        serde_json::json!([{"label": "large"}, {"label": "small"}])
    );

    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation_headers_caching_and_errors() {
    let t = TestZk::new().await;
    let (launcher, addr) = start(&t).await;

    // Accept decides, as webob ranks the offers (text first on ties).
    let both = http(addr, "GET", "/label-list", &[("Accept", "application/json, text/plain")]).await;
    assert_eq!(both.header("content-type"), Some("text/plain; charset=UTF-8"));
    let json = http(addr, "GET", "/label-list", &[("Accept", "text/plain;q=0.5, application/json")]).await;
    assert_eq!(json.header("content-type"), Some("application/json"));
    let any = http(addr, "GET", "/label-list", &[("Accept", "*/*")]).await;
    assert_eq!(any.header("content-type"), Some("text/plain; charset=UTF-8"));
    let none = http(addr, "GET", "/label-list", &[("Accept", "application/xml")]).await;
    assert_eq!(none.status, 406);
    // There is no `.json` suffix upstream.
    assert_eq!(get(addr, "/label-list.json").await.status, 404);
    assert_eq!(get(addr, "/nope").await.status, 404);
    // Any method works.
    assert_eq!(http(addr, "POST", "/label-list", &[]).await.status, 200);

    // Upstream's cache headers.
    let r = get(addr, "/request-list").await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("cache-control"), Some("max-age=1, public"));
    let lm = httpdate::parse_http_date(r.header("last-modified").unwrap()).unwrap();
    let exp = httpdate::parse_http_date(r.header("expires").unwrap()).unwrap();
    assert_eq!(exp.duration_since(lm).unwrap(), Duration::from_secs(1));

    // Cached for a second: a new request does not show up at once ...
    let mut req = NodeRequest::new(vec!["no-such-label".into()]);
    let before = get_json(addr, "/request-list").await;
    t.zk.create_request(&mut req, 100, false).await.unwrap();
    let cached = get_json(addr, "/request-list").await;
    if lm.elapsed().unwrap_or_default() < Duration::from_millis(800) {
        assert_eq!(before, cached);
    }
    // ... but after the expiry it does.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let all = get_json(addr, "/request-list").await;
            all.as_array().unwrap().iter().any(|r| r["id"] == req.id.as_str())
        })
        .await
    );

    // Conditional requests: not modified since the Last-Modified time.
    let r = get(addr, "/label-list").await;
    let lm = r.header("last-modified").unwrap().to_owned();
    let again = http(addr, "GET", "/label-list", &[("If-Modified-Since", &lm)]).await;
    assert!(again.status == 304 || again.status == 200, "{again:?}");
    let old =
        http(addr, "GET", "/label-list", &[("If-Modified-Since", "Thu, 01 Jan 2015 00:00:00 GMT")]).await;
    assert_eq!(old.status, 200);
    let future =
        http(addr, "GET", "/label-list", &[("If-Modified-Since", "Fri, 01 Jan 2100 00:00:00 GMT")]).await;
    assert_eq!(future.status, 304);
    assert!(future.body.is_empty());

    launcher.stop().await;
    // Stopped: nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_lists_come_from_zookeeper() {
    let t = TestZk::new().await;
    let (launcher, addr) = start(&t).await;

    // Empty: the header box only.
    let empty = get(addr, "/image-list").await;
    assert_eq!(rows(empty.text()).len(), 0);
    assert_eq!(get_json(addr, "/dib-image-list").await, serde_json::json!([]));
    // Let those cached results expire.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let mut build = ImageBuild::new(BuildState::Ready);
    build.builder = Some("builder-host".into());
    build.formats = vec!["qcow2".into(), "raw".into()];
    build.state_time = 1_000_000.5;
    let b = t.zk.store_build("fake-image", None, &build).await.unwrap();
    let mut up = ImageUpload::new(UploadState::Ready);
    up.external_id = Some("ext-1".into());
    up.external_name = Some("fake-image-123".into());
    up.state_time = 2_000_000.9;
    let u = t.zk.store_upload("fake-image", &b, "fake-provider", None, &up).await.unwrap();
    t.zk.store_build("other-image", None, &ImageBuild::new(BuildState::Building)).await.unwrap();
    t.zk.set_image_paused("other-image", true).await.unwrap();
    t.zk.request_image_build("fake-image").await.unwrap();

    let text = get(addr, "/image-list").await;
    assert_eq!(
        columns(text.text()),
        [
            "Build ID",
            "Upload ID",
            "Provider",
            "Image",
            "Provider Image Name",
            "Provider Image ID",
            "State",
            "Age"
        ]
    );
    let table = rows(text.text());
    assert_eq!(table.len(), 1);
    assert_eq!(table[0][..7], [&b, &u, "fake-provider", "fake-image", "fake-image-123", "ext-1", "ready"]);
    let images = get_json(addr, "/image-list").await;
    assert_eq!(
        images,
        serde_json::json!([{
            "id": b, "upload_id": u, "provider": "fake-provider", "image": "fake-image",
            "external_name": "fake-image-123", "external_id": "ext-1", "state": "ready", "age": 2_000_000
        }])
    );

    let dib = get_json(addr, "/dib-image-list").await;
    let dib = dib.as_array().unwrap();
    assert_eq!(dib.len(), 2);
    assert_eq!(dib[0]["id"], format!("fake-image-{b}"));
    assert_eq!(dib[0]["builder"], "builder-host");
    assert_eq!(dib[0]["formats"], serde_json::json!(["qcow2", "raw"]));
    assert_eq!(dib[0]["state"], "ready");
    assert_eq!(dib[0]["age"], 1_000_000);
    assert_eq!(dib[1]["image"], "other-image");
    assert_eq!(dib[1]["state"], "paused");
    let text = get(addr, "/dib-image-list").await;
    assert_eq!(columns(text.text()), ["ID", "Image", "Builder", "Formats", "State", "Age"]);
    assert_eq!(rows(text.text())[0][3], "qcow2,raw");

    let status = get_json(addr, "/image-status").await;
    let status = status.as_array().unwrap();
    assert_eq!(status[0]["image"], "fake-image");
    assert_eq!(status[0]["paused"], false);
    assert_eq!(status[0]["build_request"], "pending");
    assert!(status[0]["build_request_age"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(status[1]["paused"], true);
    assert_eq!(status[1]["build_request"], Value::Null);
    let text = get(addr, "/image-status").await;
    let table = rows(text.text());
    assert_eq!(table[0][1], "False");
    assert_eq!(table[1][1..], ["True", "", ""]);

    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_zookeeper_session_and_caches() {
    let t = TestZk::new().await;
    let (launcher, addr) = start(&t).await;
    let r = get(addr, "/ready").await;
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
    // With JSON accepted the body is still the bare text.
    let r = http(addr, "GET", "/ready", &[("Accept", "application/json")]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
    launcher.stop().await;

    // A server of its own on a second session: not ready once that session
    // is closed.
    let t2 = t.second().await;
    let sources = Sources {
        zk: t2.zk.clone(),
        nodes: NodeCache::start(&t2.zk),
        requests: RequestCache::start(&t2.zk),
        pools: PoolComponentCache::start(&t2.zk),
    };
    let listen = np_config::WebApp { port: 0, listen_address: "127.0.0.1".into() };
    let metrics = Metrics::new(&config()).unwrap();
    let cancel = CancellationToken::new();
    let web = WebServer::start(&listen, sources.clone(), metrics, cancel.clone()).await.unwrap();
    let addr = web.local_addr();
    assert!(sources.nodes.wait_ready(Duration::from_secs(10)).await);
    assert!(
        eventually(Duration::from_secs(10), || async { get(addr, "/ready").await.status == 200 }).await,
        "ready once the caches are loaded"
    );
    t2.zk.close();
    let r = get(addr, "/ready").await;
    assert_eq!(r.status, 503, "{r:?}");
    // Cancelling the token shuts the server down.
    cancel.cancel();
    assert!(
        eventually(Duration::from_secs(5), || async { tokio::net::TcpStream::connect(addr).await.is_err() })
            .await
    );
    web.stop().await;

    // A port in use is an error.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen =
        np_config::WebApp { port: busy.local_addr().unwrap().port(), listen_address: "127.0.0.1".into() };
    let t3 = t.second().await;
    let sources = Sources {
        zk: t3.zk.clone(),
        nodes: NodeCache::start(&t3.zk),
        requests: RequestCache::start(&t3.zk),
        pools: PoolComponentCache::start(&t3.zk),
    };
    let err = WebServer::start(&listen, sources, Metrics::new(&config()).unwrap(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot listen"), "{err}");
}

/// The value of one sample line, `name{labels} value`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_families_and_histograms() {
    let t = TestZk::new().await;
    let (launcher, addr) = start(&t).await;
    fulfilled_request(&t, &["small"]).await;

    let m = launcher.metrics();
    m.record_fulfilled("fake-provider", Duration::from_millis(1500));
    m.record_fulfilled("fake-provider", Duration::from_millis(300));
    for (result, duration) in
        [(LaunchResult::Ready, Duration::from_secs(3)), (LaunchResult::Quota, Duration::from_millis(10))]
    {
        m.record_launch(&Launch {
            provider: "fake-provider",
            label: "small",
            az: None,
            requestor: None,
            result,
            duration,
        });
    }
    m.record_leaked("fake-provider", "instances", 2);

    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = &r.body;
    for family in [
        "nodepool_nodes",
        "nodepool_provider_nodes",
        "nodepool_label_nodes",
        "nodepool_requests",
        "nodepool_pool_addressable_requests",
        "nodepool_pool_paused",
        "nodepool_provider_max_servers",
        "nodepool_launch_total",
        "nodepool_launch_duration_seconds",
        "nodepool_request_fulfillment_seconds",
        "nodepool_provider_leaked_total",
        "nodepool_zk_connected",
        "nodepool_cache_records",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} missing:\n{text}");
    }
    assert!(text.contains("# TYPE nodepool_request_fulfillment_seconds histogram"));
    assert!(text.contains("# TYPE nodepool_launch_duration_seconds histogram"));
    // Histograms: the real fulfilment (wired in the pool worker) plus the two
    // recorded here; the real ready launch plus the 3 s one.
    assert_eq!(
        sample(text, "nodepool_request_fulfillment_seconds_count{provider=\"fake-provider\"}"),
        Some(3.0)
    );
    let sum = sample(text, "nodepool_request_fulfillment_seconds_sum{provider=\"fake-provider\"}").unwrap();
    assert!((1.8..5.0).contains(&sum), "{sum}");
    assert_eq!(
        sample(text, "nodepool_request_fulfillment_seconds_bucket{provider=\"fake-provider\",le=\"1\"}"),
        Some(2.0)
    );
    let launch = "{label=\"small\",provider=\"fake-provider\",result=\"ready\"}";
    assert_eq!(sample(text, &format!("nodepool_launch_total{launch}")), Some(2.0));
    let launched = sample(text, &format!("nodepool_launch_duration_seconds_sum{launch}")).unwrap();
    assert!((3.0..6.0).contains(&launched), "{launched}");
    assert_eq!(
        sample(
            text,
            "nodepool_launch_total{label=\"small\",provider=\"fake-provider\",result=\"error.quota\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(text, "nodepool_provider_leaked_total{provider=\"fake-provider\",resource=\"instances\"}"),
        Some(2.0)
    );
    // Computed from the caches: the fulfilled node, pre-set zeros, limits.
    assert_eq!(sample(text, "nodepool_nodes{state=\"ready\"}"), Some(1.0));
    assert_eq!(sample(text, "nodepool_nodes{state=\"deleting\"}"), Some(0.0));
    assert_eq!(
        sample(text, "nodepool_provider_nodes{provider=\"fake-provider\",state=\"ready\"}"),
        Some(1.0)
    );
    assert_eq!(sample(text, "nodepool_label_nodes{label=\"small\",state=\"ready\"}"), Some(1.0));
    assert_eq!(sample(text, "nodepool_label_nodes{label=\"large\",state=\"ready\"}"), Some(0.0));
    assert_eq!(sample(text, "nodepool_requests{state=\"fulfilled\"}"), Some(1.0));
    assert_eq!(sample(text, "nodepool_requests{state=\"requested\"}"), Some(0.0));
    assert_eq!(sample(text, "nodepool_pool_paused{pool=\"main\",provider=\"fake-provider\"}"), Some(0.0));
    assert_eq!(
        sample(text, "nodepool_pool_addressable_requests{pool=\"main\",provider=\"fake-provider\"}"),
        Some(1.0)
    );
    assert_eq!(sample(text, "nodepool_provider_max_servers{provider=\"fake-provider\"}"), Some(10.0));
    assert_eq!(sample(text, "nodepool_zk_connected "), Some(1.0));

    launcher.stop().await;
}

/// Masks `DD:HH:MM:SS` ages (same width) so tables taken a second apart compare.
fn mask_ages(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let window = &bytes[i..bytes.len().min(i + 11)];
        let is_age = window.len() == 11
            && window
                .iter()
                .enumerate()
                .all(|(j, b)| if j % 3 == 2 { *b == b':' } else { b.is_ascii_digit() });
        if is_age {
            out.push_str("XX:XX:XX:XX");
            i += 11;
        } else {
            out.push(char::from(bytes[i]));
            i += 1;
        }
    }
    out
}

/// Header box first, then the data rows sorted (Python lists in ZooKeeper's
/// child order; column widths do not depend on row order).
fn normalised(table: &str) -> Vec<String> {
    let masked = mask_ages(table.trim_end());
    let lines: Vec<String> = masked.lines().map(str::to_owned).collect();
    let mut body: Vec<String> = lines[3..].to_vec();
    body.sort();
    lines[..3].iter().cloned().chain(body).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_tables_match_the_python_cli() {
    let t = TestZk::new().await;
    let (launcher, addr) = start(&t).await;
    fulfilled_request(&t, &["small", "large"]).await;
    fulfilled_request(&t, &["small"]).await;
    let mut build = ImageBuild::new(BuildState::Ready);
    build.builder = Some("builder-host".into());
    build.formats = vec!["qcow2".into()];
    let b = t.zk.store_build("fake-image", None, &build).await.unwrap();
    let mut up = ImageUpload::new(UploadState::Ready);
    up.external_id = Some("ext-1".into());
    t.zk.store_upload("fake-image", &b, "fake-provider", None, &up).await.unwrap();

    // Python Nodepool 11's `nodepool` prints the same tables as its web app.
    let dir = common::scratch_dir("np-webapp");
    // Python needs TLS: the same server's TLS port, the same chroot.
    let hosts = np_testing::env("NP_ZK_TLS_HOSTS");
    let (host, port) = hosts.rsplit_once(':').unwrap();
    let conf = dir.join("nodepool.yaml");
    let tls = format!(
        "zookeeper-tls:\n  ca: {}\n  cert: {}\n  key: {}\n",
        np_testing::env("NP_ZK_TLS_CA"),
        np_testing::env("NP_ZK_TLS_CERT"),
        np_testing::env("NP_ZK_TLS_KEY")
    );
    std::fs::write(
        &conf,
        format!("zookeeper-servers:\n  - host: {host}\n    port: {port}\n    chroot: {}\n{tls}", t.chroot),
    )
    .unwrap();
    let python_cli =
        std::path::PathBuf::from(np_testing::env("NP_PYTHON")).parent().unwrap().join("nodepool");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&python_cli).arg("-c").arg(&conf).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    for (path, args) in [
        ("/request-list", &["request-list"][..]),
        ("/node-list", &["list", "--detail"][..]),
        ("/node-list?fields=id,provider,label,server_id,public_ipv4,ipv6,state,age,locked", &["list"][..]),
        ("/image-list", &["image-list"][..]),
        ("/dib-image-list", &["dib-image-list"][..]),
        ("/image-status", &["image-status"][..]),
    ] {
        let ours = get(addr, path).await.text().to_owned();
        let python = tokio::task::block_in_place(|| run(args));
        assert_eq!(
            normalised(&ours),
            normalised(&python),
            "{path}\n--- ours ---\n{ours}\n--- python ---\n{python}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    launcher.stop().await;
}

/// A client that connects and sends nothing, or dribbles an incomplete
/// request head, is disconnected after the header-read timeout, and the web
/// app keeps answering meanwhile (the chaos suite's slowloris connections
/// stayed open forever, issue 11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_disconnected() {
    let t = TestZk::new().await;
    let (launcher, addr) = start(&t).await;
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /node-list HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let started = std::time::Instant::now();
    let dribble = async {
        // One more byte every second: never a whole head.
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if slow.write_all(b"a").await.is_err() {
                return;
            }
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(10), slow.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => {}
            }
        }
    };
    let mut buf = [0u8; 64];
    let (silent_closed, ()) =
        tokio::join!(tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buf)), async {
            let _ = tokio::time::timeout(Duration::from_secs(20), dribble).await;
        });
    assert!(matches!(silent_closed, Ok(Ok(0)) | Ok(Err(_))), "the silent client was not disconnected");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(9) && took < Duration::from_secs(15), "{took:?}");
    assert_eq!(get(addr, "/ready").await.status, 200);
    launcher.stop().await;
}
