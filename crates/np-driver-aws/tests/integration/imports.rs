//! Image upload through S3 and VM Import (`import-method: snapshot` and
//! `image`), the eventual tagging of what imports make, and leaked S3
//! objects, against moto in server mode (whose missing VM Import tasks
//! `support/moto_server.py` adds).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use aws_sdk_ec2::types::{
    ImageDiskContainer, ResourceType, SnapshotDiskContainer, Tag, TagSpecification, UserBucket,
};
use np_driver_aws::{tag_map, AwsProvider};
use np_provider::RateLimiter;
use np_provider::{Provider, ProviderError, Step};
use serde_json::{json, Value};
use support::{TestEnv, PROVIDER};

const BUCKET: &str = "nodepool-images";

fn yaml(object_storage: bool, import_timeout: &str) -> String {
    let storage = if object_storage {
        format!("    object-storage:\n      bucket-name: {BUCKET}\n")
    } else {
        String::new()
    };
    support::diskimage_yaml(
        &["snap-image", "ami-image"],
        &format!("{storage}{import_timeout}"),
        "      - name: snap-image\n        volume-type: gp3\n        tags:\n          team: ci\n      - name: ami-image\n        import-method: image\n",
        "",
        "snap-image",
    )
}

fn metadata(upload: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("nodepool_provider_name".to_owned(), PROVIDER.to_owned()),
        ("nodepool_build_id".to_owned(), "0123abcd".to_owned()),
        ("nodepool_upload_id".to_owned(), upload.to_owned()),
    ])
}

/// A scratch file of `len` bytes (a recognisable pattern), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, len: usize) -> Scratch {
        let dir = std::env::temp_dir().join(format!("np-import-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.raw"));
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, data).unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn run_delete(p: &AwsProvider, id: &Value) {
    let mut m = p.delete(id);
    for _ in 0..200 {
        match m.step().await.unwrap() {
            Step::Done(()) => return,
            Step::Pending(d) => tokio::time::sleep(d).await,
        }
    }
    panic!("delete did not finish");
}

async fn image(env: &TestEnv, ami: &str) -> aws_sdk_ec2::types::Image {
    let out = env.ec2().describe_images().image_ids(ami).send().await.unwrap();
    out.images()[0].clone()
}

async fn snapshot_tags(env: &TestEnv, snapshot: &str) -> BTreeMap<String, String> {
    let out = env.ec2().describe_snapshots().snapshot_ids(snapshot).send().await.unwrap();
    tag_map(out.snapshots()[0].tags())
}

/// (resource kind, external id) of what leak cleanup would see with an
/// upload id.
async fn upload_resources(p: &AwsProvider) -> Vec<(String, Value)> {
    p.list_instances()
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.metadata.contains_key("nodepool_upload_id"))
        .map(|i| (i.node_properties.unwrap()["resource"].as_str().unwrap().to_owned(), i.external_id))
        .collect()
}

