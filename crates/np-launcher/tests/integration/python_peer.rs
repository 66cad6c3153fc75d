//! Our launcher and Python Nodepool 11's launcher on one ZooKeeper, as during
//! a migration: each serves its own labels, neither declines what the other
//! can serve, and a request nobody can serve fails only once both declined.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use np_core::RequestState;
use np_driver_fake::{FakeCloud, FakeSettings};
use np_testing::{env, eventually, zk_yaml_tls, ChildGuard, TestZk};

use crate::common::{self, submit};

fn fake_provider(name: &str, label: &str) -> String {
    format!(
        "labels:\n  - name: {label}\nproviders:\n  - name: {name}\n    driver: fake\n    cloud: fake\n    region-name: fake-region\n    rate: 0.0001\n    cloud-images:\n      - name: fake-image\n        image-name: Fake Precise\n    pools:\n      - name: main\n        max-servers: 5\n        host-key-checking: false\n        labels:\n          - name: {label}\n            cloud-image: fake-image\n            flavor-name: Fake Flavor\n"
    )
}

fn start_python(chroot: &str, dir: &std::path::Path) -> ChildGuard {
    let python = env("NP_PYTHON");
    let bin = std::path::Path::new(&python).with_file_name("nodepool-launcher");
    let config = dir.join("python.yaml");
    std::fs::write(&config, format!("{}{}", zk_yaml_tls(chroot), fake_provider("py-provider", "py-label")))
        .unwrap();
    let clouds = dir.join("clouds.yaml");
    std::fs::write(
        &clouds,
        "clouds:\n  fake:\n    auth:\n      username: fake\n      password: fake\n      project_id: fake\n      auth_url: fake\n",
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("python-launcher.log")).unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&config)
        .arg("-f")
        .arg("--no-webapp")
        .env("OS_CLIENT_CONFIG_FILE", &clouds)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    ChildGuard(child)
}

async fn wait_state(t: &TestZk, id: &str, state: RequestState, secs: u64) -> bool {
    common::reaches(t, id, state, Duration::from_secs(secs)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_python_launchers_share_one_zookeeper() {
    let t = TestZk::new_tls().await;
    let dir = common::scratch_dir("np-py-peer");
    let _python = start_python(&t.chroot, &dir);

    let ours = np_config::load_str(
        &format!("{}{}", zk_yaml_tls(&t.chroot), fake_provider("rs-provider", "rs-label")),
        "rs.yaml",
    )
    .unwrap();
    let clouds =
        HashMap::from([("rs-provider".to_owned(), FakeCloud::new("rs-provider", FakeSettings::default()))]);
    let launcher = common::start_launcher(&t, &ours, &clouds, None).await;

    // Both pools registered (Python's takes a few seconds to start).
    assert!(
        eventually(Duration::from_secs(60), || async { launcher.shared().pools.len() == 2 }).await,
        "python launcher did not register; see {}",
        dir.join("python-launcher.log").display()
    );

    let py_req = submit(&t, &["py-label"]).await;
    let rs_req = submit(&t, &["rs-label"]).await;
    let nobody = submit(&t, &["no-such-label"]).await;

    assert!(wait_state(&t, &rs_req, RequestState::Fulfilled, 20).await);
    assert!(wait_state(&t, &py_req, RequestState::Fulfilled, 60).await, "python fulfils its label");
    for (id, provider) in [(&py_req, "py-provider"), (&rs_req, "rs-provider")] {
        let (r, _) = t.zk.get_request(id).await.unwrap().unwrap();
        assert!(r.declined_by.is_empty(), "{id} was declined by {:?}", r.declined_by);
        let (node, _) = t.zk.get_node(&r.nodes[0]).await.unwrap().unwrap();
        assert_eq!(node.provider.as_deref(), Some(provider));
    }
    assert!(wait_state(&t, &nobody, RequestState::Failed, 60).await, "failed once both declined");
    let (r, _) = t.zk.get_request(&nobody).await.unwrap().unwrap();
    assert_eq!(r.declined_by.len(), 2, "{:?}", r.declined_by);
    assert!(r.declined_by.iter().any(|d| d.contains("PoolWorker.py-provider-main-")));
    assert!(r.declined_by.iter().any(|d| d.contains("PoolWorker.rs-provider-main-")));
    launcher.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
