//! Regression tests of the faults the chaos suite (`tools/chaos.sh`) found:
//! requests whose lock another process held, and requests a dead launcher
//! left `pending`, are served at once once that process is gone, without
//! waiting for the maintenance pass (issue 11).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use np_core::RequestState;
use np_driver_fake::{FakeCloud, FakeSettings};
use np_launcher::Launcher;
use np_testing::{eventually, TestZk};

use crate::common::{self, state_of, FakeConfig};

/// The launcher with an hour-long maintenance interval: whatever these
/// tests see served is served by the event-driven path.
async fn start(t: &TestZk, cloud: &FakeCloud) -> Launcher {
    let config = FakeConfig::new(&["small"]).pool("max-servers: 10").load();
    common::start_fake(t, &config, cloud, Some(Duration::from_secs(3600))).await
}

async fn submit(t: &TestZk) -> String {
    common::submit_with(t, &["small"], |r| r.requestor = Some("zuul-like".into())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_locked_by_a_process_that_dies_is_served_when_its_lock_goes() {
    let t = TestZk::new().await;
    let cloud = FakeCloud::new("fake-provider", FakeSettings::default());
    let id = submit(&t).await;
    // A peer (kazoo, like a Python launcher about to be killed) holds the
    // request's lock when our launcher first looks at it.
    let (held, acquired) = t.python().hold(&["hold-lock", &np_zk::paths::request_lock(&id)]).await;
    assert_eq!(acquired, serde_json::json!({"acquired": true}));
    let launcher = start(&t, &cloud).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(state_of(&t, &id).await, RequestState::Requested, "the lock is held: hands off");

    // The holder dies; its lock goes when its session expires (kazoo's 10 s).
    held.kill();
    let lock_dir = np_zk::paths::request_lock(&id);
    assert!(
        eventually(Duration::from_secs(30), || async {
            t.zk.children(&lock_dir).await.unwrap().unwrap_or_default().is_empty()
        })
        .await
    );
    let freed = Instant::now();
    assert!(
        common::reaches(&t, &id, RequestState::Fulfilled, Duration::from_secs(10)).await,
        "the request must be served once its lock is gone"
    );
    assert!(freed.elapsed() < Duration::from_secs(3), "served {:?} after the lock went", freed.elapsed());
    launcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_request_nobody_holds_is_reset_and_served_at_once() {
    let t = TestZk::new().await;
    let cloud = FakeCloud::new("fake-provider", FakeSettings::default());
    let id = submit(&t).await;
    // A launcher accepted it (pending) and died before it was fulfilled:
    // its lock went with its session.
    let (mut request, _) = t.zk.get_request(&id).await.unwrap().unwrap();
    request.state = RequestState::Pending;
    t.zk.update_request(&request).await.unwrap();

    let started = Instant::now();
    let launcher = start(&t, &cloud).await;
    assert!(
        common::reaches(&t, &id, RequestState::Fulfilled, Duration::from_secs(10)).await,
        "a lost pending request must be reset and served without the maintenance pass"
    );
    assert!(started.elapsed() < Duration::from_secs(8), "served after {:?}", started.elapsed());
    launcher.stop().await;
}
