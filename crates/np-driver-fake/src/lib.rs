//! `driver: fake`: an in-process simulated cloud.
//!
//! It takes the same provider configuration as Python Nodepool's fake driver
//! (the OpenStack schema: `cloud`, `cloud-images`, `flavor-name`, labels) and
//! behaves like a small cloud: instances take [`FakeSettings::launch_delay`]
//! to become active, consume quota (4 cores, 8192 MiB per instance, as the
//! upstream fake flavor), and carry the Nodepool metadata so leak cleanup can
//! find them. A shared [`FakeCloud`] handle lets tests and benchmarks inject
//! failures (launch errors, quota errors, stuck deletes) and plant leaked
//! instances. Addresses handed out are loopback addresses only.
//!
//! A cloud lives in the launcher's memory, so it is gone when the process
//! is. With `NODEPOOL_FAKE_STATE_DIR` set ([`STATE_DIR_ENV`]), its instances
//! are kept in `<dir>/<provider>.json` instead ([`FakeCloud::persistent`]):
//! they outlive a killed launcher, as a real cloud's do, and launchers
//! started with the same directory share them (every change takes an
//! exclusive `flock` on `<dir>/<provider>.lock` and rewrites the file
//! atomically). The chaos suite uses it to count leaked instances.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use np_core::Quota;
use np_provider::{
    CreateMachine, DeleteMachine, Instance, InstanceUsage, LaunchRequest, Provider, ProviderError,
    RateLimiter, Step,
};
use serde_json::Value;

/// Cores per fake instance (upstream's "Fake Flavor").
pub const FAKE_CORES: f64 = 4.0;
/// RAM (MiB) per fake instance.
pub const FAKE_RAM: f64 = 8192.0;

/// Behaviour knobs.
#[derive(Debug, Clone)]
pub struct FakeSettings {
    /// Time from create to active.
    pub launch_delay: Duration,
    /// Cloud limits; `None` = unlimited.
    pub max_instances: Option<u64>,
    pub max_cores: Option<u64>,
    pub max_ram: Option<u64>,
    /// Report the limits to the launcher but let creates succeed anyway (a
    /// cloud whose quota API disagrees with what it enforces).
    pub report_only: bool,
    /// Give every instance this (loopback) address instead of a generated one.
    pub address: Option<String>,
    /// Report no host keys, so the launcher has to scan them.
    pub without_host_keys: bool,
    /// Time an image upload takes.
    pub upload_delay: Duration,
    /// The limits call never answers (a cloud API that hangs).
    pub hang_quota: bool,
}

impl Default for FakeSettings {
    fn default() -> Self {
        FakeSettings {
            launch_delay: Duration::ZERO,
            max_instances: None,
            max_cores: None,
            max_ram: None,
            report_only: false,
            address: None,
            without_host_keys: false,
            upload_delay: Duration::ZERO,
            hang_quota: false,
        }
    }
}

/// The environment variable naming the directory of persistent fake clouds.
pub const STATE_DIR_ENV: &str = "NODEPOOL_FAKE_STATE_DIR";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct FakeServer {
    id: String,
    /// When it becomes active (seconds since the epoch).
    ready_at: f64,
    metadata: BTreeMap<String, String>,
    ip: String,
    /// The uploaded image it boots (diskimage labels).
    image: Option<String>,
}

/// An uploaded image in the fake cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeImage {
    /// Its cloud id.
    pub id: String,
    /// The name it was uploaded under.
    pub name: String,
    /// Its disk format.
    pub format: String,
    /// The file's size.
    pub size: u64,
    /// The metadata it carries.
    pub metadata: BTreeMap<String, String>,
}

/// What a persistent cloud keeps in its file.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Stored {
    servers: BTreeMap<String, FakeServer>,
}

/// The file of a persistent cloud, and its lock.
#[derive(Debug)]
struct Store {
    path: PathBuf,
    lock: PathBuf,
}

impl Store {
    /// Runs `f` on the stored servers under the file lock (exclusive when
    /// `write`, and then the result is written back atomically).
    fn with<R>(&self, write: bool, f: impl FnOnce(&mut BTreeMap<String, FakeServer>) -> R) -> R {
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&self.lock);
        let lock = match lock {
            Ok(file) => {
                let locked = if write { file.lock() } else { file.lock_shared() };
                locked.ok().map(|_| file)
            }
            Err(_) => None,
        };
        let mut stored: Stored = std::fs::read(&self.path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let out = f(&mut stored.servers);
        if write {
            let tmp = self.path.with_extension("json.tmp");
            let written = serde_json::to_vec(&stored)
                .map_err(std::io::Error::other)
                .and_then(|bytes| std::fs::write(&tmp, bytes))
                .and_then(|()| std::fs::rename(&tmp, &self.path));
            if let Err(e) = written {
                // A simulation only: say so loudly, but keep the launcher going.
                eprintln!("fake cloud: cannot write {}: {e}", self.path.display());
            }
        }
        drop(lock);
        out
    }
}

