//! Test support: a moto server on loopback, a Service Quotas stub, and a
//! fault injector for the errors moto cannot produce.
//!
//! * [`moto`] starts one `moto` server per test process with the venv's
//!   python (`NP_PYTHON`, else `.venv`, made by `tools/setup.sh`) on a free 127.0.0.1 port. The
//!   server exits when the test process does (it watches its stdin).
//! * [`TestEnv::new`] serialises the tests of a process (they share the
//!   server), resets moto (`POST /moto-api/reset`) and starts a Service Quotas
//!   stub (`ServiceQuotasV20190624.ListServiceQuotas`, which moto answers with 500).
//! * [`Faults`] is an SDK interceptor: an armed fault replaces one operation's
//!   request by a harmless `DescribeAvailabilityZones` (so moto changes
//!   nothing) and its answer by an EC2 error with the chosen code.
//! * `moto_server.py` adds VM Import tasks (`ImportSnapshot`, `ImportImage`
//!   and their Describe calls) to moto, which lacks them: a task reads the
//!   object staged in moto's S3 and completes on its second describe, leaving
//!   an untagged snapshot (or AMI) as EC2 does.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_ec2 as ec2;
use aws_sdk_ec2::config::interceptors::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextMut,
};
use aws_sdk_ec2::config::{BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents};
use aws_sdk_servicequotas as sq;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use np_driver_aws::{AwsClients, AwsProvider, AwsSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const REGION: &str = "us-west-2";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The venv's python: `NP_PYTHON` (set by `tools/test-env.sh`), else
/// `$NP_VENV/bin/python`, else the repository's `.venv`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("NP_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = std::env::var_os("NP_VENV").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv"));
    venv.join("bin/python")
}

/// The moto server of this test process.
pub struct Moto {
    pub endpoint: String,
    pub port: u16,
    _child: Mutex<Child>,
}

/// Starts (once) and returns the moto server.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let python = python();
        let moto_ok = Command::new(&python)
            .args(["-c", "import moto.server, flask, werkzeug"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            moto_ok,
            "moto is not installed for {}: tools/setup.sh must install moto[server]",
            python.display()
        );
        // Relative to the crates directory, so crates that include this
        // module with #[path] (the launcher's end-to-end test) find it too.
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../np-driver-aws/tests/support/moto_server.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let stdout = child.stdout.take().expect("moto stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read moto port");
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("moto did not start: {line:?}"));
        Moto { endpoint: format!("http://127.0.0.1:{port}"), port, _child: Mutex::new(child) }
    })
}