#[tokio::test]
async fn snapshot_import_stages_the_file_imports_registers_and_removes_the_object() {
    let env = TestEnv::new().await;
    env.bucket(BUCKET).await;
    let p = env.provider(&yaml(true, "    image-import-timeout: 60\n"), PROVIDER).await;
    let file = Scratch::new("snap-image", 300_000);
    // Two "too many import tasks" answers first: retried (a timeout is set).
    env.faults.arm("ImportSnapshot", "ResourceCountLimitExceeded", 2);

    let ami =
        p.upload_image("snap-image", &file.0, "snap-image-0123abcd", &metadata("0000000001")).await.unwrap();

    // The task was asked for the staged object, tagged with the upload.
    let sent = env.faults.sent("ImportSnapshot");
    assert_eq!(sent.len(), 3, "two refused, one started");
    for part in [
        "DiskContainer.Format=raw",
        "DiskContainer.UserBucket.S3Bucket=nodepool-images",
        "DiskContainer.UserBucket.S3Key=snap-image-0123abcd.raw",
        "TagSpecification.1.ResourceType=import-snapshot-task",
        "Value=0000000001",
    ] {
        assert!(sent[2].contains(part), "ImportSnapshot lacks {part}: {}", sent[2]);
    }
    let tasks = env.ec2().describe_import_snapshot_tasks().send().await.unwrap();
    let task = &tasks.import_snapshot_tasks()[0];
    let detail = task.snapshot_task_detail().unwrap();
    assert_eq!(detail.status(), Some("completed"));
    // The import read all of the file from S3.
    assert_eq!(detail.disk_image_size(), Some(300_000.0));
    assert_eq!(tag_map(task.tags())["nodepool_upload_id"], "0000000001");
    // The task was looked at until done, then the object deleted.
    assert!(env.faults.sent("DescribeImportSnapshotTasks").len() >= 2);
    assert!(env.keys(BUCKET).await.is_empty(), "the staged object is deleted");

    // The imported snapshot became the root of a tagged AMI.
    let snapshot = detail.snapshot_id().unwrap().to_owned();
    let register = env.faults.sent("RegisterImage");
    assert_eq!(register.len(), 1);
    for part in [
        format!("BlockDeviceMapping.1.Ebs.SnapshotId={snapshot}"),
        "BlockDeviceMapping.1.Ebs.VolumeSize=1".to_owned(),
        "BlockDeviceMapping.1.Ebs.VolumeType=gp3".to_owned(),
        "Name=snap-image-0123abcd".to_owned(),
    ] {
        assert!(register[0].contains(&part), "RegisterImage lacks {part}: {}", register[0]);
    }
    let tags = tag_map(image(&env, &ami).await.tags());
    assert_eq!(tags["nodepool_upload_id"], "0000000001");
    assert_eq!(tags["team"], "ci");
    assert_eq!(snapshot_tags(&env, &snapshot).await["nodepool_build_id"], "0123abcd");

    // Leak cleanup sees both with the upload id; deleting the image removes
    // the AMI (and on EC2 its snapshot).
    let seen = upload_resources(&p).await;
    assert!(seen.contains(&("image".to_owned(), json!({"image": ami}))), "{seen:?}");
    assert!(seen.contains(&("snapshot".to_owned(), json!({"snapshot": snapshot}))), "{seen:?}");
    p.delete_image(&ami).await.unwrap();
    let left = env.ec2().describe_images().owners("self").send().await.unwrap();
    assert!(left.images().iter().all(|i| i.image_id() != Some(ami.as_str())));
}

#[tokio::test]
async fn image_import_makes_the_ami_and_tags_it_and_its_snapshot() {
    let env = TestEnv::new().await;
    env.bucket(BUCKET).await;
    let p = env.provider(&yaml(true, ""), PROVIDER).await;
    let file = Scratch::new("ami-image", 70_000);

    let ami =
        p.upload_image("ami-image", &file.0, "ami-image-0123abcd", &metadata("0000000002")).await.unwrap();

    let sent = env.faults.sent("ImportImage");
    assert_eq!(sent.len(), 1);
    for part in [
        "Architecture=x86_64",
        "DiskContainer.1.Format=raw",
        "DiskContainer.1.UserBucket.S3Key=ami-image-0123abcd.raw",
        "TagSpecification.1.ResourceType=import-image-task",
    ] {
        assert!(sent[0].contains(part), "ImportImage lacks {part}: {}", sent[0]);
    }
    // No RegisterImage: the import made the AMI, named after its task.
    assert!(env.faults.sent("RegisterImage").is_empty());
    let img = image(&env, &ami).await;
    assert!(img.name().unwrap().starts_with("import-ami-"), "{:?}", img.name());
    assert_eq!(tag_map(img.tags())["nodepool_upload_id"], "0000000002");
    let snapshot = img.block_device_mappings()[0].ebs().unwrap().snapshot_id().unwrap().to_owned();
    assert_eq!(snapshot_tags(&env, &snapshot).await["nodepool_upload_id"], "0000000002");
    assert!(env.keys(BUCKET).await.is_empty(), "the staged object is deleted");
}

