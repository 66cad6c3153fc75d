//! The builder uploading to an AWS provider on moto (a real EC2 and S3 API
//! server on 127.0.0.1, with the VM Import tasks the test server adds):
//! the snapshot import path end to end, and the cleanup deregistering what
//! it no longer keeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../np-driver-aws/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use np_core::BuildState;
use np_testing::{eventually, TestZk};
use support::PROVIDER;

use crate::common;

const BUCKET: &str = "nodepool-images";

fn yaml(dir: &std::path::Path, image_extra: &str) -> String {
    common::built_image_yaml(
        dir,
        image_extra,
        &format!(
            "name: {PROVIDER}\ndriver: aws\nregion-name: us-west-2\nrate: 100\nobject-storage:\n  bucket-name: {BUCKET}"
        ),
        "import-method: snapshot\ntags:\n  team: ci",
        "instance-type: t3.medium\nkey-name: zuul",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_are_imported_into_ec2_and_old_ones_deregistered() {
    let env = support::TestEnv::new().await;
    env.bucket(BUCKET).await;
    let t = TestZk::new().await;
    let dir = common::scratch_dir("np-builder-aws");
    // A new build every 2 s: the third retires the first.
    let text = yaml(&dir, "rebuild-age: 2");
    let config = np_config::load_str(&text, "nodepool.yaml").unwrap();
    let provider = env.provider(&text, PROVIDER).await;
    let builder = common::start(&t, &config, PROVIDER, provider).await;

    let (build, upload_id, upload) = common::first_upload(&t, PROVIDER).await;
    let ami = upload.external_id.clone().unwrap();
    assert!(ami.starts_with("ami-"), "{ami}");
    assert_eq!(upload.format.as_deref(), Some("raw"));

    // EC2 has the AMI with the upload's tags; the import task read the
    // staged object, which is gone again.
    let images = env.ec2().describe_images().image_ids(&ami).send().await.unwrap();
    let tags = np_driver_aws::tag_map(images.images()[0].tags());
    assert_eq!(tags["nodepool_build_id"], build);
    assert_eq!(tags["nodepool_upload_id"], upload_id);
    assert_eq!(tags["nodepool_provider_name"], PROVIDER);
    assert_eq!(tags["team"], "ci");
    assert_eq!(env.faults.sent("ImportSnapshot").len(), 1);
    assert!(env.keys(BUCKET).await.is_empty());

    // Builds roll on; the first one's AMI is deregistered once two newer
    // uploads exist, and its records go.
    let ami_exists = |ami: String| {
        let ec2 = env.ec2();
        async move {
            let out = ec2.describe_images().owners("self").send().await.unwrap();
            out.images().iter().any(|i| i.image_id() == Some(ami.as_str()))
        }
    };
    assert!(
        eventually(Duration::from_secs(40), || async {
            !ami_exists(ami.clone()).await && t.zk.get_build("built-image", &build).await.unwrap().is_none()
        })
        .await
    );
    let ready_builds = t.zk.build_ids("built-image").await.unwrap().len();
    assert!(ready_builds >= 2, "{ready_builds}");
    builder.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = BuildState::Ready;
}