async fn http(port: u16, method: &str, path: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// The provider name every AWS test configuration uses.
pub const PROVIDER: &str = "ec2-us-west-2";

/// A `nodepool.yaml` with one AWS provider on moto's Ubuntu cloud image;
/// `labels` is the pool's label list (indented for the pool), `pool_extra`
/// and `provider_extra` more pool and provider keys.
/// The label `ubuntu` of [`aws_yaml`]'s pool: a t3.medium instance of the
/// cloud image `ubuntu` with the key pair `zuul`.
pub const UBUNTU: &str = "          - name: ubuntu\n            cloud-image: ubuntu\n            instance-type: t3.medium\n            key-name: zuul\n";

/// A configuration with `diskimages` (each built with the element `vm`)
/// and the provider whose label `built` boots `image` (a t3.medium with
/// the key pair `zuul`). YAML lines indented for their place: more keys of
/// the provider, its `diskimages:` entries, more keys of its pool.
pub fn diskimage_yaml(
    diskimages: &[&str],
    provider_extra: &str,
    uploads: &str,
    pool_extra: &str,
    image: &str,
) -> String {
    let diskimages: String =
        diskimages.iter().map(|d| format!("  - name: {d}\n    elements: [vm]\n")).collect();
    format!(
        r#"
zookeeper-servers:
  - host: 127.0.0.1
labels:
  - name: built
diskimages:
{diskimages}providers:
  - name: {PROVIDER}
    driver: aws
    region-name: us-west-2
    rate: 100
{provider_extra}    diskimages:
{uploads}    pools:
      - name: main
{pool_extra}        labels:
          - name: built
            diskimage: {image}
            instance-type: t3.medium
            key-name: zuul
"#
    )
}

pub fn aws_yaml(labels: &str, pool_extra: &str, provider_extra: &str) -> String {
    format!(
        r#"
zookeeper-servers:
  - host: 127.0.0.1
labels:
  - name: ubuntu
  - name: spot
  - name: big
  - name: bogus
  - name: dedicated
providers:
  - name: {PROVIDER}
    driver: aws
    region-name: us-west-2
    rate: 100
{provider_extra}
    cloud-images:
      - name: ubuntu
        username: ubuntu
        image-filters:
          - name: name
            values: ["*ubuntu*"]
    pools:
      - name: main
        host-key-checking: false
{pool_extra}
        labels:
{labels}
"#
    )
}

/// One test's environment.
pub struct TestEnv {
    pub moto: &'static Moto,
    pub quotas: QuotaStub,
    pub faults: Faults,
    _guard: tokio::sync::MutexGuard<'static, ()>,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let guard = LOCK.lock().await;
        let moto = tokio::task::spawn_blocking(moto).await.unwrap();
        assert_eq!(http(moto.port, "POST", "/moto-api/reset").await, 200, "moto reset");
        TestEnv { moto, quotas: QuotaStub::start().await, faults: Faults::default(), _guard: guard }
    }

    /// Runs Python `code` (after `import boto3`) against moto, for setup the
    /// Rust SDK crates of this project cannot do (IAM).
    pub fn boto(&self, code: &str) {
        let out = Command::new(python())
            .args(["-c", &format!("import boto3\n{code}")])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_ENDPOINT_URL", &self.moto.endpoint)
            .output()
            .expect("run python");
        assert!(out.status.success(), "boto3: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Raw EC2 client on moto (no faults), for planting and checking.
    pub fn ec2(&self) -> ec2::Client {
        ec2::Client::from_conf(
            ec2::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new(REGION))
                .endpoint_url(&self.moto.endpoint)
                .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
                .build(),
        )
    }

    /// Clients for a provider: EC2 on moto with the fault injector, Service
    /// Quotas on the stub; SDK retries off so injected faults reach the driver.
    pub fn clients(&self) -> AwsClients {
        let creds = Credentials::new("testing", "testing", None, None, "test");
        let ec2 = ec2::Client::from_conf(
            ec2::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new(REGION))
                .endpoint_url(&self.moto.endpoint)
                .credentials_provider(creds.clone())
                .retry_config(ec2::config::retry::RetryConfig::disabled())
                .interceptor(self.faults.clone())
                .build(),
        );
        let quotas = sq::Client::from_conf(
            sq::Config::builder()
                .behavior_version(sq::config::BehaviorVersion::latest())
                .region(sq::config::Region::new(REGION))
                .endpoint_url(&self.quotas.endpoint)
                .credentials_provider(creds)
                .retry_config(sq::config::retry::RetryConfig::disabled())
                .build(),
        );
        let ebs = aws_sdk_ebs::Client::from_conf(
            aws_sdk_ebs::Config::builder()
                .behavior_version(aws_sdk_ebs::config::BehaviorVersion::latest())
                .region(aws_sdk_ebs::config::Region::new(REGION))
                .endpoint_url(&self.moto.endpoint)
                .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
                .build(),
        );
        let s3 = aws_sdk_s3::Client::from_conf(
            self.s3_config()
                .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
                .interceptor(self.faults.clone())
                .build(),
        );
        AwsClients { ec2, quotas, ebs, s3 }
    }

    fn s3_config(&self) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(REGION))
            .endpoint_url(&self.moto.endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
    }

    /// Raw S3 client on moto (path-style buckets, as moto serves them on
    /// loopback), for planting and checking.
    pub fn s3(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(self.s3_config().build())
    }

    /// Creates the S3 bucket `name` in the test region.
    pub async fn bucket(&self, name: &str) {
        use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
        self.s3()
            .create_bucket()
            .bucket(name)
            .create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(REGION))
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }

    /// The keys in bucket `name`.
    pub async fn keys(&self, name: &str) -> Vec<String> {
        let listed = self.s3().list_objects_v2().bucket(name).send().await.unwrap();
        listed.contents().iter().filter_map(|o| o.key()).map(str::to_owned).collect()
    }

    /// Fast settings for tests.
    pub fn settings() -> AwsSettings {
        AwsSettings {
            cache_ttl: Duration::from_millis(300),
            quota_cache_ttl: Duration::from_secs(300),
            image_cache_ttl: Duration::from_secs(300),
            poll_interval: Duration::from_millis(100),
            terminate_batch_window: Duration::from_millis(200),
            service_quotas: true,
            import_poll_interval: Duration::from_millis(50),
            s3_part_size: 5 * 1024 * 1024,
        }
    }

    /// A provider named `name` from a `nodepool.yaml` text.
    pub async fn provider(&self, yaml: &str, name: &str) -> AwsProvider {
        let cfg = aws_config(yaml, name);
        AwsProvider::with_clients(name, &cfg, self.clients(), Self::settings()).await.unwrap()
    }
}