#[tokio::test]
async fn failed_and_impossible_imports_say_why_and_leave_nothing() {
    let env = TestEnv::new().await;
    env.bucket(BUCKET).await;
    let file = Scratch::new("snap-image", 1000);

    // Without object storage: a clear configuration error, nothing sent.
    let p = env.provider(&yaml(false, ""), PROVIDER).await;
    let err = p.upload_image("snap-image", &file.0, "x", &metadata("1")).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Fatal(ref m) if m.contains("needs the provider's object-storage bucket-name")),
        "{err:?}"
    );
    assert!(env.faults.sent("ImportSnapshot").is_empty());

    // Too many import tasks and no image-import-timeout: not retried.
    let p = env.provider(&yaml(true, ""), PROVIDER).await;
    env.faults.arm("ImportSnapshot", "ResourceCountLimitExceeded", 1);
    let err = p.upload_image("snap-image", &file.0, "x", &metadata("2")).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Fatal(ref m) if m.contains("ResourceCountLimitExceeded")),
        "{err:?}"
    );
    assert!(env.keys(BUCKET).await.is_empty(), "the staged object is deleted after a refused import");

    // A task that ends "deleted" (EC2 found no disk in the empty file):
    // the error carries EC2's message, and the object is gone too.
    let empty = Scratch::new("empty", 0);
    let err = p.upload_image("snap-image", &empty.0, "empty", &metadata("3")).await.unwrap_err();
    assert!(matches!(err, ProviderError::Fatal(_)), "{err:?}");
    assert!(err.to_string().contains("image import ended deleted"), "{err}");
    assert!(err.to_string().contains("Disk validation failed"), "{err}");
    assert!(env.keys(BUCKET).await.is_empty());
    let err = p.upload_image("ami-image", &empty.0, "empty", &metadata("4")).await.unwrap_err();
    assert!(err.to_string().contains("Disk validation failed"), "{err}");
    assert!(env.faults.sent("RegisterImage").is_empty());
    assert!(env.keys(BUCKET).await.is_empty());
}

#[tokio::test]
async fn large_files_go_up_in_parts_and_a_failed_part_aborts_the_upload() {
    let env = TestEnv::new().await;
    env.bucket(BUCKET).await;
    let clients = env.clients();
    let limiter = RateLimiter::new(100.0);
    let tags = metadata("0000000007");
    // 11 MiB and 3 bytes in 5 MiB parts: three parts, the last one short.
    let len = 11 * 1024 * 1024 + 3;
    let file = Scratch::new("big", len);
    np_driver_aws::s3::put_file(&clients.s3, &limiter, BUCKET, "big.raw", &file.0, &tags, 5 * 1024 * 1024)
        .await
        .unwrap();
    assert_eq!(env.faults.sent("UploadPart").len(), 3);
    assert_eq!(env.faults.sent("CompleteMultipartUpload").len(), 1);
    assert!(env.faults.sent("PutObject").is_empty());
    let object = env.s3().get_object().bucket(BUCKET).key("big.raw").send().await.unwrap();
    let body = object.body.collect().await.unwrap().into_bytes();
    assert_eq!(body.len(), len);
    assert_eq!(body.as_ref(), std::fs::read(&file.0).unwrap().as_slice());
    let tagging = env.s3().get_object_tagging().bucket(BUCKET).key("big.raw").send().await.unwrap();
    let got: BTreeMap<String, String> =
        tagging.tag_set().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect();
    assert_eq!(got, tags);

    // A part that fails aborts the multipart upload: no object, no upload
    // left holding parts.
    env.faults.arm("UploadPart", "InternalError", 1);
    let err = np_driver_aws::s3::put_file(
        &clients.s3,
        &limiter,
        BUCKET,
        "broken.raw",
        &file.0,
        &tags,
        5 * 1024 * 1024,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ProviderError::Transient(ref m) if m.contains("InternalError")), "{err:?}");
    assert_eq!(env.faults.sent("AbortMultipartUpload").len(), 1);
    let uploads = env.s3().list_multipart_uploads().bucket(BUCKET).send().await.unwrap();
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
    assert_eq!(env.keys(BUCKET).await, vec!["big.raw".to_owned()]);
}

