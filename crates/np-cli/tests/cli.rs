//! `nodepool` (ours) against the Python Nodepool 11 CLI on the same ZooKeeper
//! state, in a fresh TLS chroot per test. State is prepared with the Python
//! API (`tests/python/np_interop.py`, `tests/python/np_state.py`) and with our
//! crates; both CLIs then run against the same config file and their stdout
//! is compared after masking `DD:HH:MM:SS` ages (which can differ by a second).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use np_core::{BuildState, ImageBuild, ImageUpload, Node, NodeRequest, NodeState, UploadState};
use np_testing::{env, repo_root, TestZk};
use np_zk::LockOptions;
use serde_json::{json, Value};

#[path = "../../np-driver-openstack/tests/support/fake_openstack.rs"]
mod fake_openstack;
use fake_openstack::FakeOpenStack;

struct Env {
    tz: TestZk,
    dir: PathBuf,
    config: PathBuf,
}

const PROVIDERS: &str = r#"
labels:
  - name: fake-label
  - name: static-label
diskimages:
  - name: fake-image
    elements: [vm]
  - name: paused-image
    pause: true
  - name: base
    abstract: true
providers:
  - name: fake-provider
    cloud: fake
    driver: fake
    rate: 0.0001
    diskimages:
      - name: fake-image
    pools:
      - name: main
        max-servers: 10
        labels:
          - name: fake-label
            diskimage: fake-image
            min-ram: 1024
"#;

const CLOUDS: &str = "clouds:\n  fake:\n    auth:\n      username: fake\n      password: fake\n      \
                      project_id: fake\n      auth_url: fake\n";

impl Env {
    async fn new() -> Env {
        Self::with_providers(PROVIDERS).await
    }

