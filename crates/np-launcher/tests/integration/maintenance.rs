//! Time-based upkeep against a real ZooKeeper with the fake cloud.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use np_core::{Node, NodeRequest, NodeState, RequestState};
use np_driver_fake::{FakeCloud, FakeSettings};
use np_launcher::Launcher;
use np_testing::{eventually, TestZk};

use crate::common::{self, FakeConfig};

/// The launcher with its maintenance pass every 300 ms.
async fn start(t: &TestZk, cloud: &FakeCloud) -> Launcher {
    let config = FakeConfig::new(&["small", "large"])
        .top("max-hold-age: 3600")
        .label("small", "min-ready: 1\nmax-ready-age: 1")
        .pool("max-servers: 10")
        .load();
    common::start_fake(t, &config, cloud, Some(Duration::from_millis(300))).await
}

fn ready_small(launcher: &Launcher) -> Vec<String> {
    common::free_ready(launcher, "small")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ready_age_replaces_old_ready_nodes() {
    let t = TestZk::new().await;
    let cloud = FakeCloud::new("fake-provider", FakeSettings::default());
    let launcher = start(&t, &cloud).await;
    assert!(eventually(Duration::from_secs(10), || async { ready_small(&launcher).len() == 1 }).await);
    let first = ready_small(&launcher)[0].clone();
    // After max-ready-age (1 s) the node is deleted and min-ready launches a new one.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let now = ready_small(&launcher);
            now.len() == 1 && now[0] != first
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), || async { t.zk.get_node(&first).await.unwrap().is_none() }).await
    );
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_holds_are_deleted_but_others_kept() {
    let t = TestZk::new().await;
    let cloud = FakeCloud::new("fake-provider", FakeSettings::default());
    let launcher = start(&t, &cloud).await;
    let mut expiring = Node::new(NodeState::Hold);
    expiring.provider = Some("fake-provider".into());
    expiring.pool = Some("main".into());
    expiring.node_type = vec!["large".into()];
    expiring.hold_expiration = Some(1);
    t.zk.create_node(&mut expiring).await.unwrap();
    let mut kept = expiring.clone();
    kept.hold_expiration = None;
    t.zk.create_node(&mut kept).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            t.zk.get_node(&expiring.id).await.unwrap().is_none()
        })
        .await
    );
    assert_eq!(t.zk.get_node(&kept.id).await.unwrap().unwrap().0.state, NodeState::Hold);
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_requests_are_reset_and_then_fulfilled() {
    let t = TestZk::new().await;
    // A "dead launcher" left this: a pending request without a lock, and an
    // init node allocated to it.
    let mut req = NodeRequest::new(vec!["large".into()]);
    req.state = RequestState::Pending;
    t.zk.create_request(&mut req, 200, false).await.unwrap();
    let mut orphan = Node::new(NodeState::Init);
    orphan.provider = Some("fake-provider".into());
    orphan.pool = Some("main".into());
    orphan.node_type = vec!["large".into()];
    orphan.allocated_to = Some(req.id.clone());
    t.zk.create_node(&mut orphan).await.unwrap();

    let cloud = FakeCloud::new("fake-provider", FakeSettings::default());
    let launcher = start(&t, &cloud).await;
    assert!(common::reaches(&t, &req.id, RequestState::Fulfilled, Duration::from_secs(10)).await);
    assert!(
        eventually(Duration::from_secs(10), || async { t.zk.get_node(&orphan.id).await.unwrap().is_none() })
            .await,
        "the dead launcher's init node is deleted"
    );
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_instances_and_empty_znodes_are_removed() {
    let t = TestZk::new().await;
    let cloud = FakeCloud::new("fake-provider", FakeSettings::default());
    let mut meta = BTreeMap::new();
    meta.insert("nodepool_provider_name".to_owned(), "fake-provider".to_owned());
    meta.insert("nodepool_node_id".to_owned(), "0000099999".to_owned());
    let leaked = cloud.plant_instance(meta);
    let mut foreign = BTreeMap::new();
    foreign.insert("nodepool_provider_name".to_owned(), "someone-else".to_owned());
    foreign.insert("nodepool_node_id".to_owned(), "0000099998".to_owned());
    let not_ours = cloud.plant_instance(foreign);
    t.python().run(&["raw-create", "/nodepool/nodes/0000077777", "--data", ""], "").await;

    let launcher = start(&t, &cloud).await;
    assert!(
        eventually(Duration::from_secs(10), || async { !cloud.server_ids().contains(&leaked) }).await,
        "leaked instance deleted"
    );
    assert!(cloud.server_ids().contains(&not_ours), "another provider's instance is left alone");
    assert!(
        eventually(Duration::from_secs(10), || async {
            t.zk.exists("/nodepool/nodes/0000077777").await.unwrap().is_none()
        })
        .await,
        "empty node znode deleted"
    );
    launcher.stop().await;
}

/// A node left in `init` with no lock (its launcher died, or lost the
/// reply to its create, between creating and locking it) is deleted, also
/// when its request is gone (upstream never collects it then); a locked
/// `init` node and another provider's are left alone (issue 11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_init_nodes_are_deleted() {
    let t = TestZk::new().await;
    let cloud = FakeCloud::new("fake-provider", FakeSettings::default());
    let init_node = |provider: &str| {
        let mut node = Node::new(NodeState::Init);
        node.provider = Some(provider.into());
        node.pool = Some("main".into());
        node.node_type = vec!["large".into()];
        node.allocated_to = Some("100-0000009999".into());
        node
    };
    let mut orphan = init_node("fake-provider");
    t.zk.create_node(&mut orphan).await.unwrap();
    let mut held = init_node("fake-provider");
    t.zk.create_node(&mut held).await.unwrap();
    let other = t.second().await;
    let lock = other.zk.lock_node(&held.id, np_zk::LockOptions::try_once()).await.unwrap().unwrap();
    let mut foreign = init_node("someone-else");
    t.zk.create_node(&mut foreign).await.unwrap();

    let launcher = start(&t, &cloud).await;
    assert!(
        eventually(Duration::from_secs(15), || async { t.zk.get_node(&orphan.id).await.unwrap().is_none() })
            .await,
        "the orphaned init node is deleted"
    );
    let (still, _) = t.zk.get_node(&held.id).await.unwrap().unwrap();
    assert_eq!(still.state, NodeState::Init, "a locked init node is left alone");
    let (theirs, _) = t.zk.get_node(&foreign.id).await.unwrap().unwrap();
    assert_eq!(theirs.state, NodeState::Init, "another provider's node is left alone");
    let _ = lock.release().await;
    launcher.stop().await;
}