/// Starts an import as a crashed builder would have left it: the task
/// tagged for `provider`, driven to completion, nothing tagged after.
async fn abandoned_import(env: &TestEnv, provider: &str, key: &str, image: bool) -> (Option<String>, String) {
    env.s3().put_object().bucket(BUCKET).key(key).body(vec![7u8; 4096].into()).send().await.unwrap();
    let bucket = UserBucket::builder().s3_bucket(BUCKET).s3_key(key).build();
    let tags = vec![
        Tag::builder().key("nodepool_provider_name").value(provider).build(),
        Tag::builder().key("nodepool_build_id").value("0123abcd").build(),
        Tag::builder().key("nodepool_upload_id").value(key).build(),
    ];
    let ec2 = env.ec2();
    if image {
        let spec = TagSpecification::builder()
            .resource_type(ResourceType::ImportImageTask)
            .set_tags(Some(tags))
            .build();
        let task = ec2
            .import_image()
            .disk_containers(ImageDiskContainer::builder().format("raw").user_bucket(bucket).build())
            .tag_specifications(spec)
            .send()
            .await
            .unwrap();
        let id = task.import_task_id().unwrap();
        for _ in 0..2 {
            let out = ec2.describe_import_image_tasks().import_task_ids(id).send().await.unwrap();
            let t = &out.import_image_tasks()[0];
            if t.status() == Some("completed") {
                return (
                    t.image_id().map(str::to_owned),
                    t.snapshot_details()[0].snapshot_id().unwrap().to_owned(),
                );
            }
        }
    } else {
        let spec = TagSpecification::builder()
            .resource_type(ResourceType::ImportSnapshotTask)
            .set_tags(Some(tags))
            .build();
        let task = ec2
            .import_snapshot()
            .disk_container(SnapshotDiskContainer::builder().format("raw").user_bucket(bucket).build())
            .tag_specifications(spec)
            .send()
            .await
            .unwrap();
        let id = task.import_task_id().unwrap();
        for _ in 0..2 {
            let out = ec2.describe_import_snapshot_tasks().import_task_ids(id).send().await.unwrap();
            let d = out.import_snapshot_tasks()[0].snapshot_task_detail().unwrap();
            if d.status() == Some("completed") {
                return (None, d.snapshot_id().unwrap().to_owned());
            }
        }
    }
    panic!("the import did not complete");
}

#[tokio::test]
async fn untagged_imports_get_their_tasks_tags_and_foreign_ones_are_left_alone() {
    let env = TestEnv::new().await;
    env.bucket(BUCKET).await;
    let p = env.provider(&yaml(true, ""), PROVIDER).await;
    let (ami, ami_snapshot) = abandoned_import(&env, PROVIDER, "0000000011", true).await;
    let ami = ami.unwrap();
    let (_, snapshot) = abandoned_import(&env, PROVIDER, "0000000012", false).await;
    let (foreign_ami, foreign_snapshot) = abandoned_import(&env, "someone-else", "0000000013", true).await;
    let foreign_ami = foreign_ami.unwrap();
    let (_, foreign_import) = abandoned_import(&env, "someone-else", "0000000014", false).await;
    for key in ["0000000011", "0000000012", "0000000013", "0000000014"] {
        env.s3().delete_object().bucket(BUCKET).key(key).send().await.unwrap();
    }
    assert!(image(&env, &ami).await.tags().is_empty(), "imports leave the AMI untagged");
    assert!(snapshot_tags(&env, &snapshot).await.is_empty(), "imports leave the snapshot untagged");

    // One leak-cleanup listing tags ours from their import tasks, and lists
    // them as this provider's upload resources at once. A tagging call that
    // fails only holds back its own resource until the next listing.
    env.faults.arm("CreateTags", "InternalError", 1);
    let first = upload_resources(&p).await;
    assert_eq!(first.len(), 2, "{first:?}");
    let seen = upload_resources(&p).await;
    assert_eq!(tag_map(image(&env, &ami).await.tags())["nodepool_upload_id"], "0000000011");
    assert_eq!(snapshot_tags(&env, &ami_snapshot).await["nodepool_upload_id"], "0000000011");
    assert_eq!(snapshot_tags(&env, &snapshot).await["nodepool_upload_id"], "0000000012");
    assert!(image(&env, &foreign_ami).await.tags().is_empty());
    assert!(snapshot_tags(&env, &foreign_snapshot).await.is_empty());
    assert!(snapshot_tags(&env, &foreign_import).await.is_empty());

    for want in [
        ("image".to_owned(), json!({"image": ami})),
        ("snapshot".to_owned(), json!({"snapshot": ami_snapshot})),
        ("snapshot".to_owned(), json!({"snapshot": snapshot})),
    ] {
        assert!(seen.contains(&want), "{want:?} not in {seen:?}");
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // Untagged resources found not ours are remembered: another listing asks
    // no import task again.
    let asked = env.faults.sent("DescribeImportImageTasks").len()
        + env.faults.sent("DescribeImportSnapshotTasks").len();
    p.list_instances().await.unwrap();
    let asked_again = env.faults.sent("DescribeImportImageTasks").len()
        + env.faults.sent("DescribeImportSnapshotTasks").len();
    assert_eq!(asked_again, asked);
}

#[tokio::test]
async fn staged_objects_are_listed_with_their_tags_and_deleted() {
    let env = TestEnv::new().await;
    env.bucket(BUCKET).await;
    let p = env.provider(&yaml(true, ""), PROVIDER).await;
    let s3 = env.s3();
    let put = |key: &'static str, tagging: &'static str| {
        let s3 = s3.clone();
        async move {
            s3.put_object()
                .bucket(BUCKET)
                .key(key)
                .tagging(tagging)
                .body(vec![1u8; 10].into())
                .send()
                .await
                .unwrap();
        }
    };
    put(
        "ours.raw",
        "nodepool_provider_name=ec2-us-west-2&nodepool_build_id=0123abcd&nodepool_upload_id=0000000021",
    )
    .await;
    put("theirs.raw", "nodepool_provider_name=someone-else&nodepool_upload_id=0000000022").await;
    put("untagged.raw", "").await;

    let objects = |listed: Vec<np_provider::Instance>| {
        listed
            .into_iter()
            .filter(|i| i.node_properties.as_ref().unwrap()["resource"] == "object")
            .collect::<Vec<_>>()
    };
    let listed = objects(p.list_instances().await.unwrap());
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].external_id, json!({"object": "ours.raw"}));
    assert_eq!(listed[0].metadata["nodepool_upload_id"], "0000000021");
    assert_eq!(listed[0].metadata["nodepool_build_id"], "0123abcd");
    // An object's tags are read once.
    assert_eq!(env.faults.sent("GetObjectTagging").len(), 3);
    assert_eq!(objects(p.list_instances().await.unwrap()).len(), 1);
    assert_eq!(env.faults.sent("GetObjectTagging").len(), 3);

    run_delete(&p, &listed[0].external_id).await;
    let mut keys = env.keys(BUCKET).await;
    keys.sort();
    assert_eq!(keys, ["theirs.raw", "untagged.raw"]);
    assert!(objects(p.list_instances().await.unwrap()).is_empty());

    // A bucket that cannot be listed does not stop the rest of the listing.
    let broken = env.provider(&yaml(true, "").replace(BUCKET, "no-such-bucket"), PROVIDER).await;
    assert!(broken.list_instances().await.is_ok());
}

