//! End to end with an AWS provider on moto (a real EC2 API server on
//! 127.0.0.1): a Zuul-like client's requests are fulfilled by EC2 instances,
//! the nodes come back and every instance is terminated.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../np-driver-aws/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use crate::common;
use np_core::RequestState;
use np_launcher::Launcher;
use np_testing::{eventually, TestZk};

use support::PROVIDER;

/// One pool of at most 3 t3.medium Ubuntu instances tagged `team: ci`.
fn yaml() -> String {
    support::aws_yaml(
        &format!("{}            tags:\n              team: ci\n", support::UBUNTU),
        "        max-servers: 3",
        "",
    )
}

async fn running_instances(env: &support::TestEnv) -> usize {
    let out = env.ec2().describe_instances().send().await.unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str() != "terminated").unwrap_or(false))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_fulfilled_by_ec2_instances_and_cleaned_up() {
    let env = support::TestEnv::new().await;
    let t = TestZk::new().await;
    let config = np_config::load_str(&yaml(), "aws.yaml").unwrap();
    let provider = env.provider(&yaml(), PROVIDER).await;
    let launcher = common::start_provider(&t, &config, PROVIDER, provider, None).await;

    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(
            common::submit_with(&t, &["ubuntu", "ubuntu"], |r| r.tenant_name = Some("tenant".into())).await,
        );
    }
    // max-servers 3: the first request gets two instances, the second waits
    // for quota until the first's nodes come back.
    let first_done = eventually(Duration::from_secs(60), || async {
        ids.iter().any(|id| {
            futures::executor::block_on(t.zk.get_request(id)).unwrap().unwrap().0.state
                == RequestState::Fulfilled
        })
    })
    .await;
    assert!(first_done);
    let (first, _) = {
        let mut found = None;
        for id in &ids {
            let (r, s) = t.zk.get_request(id).await.unwrap().unwrap();
            if r.state == RequestState::Fulfilled {
                found = Some((r, s));
                break;
            }
        }
        found.unwrap()
    };
    for id in &first.nodes {
        let (node, _) = t.zk.get_node(id).await.unwrap().unwrap();
        assert_eq!(node.provider.as_deref(), Some(PROVIDER));
        assert_eq!(node.cloud.as_deref(), Some("AWS"));
        assert_eq!(node.username.as_deref(), Some("ubuntu"));
        assert!(node.external_id.as_ref().unwrap()["instance"].as_str().unwrap().starts_with("i-"));
        assert!(node.interface_ip.is_some());
        // As upstream: cores = DefaultCores, the family quota code counts vCPUs.
        let resources = node.resources.as_ref().unwrap();
        assert_eq!(resources["cores"], 1, "{resources}");
        assert_eq!(resources["L-1216C47A"], 2, "{resources}");
    }
    assert!(running_instances(&env).await <= 3);

    // Zuul uses and returns the nodes: they are deleted, the instances
    // terminated, and the second request goes through.
    common::return_request(&t, &first.id).await;
    let second = ids.iter().find(|id| **id != first.id).unwrap().clone();
    assert!(
        eventually(Duration::from_secs(60), || async {
            t.zk.get_request(&second).await.unwrap().unwrap().0.state == RequestState::Fulfilled
        })
        .await
    );
    common::return_request(&t, &second).await;
    let gone = eventually(Duration::from_secs(60), || async {
        t.zk.node_ids().await.unwrap().is_empty() && running_instances(&env).await == 0
    })
    .await;
    if !gone {
        let mut left = Vec::new();
        for id in t.zk.node_ids().await.unwrap() {
            let zk_view = t.zk.get_node(&id).await.unwrap().map(|(n, _)| (n.state, n.allocated_to));
            let cache_view = launcher.shared().nodes.get(&id).map(|e| (e.value.state, e.is_locked()));
            left.push(format!("{id}: zk {zk_view:?} cache {cache_view:?}"));
        }
        panic!("nodes left: {left:?}; running instances: {}", running_instances(&env).await);
    }

    // And the whole Zuul 14 sequence through the real-protocol Python client.
    let hosts = format!("{}{}", np_testing::env("NP_ZK_HOSTS"), t.chroot);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(np_testing::env("NP_PYTHON"))
            .arg(np_testing::repo_root().join("tests/python/zuul_client.py"))
            .args(["--hosts", &hosts, "--labels", "ubuntu", "--count", "4", "--outstanding", "2"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(summary["done"], 4, "{summary}");
    assert_eq!(summary["error_count"], 0, "{summary}");
    assert!(
        eventually(Duration::from_secs(60), || async { running_instances(&env).await == 0 }).await,
        "instances of returned nodes are terminated"
    );
    launcher.stop().await;
}

/// The `nodepool_provider_leaked_total` count for `resource` of the provider.
fn leaked(launcher: &Launcher, resource: &str) -> f64 {
    launcher
        .shared()
        .metrics
        .registry()
        .gather()
        .iter()
        .filter(|f| f.name() == "nodepool_provider_leaked_total")
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            m.get_label().iter().any(|l| l.name() == "resource" && l.value() == resource)
                && m.get_label().iter().any(|l| l.name() == "provider" && l.value() == PROVIDER)
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_objects_and_untagged_imports_of_gone_uploads_are_cleaned_up() {
    use aws_sdk_ec2::types::{ImageDiskContainer, ResourceType, Tag, TagSpecification, UserBucket};
    const BUCKET: &str = "nodepool-images";
    let env = support::TestEnv::new().await;
    let t = TestZk::new().await;
    let yaml =
        support::aws_yaml(support::UBUNTU, "", &format!("    object-storage:\n      bucket-name: {BUCKET}"));
    env.bucket(BUCKET).await;
    // A live upload, and what a builder stopped mid-import left for one
    // whose record is gone: its staged object, and the untagged AMI of
    // its image import task.
    let build =
        t.zk.store_build("img", None, &np_core::ImageBuild::new(np_core::BuildState::Ready)).await.unwrap();
    let upload = t
        .zk
        .store_upload("img", &build, PROVIDER, None, &np_core::ImageUpload::new(np_core::UploadState::Ready))
        .await
        .unwrap();
    let tagging = |upload: &str| {
        format!("nodepool_provider_name={PROVIDER}&nodepool_build_id={build}&nodepool_upload_id={upload}")
    };
    let s3 = env.s3();
    for (key, upload) in [("live.raw", upload.as_str()), ("gone.raw", "0000000099")] {
        s3.put_object()
            .bucket(BUCKET)
            .key(key)
            .tagging(tagging(upload))
            .body(vec![3u8; 2048].into())
            .send()
            .await
            .unwrap();
    }
    let tags = vec![
        Tag::builder().key("nodepool_provider_name").value(PROVIDER).build(),
        Tag::builder().key("nodepool_build_id").value(&build).build(),
        Tag::builder().key("nodepool_upload_id").value("0000000098").build(),
    ];
    let task = env
        .ec2()
        .import_image()
        .disk_containers(
            ImageDiskContainer::builder()
                .format("raw")
                .user_bucket(UserBucket::builder().s3_bucket(BUCKET).s3_key("gone.raw").build())
                .build(),
        )
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::ImportImageTask)
                .set_tags(Some(tags))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let task_id = task.import_task_id().unwrap();
    let mut ami = None;
    for _ in 0..2 {
        let out = env.ec2().describe_import_image_tasks().import_task_ids(task_id).send().await.unwrap();
        ami = out.import_image_tasks()[0].image_id().map(str::to_owned);
    }
    let ami = ami.expect("the import completed");
    let ami_exists = |ami: String| {
        let ec2 = env.ec2();
        async move {
            let out = ec2.describe_images().owners("self").send().await.unwrap();
            out.images().iter().any(|i| i.image_id() == Some(ami.as_str()))
        }
    };
    assert!(ami_exists(ami.clone()).await);

    let config = np_config::load_str(&yaml, "aws.yaml").unwrap();
    let provider = env.provider(&yaml, PROVIDER).await;
    let launcher =
        common::start_provider(&t, &config, PROVIDER, provider, Some(Duration::from_millis(300))).await;
    let cleaned = eventually(Duration::from_secs(30), || async {
        env.keys(BUCKET).await == ["live.raw"] && !ami_exists(ami.clone()).await
    })
    .await;
    assert!(cleaned, "left: objects {:?}, ami {}", env.keys(BUCKET).await, ami_exists(ami.clone()).await);
    assert_eq!(leaked(&launcher, "objects"), 1.0);
    assert_eq!(leaked(&launcher, "amis"), 1.0);
    launcher.stop().await;
}