/// Uploaded images carry the builder's build and upload ids instead of a
/// node id: one whose upload record is gone is leaked and deleted; one
/// whose upload exists is kept (upstream's `cleanupLeakedResources`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_whose_upload_is_gone_are_deleted() {
    let t = TestZk::new().await;
    let cloud = FakeCloud::new("fake-provider", FakeSettings::default());
    let build =
        t.zk.store_build("fake-image", None, &np_core::ImageBuild::new(np_core::BuildState::Ready))
            .await
            .unwrap();
    let upload =
        t.zk.store_upload(
            "fake-image",
            &build,
            "fake-provider",
            None,
            &np_core::ImageUpload::new(np_core::UploadState::Ready),
        )
        .await
        .unwrap();
    let image = |build: &str, upload: &str| {
        BTreeMap::from([
            ("nodepool_provider_name".to_owned(), "fake-provider".to_owned()),
            ("nodepool_build_id".to_owned(), build.to_owned()),
            ("nodepool_upload_id".to_owned(), upload.to_owned()),
        ])
    };
    let live = cloud.plant_instance(image(&build, &upload));
    let leaked = cloud.plant_instance(image(&build, "0000000099"));
    let launcher = start(&t, &cloud).await;
    assert!(
        eventually(Duration::from_secs(10), || async { !cloud.server_ids().contains(&leaked) }).await,
        "the image without an upload record is deleted"
    );
    assert!(cloud.server_ids().contains(&live), "the uploaded image is kept");
    launcher.stop().await;
}