/// The AWS provider `name` of a `nodepool.yaml` text.
pub fn aws_config(yaml: &str, name: &str) -> np_config::AwsProvider {
    let config = np_config::load_str(yaml, "nodepool.yaml").unwrap_or_else(|e| panic!("config: {e}"));
    let p = config.providers.iter().find(|p| p.name == name).expect("provider");
    match &p.driver {
        np_config::ProviderDriver::Aws(a) => a.clone(),
        _ => panic!("not aws"),
    }
}

/// A loopback stub of Service Quotas `ListServiceQuotas`.
pub struct QuotaStub {
    pub endpoint: String,
    pub quotas: Arc<Mutex<HashMap<String, HashMap<String, f64>>>>,
    pub calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for QuotaStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl QuotaStub {
    async fn start() -> QuotaStub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let quotas: Arc<Mutex<HashMap<String, HashMap<String, f64>>>> = Arc::default();
        let calls = Arc::new(AtomicU64::new(0));
        let (q, c) = (quotas.clone(), calls.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (q, c) = (q.clone(), c.clone());
                tokio::spawn(async move {
                    let _ = serve_quotas(stream, q, c).await;
                });
            }
        });
        QuotaStub { endpoint: format!("http://127.0.0.1:{port}"), quotas, calls, task }
    }

    /// Sets the quotas of `service` (`ec2`, `ebs`).
    pub fn set(&self, service: &str, values: &[(&str, f64)]) {
        self.quotas
            .lock()
            .unwrap()
            .insert(service.into(), values.iter().map(|(k, v)| (k.to_string(), *v)).collect());
    }
}

async fn serve_quotas(
    mut stream: TcpStream,
    quotas: Arc<Mutex<HashMap<String, HashMap<String, f64>>>>,
    calls: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        // One request: headers, then Content-Length bytes of JSON.
        let header_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < header_end + len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: serde_json::Value =
            serde_json::from_slice(&buf[header_end..header_end + len]).unwrap_or_default();
        buf.drain(..header_end + len);
        calls.fetch_add(1, Ordering::Relaxed);
        let (status, reply) = if head.contains(".listservicequotas\r\n") {
            let service = body.get("ServiceCode").and_then(|s| s.as_str()).unwrap_or("").to_owned();
            let map = quotas.lock().unwrap().get(&service).cloned().unwrap_or_default();
            let list: Vec<serde_json::Value> = map
                .iter()
                .map(|(k, v)| serde_json::json!({"ServiceCode": service, "QuotaCode": k, "Value": v}))
                .collect();
            (200, serde_json::json!({"Quotas": list}))
        } else {
            eprintln!("quota stub: unexpected request {head:?}");
            (400, serde_json::json!({"__type": "InvalidParameterValueException", "message": "stub"}))
        };
        let text = reply.to_string();
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        stream.write_all(resp.as_bytes()).await?;
    }
}