#[tokio::test]
async fn an_upload_that_cannot_be_completed_is_aborted_and_unreadable_objects_are_skipped() {
    let env = TestEnv::new().await;
    env.bucket(BUCKET).await;
    let clients = env.clients();
    let limiter = RateLimiter::new(100.0);
    let file = Scratch::new("big", 6 * 1024 * 1024);
    env.faults.arm("CompleteMultipartUpload", "InternalError", 1);
    let err = np_driver_aws::s3::put_file(
        &clients.s3,
        &limiter,
        BUCKET,
        "big.raw",
        &file.0,
        &metadata("0000000031"),
        5 * 1024 * 1024,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
    assert_eq!(env.faults.sent("AbortMultipartUpload").len(), 1);
    let uploads = env.s3().list_multipart_uploads().bucket(BUCKET).send().await.unwrap();
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
    assert!(env.keys(BUCKET).await.is_empty());

    // An object whose tags cannot be read is skipped; the others are listed.
    let p = env.provider(&yaml(true, ""), PROVIDER).await;
    for key in ["a.raw", "b.raw"] {
        env.s3()
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .tagging(format!("nodepool_provider_name={PROVIDER}&nodepool_upload_id=1"))
            .body(vec![1u8; 10].into())
            .send()
            .await
            .unwrap();
    }
    env.faults.arm("GetObjectTagging", "AccessDenied", 1);
    let objects = |listed: Vec<np_provider::Instance>| {
        listed.into_iter().filter(|i| i.node_properties.as_ref().unwrap()["resource"] == "object").count()
    };
    assert_eq!(objects(p.list_instances().await.unwrap()), 1);
    assert_eq!(objects(p.list_instances().await.unwrap()), 2);
}
