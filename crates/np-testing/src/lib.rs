//! Test support shared by the workspace's integration tests.
//!
//! * [`TestZk`]: a connection to the real ZooKeeper started by
//!   `tools/test-env.sh`, inside a fresh chroot per test so tests run in
//!   parallel without seeing each other.
//! * [`Python`]: runs `tests/python/np_interop.py`, the real Python Nodepool 11
//!   (and kazoo) peer, against the same chroot.
//!
//! The environment comes from `.test-env/env.sh` (`NP_ZK_HOSTS`,
//! `NP_ZK_TLS_*`, `NP_PYTHON`). A missing variable is a hard failure with a
//! hint, never a silent skip: run the tests through `tools/test.sh`.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

pub mod proxy;
pub mod sshd;
pub mod statsd;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use np_zk::{Zk, ZkConfig, ZkTls};
use serde_json::Value;

/// The value of a test-environment variable, or a panic telling how to get it.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with tools/test.sh (it starts ZooKeeper and exports NP_* variables)")
    })
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// TLS files of the test environment.
pub fn tls_files() -> ZkTls {
    ZkTls {
        ca: env("NP_ZK_TLS_CA").into(),
        cert: env("NP_ZK_TLS_CERT").into(),
        key: env("NP_ZK_TLS_KEY").into(),
    }
}

/// A connection inside a fresh chroot.
pub struct TestZk {
    /// The handle.
    pub zk: Zk,
    /// The chroot, e.g. `/np-test-1f2e…`.
    pub chroot: String,
    /// Whether this connection uses TLS.
    pub tls: bool,
}

impl TestZk {
    /// A plain connection in a new chroot.
    pub async fn new() -> TestZk {
        Self::with(false, None).await
    }

    /// A TLS connection in a new chroot.
    pub async fn new_tls() -> TestZk {
        Self::with(true, None).await
    }

    /// A connection with options: TLS or not, and an existing chroot to join.
    pub async fn with(tls: bool, chroot: Option<&str>) -> TestZk {
        init_tracing();
        let chroot = chroot
            .map(str::to_owned)
            .unwrap_or_else(|| format!("/np-test-{}", uuid::Uuid::new_v4().simple()));
        let config = Self::config(tls, &chroot);
        let zk = Zk::connect(config).await.expect("connect to the test ZooKeeper");
        TestZk { zk, chroot, tls }
    }

    /// The configuration for a connection to `chroot`.
    pub fn config(tls: bool, chroot: &str) -> ZkConfig {
        let hosts = if tls { env("NP_ZK_TLS_HOSTS") } else { env("NP_ZK_HOSTS") };
        let mut config = ZkConfig::new(format!("{hosts}{chroot}"));
        config.session_timeout = Duration::from_secs(4);
        config.connect_timeout = Duration::from_secs(20);
        if tls {
            config.tls = Some(tls_files());
        }
        config
    }

    /// A plain connection in a new chroot of the three-server ensemble that
    /// `tools/test.sh` starts beside the single server (its hosts in
    /// `NP_ZK_ENSEMBLE_HOSTS`).
    pub async fn ensemble() -> TestZk {
        Self::ensemble_join(&format!("/np-test-{}", uuid::Uuid::new_v4().simple())).await
    }

    /// Another session on the ensemble, in `chroot`.
    pub async fn ensemble_join(chroot: &str) -> TestZk {
        init_tracing();
        let chroot = chroot.to_owned();
        let mut config = ZkConfig::new(format!("{}{chroot}", env("NP_ZK_ENSEMBLE_HOSTS")));
        config.session_timeout = Duration::from_secs(10);
        config.connect_timeout = Duration::from_secs(20);
        let zk = Zk::connect(config).await.expect("connect to the test ensemble");
        TestZk { zk, chroot, tls: false }
    }

    /// Another independent session in the same chroot.
    pub async fn second(&self) -> TestZk {
        Self::with(self.tls, Some(&self.chroot)).await
    }