/// An armed fault: the next `count` calls of `operation` fail with `code`.
#[derive(Debug, Clone)]
struct Fault {
    operation: String,
    code: String,
    count: u32,
}

/// The injected code, and whether the call was an S3 one (S3 answers
/// errors in its own XML shape).
#[derive(Debug, Clone)]
struct FaultHit(String, bool);

impl Storable for FaultHit {
    type Storer = StoreReplace<Self>;
}

/// SDK interceptor injecting EC2 error codes (on the provider's EC2 and S3
/// clients; it records the requests of both).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    armed: Arc<Mutex<Vec<Fault>>>,
    pub hits: Arc<AtomicU64>,
    /// (operation, query-string body) of every EC2 request sent.
    pub requests: Arc<Mutex<Vec<(String, String)>>>,
}

impl Faults {
    /// The bodies of the `operation` requests sent so far.
    pub fn sent(&self, operation: &str) -> Vec<String> {
        self.requests.lock().unwrap().iter().filter(|(o, _)| o == operation).map(|(_, b)| b.clone()).collect()
    }

    /// The next `count` calls of `operation` (e.g. `RunInstances`) fail with `code`.
    pub fn arm(&self, operation: &str, code: &str, count: u32) {
        self.armed.lock().unwrap().push(Fault { operation: operation.into(), code: code.into(), count });
    }
}

impl Intercept for Faults {
    fn name(&self) -> &'static str {
        "FaultInjector"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some((op, s3)) =
            cfg.load::<Metadata>().map(|m| (m.name().to_owned(), m.service().eq_ignore_ascii_case("s3")))
        else {
            return Ok(());
        };
        let body = context.request().body().bytes().map(|b| String::from_utf8_lossy(b).into_owned());
        self.requests.lock().unwrap().push((op.clone(), body.unwrap_or_default()));
        let mut armed = self.armed.lock().unwrap();
        let Some(f) = armed.iter_mut().find(|f| f.operation == op && f.count > 0) else { return Ok(()) };
        f.count -= 1;
        let code = f.code.clone();
        drop(armed);
        // Send something harmless instead, so moto changes nothing:
        // DescribeAvailabilityZones for EC2, ListBuckets for S3.
        let req = context.request_mut();
        if s3 {
            let uri = req.uri().to_owned();
            let host_start = uri.find("://").map_or(0, |i| i + 3);
            let host_end = uri[host_start..].find('/').map_or(uri.len(), |i| host_start + i);
            let root = format!("{}/", &uri[..host_end]);
            req.set_method("GET")?;
            req.set_uri(root)?;
            *req.body_mut() = SdkBody::empty();
            req.headers_mut().insert("content-length", "0");
        } else {
            let body = "Action=DescribeAvailabilityZones&Version=2016-11-15";
            *req.body_mut() = SdkBody::from(body);
            req.headers_mut().insert("content-length", body.len().to_string());
        }
        cfg.interceptor_state().store_put(FaultHit(code, s3));
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(FaultHit(code, s3)) = cfg.load::<FaultHit>().cloned() else { return Ok(()) };
        self.hits.fetch_add(1, Ordering::Relaxed);
        let xml = if s3 {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                 <Message>injected {code}</Message><RequestId>fault</RequestId></Error>"
            )
        } else {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
                 <Message>injected {code}</Message></Error></Errors><RequestID>fault</RequestID></Response>"
            )
        };
        let resp = context.response_mut();
        let status: u16 = if code.starts_with("Internal") { 500 } else { 400 };
        *resp.status_mut() = status.try_into().map_err(|e| format!("{e:?}"))?;
        resp.headers_mut().insert("content-length", xml.len().to_string());
        *resp.body_mut() = SdkBody::from(xml);
        Ok(())
    }
}
