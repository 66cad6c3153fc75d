//! The OpenStack driver against a real OpenStack: Debian's Keystone, Nova
//! (with its fake hypervisor), Placement and Glance on 127.0.0.1, started by
//! `tools/openstack-env.sh` (which `tools/test.sh` runs; the stack's Neutron
//! is a small stateful stub). The cloud comes from the clouds.yaml that
//! script writes (`NP_OS_CLOUDS`, cloud `NP_OS_CLOUD`).
//!
//! What only a real cloud can show: our Keystone request is accepted and the
//! catalog read, Nova takes our server body at microversion 2.47, servers
//! reach ACTIVE with the fields we read, Nova's own quota refusal and fault
//! texts are classified as we expect, its limits parse, the listing's
//! pagination works, and Glance accepts our uploads; the zones, console
//! output, image lookups, volume limits and image listing the launcher's
//! zone rule, `console-log`, `labelReady`, Cinder quota and the CLI's
//! `alien-image-list` rest on.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use np_driver_openstack::client::Service;
use np_driver_openstack::OpenStackProvider;
use np_provider::{ImageUploadRequest, Instance, LaunchRequest, Provider, ProviderError, Step};
use reqwest::Method;
use serde_json::{json, Value};

const CONFIG: &str = r#"
labels:
  - name: small
  - name: medium-auto
  - name: huge
providers:
  - name: real-os
    driver: openstack
    cloud: devstack
    rate: 0.001
    cloud-images:
      - name: cirros
    pools:
      - name: main
        networks: [private]
        labels:
          - name: small
            cloud-image: cirros
            flavor-name: np-small
            instance-properties:
              purpose: rust-driver-test
      - name: auto
        labels:
          - name: medium-auto
            cloud-image: cirros
            min-ram: 1024
"#;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the real OpenStack with tools/openstack-env.sh start and source .openstack-env/env.sh (tools/test.sh does both)")
    })
}

async fn provider(config: &str) -> OpenStackProvider {
    let config = np_config::load_str(config, "nodepool.yaml").unwrap();
    let np_config::ProviderDriver::OpenStack(o) = &config.providers[0].driver else { panic!() };
    let cloud = np_driver_openstack::clouds::load_file(
        std::path::Path::new(&env("NP_OS_CLOUDS")),
        &env("NP_OS_CLOUD"),
    )
    .unwrap();
    OpenStackProvider::with_cloud("real-os", o, cloud).await.unwrap()
}

fn request(node_id: &str, pool: &str, label: &str) -> LaunchRequest {
    LaunchRequest::new(node_id, "real-os", pool, label)
}

async fn run_create(
    p: &OpenStackProvider,
    r: LaunchRequest,
) -> (Result<Instance, ProviderError>, Option<Value>) {
    let mut m = p.create(r);
    for _ in 0..600 {
        match m.step().await {
            Ok(Step::Done(i)) => return (Ok(i), m.external_id()),
            Ok(Step::Pending(d)) => tokio::time::sleep(d).await,
            Err(e) => return (Err(e), m.external_id()),
        }
    }
    panic!("create did not finish");
}

async fn run_delete(p: &OpenStackProvider, id: &Value) {
    let mut m = p.delete(id);
    for _ in 0..600 {
        match m.step().await.unwrap() {
            Step::Done(()) => return,
            Step::Pending(d) => tokio::time::sleep(d).await,
        }
    }
    panic!("delete did not finish");
}

/// Nova's own view of a server (not through the driver's listing).
async fn nova_server(p: &OpenStackProvider, id: &str) -> Option<Value> {
    let session = p.inner().session();
    match session.call(Service::Compute, Method::GET, &format!("servers/{id}"), None).await {
        Ok((_, v)) => Some(v["server"].clone()),
        Err(e) if e.status == 404 => None,
        Err(e) => panic!("GET server: {e:?}"),
    }
}

