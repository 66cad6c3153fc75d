//! The `nodepool-launcher` binary as operators run it: config file, live
//! reload through a file change, SIGTERM shutdown.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use np_core::ComponentKind;
use np_testing::{env, eventually, TestZk};

use crate::common::{self, FakeConfig};

fn config(chroot: &str, labels: &[&str]) -> String {
    let port = env("NP_ZK_HOSTS").rsplit(':').next().unwrap().to_owned();
    FakeConfig::new(labels)
        .zookeeper(&format!("- host: 127.0.0.1\n  port: {port}\n  chroot: {chroot}"))
        .pool("max-servers: 5")
        .yaml()
}

struct Launcher(Child);

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn pool_labels(t: &TestZk) -> Vec<Vec<String>> {
    t.zk.components(ComponentKind::Pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, c)| c.pool.unwrap().supported_labels)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_config_on_file_change_and_stops_cleanly_on_sigterm() {
    let t = TestZk::new().await;
    let dir = common::scratch_dir("np-launcher");
    let path = dir.join("nodepool.yaml");
    std::fs::write(&path, config(&t.chroot, &["small"])).unwrap();
    let pidfile = dir.join("launcher.pid");
    let log = dir.join("launcher.log");
    let child = Command::new(env!("CARGO_BIN_EXE_nodepool-launcher"))
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(&pidfile)
        .arg("-f")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reloads =
        || std::fs::read_to_string(&log).unwrap_or_default().matches("configuration file changed").count();
    let launcher = Launcher(child);
    assert!(
        eventually(Duration::from_secs(20), || async {
            pool_labels(&t).await == vec![vec!["small".to_owned()]]
        })
        .await
    );
    assert!(pidfile.exists());

    // Edit the file the way an editor does (write a new file, rename over).
    let tmp = dir.join("nodepool.yaml.new");
    std::fs::write(&tmp, config(&t.chroot, &["small", "large"])).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            pool_labels(&t).await == vec![vec!["large".to_owned(), "small".to_owned()]]
        })
        .await,
        "the pool is re-registered with the new labels: {:?}",
        pool_labels(&t).await
    );
    // One edit, one reload: reading the file while reloading is no change
    // (it used to start a reload loop, about five a second).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(reloads(), 1);

    // An invalid edit is rejected and the running config kept.
    std::fs::write(&path, "labels: [").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(pool_labels(&t).await.len(), 1);
    assert_eq!(reloads(), 2);

    let pid = launcher.0.id();
    let status = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    assert!(status.success());
    let mut launcher = launcher;
    let exited = tokio::task::spawn_blocking(move || {
        let status = launcher.0.wait().unwrap();
        std::mem::forget(launcher);
        status
    })
    .await
    .unwrap();
    assert!(exited.success(), "{exited:?}");
    assert!(t.zk.components(ComponentKind::Pool).await.unwrap().is_empty());
    assert!(t.zk.components(ComponentKind::Launcher).await.unwrap().is_empty());
    assert!(!pidfile.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