    async fn with_providers(rest: &str) -> Env {
        let tz = TestZk::new_tls().await;
        let dir = std::env::temp_dir().join(format!("np-cli-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let hosts = env("NP_ZK_TLS_HOSTS");
        let (host, port) = hosts.rsplit_once(':').unwrap();
        let config = dir.join("nodepool.yaml");
        let text = format!(
            "zookeeper-servers:\n  - host: {host}\n    port: {port}\n    chroot: {chroot}\n\
             zookeeper-tls:\n  ca: {ca}\n  cert: {cert}\n  key: {key}\n{rest}",
            chroot = tz.chroot,
            ca = env("NP_ZK_TLS_CA"),
            cert = env("NP_ZK_TLS_CERT"),
            key = env("NP_ZK_TLS_KEY"),
        );
        std::fs::write(&config, text).unwrap();
        std::fs::write(dir.join("clouds.yaml"), CLOUDS).unwrap();
        Env { tz, dir, config }
    }

    fn run(&self, program: &Path, args: &[&str], stdin: &str) -> Output {
        let mut cmd = Command::new(program);
        cmd.arg("-c").arg(&self.config).args(args);
        cmd.env("OS_CLIENT_CONFIG_FILE", self.dir.join("clouds.yaml"));
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            let _ = input.write_all(stdin.as_bytes());
        }
        child.wait_with_output().unwrap()
    }

    /// Our `nodepool`.
    fn ours(&self, args: &[&str]) -> Output {
        self.run(Path::new(env!("CARGO_BIN_EXE_nodepool")), args, "")
    }

    /// Python Nodepool 11's `nodepool`.
    fn python(&self, args: &[&str]) -> Output {
        let py = PathBuf::from(env("NP_PYTHON"));
        self.run(&py.parent().unwrap().join("nodepool"), args, "")
    }

    /// Runs both CLIs (concurrently) with the same arguments.
    fn both(&self, args: &[&str]) -> (Output, Output) {
        std::thread::scope(|s| {
            let py = s.spawn(|| self.python(args));
            let ours = self.ours(args);
            (ours, py.join().unwrap())
        })
    }

    /// Asserts that both CLIs print the same (age-masked) stdout; returns ours.
    fn assert_same(&self, args: &[&str]) -> Output {
        let (ours, py) = self.both(args);
        assert_eq!(
            mask(&stdout(&ours)),
            mask(&stdout(&py)),
            "stdout of `nodepool {}` differs\n--- ours ---\n{}\n--- python ---\n{}\n--- python stderr ---\n{}\n--- our stderr ---\n{}",
            args.join(" "),
            stdout(&ours),
            stdout(&py),
            String::from_utf8_lossy(&py.stderr),
            String::from_utf8_lossy(&ours.stderr),
        );
        assert!(py.status.success(), "python failed: {}", String::from_utf8_lossy(&py.stderr));
        assert!(ours.status.success(), "ours failed: {}", String::from_utf8_lossy(&ours.stderr));
        ours
    }

    /// `tests/python/np_state.py` (Python Nodepool's image API).
    fn state(&self, args: &[&str], stdin: &str) -> Value {
        let mut cmd = Command::new(env("NP_PYTHON"));
        cmd.arg(repo_root().join("tests/python/np_state.py")).args(args);
        cmd.arg("--tls").arg("--chroot").arg(&self.tz.chroot);
        run_json(cmd, stdin)
    }

    /// `tests/python/np_interop.py` (Python Nodepool's node/request API).
    fn interop(&self, args: &[&str], stdin: &str) -> Value {
        let mut cmd = Command::new(env("NP_PYTHON"));
        cmd.arg(repo_root().join("tests/python/np_interop.py")).args(args);
        cmd.arg("--tls").arg("--chroot").arg(&self.tz.chroot);
        run_json(cmd, stdin)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_json(mut cmd: Command, stdin: &str) -> Value {
    use std::io::Write;
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Replaces every `DD:HH:MM:SS` age with `AGE` (same width kept irrelevant:
/// both tables are masked the same way).
fn mask(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let is_age = |s: &[u8]| {
        s.len() >= 11
            && s[..11]
                .iter()
                .enumerate()
                .all(|(k, c)| if k % 3 == 2 { *c == b':' } else { c.is_ascii_digit() })
    };
    while i < b.len() {
        if is_age(&b[i..]) {
            out.push_str("AGE");
            i += 11;
        } else {
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn node(provider: &str, labels: &[&str], state: NodeState) -> Node {
    let mut n = Node::new(state);
    n.provider = Some(provider.to_owned());
    n.pool = Some("main".to_owned());
    n.node_type = labels.iter().map(|s| s.to_string()).collect();
    n
}

/// Builds, uploads, pause flags and a build request, made half with the
/// Python API and half with ours.
async fn image_state(e: &Env) -> (String, String) {
    let b1 = e.state(
        &["store-build", "fake-image"],
        r#"{"state": "ready", "builder": "b1.example", "formats": "qcow2,raw"}"#,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    e.state(
        &["store-upload", "fake-image", &b1, "fake-provider"],
        r#"{"state": "ready", "external_id": "ext-1", "external_name": "fake-image-1"}"#,
    );
    e.state(&["store-upload", "fake-image", &b1, "other-provider"], r#"{"state": "uploading"}"#);
    e.state(&["build-request", "fake-image"], "");
    let zk = &e.tz.zk;
    let mut build = ImageBuild::new(BuildState::Building);
    build.builder = Some("b2.example".into());
    build.formats = vec!["raw".into()];
    let b2 = zk.store_build("paused-image", None, &build).await.unwrap();
    let mut up = ImageUpload::new(UploadState::Failed);
    up.external_name = Some("名前-image".into());
    zk.store_upload("paused-image", &b2, "fake-provider", None, &up).await.unwrap();
    zk.store_upload("paused-image", &b2, "fake-provider", None, &ImageUpload::new(UploadState::Ready))
        .await
        .unwrap();
    // Upstream's setImagePaused needs the image znode to exist.
    e.state(&["pause", "paused-image"], "");
    (b1, b2)
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_match_python() {
    let e = Env::new().await;
    let zk = &e.tz.zk;
    // Nodes: some written by Python Nodepool, some by our crates.
    e.interop(
        &["write-node"],
        &json!({"state": "ready", "provider": "fake-provider", "pool": "main", "type": ["fake-label", "x"],
                "external_id": {"instance": "i-1"}, "public_ipv4": "1.2.3.4", "public_ipv6": "::1",
                "connection_port": {"token": "s"}, "user_data": {"a": [1, 2.5, true, null]},
                "comment": "日本語 comment", "hostname": "h1", "az": "az1", "launcher": "l1"})
        .to_string(),
    );
    e.interop(
        &["write-node"],
        &json!({"state": "in-use", "provider": "static-provider", "type": "static-label",
                "external_id": "host1.example", "connection_port": "22", "allocated_to": "100-0000000001",
                "driver_data": {"k": "v"}, "hold_job": "tenant/project/job"})
        .to_string(),
    );
    let mut n = node("fake-provider", &["fake-label"], NodeState::Building);
    n.external_id = Some(json!("srv-3"));
    n.private_ipv4 = Some("10.0.0.3".into());
    n.comment = Some("multi\nline".into());
    zk.create_node(&mut n).await.unwrap();
    let mut locked = node("fake-provider", &["fake-label"], NodeState::Ready);
    zk.create_node(&mut locked).await.unwrap();
    let (_hold, acquired) = e.tz.python().hold(&["lock-node", &locked.id]).await;
    assert_eq!(acquired, json!({"acquired": true}));

    // Requests: Zuul-style via Python, and via our crates.
    e.interop(
        &["write-request", "--priority", "200"],
        &json!({"state": "requested", "node_types": ["fake-label"], "requestor": "zuul-scheduler",
                "relative_priority": 2, "declined_by": ["l1", "l2"]})
        .to_string(),
    );
    let mut req = NodeRequest::new(vec!["fake-label".into(), "static-label".into()]);
    req.requestor = Some("NodePool:min-ready".into());
    req.nodes = vec![locked.id.clone()];
    zk.create_request(&mut req, 100, false).await.unwrap();

    image_state(&e).await;

    for args in [
        &["list"][..],
        &["list", "--detail"],
        &["request-list"],
        &["image-list"],
        &["dib-image-list"],
        &["image-status"],
        &["info", "fake-provider"],
        &["info", "static-provider"],
        &["info", "unknown-provider"],
    ] {
        e.assert_same(args);
    }
    let out = stdout(&e.ours(&["list"]));
    assert!(out.contains("| locked "), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_listings_match_python() {
    let e = Env::new().await;
    for args in [
        &["list"][..],
        &["list", "--detail"],
        &["request-list"],
        &["image-list"],
        &["dib-image-list"],
        &["image-status"],
        &["alien-image-list"],
    ] {
        e.assert_same(args);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_format() {
    let e = Env::new().await;
    let mut n = node("fake-provider", &["fake-label"], NodeState::Ready);
    n.connection_port = json!(2222);
    e.tz.zk.create_node(&mut n).await.unwrap();
    image_state(&e).await;
    let out = e.ours(&["list", "--format", "json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &v[0];
    assert_eq!(row.as_object().unwrap().len(), 21);
    assert_eq!(row["id"], json!(n.id));
    assert_eq!(row["label"], json!(["fake-label"]));
    assert_eq!(row["connection_port"], json!(2222));
    assert_eq!(row["locked"], json!("unlocked"));
    assert_eq!(row["ipv6"], Value::Null);
    let v: Value = serde_json::from_slice(&e.ours(&["--format", "json", "image-status"]).stdout).unwrap();
    assert_eq!(v[0]["image"], json!("fake-image"));
    assert_eq!(v[0]["build_request"], json!("pending"));
    assert!(v[0]["build_request_age"].is_i64());
    assert_eq!(v[1]["paused"], json!(true));
    for cmd in ["image-list", "dib-image-list", "request-list"] {
        let out = e.ours(&[cmd, "--format", "json"]);
        assert!(out.status.success());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v.is_array(), "{cmd}");
    }
    let v: Value =
        serde_json::from_slice(&e.ours(&["info", "fake-provider", "--format", "json"]).stdout).unwrap();
    assert_eq!(v["nodes"][0]["id"], json!(n.id));
    assert_eq!(v["images"][0]["image"], json!("fake-image"));
}

/// `hold` and `delete` by each CLI on twin nodes: same output (node id
/// masked), same effect on the record.
#[tokio::test(flavor = "multi_thread")]
async fn hold_and_delete_match_python() {
    let e = Env::new().await;
    let zk = &e.tz.zk;
    for (cmd, state) in [("hold", NodeState::Hold), ("delete", NodeState::Deleting)] {
        let mut ids = Vec::new();
        for _ in 0..2 {
            let mut n = node("fake-provider", &["fake-label"], NodeState::Ready);
            n.external_id = Some(json!("srv"));
            n.comment = Some("keep me".into());
            n.extra.insert("unknown_key".into(), json!({"kept": true}));
            zk.create_node(&mut n).await.unwrap();
            ids.push(n.id);
        }
        let py = e.python(&[cmd, &ids[0]]);
        let ours = e.ours(&[cmd, &ids[1]]);
        assert!(py.status.success() && ours.status.success(), "{}", String::from_utf8_lossy(&ours.stderr));
        assert_eq!(mask(&stdout(&ours)).replace(&ids[1], "ID"), mask(&stdout(&py)).replace(&ids[0], "ID"));
        let (a, _) = zk.get_node(&ids[0]).await.unwrap().unwrap();
        let (mut b, _) = zk.get_node(&ids[1]).await.unwrap().unwrap();
        assert_eq!(a.state, state);
        b.id = a.id.clone();
        b.state_time = a.state_time;
        b.created_time = a.created_time;
        // Ours keeps keys it does not know (np-core is lossless); Python drops them.
        assert_eq!(b.extra.get("unknown_key"), Some(&json!({"kept": true})));
        b.extra = a.extra.clone();
        assert_eq!(a, b, "records differ after {cmd}");
        // Both released the lock.
        assert!(zk.lock_contenders(&format!("/nodepool/nodes/{}/lock", ids[1])).await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_node_and_busy_lock() {
    let e = Env::new().await;
    for cmd in ["hold", "delete"] {
        let (ours, py) = e.both(&[cmd, "0000099999"]);
        assert_eq!(stdout(&ours), stdout(&py));
        assert_eq!(stdout(&ours), "Node id 0000099999 not found\n");
        assert_eq!(ours.status.code(), Some(1), "unknown node: non-zero exit (upstream exits 0)");
    }
    let mut n = node("fake-provider", &["fake-label"], NodeState::Ready);
    e.tz.zk.create_node(&mut n).await.unwrap();
    let (holder, acquired) = e.tz.python().hold(&["lock-node", &n.id]).await;
    assert_eq!(acquired, json!({"acquired": true}));
    for cmd in ["hold", "delete"] {
        let start = Instant::now();
        let (ours, py) = e.both(&[cmd, &n.id]);
        let took = start.elapsed();
        assert_eq!(ours.status.code(), Some(1));
        assert_eq!(py.status.code(), Some(1));
        assert_eq!(stdout(&ours), "");
        assert_eq!(stdout(&py), "");
        let err = String::from_utf8_lossy(&ours.stderr);
        assert!(err.contains("locked by another process"), "{err}");
        // Both CLIs wait about 5 s for the lock; the bound only catches a hang
        // (Python alone took 28 s once on a loaded machine).
        assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(60), "{took:?}");
    }
    let (after, _) = e.tz.zk.get_node(&n.id).await.unwrap().unwrap();
    assert_eq!(after.state, NodeState::Ready);
    holder.release().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn image_commands_match_python() {
    let e = Env::new().await;
    let zk = &e.tz.zk;
    let (b1, b2) = image_state(&e).await;

    // pause / unpause (idempotent), on an image not in the config either.
    zk.ensure_path("/nodepool/images/not-configured").await.unwrap();
    for (cmd, paused) in
        [("image-pause", true), ("image-pause", true), ("image-unpause", false), ("image-unpause", false)]
    {
        for image in ["fake-image", "not-configured"] {
            let ours = e.ours(&[cmd, image]);
            assert!(ours.status.success());
            assert_eq!(zk.is_image_paused(image).await.unwrap(), paused);
            let py = e.python(&[cmd, image]);
            assert!(py.status.success());
            assert_eq!(zk.is_image_paused(image).await.unwrap(), paused);
            assert_eq!(stdout(&ours), stdout(&py));
        }
    }

    // An image without any data in ZooKeeper: both fail, nothing is created.
    let (ours, py) = e.both(&["image-pause", "never-built"]);
    assert_eq!(ours.status.code(), Some(1));
    assert_eq!(py.status.code(), Some(1));
    assert!(zk.exists("/nodepool/images/never-built").await.unwrap().is_none());

    // image-build: a request znode; errors for paused and unknown/abstract images.
    zk.delete("/nodepool/images/fake-image/request-build").await.unwrap();
    let ours = e.ours(&["image-build", "fake-image"]);
    assert!(ours.status.success());
    assert!(zk.exists("/nodepool/images/fake-image/request-build").await.unwrap().is_some());
    for image in ["paused-image", "no-such-image", "base"] {
        let (ours, py) = e.both(&["image-build", image]);
        assert_eq!(ours.status.code(), Some(1), "{image}");
        assert_eq!(py.status.code(), Some(1), "{image}");
        assert_eq!(stdout(&ours), stdout(&py));
        assert!(zk.exists(&format!("/nodepool/images/{image}/request-build")).await.unwrap().is_none());
    }

    // dib-image-delete: messages, then the effect.
    let building = format!("paused-image-{b2}");
    e.assert_same(&["dib-image-delete", &building]);
    e.assert_same(&["dib-image-delete", "fake-image-00000000000000000000000000000000"]);
    let ours = e.assert_same(&["dib-image-delete", &format!("fake-image-{b1}")]);
    assert_eq!(stdout(&ours), "");
    let (b, _) = zk.get_build("fake-image", &b1).await.unwrap().unwrap();
    assert_eq!(b.state, BuildState::Deleting);

    // image-delete: not found, in progress, then the effect.
    let del = |provider: &'static str, image: &'static str, build: String, upload: &'static str| {
        vec![
            "image-delete",
            "--provider",
            provider,
            "--image",
            image,
            "--build-id",
            Box::leak(build.into_boxed_str()),
            "--upload-id",
            upload,
        ]
    };
    e.assert_same(&del("fake-provider", "fake-image", b1.clone(), "0000000009"));
    e.assert_same(&del("other-provider", "fake-image", b1.clone(), "0000000000"));
    e.assert_same(&del("fake-provider", "paused-image", b2.clone(), "0000000000"));
    let (u, _) = zk.get_upload("paused-image", &b2, "fake-provider", "0000000000").await.unwrap().unwrap();
    assert_eq!(u.state, UploadState::Deleting);
    assert_eq!(u.external_name.as_deref(), Some("名前-image"));
}

#[tokio::test(flavor = "multi_thread")]
async fn erase_matches_python() {
    let e = Env::new().await;
    let zk = &e.tz.zk;
    // Twin providers p-py and p-rs, each with a build dir and two nodes.
    let mut build = ImageBuild::new(BuildState::Ready);
    build.formats = vec!["raw".into()];
    let b = zk.store_build("fake-image", None, &build).await.unwrap();
    for p in ["p-py", "p-rs", "keep"] {
        zk.store_upload("fake-image", &b, p, None, &ImageUpload::new(UploadState::Ready)).await.unwrap();
        for _ in 0..2 {
            let mut n = node(p, &["fake-label"], NodeState::Ready);
            zk.create_node(&mut n).await.unwrap();
        }
    }
    // Without --force: a "no" answer erases nothing.
    let ours = e.run(Path::new(env!("CARGO_BIN_EXE_nodepool")), &["erase", "p-rs"], "n\n");
    let py =
        e.run(&PathBuf::from(env("NP_PYTHON")).parent().unwrap().join("nodepool"), &["erase", "p-py"], "n\n");
    assert_eq!(stdout(&ours).replace("p-rs", "P"), stdout(&py).replace("p-py", "P"));
    assert!(stdout(&ours).ends_with("Aborting. No data erased.\n"), "{}", stdout(&ours));
    assert_eq!(zk.node_ids().await.unwrap().len(), 6);

    let ours = e.run(Path::new(env!("CARGO_BIN_EXE_nodepool")), &["erase", "p-rs"], "y\n");
    let py =
        e.run(&PathBuf::from(env("NP_PYTHON")).parent().unwrap().join("nodepool"), &["erase", "p-py"], "y\n");
    assert!(ours.status.success() && py.status.success());
    assert_eq!(stdout(&ours).replace("p-rs", "P"), stdout(&py).replace("p-py", "P"));
    assert_eq!(zk.build_providers("fake-image", &b).await.unwrap(), vec!["keep".to_string()]);
    let mut providers = Vec::new();
    for id in zk.node_ids().await.unwrap() {
        providers.push(zk.get_node(&id).await.unwrap().unwrap().0.provider.unwrap());
    }
    assert_eq!(providers, vec!["keep", "keep"]);
    let out = e.ours(&["erase", "keep", "--force"]);
    assert_eq!(stdout(&out), "Erasing build data for keep...\nErasing node data for keep...\n");
    assert!(zk.node_ids().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn export_and_import_image_data() {
    let e = Env::new().await;
    let (b1, _) = image_state(&e).await;
    let py_file = e.dir.join("py.json");
    let rs_file = e.dir.join("rs.json");
    assert!(e.python(&["export-image-data", py_file.to_str().unwrap()]).status.success());
    assert!(e.ours(&["export-image-data", rs_file.to_str().unwrap()]).status.success());
    let py: Value = serde_json::from_str(&std::fs::read_to_string(&py_file).unwrap()).unwrap();
    let rs_text = std::fs::read_to_string(&rs_file).unwrap();
    let rs: Value = serde_json::from_str(&rs_text).unwrap();
    assert_eq!(rs, py);
    assert_eq!(rs_text, std::fs::read_to_string(&py_file).unwrap(), "byte-identical export");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&rs_file).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // Import into an empty chroot with ours; Python's export of it is the same.
    let f = Env::new().await;
    assert!(f.ours(&["import-image-data", rs_file.to_str().unwrap()]).status.success());
    let again = f.dir.join("again.json");
    assert!(f.python(&["export-image-data", again.to_str().unwrap()]).status.success());
    let again: Value = serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
    assert_eq!(again, py);
    // The upload counter was advanced: a new upload does not collide.
    let next =
        f.tz.zk
            .store_upload("fake-image", &b1, "fake-provider", None, &ImageUpload::new(UploadState::Uploading))
            .await
            .unwrap();
    assert!(next.as_str() > "0000000000", "{next}");
    // Paths outside /nodepool/images are refused.
    let bad = f.dir.join("bad.json");
    std::fs::write(&bad, r#"{"/nodepool/nodes/0000000001": "{}"}"#).unwrap();
    let out = f.ours(&["import-image-data", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(f.tz.zk.node_ids().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn config_validate_matches_python() {
    let e = Env::new().await;
    let (ours, py) = e.both(&["config-validate"]);
    assert_eq!(ours.status.code(), Some(0), "{}", String::from_utf8_lossy(&ours.stderr));
    assert_eq!(py.status.code(), Some(0));
    assert_eq!(stdout(&ours), stdout(&py));
    assert!(String::from_utf8_lossy(&ours.stderr).contains("INFO nodepool.cmd.config_validator: validating "));

    let bad = Env::with_providers("labels:\n  - name: x\nnothandled: 1\n").await;
    let (ours, py) = bad.both(&["config-validate"]);
    assert_eq!(ours.status.code(), Some(1));
    assert_eq!(py.status.code(), Some(1));
    assert_eq!(stdout(&ours), "");
    assert!(String::from_utf8_lossy(&ours.stderr).contains(" ERROR nodepool.cmd.config_validator: "));
}

#[tokio::test(flavor = "multi_thread")]
async fn zookeeper_unreachable_is_a_bounded_error() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = std::env::temp_dir().join(format!("np-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("nodepool.yaml");
    std::fs::write(
        &config,
        format!("zookeeper-servers:\n  - host: 127.0.0.1\n    port: {port}\n{PROVIDERS}"),
    )
    .unwrap();
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_nodepool"))
        .arg("-c")
        .arg(&config)
        .args(["--zk-connect-timeout", "2", "list"])
        .output()
        .unwrap();
    let took = start.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("cannot connect to ZooKeeper"), "{err}");
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_and_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_nodepool")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("Usage:"));
    let out = Command::new(env!("CARGO_BIN_EXE_nodepool")).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).starts_with("Nodepool version: "));
    let out =
        Command::new(env!("CARGO_BIN_EXE_nodepool")).args(["hold", "1", "--reason", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_nodepool"))
        .args(["image-delete", "--provider", "p"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn alien_image_list_warns_for_clouds_it_cannot_list() {
    let e = Env::new().await;
    e.assert_same(&["alien-image-list"]);
    e.assert_same(&["alien-image-list", "fake-provider"]);
    // An OpenStack provider whose cloud cannot be reached: a warning, as
    // upstream's, and an empty table.
    let os = Env::with_providers(
        "labels:\n  - name: l\nproviders:\n  - name: cloud1\n    cloud: fake\n    pools:\n      - name: main\n        max-servers: 1\n        labels:\n          - name: l\n            cloud-image: img\n            min-ram: 1\n    cloud-images:\n      - name: img\n",
    )
    .await;
    let out = os.ours(&["alien-image-list"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "+----------+------+----------+\n| Provider | Name | Image ID |\n+----------+------+----------+\n+----------+------+----------+\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WARNING: Exception listing alien images for cloud1: "), "{err}");
    let _ = LockOptions::try_once();
}

#[tokio::test(flavor = "multi_thread")]
async fn alien_image_list_shows_tagged_glance_images_zookeeper_has_no_ready_upload_for() {
    let cloud = FakeOpenStack::start().await;
    let e = Env::with_providers(
        "labels:\n  - name: l\ndiskimages:\n  - name: fake-image\n    elements: [vm]\nproviders:\n  - name: cloud1\n    driver: openstack\n    cloud: devstack\n    rate: 0.001\n    diskimages:\n      - name: fake-image\n    pools:\n      - name: main\n        max-servers: 1\n        labels:\n          - name: l\n            diskimage: fake-image\n            min-ram: 1\n",
    )
    .await;
    // The CLI reads the fake cloud's clouds.yaml (the one Env points at).
    cloud.clouds_yaml(&e.dir, "devstack");
    let tagged = |build: &str| json!({"nodepool_build_id": build, "nodepool_provider_name": "cloud1"});
    let known = cloud.plant_image("fake-image-known", tagged("0000000001"));
    let alien = cloud.plant_image("fake-image-alien", tagged("0000000002"));
    let failed = cloud.plant_image("fake-image-failed", tagged("0000000003"));
    cloud.plant_image("not-ours", json!({"owner": "someone"}));
    let zk = &e.tz.zk;
    let mut build = ImageBuild::new(BuildState::Ready);
    build.formats = vec!["raw".into()];
    let b = zk.store_build("fake-image", None, &build).await.unwrap();
    let mut up = ImageUpload::new(UploadState::Ready);
    up.external_id = Some(known.clone());
    zk.store_upload("fake-image", &b, "cloud1", None, &up).await.unwrap();
    // Only ready uploads count: a failed one's image is alien.
    let mut up = ImageUpload::new(UploadState::Failed);
    up.external_id = Some(failed.clone());
    zk.store_upload("fake-image", &b, "cloud1", None, &up).await.unwrap();

    let out = e.ours(&["alien-image-list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    assert!(text.starts_with("+----------+-------------------+--------------------------------------+\n| Provider | Name              | Image ID                             |\n"), "{text}");
    assert!(text.contains(&format!("| cloud1   | fake-image-alien  | {alien} |")), "{text}");
    assert!(text.contains(&format!("| cloud1   | fake-image-failed | {failed} |")), "{text}");
    assert!(!text.contains(&known) && !text.contains("not-ours") && !text.contains("cirros"), "{text}");
    assert_eq!(text.lines().count(), 6, "{text}");
    // Another provider's name shows nothing; --format json has the rows.
    let out = e.ours(&["alien-image-list", "other"]);
    assert_eq!(stdout(&out).lines().count(), 4);
    let out = e.ours(&["--format", "json", "alien-image-list", "cloud1"]);
    let rows: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    assert!(rows
        .as_array()
        .unwrap()
        .contains(&json!({"provider": "cloud1", "name": "fake-image-alien", "image_id": alien})));
}
