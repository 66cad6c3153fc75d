//! Labels that boot a `diskimage`: requests are declined while the provider
//! has no ready upload of it (upstream's `imagesAvailable`), and a launch
//! boots the newest ready upload, recording its znode path as `image_id`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use np_core::{BuildState, ImageBuild, ImageUpload, RequestState, UploadState};
use np_driver_fake::{FakeCloud, FakeSettings};
use np_testing::TestZk;

use crate::common;

const CONFIG: &str = r#"
zookeeper-servers:
  - host: 127.0.0.1
labels:
  - name: built
diskimages:
  - name: fake-image
    elements: [vm]
providers:
  - name: fake-provider
    driver: fake
    rate: 0.0001
    cloud: fake
    diskimages:
      - name: fake-image
    pools:
      - name: main
        max-servers: 5
        labels:
          - name: built
            diskimage: fake-image
            min-ram: 1024
"#;

async fn request(t: &TestZk) -> String {
    common::submit(t, &["built"]).await
}

async fn wait_state(t: &TestZk, id: &str, want: RequestState) -> bool {
    common::reaches(t, id, want, Duration::from_secs(10)).await
}

async fn upload(t: &TestZk, build: &str, external_id: &str, state: UploadState) -> String {
    let mut u = ImageUpload::new(state);
    u.external_id = Some(external_id.into());
    t.zk.store_upload("fake-image", build, "fake-provider", None, &u).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diskimage_labels_wait_for_an_upload_and_boot_the_newest() {
    let t = TestZk::new().await;
    let config = np_config::load_str(CONFIG, "test.yaml").unwrap();
    let cloud = FakeCloud::new("fake-provider", FakeSettings::default());
    let launcher = common::start_fake(&t, &config, &cloud, None).await;

    // No upload yet: the only pool declines, so the request fails.
    let first = request(&t).await;
    assert!(wait_state(&t, &first, RequestState::Failed).await);
    assert!(cloud.server_ids().is_empty());

    // Two builds; the newest ready upload wins, an uploading one is ignored.
    let old = t.zk.store_build("fake-image", None, &ImageBuild::new(BuildState::Ready)).await.unwrap();
    upload(&t, &old, "image-old", UploadState::Ready).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let new = t.zk.store_build("fake-image", None, &ImageBuild::new(BuildState::Ready)).await.unwrap();
    let new_upload = upload(&t, &new, "image-new", UploadState::Ready).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    upload(&t, &new, "image-uploading", UploadState::Uploading).await;

    let second = request(&t).await;
    assert!(wait_state(&t, &second, RequestState::Fulfilled).await);
    let (req, _) = t.zk.get_request(&second).await.unwrap().unwrap();
    let (node, _) = t.zk.get_node(&req.nodes[0]).await.unwrap().unwrap();
    assert_eq!(
        node.image_id.as_deref(),
        Some(
            format!("/nodepool/images/fake-image/builds/{new}/providers/fake-provider/images/{new_upload}")
                .as_str()
        )
    );
    assert_eq!(node.username.as_deref(), Some("zuul"));
    let servers = cloud.server_ids();
    assert_eq!(servers.len(), 1);
    assert_eq!(cloud.server_image(&servers[0]).as_deref(), Some("image-new"));
    launcher.stop().await;
}

/// min-ready asks only for labels whose image is available somewhere
/// (upstream's `labelImageIsAvailable`): with no ready upload it makes no
/// request (before, every failed min-ready request was deleted and made
/// again at once, hundreds a second), and once an upload is ready it makes
/// the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_ready_waits_for_the_label_image() {
    let t = TestZk::new().await;
    let yaml = CONFIG.replace("labels:\n  - name: built\n", "labels:\n  - name: built\n    min-ready: 1\n");
    let config = np_config::load_str(&yaml, "test.yaml").unwrap();
    let cloud = FakeCloud::new("fake-provider", FakeSettings::default());
    let launcher = common::start_fake(&t, &config, &cloud, None).await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    let probe = request(&t).await;
    let seq = common::requests_before(&probe);
    assert!(seq <= 1, "min-ready made {seq} requests for a label with no image");
    assert!(wait_state(&t, &probe, RequestState::Failed).await);
    assert!(cloud.server_ids().is_empty());

    // An upload appears: min-ready makes its node at the first pass after
    // the label's recheck delay (a request's change starts a pass: the
    // probe's, which gets a node of its own, allocated to it).
    let build = t.zk.store_build("fake-image", None, &ImageBuild::new(BuildState::Ready)).await.unwrap();
    upload(&t, &build, "image-1", UploadState::Ready).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let probe = request(&t).await;
    assert!(wait_state(&t, &probe, RequestState::Fulfilled).await);
    let made = np_testing::eventually(Duration::from_secs(15), || async {
        !common::free_ready(&launcher, "built").is_empty()
    })
    .await;
    assert!(made, "min-ready made no node once the image was uploaded");
    launcher.stop().await;
}