#[tokio::test]
async fn servers_boot_on_real_nova_and_are_deleted() {
    let p = provider(CONFIG).await;
    let (small, id) = run_create(&p, request("0000000101", "main", "small")).await;
    let small = small.unwrap();
    let id = id.unwrap();
    let (medium, id2) = run_create(&p, request("0000000102", "auto", "medium-auto")).await;
    let medium = medium.unwrap();
    let id2 = id2.unwrap();

    // What Nova recorded is what we asked for.
    let server = nova_server(&p, id.as_str().unwrap()).await.unwrap();
    assert_eq!(server["name"], "np0000000101");
    assert_eq!(server["status"], "ACTIVE");
    let meta = &server["metadata"];
    assert_eq!(meta["groups"], "real-os,cirros,small");
    assert_eq!(meta["purpose"], "rust-driver-test");
    assert_eq!(meta["nodepool_node_id"], "0000000101");
    assert_eq!(meta["nodepool_pool_name"], "main");
    assert_eq!(meta["nodepool_provider_name"], "real-os");
    assert_eq!(server["flavor"]["original_name"], "np-small");
    // min-ram 1024: the smallest flavor with enough RAM.
    let server2 = nova_server(&p, id2.as_str().unwrap()).await.unwrap();
    assert_eq!(server2["flavor"]["original_name"], "np-medium");

    // The node's fields as read from Nova's listing.
    assert_eq!(small.az.as_deref(), Some("nova"));
    assert_eq!(small.host_id.as_deref().map(str::len), Some(56));
    assert_eq!(small.cloud.as_deref(), Some("devstack"));
    assert_eq!(small.region, None, "no region-name in the provider");
    let ip = small.interface_ip.clone().unwrap();
    assert!(ip.starts_with("127.10.0."), "{ip}");
    assert_eq!(small.private_ipv4.as_deref(), Some(ip.as_str()));
    // Missing addresses are empty strings, as openstacksdk gives Python.
    assert_eq!(small.public_ipv4.as_deref(), Some(""), "no external network: no floating ip");
    assert_eq!(small.public_ipv6.as_deref(), Some(""));
    assert!(!medium.interface_ip.as_deref().unwrap().is_empty(), "networks \"auto\" gave it an address");

    // Leak listing, usage and limits from the real services.
    let listed = p.list_instances().await.unwrap();
    let ids: Vec<&Value> = listed.iter().map(|i| &i.external_id).collect();
    assert!(ids.contains(&&id) && ids.contains(&&id2), "{ids:?}");
    let usage = p.instance_usage().await.unwrap();
    let ours = usage
        .iter()
        .find(|u| u.metadata.get("nodepool_node_id").map(String::as_str) == Some("0000000102"))
        .unwrap();
    assert_eq!((ours.quota.get("cores"), ours.quota.get("ram")), (2.0, 2048.0));
    let limits = p.quota_limits().await.unwrap();
    assert_eq!(limits.get("instances"), 10.0);
    assert_eq!(limits.get("cores"), 20.0);
    assert_eq!(limits.get("ram"), 51200.0);

    run_delete(&p, &id).await;
    run_delete(&p, &id2).await;
    assert!(nova_server(&p, id.as_str().unwrap()).await.is_none());
    assert!(nova_server(&p, id2.as_str().unwrap()).await.is_none());
    // Deleting what is gone succeeds.
    run_delete(&p, &id).await;
}