    /// The Python peer bound to this chroot.
    pub fn python(&self) -> Python {
        Python { chroot: self.chroot.clone(), tls: self.tls }
    }
}

/// The Python Nodepool 11 / kazoo peer.
#[derive(Clone)]
pub struct Python {
    chroot: String,
    tls: bool,
}

impl Python {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env("NP_PYTHON"));
        cmd.arg(repo_root().join("tests/python/np_interop.py"));
        cmd.args(args);
        cmd.arg("--chroot").arg(&self.chroot);
        if self.tls {
            cmd.arg("--tls");
        }
        cmd
    }

    /// Runs a one-shot subcommand with `stdin`, returning its JSON output.
    /// Panics (with stderr) if it fails.
    pub async fn run(&self, args: &[&str], stdin: &str) -> Value {
        match self.try_run(args, stdin).await {
            Ok(v) => v,
            Err(e) => panic!("np_interop {args:?} failed: {e}"),
        }
    }

    /// Like [`Python::run`], but returns the failure.
    pub async fn try_run(&self, args: &[&str], stdin: &str) -> Result<Value, String> {
        let mut cmd = self.command(args);
        let stdin = stdin.to_owned();
        tokio::task::spawn_blocking(move || {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().map_err(|e| e.to_string())?;
            child.stdin.take().unwrap().write_all(stdin.as_bytes()).map_err(|e| e.to_string())?;
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).into_owned());
            }
            serde_json::from_slice(&out.stdout)
                .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
        })
        .await
        .unwrap()
    }

    /// Starts an interactive subcommand (`hold-lock`, `lock-node`, ...) and
    /// waits for its first JSON line.
    pub async fn hold(&self, args: &[&str]) -> (PyHold, Value) {
        let mut cmd = self.command(args);
        tokio::task::spawn_blocking(move || {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
            let mut child = cmd.spawn().unwrap();
            let stdin = child.stdin.take().unwrap();
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let first = read_json_line(&mut stdout);
            (PyHold { child, stdin: Some(stdin), stdout }, first)
        })
        .await
        .unwrap()
    }
}

fn read_json_line(reader: &mut BufReader<ChildStdout>) -> Value {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("bad line from np_interop: {line:?}: {e}"))
}

/// A running interactive Python peer.
pub struct PyHold {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl PyHold {
    /// Tells it to release and returns its last JSON line.
    pub async fn release(mut self) -> Value {
        tokio::task::spawn_blocking(move || {
            if let Some(mut stdin) = self.stdin.take() {
                let _ = stdin.write_all(b"\n");
            }
            let v = read_json_line(&mut self.stdout);
            let _ = self.child.wait();
            v
        })
        .await
        .unwrap()
    }

    /// Waits for the next JSON line (e.g. `{"acquired": true}` of a waiter).
    pub async fn next(mut self) -> (PyHold, Value) {
        tokio::task::spawn_blocking(move || {
            let v = read_json_line(&mut self.stdout);
            (self, v)
        })
        .await
        .unwrap()
    }

    /// Kills the process (its session dies with it).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PyHold {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `zookeeper-servers` and `zookeeper-tls` sections of a `nodepool.yaml`
/// for the test server's TLS port and `chroot` (Python Nodepool 11 requires
/// TLS).
pub fn zk_yaml_tls(chroot: &str) -> String {
    let hosts = env("NP_ZK_TLS_HOSTS");
    let port = hosts.rsplit(':').next().unwrap_or_default();
    format!(
        "zookeeper-servers:\n  - host: 127.0.0.1\n    port: {port}\n    chroot: {chroot}\nzookeeper-tls:\n  ca: {}\n  cert: {}\n  key: {}\n",
        env("NP_ZK_TLS_CA"),
        env("NP_ZK_TLS_CERT"),
        env("NP_ZK_TLS_KEY")
    )
}

/// A child process (a Python daemon) stopped with SIGTERM, then killed, when
/// dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
