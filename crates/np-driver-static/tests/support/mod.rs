//! Test support: a private OpenSSH server on 127.0.0.1 with throwaway host
//! keys, ZooKeeper-backed sync fixtures, and configuration builders.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use np_config::{StaticNode, StaticPool, StaticProvider};
use np_core::Node;
use np_driver_static::{StaticSync, StaticSyncHandle, SyncOptions};
use np_testing::TestZk;
use np_zk::NodeCache;
use tokio_util::sync::CancellationToken;

pub const SSHD: &str = "/usr/sbin/sshd";

/// A running `sshd -D` on 127.0.0.1 at a free port.
pub struct Sshd {
    child: Option<Child>,
    dir: PathBuf,
    pub port: u16,
    /// The host keys as `"<type> <base64>"`, in upstream order (ed25519, ecdsa, rsa).
    pub keys: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    free_port()
}

impl Sshd {
    /// Starts a server. Fails (never skips) when OpenSSH's server is missing.
    pub fn start() -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: run tools/setup.sh (it installs openssh-server) before the static driver tests"
        );
        let dir = std::env::temp_dir().join(format!("np-static-sshd-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("sshd temp dir");
        let mut keys = Vec::new();
        let mut key_paths = Vec::new();
        for (kind, extra) in
            [("ed25519", &[][..]), ("ecdsa", &["-b", "256"][..]), ("rsa", &["-b", "2048"][..])]
        {
            let path = dir.join(format!("host_{kind}"));
            let status = Command::new("ssh-keygen")
                .args(["-q", "-N", "", "-t", kind])
                .args(extra)
                .arg("-f")
                .arg(&path)
                .stdin(Stdio::null())
                .status()
                .expect("run ssh-keygen (openssh-client; tools/setup.sh installs it)");
            assert!(status.success(), "ssh-keygen -t {kind} failed");
            let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
            let mut fields = public.split_whitespace();
            keys.push(format!("{} {}", fields.next().unwrap_or_default(), fields.next().unwrap_or_default()));
            key_paths.push(path);
        }
        // Privilege separation directory, as the Debian service creates it.
        let _ = std::fs::create_dir_all("/run/sshd");
        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.join("sshd_config");
            let mut text = format!("ListenAddress 127.0.0.1\nPort {port}\n");
            for p in &key_paths {
                text.push_str(&format!("HostKey {}\n", p.display()));
            }
            text.push_str(&format!(
                "PidFile {}\nUsePAM no\nPasswordAuthentication no\nStrictModes no\n",
                dir.join("sshd.pid").display()
            ));
            std::fs::write(&config, text).expect("write sshd_config");
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start sshd");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken meanwhile, or a config problem: retry
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Sshd { child: Some(child), dir, port, keys };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("sshd did not start (tried 5 ports); run `{SSHD} -t -f <config>` to see why");
    }

    /// Stops the server (kills exactly the process this test started).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A configured host with upstream's defaults.
pub fn host(name: &str, port: u16, labels: &[&str]) -> StaticNode {
    StaticNode {
        name: name.to_owned(),
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        username: "zuul".to_owned(),
        timeout: Duration::from_secs(2),
        host_key_checking: false,
        host_keys: Vec::new(),
        connection_type: "ssh".to_owned(),
        connection_port: port,
        shell_type: None,
        max_parallel_jobs: 1,
        python_path: "auto".to_owned(),
    }
}

/// A provider with one pool `main`.
pub fn provider(nodes: Vec<StaticNode>) -> StaticProvider {
    let mut attrs = serde_json::Map::new();
    attrs.insert("executor-zone".into(), serde_json::Value::from("lo"));
    StaticProvider {
        pools: vec![StaticPool {
            name: "main".to_owned(),
            max_servers: None,
            node_attributes: Some(attrs),
            priority: None,
            nodes,
        }],
    }
}

/// A ZooKeeper chroot with a node cache and a running sync.
pub struct Fixture {
    pub tz: TestZk,
    pub nodes: NodeCache,
    pub handle: StaticSyncHandle,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub const PROVIDER: &str = "static-lo";

impl Fixture {
    pub async fn start(config: StaticProvider) -> Fixture {
        let tz = TestZk::new().await;
        let nodes = NodeCache::start(&tz.zk);
        assert!(nodes.wait_ready(Duration::from_secs(20)).await);
        Self::start_in(tz, nodes, config).await
    }

    /// Starts the sync in an existing chroot (pre-seeded znodes).
    pub async fn start_in(tz: TestZk, nodes: NodeCache, config: StaticProvider) -> Fixture {
        let options = SyncOptions {
            safety_interval: Duration::from_secs(60),
            retry_interval: Duration::from_millis(500),
        };
        let cancel = CancellationToken::new();
        let (handle, task) =
            StaticSync::spawn(tz.zk.clone(), nodes.clone(), PROVIDER, config, options, cancel.clone());
        Fixture { tz, nodes, handle, cancel, task: Some(task) }
    }

    /// Our provider's nodes, by id.
    pub fn ours(&self) -> Vec<Node> {
        let mut v: Vec<Node> = self
            .nodes
            .values()
            .iter()
            .filter(|n| n.provider.as_deref() == Some(PROVIDER))
            .map(|n| (**n).clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Our provider's nodes of `host` in `state`.
    pub fn of_host(&self, host: &str, state: np_core::NodeState) -> Vec<Node> {
        self.ours().into_iter().filter(|n| n.hostname.as_deref() == Some(host) && n.state == state).collect()
    }

    /// Waits until `check` holds on the cache.
    pub async fn until(&self, what: &str, check: impl Fn(&Fixture) -> bool) {
        let ok = np_testing::eventually(Duration::from_secs(15), || async { check(self) }).await;
        assert!(ok, "timed out waiting for: {what}; nodes: {:#?}", self.ours());
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.nodes.stop();
    }
}