fn epoch_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[derive(Debug, Default)]
struct CloudState {
    /// The instances, unless the cloud is persistent ([`FakeCloud::store`]).
    servers: BTreeMap<String, FakeServer>,
    images: BTreeMap<String, FakeImage>,
    fail_uploads: u32,
    fail_image_deletes: u32,
    image_deletes: u64,
    fail_launches: u32,
    quota_errors: u32,
    stuck_deletes: bool,
    creates: u64,
    deletes: u64,
    quota_rejections: u64,
}

/// The simulated cloud, shared by providers and test code.
#[derive(Debug, Clone)]
pub struct FakeCloud {
    name: String,
    settings: Arc<Mutex<FakeSettings>>,
    state: Arc<Mutex<CloudState>>,
    counter: Arc<AtomicU64>,
    /// Where a persistent cloud keeps its instances.
    store: Option<Arc<Store>>,
}

impl FakeCloud {
    /// A new, empty cloud.
    pub fn new(name: &str, settings: FakeSettings) -> Self {
        FakeCloud {
            name: name.to_owned(),
            settings: Arc::new(Mutex::new(settings)),
            state: Arc::new(Mutex::new(CloudState::default())),
            counter: Arc::new(AtomicU64::new(1)),
            store: None,
        }
    }

    /// A cloud whose instances live in `<dir>/<name>.json` (see the
    /// module's documentation): it starts with the instances the file holds.
    pub fn persistent(name: &str, settings: FakeSettings, dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let store = Store { path: dir.join(format!("{name}.json")), lock: dir.join(format!("{name}.lock")) };
        Ok(FakeCloud { store: Some(Arc::new(store)), ..FakeCloud::new(name, settings) })
    }

    /// Reads the instances.
    fn servers<R>(&self, f: impl FnOnce(&BTreeMap<String, FakeServer>) -> R) -> R {
        match &self.store {
            Some(store) => store.with(false, |s| f(s)),
            None => f(&self.state().servers),
        }
    }

    /// Changes the instances.
    fn servers_mut<R>(&self, f: impl FnOnce(&mut BTreeMap<String, FakeServer>) -> R) -> R {
        match &self.store {
            Some(store) => store.with(true, f),
            None => f(&mut self.state().servers),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CloudState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settings(&self) -> FakeSettings {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the settings.
    pub fn set_settings(&self, settings: FakeSettings) {
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) = settings;
    }

    /// The next `n` creates fail with a fatal error.
    pub fn fail_next_launches(&self, n: u32) {
        self.state().fail_launches = n;
    }

    /// The next `n` creates fail with a quota error.
    pub fn quota_error_next_launches(&self, n: u32) {
        self.state().quota_errors = n;
    }

    /// Deletes never finish while set.
    pub fn set_stuck_deletes(&self, stuck: bool) {
        self.state().stuck_deletes = stuck;
    }

    /// Plants an instance that no ZooKeeper node knows about.
    pub fn plant_instance(&self, metadata: BTreeMap<String, String>) -> String {
        let id = self.next_id();
        let server = FakeServer {
            id: id.clone(),
            ready_at: epoch_now(),
            metadata,
            ip: "127.0.0.1".into(),
            image: None,
        };
        self.servers_mut(|s| s.insert(id.clone(), server));
        id
    }

    /// Removes an instance as if someone deleted it outside Nodepool.
    pub fn remove_instance(&self, id: &str) -> bool {
        self.servers_mut(|s| s.remove(id).is_some())
    }

    /// Ids of the instances that exist.
    pub fn server_ids(&self) -> Vec<String> {
        self.servers(|s| s.keys().cloned().collect())
    }

    /// The uploaded image (its cloud id) a server boots, for diskimage labels.
    pub fn server_image(&self, id: &str) -> Option<String> {
        self.servers(|s| s.get(id).and_then(|s| s.image.clone()))
    }

    /// The images uploaded so far (and not deleted).
    pub fn images(&self) -> Vec<FakeImage> {
        self.state().images.values().cloned().collect()
    }

    /// The next `n` image uploads fail.
    pub fn fail_next_uploads(&self, n: u32) {
        self.state().fail_uploads = n;
    }

    /// The next `n` image deletes fail.
    pub fn fail_next_image_deletes(&self, n: u32) {
        self.state().fail_image_deletes = n;
    }

    /// Image delete calls so far (failed ones included).
    pub fn image_deletes(&self) -> u64 {
        self.state().image_deletes
    }

    /// Injected quota errors not handed out yet.
    pub fn quota_errors_left(&self) -> u32 {
        self.state().quota_errors
    }

    /// Creates refused because the simulated quota was exhausted.
    pub fn quota_rejections(&self) -> u64 {
        self.state().quota_rejections
    }

    /// (creates, deletes) so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state();
        (s.creates, s.deletes)
    }

    fn next_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("fake-{:08x}-{n:06}", std::process::id())
    }

