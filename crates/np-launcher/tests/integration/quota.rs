//! Pool, cloud and decline quota behaviour (upstream matrix B, C, E).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use np_core::{NodeState, RequestState};
use np_driver_fake::{FakeCloud, FakeSettings};
use np_launcher::Launcher;
use np_testing::{eventually, TestZk};
use np_zk::LockOptions;

use crate::common::{self, state_of, submit, FakeConfig};

/// `pool_limits`: more settings of the pool (e.g. `max-cores: 8`).
fn config(pool_limits: &str, ignore_provider_quota: bool) -> np_config::Config {
    FakeConfig::new(&["small", "other"])
        .pool(&format!("ignore-provider-quota: {ignore_provider_quota}"))
        .pool(pool_limits)
        .load()
}

async fn wait_state(t: &TestZk, id: &str, want: RequestState) -> bool {
    common::reaches(t, id, want, Duration::from_secs(10)).await
}

/// Waits until the pool component says `paused: true`.
async fn pool_paused(launcher: &Launcher) -> bool {
    common::pool_paused(launcher, Duration::from_secs(5)).await
}

/// Upstream's `_test_node_assignment_at_quota`: a 2-node request fills the
/// quota; a second 2-node request pauses PENDING with exactly 2 servers; as
/// the first request's nodes are returned one by one, it completes.
async fn at_quota(config: np_config::Config, settings: FakeSettings) {
    let (t, cloud, launcher) = common::fake_launcher(&config, settings).await;
    let first = submit(&t, &["small", "small"]).await;
    assert!(wait_state(&t, &first, RequestState::Fulfilled).await);
    let second = submit(&t, &["small", "small"]).await;
    assert!(wait_state(&t, &second, RequestState::Pending).await);
    assert!(pool_paused(&launcher).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cloud.server_ids().len(), 2, "exactly the quota is used");
    assert_eq!(state_of(&t, &second).await, RequestState::Pending);
    // As Zuul does: lock the nodes, delete the request, and after the job
    // mark the nodes used and unlock them, one by one.
    let nodes = t.zk.get_request(&first).await.unwrap().unwrap().0.nodes;
    let mut locks = Vec::new();
    for id in &nodes {
        let lock = t.zk.lock_node(id, LockOptions::blocking(Some(Duration::from_secs(5)))).await.unwrap();
        locks.push(lock.unwrap());
    }
    t.zk.delete_request(&first).await.unwrap();
    for (id, lock) in nodes.iter().zip(locks) {
        let (mut node, _) = t.zk.get_node(id).await.unwrap().unwrap();
        node.set_state(NodeState::Used);
        t.zk.update_node(&node).await.unwrap();
        lock.release().await.unwrap();
    }
    assert!(wait_state(&t, &second, RequestState::Fulfilled).await);
    assert!(cloud.server_ids().len() <= 2);
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_pool_quota_cores() {
    at_quota(config("max-cores: 8", false), FakeSettings::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_pool_quota_instances() {
    at_quota(config("max-servers: 2", false), FakeSettings::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_pool_quota_ram() {
    at_quota(config("max-ram: 16384", false), FakeSettings::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_cloud_cores_quota() {
    at_quota(config("", false), FakeSettings { max_cores: Some(8), ..FakeSettings::default() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_cloud_instances_quota() {
    at_quota(config("", false), FakeSettings { max_instances: Some(2), ..FakeSettings::default() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_cloud_ram_quota() {
    at_quota(config("", false), FakeSettings { max_ram: Some(16384), ..FakeSettings::default() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_larger_than_the_cloud_is_declined_unless_quota_ignored() {
    let (t, _cloud, launcher) = common::fake_launcher(
        &config("", false),
        FakeSettings { max_cores: Some(0), ..FakeSettings::default() },
    )
    .await;
    let id = submit(&t, &["small"]).await;
    assert!(wait_state(&t, &id, RequestState::Failed).await, "would exceed quota: declined and failed");
    launcher.stop().await;

    // ignore-provider-quota: the cloud limit is ignored, pool max-servers 1 still applies;
    // a 2-node request can never fit and fails.
    let (t, _cloud, launcher) = common::fake_launcher(
        &config("max-servers: 1", true),
        FakeSettings { max_cores: Some(0), report_only: true, ..FakeSettings::default() },
    )
    .await;
    let ok = submit(&t, &["small"]).await;
    assert!(wait_state(&t, &ok, RequestState::Fulfilled).await);
    let too_big = submit(&t, &["small", "small"]).await;
    assert!(wait_state(&t, &too_big, RequestState::Failed).await);
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_pool_still_declines_unknown_labels() {
    let (t, _cloud, launcher) =
        common::fake_launcher(&config("max-servers: 1", false), FakeSettings::default()).await;
    let first = submit(&t, &["small"]).await;
    assert!(wait_state(&t, &first, RequestState::Fulfilled).await);
    let paused = submit(&t, &["small"]).await;
    assert!(wait_state(&t, &paused, RequestState::Pending).await);
    let unknown = submit(&t, &["no-such-label"]).await;
    assert!(wait_state(&t, &unknown, RequestState::Failed).await);
    assert_eq!(state_of(&t, &paused).await, RequestState::Pending);
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_quota_error_aborts_and_relaunches_when_quota_returns() {
    let (t, cloud, launcher) = common::fake_launcher(&config("", true), FakeSettings::default()).await;
    cloud.quota_error_next_launches(2);
    let id = submit(&t, &["small"]).await;
    assert!(wait_state(&t, &id, RequestState::Fulfilled).await, "fulfilled after the quota errors");
    // The aborted nodes were deleted; only the fulfilled node remains.
    assert!(
        eventually(Duration::from_secs(10), || async { t.zk.node_ids().await.unwrap().len() == 1 }).await
    );
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_ready_node_of_another_label_is_deleted_at_quota() {
    // Upstream's test_provider_wont_wedge.
    let (t, _cloud, launcher) =
        common::fake_launcher(&config("max-servers: 1", false), FakeSettings::default()).await;
    let first = submit(&t, &["other"]).await;
    assert!(wait_state(&t, &first, RequestState::Fulfilled).await);
    // Zuul gave the node back unused (request deleted): it is idle and ready.
    t.zk.delete_request(&first).await.unwrap();
    let second = submit(&t, &["small"]).await;
    assert!(wait_state(&t, &second, RequestState::Fulfilled).await);
    launcher.stop().await;
}

/// Upstream's unmanaged quota: instances in the cloud that are not nodes of
/// this provider (someone else's, or leaked ones whose node is gone) use up
/// the cloud's limits. The pool pauses instead of hitting the cloud's quota
/// error, and resumes when the instance goes, with no ZooKeeper event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmanaged_instances_count_against_cloud_quota() {
    let t = TestZk::new().await;
    let cloud =
        FakeCloud::new("fake-provider", FakeSettings { max_instances: Some(2), ..FakeSettings::default() });
    let foreign =
        cloud.plant_instance(std::collections::BTreeMap::from([("owner".into(), "someone".into())]));
    let launcher = common::start_fake(&t, &config("", false), &cloud, None).await;
    let first = submit(&t, &["small"]).await;
    assert!(wait_state(&t, &first, RequestState::Fulfilled).await);
    let second = submit(&t, &["small"]).await;
    assert!(wait_state(&t, &second, RequestState::Pending).await);
    assert!(pool_paused(&launcher).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cloud.quota_rejections(), 0, "the launcher knew the cloud was full");
    assert_eq!(state_of(&t, &second).await, RequestState::Pending);
    // The foreign instance goes away: no ZooKeeper change, yet the pool
    // notices within its re-check interval.
    assert!(cloud.remove_instance(&foreign));
    assert!(wait_state(&t, &second, RequestState::Fulfilled).await);
    assert_eq!(cloud.quota_rejections(), 0);
    launcher.stop().await;
}

/// A cloud that keeps refusing launches for quota although the launcher's
/// own accounting sees room is not hammered: after each refusal the pool
/// counts as at quota for a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_cloud_quota_errors_back_off() {
    let (t, cloud, launcher) = common::fake_launcher(&config("", false), FakeSettings::default()).await;
    cloud.quota_error_next_launches(1000);
    let id = submit(&t, &["small"]).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let attempts = 1000 - cloud.quota_errors_left();
    assert!((2..=4).contains(&attempts), "{attempts} launches in 2.5 s");
    assert_eq!(state_of(&t, &id).await, RequestState::Pending);
    cloud.quota_error_next_launches(0);
    assert!(wait_state(&t, &id, RequestState::Fulfilled).await);
    launcher.stop().await;
}

/// Two launchers serving one pool (each with its own ZooKeeper session and
/// caches, as two hosts would) never have more of the pool's nodes past
/// `init` at once than `max-servers`: each created node is checked against
/// the nodes created before it, and the later one gives way (issue 11's
/// mixed fleet went one over). An observer samples the node records while
/// a burst of requests is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_launchers_on_one_pool_never_exceed_max_servers() {
    let t = TestZk::new().await;
    let config = config("max-servers: 3", false);
    let settings = FakeSettings { launch_delay: Duration::from_millis(30), ..FakeSettings::default() };
    let cloud = FakeCloud::new("fake-provider", settings);
    let peer = t.second().await;
    let clouds = HashMap::from([("fake-provider".to_owned(), cloud.clone())]);
    let a = common::start_launcher(&t, &config, &clouds, None).await;
    let b = common::start_launcher(&peer, &config, &clouds, None).await;
    let observer = t.second().await;
    let seen = np_zk::NodeCache::start(&observer.zk);
    assert!(seen.wait_ready(Duration::from_secs(10)).await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (seen, stop) = (seen.clone(), stop.clone());
        async move {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let live = seen.values().iter().filter(|n| n.state != NodeState::Init).count();
                most = most.max(live);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            most
        }
    });
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(submit(&t, &["small"]).await);
    }
    // Each fulfilled request's node is used and returned, freeing room.
    let mut done = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while done.len() < ids.len() && std::time::Instant::now() < deadline {
        for id in &ids {
            if done.contains(id) {
                continue;
            }
            let Some((req, _)) = t.zk.get_request(id).await.unwrap() else { continue };
            match req.state {
                RequestState::Fulfilled => {
                    for n in &req.nodes {
                        let lock = t.zk.lock_node(n, LockOptions::try_once()).await.unwrap().unwrap();
                        let (mut node, _) = t.zk.get_node(n).await.unwrap().unwrap();
                        node.state = NodeState::Used;
                        lock.fenced().update_node(&node).await.unwrap();
                        lock.release().await.unwrap();
                    }
                    t.zk.delete_request(id).await.unwrap();
                    done.insert(id.clone());
                }
                RequestState::Failed => panic!("request {id} failed"),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let most = sampler.await.unwrap();
    assert_eq!(done.len(), ids.len(), "every request served");
    assert!(most <= 3, "at most max-servers nodes past init at once, saw {most}");
    a.stop().await;
    b.stop().await;
}

/// A cloud whose limits call hangs holds a pool for at most the quota-read
/// timeout; the pool then goes on with the limits it read last (issue 11's
/// cloud-fault scenario: a hung Nova `/limits` stalled a pool, ready nodes
/// included, for two minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_limits_call_does_not_stall_the_pool() {
    let settings = FakeSettings { max_instances: Some(10), ..FakeSettings::default() };
    let (t, cloud, launcher) = common::fake_launcher(&config("", false), settings.clone()).await;
    let first = common::submit(&t, &["small"]).await;
    assert!(wait_state(&t, &first, RequestState::Fulfilled).await, "served while the cloud answers");
    cloud.set_settings(FakeSettings { hang_quota: true, ..settings });
    let started = std::time::Instant::now();
    let second = common::submit(&t, &["small"]).await;
    assert!(
        common::reaches(&t, &second, RequestState::Fulfilled, Duration::from_secs(60)).await,
        "not served while the limits call hangs"
    );
    let took = started.elapsed();
    assert!(took < np_launcher::pool::QUOTA_READ_TIMEOUT + Duration::from_secs(10), "{took:?}");
    launcher.stop().await;
}
