//! The builder uploading to an OpenStack provider on the fake cloud (the
//! OpenStack driver's tests/support: Glance v2 shapes on 127.0.0.1): builds
//! become private Glance images with the upload's properties, and the
//! cleanup deletes the images of builds it no longer keeps.

#[path = "../../../np-driver-openstack/tests/support/fake_openstack.rs"]
mod fake_openstack;

use std::time::Duration;

use fake_openstack::FakeOpenStack;
use np_testing::{eventually, TestZk};

use crate::common;

const PROVIDER: &str = "devstack";

fn yaml(dir: &std::path::Path) -> String {
    common::built_image_yaml(
        dir,
        "rebuild-age: 2",
        &format!("name: {PROVIDER}\ndriver: openstack\ncloud: devstack\nrate: 0.001"),
        "meta:\n  team: ci",
        "flavor-name: np-small",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_go_to_glance_and_old_images_are_deleted() {
    let os = FakeOpenStack::start().await;
    let t = TestZk::new().await;
    let dir = common::scratch_dir("np-builder-os");
    let text = yaml(&dir);
    let config = np_config::load_str(&text, "nodepool.yaml").unwrap();
    let np_config::ProviderDriver::OpenStack(o) = &config.providers[0].driver else { panic!() };
    let clouds = os.clouds_yaml(&dir, "devstack");
    let cloud = np_driver_openstack::clouds::load_file(&clouds, "devstack").unwrap();
    let provider = np_driver_openstack::OpenStackProvider::with_cloud(PROVIDER, o, cloud).await.unwrap();
    let builder = common::start(&t, &config, PROVIDER, provider).await;

    let (build, upload_id, upload) = common::first_upload(&t, PROVIDER).await;
    let image_id = upload.external_id.clone().unwrap();
    assert_eq!(upload.format.as_deref(), Some("qcow2"));
    let image = os.images()[&image_id].clone();
    assert_eq!(image["status"], "active");
    assert_eq!(image["disk_format"], "qcow2");
    assert_eq!(image["visibility"], "private");
    assert_eq!(image["nodepool_build_id"], build.as_str());
    assert_eq!(image["nodepool_upload_id"], upload_id.as_str());
    assert_eq!(image["nodepool_provider_name"], PROVIDER);
    assert_eq!(image["team"], "ci");
    assert!(image["name"].as_str().unwrap().starts_with("built-image-"), "{image}");
    assert!(os.image_size(&image_id).unwrap() > 0);

    // Builds roll on (rebuild-age 2 s): the first build's image is deleted
    // once two newer uploads exist, and its record goes.
    assert!(
        eventually(Duration::from_secs(40), || async {
            !os.images().contains_key(&image_id)
                && t.zk.get_build("built-image", &build).await.unwrap().is_none()
        })
        .await
    );
    assert!(t.zk.build_ids("built-image").await.unwrap().len() >= 2);
    builder.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