    fn usage(&self) -> (u64, f64, f64) {
        let n = self.servers(|s| s.len() as u64);
        (n, n as f64 * FAKE_CORES, n as f64 * FAKE_RAM)
    }
}

/// A provider on a [`FakeCloud`].
#[derive(Debug, Clone)]
pub struct FakeProvider {
    cloud: FakeCloud,
    region: Option<String>,
    limiter: Arc<RateLimiter>,
}

impl FakeProvider {
    /// A provider named after the cloud.
    pub fn new(cloud: FakeCloud, region: Option<String>) -> Self {
        FakeProvider { cloud, region, limiter: Arc::new(RateLimiter::new(0.0)) }
    }

    /// Spaces the cloud API calls (server create and delete) `seconds`
    /// apart, as upstream's OpenStack-based fake does with the provider's
    /// `rate` (default 1 s; upstream's test fixtures use 0.0001).
    pub fn with_rate(mut self, seconds: f64) -> Self {
        self.limiter = Arc::new(RateLimiter::every(seconds));
        self
    }

    /// The API call limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The underlying cloud.
    pub fn cloud(&self) -> &FakeCloud {
        &self.cloud
    }
}

struct FakeCreate {
    cloud: FakeCloud,
    limiter: Arc<RateLimiter>,
    request: LaunchRequest,
    region: Option<String>,
    server: Option<String>,
}

#[async_trait]
impl CreateMachine for FakeCreate {
    async fn step(&mut self) -> Result<Step<Instance>, ProviderError> {
        let settings = self.cloud.settings();
        let Some(id) = self.server.clone() else {
            self.limiter.acquire().await;
            let (count, cores, ram) = self.cloud.usage();
            {
                let mut state = self.cloud.state();
                if state.quota_errors > 0 {
                    state.quota_errors -= 1;
                    return Err(ProviderError::Quota("injected quota error".into()));
                }
                if state.fail_launches > 0 {
                    state.fail_launches -= 1;
                    return Err(ProviderError::Fatal("injected launch failure".into()));
                }
            }
            let over = !settings.report_only
                && (settings.max_instances.is_some_and(|m| count + 1 > m)
                    || settings.max_cores.is_some_and(|m| cores + FAKE_CORES > m as f64)
                    || settings.max_ram.is_some_and(|m| ram + FAKE_RAM > m as f64));
            if over {
                self.cloud.state().quota_rejections += 1;
                return Err(ProviderError::Quota("fake cloud quota exceeded".into()));
            }
            let id = self.cloud.next_id();
            let n = self.cloud.counter.load(Ordering::Relaxed);
            let ip = settings
                .address
                .clone()
                .unwrap_or_else(|| format!("127.0.{}.{}", (n / 250) % 250, n % 250 + 1));
            let server = FakeServer {
                id: id.clone(),
                ready_at: epoch_now() + settings.launch_delay.as_secs_f64(),
                metadata: self.request.metadata.clone(),
                ip,
                image: self.request.image_external_id.clone(),
            };
            self.cloud.state().creates += 1;
            self.cloud.servers_mut(|s| s.insert(id.clone(), server));
            self.server = Some(id);
            return Ok(Step::Pending(Duration::ZERO));
        };
        let server = self.cloud.servers(|s| s.get(&id).cloned());
        let Some(server) = server else {
            return Err(ProviderError::Fatal(format!("server {id} disappeared")));
        };
        let now = epoch_now();
        if server.ready_at > now {
            return Ok(Step::Pending(Duration::from_secs_f64(server.ready_at - now)));
        }
        Ok(Step::Done(Instance {
            external_id: Value::from(server.id.clone()),
            interface_ip: Some(server.ip.clone()),
            public_ipv4: Some(server.ip.clone()),
            private_ipv4: Some(server.ip),
            public_ipv6: None,
            az: Some("az1".into()),
            region: self.region.clone(),
            host_id: Some("fake-host".into()),
            cloud: Some(self.cloud.name.clone()),
            host_keys: if settings.without_host_keys { Vec::new() } else { vec!["ssh-rsa FAKEKEY".into()] },
            metadata: server.metadata,
            ..Instance::default()
        }))
    }

