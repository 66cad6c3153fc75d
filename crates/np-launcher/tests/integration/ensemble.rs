//! The launcher on a three-server ZooKeeper ensemble (issue 13): connected
//! to all three servers, it serves requests, alone and beside a second
//! launcher on the same ensemble. (Killing the ensemble's leader during
//! churn is the chaos suite's `ensemble-leader-kill`.) `tools/test.sh`
//! starts the ensemble beside the single test server and exports its hosts
//! as `NP_ZK_ENSEMBLE_HOSTS`.

use std::collections::HashSet;
use std::time::Duration;

use np_core::RequestState;
use np_driver_fake::{FakeCloud, FakeSettings};
use np_testing::TestZk;

use crate::common::{self, FakeConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_on_a_three_server_ensemble_serves_requests() {
    let t = TestZk::ensemble().await;
    let hosts = np_testing::env("NP_ZK_ENSEMBLE_HOSTS");
    let servers: HashSet<&str> = hosts.split(',').collect();
    assert_eq!(servers.len(), 3, "three servers: {servers:?}");
    let config = FakeConfig::new(&["small"]).pool("max-servers: 10").load();
    let cloud = FakeCloud::new("fake-provider", FakeSettings::default());
    let launcher = common::start_fake(&t, &config, &cloud, None).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(common::submit(&t, &["small"]).await);
    }
    for id in &ids {
        assert!(
            common::reaches(&t, id, RequestState::Fulfilled, Duration::from_secs(30)).await,
            "request {id} not fulfilled on the ensemble"
        );
        common::return_request(&t, id).await;
    }
    // A second launcher on the same ensemble and chroot shares the work.
    let peer = TestZk::ensemble_join(&t.chroot).await;
    let second = common::start_fake(&peer, &config, &cloud, None).await;
    let mut more = Vec::new();
    for _ in 0..20 {
        more.push(common::submit(&t, &["small"]).await);
    }
    for id in &more {
        assert!(
            common::reaches(&t, id, RequestState::Fulfilled, Duration::from_secs(30)).await,
            "request {id}"
        );
        common::return_request(&t, id).await;
    }
    second.stop().await;
    launcher.stop().await;
}