#[tokio::test]
async fn novas_refusals_and_faults_are_classified() {
    let p = provider(CONFIG).await;
    let session = p.inner().session();
    // Nova's own quota refusal: the project may hold one instance.
    let (_, token_project) = session.call(Service::Compute, Method::GET, "limits", None).await.unwrap();
    assert!(token_project["limits"]["absolute"]["maxTotalInstances"].is_number());
    let project = session.project_id().await.unwrap();
    let used = token_project["limits"]["absolute"]["totalInstancesUsed"].as_i64().unwrap();
    let limit = token_project["limits"]["absolute"]["maxTotalInstances"].as_i64().unwrap();
    let set = |n: i64| json!({"quota_set": {"instances": n, "force": true}});
    // Room for one more server; the quota is restored before any assertion.
    session
        .call(Service::Compute, Method::PUT, &format!("os-quota-sets/{project}"), Some(&set(used + 1)))
        .await
        .unwrap();
    let (first, id) = run_create(&p, request("0000000201", "main", "small")).await;
    let (second, none) = run_create(&p, request("0000000202", "main", "small")).await;
    session
        .call(Service::Compute, Method::PUT, &format!("os-quota-sets/{project}"), Some(&set(limit)))
        .await
        .unwrap();
    if let Some(id) = &id {
        run_delete(&p, id).await;
    }
    first.unwrap();
    match second {
        Err(ProviderError::Quota(m)) => assert!(m.contains("Quota exceeded for instances"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(none.is_none());

    // A flavor with more disk than the hypervisor has (disk is no Nova quota):
    // the scheduler finds no host, and Nova puts its "No valid host" fault on
    // the server.
    let huge = session
        .call(
            Service::Compute,
            Method::POST,
            "flavors",
            Some(&json!({"flavor": {"name": format!("np-huge-{}", std::process::id()), "vcpus": 1, "ram": 512, "disk": 700000}})),
        )
        .await
        .unwrap()
        .1["flavor"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let config = CONFIG.replace("flavor-name: np-small", &format!("flavor-name: {huge}"));
    let p2 = provider(&config).await;
    let (r, id) = run_create(&p2, request("0000000203", "main", "small")).await;
    session.call(Service::Compute, Method::DELETE, &format!("flavors/{huge}"), None).await.unwrap();
    if let Some(id) = &id {
        run_delete(&p2, id).await;
    }
    match r {
        Err(ProviderError::Capacity(m)) => assert!(m.contains("No valid host"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(id.is_some(), "the server id was known, so the launcher can delete it");

    // A missing cloud image is fatal and names it.
    let config =
        CONFIG.replace("  - name: cirros\n", "  - name: cirros\n        image-name: no-such-image\n");
    let p3 = provider(&config).await;
    let (r, id) = run_create(&p3, request("0000000204", "main", "small")).await;
    assert!(matches!(r, Err(ProviderError::Fatal(ref m)) if m.contains("no-such-image")), "{r:?}");
    assert!(id.is_none());
}

#[tokio::test]
async fn images_upload_to_real_glance() {
    let p = provider(CONFIG).await;
    let dir = std::env::temp_dir().join(format!("np-os-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("image.raw");
    std::fs::write(&file, vec![1u8; 1 << 20]).unwrap();
    let req = ImageUploadRequest {
        diskimage: "ubuntu".into(),
        path: file,
        format: "raw".into(),
        name: format!("np-real-upload-{}", std::process::id()),
        metadata: [("nodepool_build_id".to_owned(), "0000000007".to_owned())].into(),
        md5: None,
        sha256: None,
    };
    let id = p.upload_image(&req).await.unwrap();
    let session = p.inner().session();
    let (_, image) = session.call(Service::Image, Method::GET, &format!("images/{id}"), None).await.unwrap();
    assert_eq!(image["status"], "active");
    assert_eq!(image["size"], 1 << 20);
    assert_eq!(image["disk_format"], "raw");
    assert_eq!(image["visibility"], "private");
    assert_eq!(image["nodepool_build_id"], "0000000007");
    p.delete_image(&id).await.unwrap();
    let gone = session.call(Service::Image, Method::GET, &format!("images/{id}"), None).await.unwrap_err();
    assert_eq!(gone.status, 404);
    p.delete_image(&id).await.unwrap();
    // Glance answers errors in plain text; a bad format is still a clear error.
    let bad = ImageUploadRequest { format: "no-such-format".into(), ..req };
    let err = p.upload_image(&bad).await.unwrap_err();
    assert!(matches!(err, ProviderError::Fatal(_)), "{err:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_listing_walks_novas_pages() {
    let p = provider(CONFIG).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (r, id) = run_create(&p, request(&format!("000000030{i}"), "main", "small")).await;
        r.unwrap();
        ids.push(id.unwrap());
    }
    // Nova's page size is its `max_limit` (1000 by default); a page of one
    // shows the link walk works against the real marker links.
    let session = p.inner().session();
    let (_, page) =
        session.call(Service::Compute, Method::GET, "servers/detail?limit=1", None).await.unwrap();
    let next = page["servers_links"][0]["href"].as_str().unwrap().to_owned();
    let (_, page2) = session.call(Service::Compute, Method::GET, &next, None).await.unwrap();
    assert_eq!(page2["servers"].as_array().unwrap().len(), 1);
    assert_ne!(page["servers"][0]["id"], page2["servers"][0]["id"]);
    let listed = p.list_instances().await.unwrap();
    for id in &ids {
        assert!(listed.iter().any(|i| &i.external_id == id));
    }
    for id in &ids {
        run_delete(&p, id).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

const HOOKS: &str = r#"
labels:
  - name: console
  - name: ghost
providers:
  - name: real-os
    driver: openstack
    cloud: devstack
    rate: 0.001
    cloud-images:
      - name: cirros
      - name: ghost
        image-name: np-no-such-image
    pools:
      - name: main
        networks: [private]
        labels:
          - name: console
            cloud-image: cirros
            flavor-name: np-small
            console-log: true
          - name: ghost
            cloud-image: ghost
            flavor-name: np-small
      - name: zoned
        availability-zones: [nova]
        labels:
          - name: console
            cloud-image: cirros
            flavor-name: np-small
"#;

#[tokio::test]
async fn zones_consoles_image_checks_volume_limits_and_image_listing_on_real_services() {
    let p = provider(HOOKS).await;
    // Nova's zones (the fake hypervisor's host is in `nova`).
    assert_eq!(p.availability_zones("main").await.unwrap(), vec!["nova"]);
    assert_eq!(p.availability_zones("zoned").await.unwrap(), vec!["nova"]);
    // labelReady: Glance has cirros, not the ghost.
    assert!(p.label_ready("main", "console").await);
    assert!(!p.label_ready("main", "ghost").await);
    // A server in the zone the launcher chose; its console from Nova.
    let mut r = request("0000000301", "main", "console");
    r.az = Some("nova".into());
    let (inst, id) = run_create(&p, r).await;
    let inst = inst.unwrap();
    let id = id.unwrap();
    assert_eq!(inst.az.as_deref(), Some("nova"));
    let console = p.console_log("main", "console", &id).await.unwrap();
    assert!(!console.trim().is_empty(), "Nova gave a console: {console:?}");
    eprintln!("console of a fake-hypervisor server: {console:?}");
    run_delete(&p, &id).await;
    // The block-storage service's limits (Cinder's defaults: 10 volumes,
    // 1000 GB) are part of the cloud's.
    let q = p.quota_limits().await.unwrap();
    assert_eq!((q.get("volumes"), q.get("volume-gb")), (10.0, 1000.0), "{q:?}");
    p.instance_usage().await.unwrap();
    // The images Nodepool uploaded are the ones with a build id.
    let dir = std::env::temp_dir().join(format!("np-os-real-list-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("image.raw");
    std::fs::write(&file, vec![0u8; 4096]).unwrap();
    let req = ImageUploadRequest {
        diskimage: "ubuntu".into(),
        path: file,
        format: "raw".into(),
        name: format!("np-real-alien-{}", std::process::id()),
        metadata: [("nodepool_build_id".to_owned(), "0000000009".to_owned())].into(),
        md5: None,
        sha256: None,
    };
    let image = p.upload_image(&req).await.unwrap();
    let listed = p.nodepool_images().await;
    p.delete_image(&image).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let listed = listed.unwrap();
    assert!(listed.iter().any(|i| i.id == image && i.name == req.name), "{listed:?}");
    assert!(listed.iter().all(|i| i.name != "cirros"), "{listed:?}");
}

/// Waits until `check` is true (polling every half second, at most `secs`).
async fn until<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..secs * 2 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

#[tokio::test]
async fn a_cinder_volume_attached_to_a_server_counts_in_its_usage() {
    let p = provider(HOOKS).await;
    let session = p.inner().session();
    let (server, id) = run_create(&p, request("0000000302", "main", "console")).await;
    server.unwrap();
    let id = id.unwrap();
    let sid = id.as_str().unwrap().to_owned();
    // A blank 2 GB volume, attached through Nova as an operator would.
    let (_, v) = session
        .call(
            Service::Volume,
            Method::POST,
            "volumes",
            Some(&json!({"volume": {"size": 2, "name": "np-real-vol"}})),
        )
        .await
        .unwrap();
    let vid = v["volume"]["id"].as_str().unwrap().to_owned();
    let status = |vid: String| async move {
        let (_, v) =
            session.call(Service::Volume, Method::GET, &format!("volumes/{vid}"), None).await.unwrap();
        v["volume"]["status"].as_str().unwrap_or("").to_owned()
    };
    assert!(until(60, || async { status(vid.clone()).await == "available" }).await, "volume available");
    session
        .call(
            Service::Compute,
            Method::POST,
            &format!("servers/{sid}/os-volume_attachments"),
            Some(&json!({"volumeAttachment": {"volumeId": vid}})),
        )
        .await
        .unwrap();
    assert!(until(60, || async { status(vid.clone()).await == "in-use" }).await, "volume attached");
    tokio::time::sleep(np_driver_openstack::provider::LISTING_TTL).await;
    let usage = p.instance_usage().await.unwrap();
    let ours = usage
        .iter()
        .find(|u| u.metadata.get("nodepool_node_id").map(String::as_str) == Some("0000000302"))
        .unwrap();
    assert_eq!((ours.quota.get("volumes"), ours.quota.get("volume-gb")), (1.0, 2.0), "{:?}", ours.quota);
    run_delete(&p, &id).await;
    // Nova detaches it with the server; then it goes.
    assert!(until(60, || async { status(vid.clone()).await == "available" }).await, "volume detached");
    session.call(Service::Volume, Method::DELETE, &format!("volumes/{vid}"), None).await.unwrap();
}