    fn external_id(&self) -> Option<Value> {
        self.server.clone().map(Value::from)
    }

    fn state(&self) -> &'static str {
        if self.server.is_some() {
            "building"
        } else {
            "start"
        }
    }
}

struct FakeDelete {
    cloud: FakeCloud,
    limiter: Arc<RateLimiter>,
    called: bool,
    id: Option<String>,
}

#[async_trait]
impl DeleteMachine for FakeDelete {
    async fn step(&mut self) -> Result<Step<()>, ProviderError> {
        if !self.called {
            self.called = true;
            self.limiter.acquire().await;
        }
        if self.cloud.state().stuck_deletes {
            return Ok(Step::Pending(Duration::from_millis(100)));
        }
        if let Some(id) = &self.id {
            if self.cloud.servers_mut(|s| s.remove(id).is_some()) {
                self.cloud.state().deletes += 1;
            }
        }
        Ok(Step::Done(()))
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn name(&self) -> &str {
        &self.cloud.name
    }

    fn create(&self, request: LaunchRequest) -> Box<dyn CreateMachine> {
        Box::new(FakeCreate {
            cloud: self.cloud.clone(),
            limiter: self.limiter.clone(),
            request,
            region: self.region.clone(),
            server: None,
        })
    }

    fn delete(&self, external_id: &Value) -> Box<dyn DeleteMachine> {
        Box::new(FakeDelete {
            cloud: self.cloud.clone(),
            limiter: self.limiter.clone(),
            called: false,
            id: external_id.as_str().map(str::to_owned),
        })
    }

    async fn list_instances(&self) -> Result<Vec<Instance>, ProviderError> {
        Ok(self.cloud.servers(|servers| {
            servers
                .values()
                .map(|s| Instance {
                    external_id: Value::from(s.id.clone()),
                    interface_ip: Some(s.ip.clone()),
                    metadata: s.metadata.clone(),
                    ..Instance::default()
                })
                .collect()
        }))
    }

    async fn quota_limits(&self) -> Result<Quota, ProviderError> {
        let s = self.cloud.settings();
        if s.hang_quota {
            std::future::pending::<()>().await;
        }
        let f = |v: Option<u64>| v.map(|v| v as f64);
        Ok(Quota::new(f(s.max_cores), f(s.max_instances), f(s.max_ram), f64::INFINITY))
    }

    fn quota_for_label(&self, _pool: &str, _label: &str) -> Quota {
        Quota::new(Some(FAKE_CORES), Some(1.0), Some(FAKE_RAM), 0.0)
    }

    async fn instance_usage(&self) -> Result<Vec<InstanceUsage>, ProviderError> {
        Ok(self.cloud.servers(|servers| {
            servers
                .values()
                .map(|s| InstanceUsage {
                    metadata: s.metadata.clone(),
                    quota: Quota::new(Some(FAKE_CORES), Some(1.0), Some(FAKE_RAM), 0.0),
                })
                .collect()
        }))
    }

    fn usage_refresh(&self) -> Option<Duration> {
        // The simulated cloud changes only through its API: re-checking
        // often costs nothing.
        Some(Duration::from_secs(1))
    }

    async fn upload_image(&self, request: &np_provider::ImageUploadRequest) -> Result<String, ProviderError> {
        let size = std::fs::metadata(&request.path)
            .map_err(|e| ProviderError::Fatal(format!("cannot read {}: {e}", request.path.display())))?
            .len();
        let delay = self.cloud.settings().upload_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.limiter.acquire().await;
        let mut state = self.cloud.state();
        if state.fail_uploads > 0 {
            state.fail_uploads -= 1;
            return Err(ProviderError::Fatal("injected upload failure".into()));
        }
        drop(state);
        let id = format!("image-{}", self.cloud.next_id());
        let image = FakeImage {
            id: id.clone(),
            name: request.name.clone(),
            format: request.format.clone(),
            size,
            metadata: request.metadata.clone(),
        };
        self.cloud.state().images.insert(id.clone(), image);
        Ok(id)
    }

    async fn delete_image(&self, external_id: &str) -> Result<(), ProviderError> {
        self.limiter.acquire().await;
        let mut state = self.cloud.state();
        state.image_deletes += 1;
        if state.fail_image_deletes > 0 {
            state.fail_image_deletes -= 1;
            return Err(ProviderError::Transient("injected image delete failure".into()));
        }
        state.images.remove(external_id);
        Ok(())
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// The pools of a fake provider as the launcher runs them (the fake cloud
/// is configured in the OpenStack schema).
pub fn pools(config: &np_config::OpenStackProvider) -> Vec<np_provider::PoolDescription> {
    np_provider::pools::openstack_schema_pools(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(m: &mut Box<dyn CreateMachine>) -> Result<Instance, ProviderError> {
        loop {
            match m.step().await? {
                Step::Done(i) => return Ok(i),
                Step::Pending(d) => std::thread::sleep(d),
            }
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        // A tiny executor is enough: fake steps never await anything pending.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn launch_quota_failure_injection_and_delete() {
        let cloud =
            FakeCloud::new("fake", FakeSettings { max_instances: Some(1), ..FakeSettings::default() });
        let p = FakeProvider::new(cloud.clone(), None);
        let mut m = p.create(LaunchRequest::new("0000000001", "fake", "main", "small"));
        let inst = block_on(run(&mut m)).unwrap();
        assert!(inst.interface_ip.as_deref().unwrap().starts_with("127."));
        assert_eq!(inst.metadata["nodepool_node_id"], "0000000001");
        let mut m2 = p.create(LaunchRequest::new("0000000002", "fake", "main", "small"));
        assert!(matches!(block_on(run(&mut m2)), Err(ProviderError::Quota(_))));
        let mut d = p.delete(&inst.external_id);
        assert_eq!(block_on(d.step()).unwrap(), Step::Done(()));
        cloud.fail_next_launches(1);
        let mut m3 = p.create(LaunchRequest::new("0000000003", "fake", "main", "small"));
        assert!(matches!(block_on(run(&mut m3)), Err(ProviderError::Fatal(_))));
        assert_eq!(cloud.counts(), (1, 1));
        assert!(block_on(p.list_instances()).unwrap().is_empty());
    }

    #[test]
    fn a_persistent_cloud_outlives_its_process_and_is_shared() {
        let dir = std::env::temp_dir().join(format!("np-fake-{}-{}", std::process::id(), line!()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = FakeCloud::persistent("p", FakeSettings::default(), &dir).unwrap();
        let p = FakeProvider::new(first.clone(), None);
        let mut m = p.create(LaunchRequest::new("0000000001", "p", "main", "small"));
        let inst = block_on(run(&mut m)).unwrap();
        let planted = first.plant_instance(BTreeMap::from([("k".to_owned(), "v".to_owned())]));
        drop((first, p));
        // A new process (a new cloud handle on the same directory) sees both,
        // and so does a second handle at the same time.
        let again = FakeCloud::persistent("p", FakeSettings::default(), &dir).unwrap();
        let other = FakeCloud::persistent("p", FakeSettings::default(), &dir).unwrap();
        let mut ids = again.server_ids();
        ids.sort();
        let mut want = vec![inst.external_id.as_str().unwrap().to_owned(), planted.clone()];
        want.sort();
        assert_eq!(ids, want);
        let listed = block_on(FakeProvider::new(other.clone(), None).list_instances()).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed
            .iter()
            .any(|i| i.metadata.get("nodepool_node_id").map(String::as_str) == Some("0000000001")));
        // A delete through one handle is seen through the other.
        let p2 = FakeProvider::new(again.clone(), None);
        assert_eq!(block_on(p2.delete(&inst.external_id).step()).unwrap(), Step::Done(()));
        assert_eq!(other.server_ids(), vec![planted.clone()]);
        assert!(other.remove_instance(&planted));
        assert!(again.server_ids().is_empty());
        // Another cloud name in the same directory is another cloud.
        assert!(FakeCloud::persistent("q", FakeSettings::default(), &dir).unwrap().server_ids().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn rate_spaces_creates_and_deletes() {
        let p = FakeProvider::new(FakeCloud::new("fake", FakeSettings::default()), None).with_rate(0.05);
        let start = std::time::Instant::now();
        let mut ids = Vec::new();
        for n in 0..3 {
            let mut m = p.create(LaunchRequest::new(&format!("000000000{n}"), "fake", "main", "small"));
            ids.push(run(&mut m).await.unwrap().external_id);
        }
        for id in &ids {
            assert_eq!(p.delete(id).step().await.unwrap(), Step::Done(()));
        }
        // Six calls, 50 ms apart.
        assert!(start.elapsed() >= Duration::from_millis(250), "{:?}", start.elapsed());
        assert_eq!(p.limiter().calls(), 6);
    }
}
