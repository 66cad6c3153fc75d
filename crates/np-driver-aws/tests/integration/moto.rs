//! The AWS driver against a real EC2 API server: moto in server mode on
//! 127.0.0.1 (started by `support`, reset before each test), with a loopback
//! Service Quotas stub and an SDK interceptor for the errors moto cannot
//! produce (capacity, volume/host limits, throttling).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use np_driver_aws::{pool_infos, AwsProvider, ExternalId};
use np_provider::{Instance, LaunchRequest, Provider, ProviderError, Step};
use serde_json::{json, Value};
use support::TestEnv;

use support::{aws_yaml as yaml, PROVIDER, UBUNTU};

fn simple() -> String {
    yaml(UBUNTU, "", "")
}

async fn run_create(
    provider: &AwsProvider,
    request: LaunchRequest,
    attrs: Option<Value>,
) -> Result<Instance, ProviderError> {
    let mut m = provider.create_for_request(request, attrs);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match m.step().await? {
            Step::Done(i) => return Ok(i),
            Step::Pending(d) => {
                assert!(Instant::now() < deadline, "create stuck in {}", m.state());
                tokio::time::sleep(d).await;
            }
        }
    }
}

async fn run_delete(provider: &AwsProvider, id: &Value) -> Result<(), ProviderError> {
    let mut m = provider.delete(id);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match m.step().await? {
            Step::Done(()) => return Ok(()),
            Step::Pending(d) => {
                assert!(Instant::now() < deadline, "delete stuck");
                tokio::time::sleep(d).await;
            }
        }
    }
}

fn request(node: &str, label: &str) -> LaunchRequest {
    LaunchRequest::new(node, PROVIDER, "main", label)
}

async fn describe(env: &TestEnv, instance_id: &str) -> aws_sdk_ec2::types::Instance {
    let r = env.ec2().describe_instances().instance_ids(instance_id).send().await.unwrap();
    r.reservations()[0].instances()[0].clone()
}

fn instance_id(i: &Instance) -> String {
    ExternalId::parse(&i.external_id).instance.expect("instance id")
}

/// The id of moto's stock Ubuntu AMI.
async fn ubuntu_ami(env: &TestEnv) -> String {
    let images = env
        .ec2()
        .describe_images()
        .filters(Filter::builder().name("name").values("*ubuntu*").build())
        .send()
        .await
        .unwrap();
    images.images()[0].image_id().unwrap().to_owned()
}

/// Runs one instance of the Ubuntu AMI outside the driver (as someone
/// else, or as a leak), shaped by `shape`; returns its id.
async fn plant_instance(
    env: &TestEnv,
    shape: impl FnOnce(
        aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder,
    ) -> aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder,
) -> String {
    let req = env.ec2().run_instances().image_id(ubuntu_ami(env).await).min_count(1).max_count(1);
    let out = shape(req).send().await.unwrap();
    out.instances()[0].instance_id().unwrap().to_owned()
}

#[tokio::test]
async fn launch_ready_tags_and_delete() {
    let env = TestEnv::new().await;
    let p = env.provider(&simple(), PROVIDER).await;
    let inst = run_create(&p, request("0000000001", "ubuntu"), None).await.unwrap();
    let id = instance_id(&inst);
    assert!(id.starts_with("i-"));
    assert_eq!(inst.external_id, json!({"instance": id}));
    assert!(inst.interface_ip.is_some());
    assert_eq!(inst.interface_ip, inst.public_ipv4);
    assert!(inst.private_ipv4.is_some());
    assert_eq!(inst.region.as_deref(), Some("us-west-2"));
    assert_eq!(inst.cloud.as_deref(), Some("AWS"));
    assert!(inst.az.as_deref().unwrap_or("").starts_with("us-west-2"));
    assert!(inst.host_keys.is_empty(), "host-key-checking is off: no keys");
    assert_eq!(inst.node_properties, Some(json!({"fleet": false, "spot": false})));
    assert_eq!(inst.metadata["nodepool_node_id"], "0000000001");
    assert_eq!(inst.metadata["nodepool_pool_name"], "main");
    assert_eq!(inst.metadata["nodepool_provider_name"], PROVIDER);
    assert_eq!(inst.metadata["Name"], "np0000000001");

    // Volumes carry the same tags; the root volume goes with the instance.
    let ec2 = env.ec2();
    let vols = ec2
        .describe_volumes()
        .filters(Filter::builder().name("attachment.instance-id").values(&id).build())
        .send()
        .await
        .unwrap();
    assert!(!vols.volumes().is_empty());
    for v in vols.volumes() {
        let tags = np_driver_aws::tag_map(v.tags());
        assert_eq!(tags["nodepool_node_id"], "0000000001");
        assert_eq!(tags["Name"], "np0000000001");
    }
    let d = describe(&env, &id).await;
    assert_eq!(d.instance_type().map(|t| t.as_str()), Some("t3.medium"));
    assert_eq!(d.key_name(), Some("zuul"));

    run_delete(&p, &inst.external_id).await.unwrap();
    let d = describe(&env, &id).await;
    assert_eq!(d.state().and_then(|s| s.name()).map(|s| s.as_str()), Some("terminated"));
    // Deleting again (already gone) is fine, and so is an old string id.
    run_delete(&p, &inst.external_id).await.unwrap();
    run_delete(&p, &json!(id)).await.unwrap();
    run_delete(&p, &json!({"instance": "i-0123456789abcdef0"})).await.unwrap();
}

#[tokio::test]
async fn run_instances_options_spot_imdsv2_volume_userdata_dynamic_tags() {
    let env = TestEnv::new().await;
    let labels = r##"
          - name: spot
            cloud-image: ubuntu
            instance-type: t3.large
            key-name: zuul
            use-spot: true
            imdsv2: required
            ebs-optimized: true
            volume-type: gp3
            volume-size: 40
            throughput: 200
            userdata: "#!/bin/sh\necho hi\n"
            iam-instance-profile:
              arn: arn:aws:iam::123456789012:instance-profile/nodepool
            tags:
              team: ci
              Name: overridden
            dynamic-tags:
              request: "{request.id}"
              owner: "{request.tenant_name}-{request.requestor}"
              broken: "{request.secret}"
"##;
    env.boto("boto3.client('iam').create_instance_profile(InstanceProfileName='nodepool')");
    let p = env.provider(&yaml(labels, "", ""), PROVIDER).await;
    let attrs = json!({"id": "200-0000000042", "requestor": "zuul", "tenant_name": "openstack"});
    let inst = run_create(&p, request("0000000002", "spot"), Some(attrs)).await.unwrap();
    assert_eq!(inst.node_properties, Some(json!({"fleet": false, "spot": true})));
    let id = instance_id(&inst);
    let d = describe(&env, &id).await;
    assert_eq!(d.instance_lifecycle().map(|l| l.as_str()), Some("spot"));
    let md = d.metadata_options().expect("metadata options");
    assert_eq!(md.http_tokens().map(|t| t.as_str()), Some("required"));
    assert_eq!(d.ebs_optimized(), Some(true));
    assert_eq!(
        d.iam_instance_profile().and_then(|p| p.arn()),
        Some("arn:aws:iam::123456789012:instance-profile/nodepool")
    );
    let tags = np_driver_aws::tag_map(d.tags());
    assert_eq!(tags["team"], "ci");
    assert_eq!(tags["Name"], "np0000000002", "Name always wins");
    assert_eq!(tags["request"], "200-0000000042");
    assert_eq!(tags["owner"], "openstack-zuul");
    assert!(!tags.contains_key("broken"), "unformattable dynamic tag is skipped");

    let vol_id = d.block_device_mappings()[0].ebs().unwrap().volume_id().unwrap().to_owned();
    let v = env.ec2().describe_volumes().volume_ids(&vol_id).send().await.unwrap();
    let v = &v.volumes()[0];
    assert_eq!(v.size(), Some(40));
    assert_eq!(v.volume_type().map(|t| t.as_str()), Some("gp3"));
    assert_eq!(np_driver_aws::tag_map(v.tags())["owner"], "openstack-zuul");

    let ud = env
        .ec2()
        .describe_instance_attribute()
        .instance_id(&id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let encoded = ud.user_data().and_then(|u| u.value()).unwrap_or_default();
    let decoded = aws_smithy_types::base64::decode(encoded).unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), "#!/bin/sh\necho hi\n");
    run_delete(&p, &inst.external_id).await.unwrap();
}

#[tokio::test]
async fn one_shared_listing_and_batched_terminate() {
    let env = TestEnv::new().await;
    let p = env.provider(&simple(), PROVIDER).await;
    let before = p.stats();
    let creates = (1..=4).map(|n| run_create(&p, request(&format!("000000001{n}"), "ubuntu"), None));
    let instances: Vec<Instance> =
        futures::future::join_all(creates).await.into_iter().map(Result::unwrap).collect();
    let after = p.stats();
    assert_eq!(after.run_instances - before.run_instances, 4);
    // Four machines polled every 100 ms; the listing refreshes at most once
    // per 300 ms TTL, never once per machine and poll.
    let listings = after.instance_listings - before.instance_listings;
    assert!((1..=12).contains(&listings), "listings: {listings}");

    let t0 = p.stats().terminate_calls;
    let deletes = instances.iter().map(|i| run_delete(&p, &i.external_id));
    for r in futures::future::join_all(deletes).await {
        r.unwrap();
    }
    assert_eq!(p.stats().terminate_calls - t0, 1, "one TerminateInstances for four deletes");
    for i in &instances {
        let d = describe(&env, &instance_id(i)).await;
        assert_eq!(d.state().and_then(|s| s.name()).map(|s| s.as_str()), Some("terminated"));
    }
}

#[tokio::test]
async fn leaked_instances_and_volumes_are_listed_and_deleted() {
    let env = TestEnv::new().await;
    let p = env.provider(&simple(), PROVIDER).await;
    let ec2 = env.ec2();
    let tags = |provider: &str, node: &str| {
        vec![
            Tag::builder().key("nodepool_provider_name").value(provider).build(),
            Tag::builder().key("nodepool_pool_name").value("main").build(),
            Tag::builder().key("nodepool_node_id").value(node).build(),
        ]
    };
    let plant = |provider: &'static str, node: &'static str| {
        let t = tags(provider, node);
        plant_instance(&env, move |r| {
            r.tag_specifications(
                TagSpecification::builder().resource_type(ResourceType::Instance).set_tags(Some(t)).build(),
            )
        })
    };
    let leaked = plant(PROVIDER, "0000000042").await;
    let foreign = plant("someone-else", "0000000043").await;
    let vol = ec2
        .create_volume()
        .availability_zone("us-west-2a")
        .size(8)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Volume)
                .set_tags(Some(tags(PROVIDER, "0000000042")))
                .build(),
        )
        .send()
        .await
        .unwrap()
        .volume_id()
        .unwrap()
        .to_owned();

    let listed = p.list_instances().await.unwrap();
    let ids: Vec<ExternalId> = listed.iter().map(|i| ExternalId::parse(&i.external_id)).collect();
    assert!(ids.iter().any(|i| i.instance.as_deref() == Some(leaked.as_str())));
    assert!(ids.iter().any(|i| i.volume.as_deref() == Some(vol.as_str())));
    assert!(!ids.iter().any(|i| i.instance.as_deref() == Some(foreign.as_str())), "not ours");
    for i in &listed {
        assert_eq!(i.metadata["nodepool_provider_name"], PROVIDER);
        assert_eq!(i.metadata["nodepool_node_id"], "0000000042");
    }

    for i in &listed {
        run_delete(&p, &i.external_id).await.unwrap();
    }
    p.invalidate_caches().await;
    assert!(p.list_instances().await.unwrap().is_empty());
    let d = describe(&env, &foreign).await;
    assert_eq!(d.state().and_then(|s| s.name()).map(|s| s.as_str()), Some("running"));
    let vols = ec2.describe_volumes().send().await.unwrap();
    assert!(!vols.volumes().iter().any(|v| v.volume_id() == Some(vol.as_str())));
}

#[tokio::test]
async fn quota_from_instance_types_and_service_quotas() {
    let env = TestEnv::new().await;
    let labels = format!(
        r#"{UBUNTU}
          - name: spot
            cloud-image: ubuntu
            instance-type: t3.large
            key-name: zuul
            use-spot: true
          - name: big
            cloud-image: ubuntu
            instance-type: g4dn.xlarge
            key-name: zuul
            volume-type: gp3
            volume-size: 100
"#
    );
    env.quotas
        .set("ec2", &[("L-1216C47A", 4.0), ("L-34B43A08", 8.0), ("L-DB2E81BA", 16.0), ("L-UNUSED", 1.0)]);
    env.quotas.set("ebs", &[("L-7A658B76", 1.5)]);
    let p = env
        .provider(
            &yaml(&labels, "        max-cores: 10\n        max-resources:\n          L-1216C47A: 6\n", ""),
            PROVIDER,
        )
        .await;

    let q = p.quota_for_label("main", "ubuntu");
    assert_eq!((q.get("cores"), q.get("ram"), q.get("instances")), (1.0, 4096.0, 1.0));
    assert_eq!(q.get("L-1216C47A"), 2.0, "t3.medium: 2 vCPUs on the on-demand standard code");
    let s = p.quota_for_label("main", "spot");
    assert_eq!(s.get("L-34B43A08"), 2.0, "spot code");
    assert_eq!(s.get("L-1216C47A"), 0.0);
    let b = p.quota_for_label("main", "big");
    assert_eq!(b.get("L-DB2E81BA"), 4.0, "g4dn.xlarge: 4 vCPUs on the G code");
    assert_eq!((b.get("cores"), b.get("ram")), (2.0, 16384.0));
    assert_eq!(b.get("L-7A658B76"), 100.0, "gp3 storage GiB");

    let limits = p.quota_limits().await.unwrap();
    assert_eq!(limits.get("L-1216C47A"), 4.0);
    assert_eq!(limits.get("L-34B43A08"), 8.0);
    assert_eq!(limits.get("L-DB2E81BA"), 16.0);
    assert_eq!(limits.get("L-7A658B76"), 1500.0, "TiB limit in GiB");
    assert!(limits.get("L-UNUSED").is_infinite(), "only codes the labels use");
    assert!(limits.get("cores").is_infinite());

    // Two t3.medium fit the on-demand limit of 4 vCPUs; a third does not.
    let mut left = limits.clone();
    left.subtract(&q).subtract(&q);
    assert!(left.non_negative());
    left.subtract(&q);
    assert!(!left.non_negative());

    // Service Quotas is read once per cache period.
    let calls = env.quotas.calls.load(std::sync::atomic::Ordering::Relaxed);
    p.quota_limits().await.unwrap();
    assert_eq!(env.quotas.calls.load(std::sync::atomic::Ordering::Relaxed), calls);

    // Pool limits for the launcher come from the configuration.
    let pools = pool_infos(p.config());
    assert_eq!(pools[0].limits.get("cores"), 10.0);
    assert_eq!(pools[0].limits.get("L-1216C47A"), 6.0);
    assert!(pools[0].limits.get("ram").is_infinite());
    assert_eq!(pools[0].labels, vec!["ubuntu", "spot", "big"]);
}

#[tokio::test]
async fn invalid_instance_type_disables_the_label() {
    let env = TestEnv::new().await;
    let labels = format!(
        r#"{UBUNTU}
          - name: bogus
            cloud-image: ubuntu
            instance-type: bogus.large
            key-name: zuul
"#
    );
    let p = env.provider(&yaml(&labels, "", ""), PROVIDER).await;
    let why = p.label_disabled("bogus").expect("disabled");
    assert!(why.contains("InvalidInstanceType"), "{why}");
    assert!(p.label_disabled("ubuntu").is_none());
    let err = run_create(&p, request("0000000005", "bogus"), None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Fatal(ref m) if m.contains("disabled")), "{err:?}");
    assert_eq!(p.stats().run_instances, 0);
}

#[tokio::test]
async fn cloud_errors_are_classified() {
    let env = TestEnv::new().await;
    let p = env.provider(&simple(), PROVIDER).await;
    for (code, check) in [
        (
            "VolumeLimitExceeded",
            (|e: &ProviderError| matches!(e, ProviderError::Quota(_))) as fn(&ProviderError) -> bool,
        ),
        ("InsufficientInstanceCapacity", |e| matches!(e, ProviderError::Capacity(_))),
        ("RequestLimitExceeded", |e| matches!(e, ProviderError::Transient(_))),
        ("InvalidAMIID.Malformed", |e| matches!(e, ProviderError::Fatal(_))),
    ] {
        env.faults.arm("RunInstances", code, 1);
        let mut m = p.create(request("0000000007", "ubuntu"));
        let err = m.step().await.unwrap_err();
        assert!(check(&err), "{code}: {err:?}");
        assert!(err.to_string().contains(code));
        assert!(m.external_id().is_none(), "nothing was created");
    }
    // Nothing was created by the failed calls.
    let r = env.ec2().describe_instances().send().await.unwrap();
    assert!(r.reservations().is_empty());
    // The launch works once the faults are used up.
    let inst = run_create(&p, request("0000000008", "ubuntu"), None).await.unwrap();
    run_delete(&p, &inst.external_id).await.unwrap();
    // A failed terminate surfaces as an error of the delete.
    let inst = run_create(&p, request("0000000009", "ubuntu"), None).await.unwrap();
    env.faults.arm("TerminateInstances", "InternalError", 1);
    let err = run_delete(&p, &inst.external_id).await.unwrap_err();
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
    run_delete(&p, &inst.external_id).await.unwrap();
}

#[tokio::test]
async fn throttling_backs_off_and_rate_is_enforced() {
    let env = TestEnv::new().await;
    let p = env.provider(&yaml(UBUNTU, "", "    rate: 5\n").replace("    rate: 100\n", ""), PROVIDER).await;
    // Mutating calls are spaced 200 ms apart at rate 5.
    let start = Instant::now();
    let a = run_create(&p, request("0000000020", "ubuntu"), None).await.unwrap();
    let b = run_create(&p, request("0000000021", "ubuntu"), None).await.unwrap();
    let c = run_create(&p, request("0000000022", "ubuntu"), None).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(400), "{:?}", start.elapsed());
    // Throttling: classified transient and the next call waits longer.
    env.faults.arm("RunInstances", "RequestLimitExceeded", 1);
    let err = run_create(&p, request("0000000023", "ubuntu"), None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Transient(_)));
    let t = Instant::now();
    let d = run_create(&p, request("0000000024", "ubuntu"), None).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(600), "200 ms spacing + 500 ms penalty: {:?}", t.elapsed());
    for i in [a, b, c, d] {
        run_delete(&p, &i.external_id).await.unwrap();
    }
}

#[tokio::test]
async fn dedicated_host_launch_and_release() {
    let env = TestEnv::new().await;
    let labels = r#"
          - name: dedicated
            cloud-image: ubuntu
            instance-type: m5.large
            key-name: zuul
            dedicated-host: true
"#;
    env.quotas.set("ec2", &[("L-8B7BF662", 2.0)]);
    let p = env.provider(&yaml(labels, "        availability-zone: us-west-2b\n", ""), PROVIDER).await;
    let q = p.quota_for_label("main", "dedicated");
    assert_eq!((q.get("instances"), q.get("L-8B7BF662")), (1.0, 1.0));
    assert_eq!(p.quota_limits().await.unwrap().get("L-8B7BF662"), 2.0);

    let inst = run_create(&p, request("0000000030", "dedicated"), None).await.unwrap();
    let id = ExternalId::parse(&inst.external_id);
    let host = id.host.clone().expect("host id");
    let d = describe(&env, id.instance.as_deref().unwrap()).await;
    assert_eq!(d.placement().and_then(|p| p.host_id()), Some(host.as_str()));
    assert_eq!(d.placement().and_then(|p| p.availability_zone()), Some("us-west-2b"));
    let h = env.ec2().describe_hosts().host_ids(&host).send().await.unwrap();
    let tags = np_driver_aws::tag_map(h.hosts()[0].tags());
    assert_eq!(tags["nodepool_node_id"], "0000000030");

    run_delete(&p, &inst.external_id).await.unwrap();
    let h = env.ec2().describe_hosts().host_ids(&host).send().await.unwrap();
    let state = h.hosts().first().and_then(|h| h.state()).map(|s| s.as_str().to_owned());
    assert!(state.is_none() || state.as_deref() == Some("released"), "{state:?}");

    // A host limit on allocation is a quota error, before anything exists.
    env.faults.arm("AllocateHosts", "HostLimitExceeded", 1);
    let mut m = p.create(request("0000000031", "dedicated"));
    assert!(matches!(m.step().await.unwrap_err(), ProviderError::Quota(_)));
    assert!(m.external_id().is_none());
}

#[tokio::test]
async fn new_with_endpoint_override_and_standard_credentials() {
    let env = TestEnv::new().await;
    // SAFETY-free: plain environment for the standard credential chain.
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::set_var("AWS_CONFIG_FILE", "/nonexistent");
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
    let cfg = support::aws_config(&simple(), PROVIDER);
    let p = AwsProvider::new(PROVIDER, &cfg, Some(env.moto.endpoint.clone())).await.unwrap();
    assert_eq!(p.quota_for_label("main", "ubuntu").get("cores"), 1.0, "instance types read at construction");
    let mut m = p.create(request("0000000040", "ubuntu"));
    // Step until the instance id is known (the default poll is slow).
    let mut id = None;
    for _ in 0..3 {
        let _ = m.step().await.unwrap();
        if let Some(x) = m.external_id() {
            id = Some(x);
            break;
        }
    }
    let id = id.expect("instance created");
    let d = describe(&env, ExternalId::parse(&id).instance.as_deref().unwrap()).await;
    assert_eq!(np_driver_aws::tag_map(d.tags())["Name"], "np0000000040");
}

#[tokio::test]
async fn network_options_ipv6_subnet_security_group_az() {
    let env = TestEnv::new().await;
    let ec2 = env.ec2();
    let vpc = ec2.create_vpc().cidr_block("10.9.0.0/16").send().await.unwrap();
    let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_owned();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.9.1.0/24")
        .availability_zone("us-west-2c")
        .send()
        .await
        .unwrap();
    let subnet_id = subnet.subnet().unwrap().subnet_id().unwrap().to_owned();
    let sg =
        ec2.create_security_group().group_name("np").description("np").vpc_id(&vpc_id).send().await.unwrap();
    let sg_id = sg.group_id().unwrap().to_owned();
    let pool = format!(
        "        subnet-id: {subnet_id}\n        security-group-id: {sg_id}\n        public-ipv4: false\n        public-ipv6: true\n        availability-zone: us-west-2c\n"
    );
    let p = env.provider(&yaml(UBUNTU, &pool, ""), PROVIDER).await;
    let inst = run_create(&p, request("0000000050", "ubuntu"), None).await.unwrap();
    // moto cannot assign IPv6 addresses: check what was asked for.
    let sent = env.faults.sent("RunInstances");
    assert_eq!(sent.len(), 1);
    let body = &sent[0];
    for part in [
        "NetworkInterface.1.Ipv6AddressCount=1",
        "NetworkInterface.1.AssociatePublicIpAddress=false",
        "NetworkInterface.1.DeviceIndex=0",
        &format!("NetworkInterface.1.SubnetId={subnet_id}"),
        &format!("NetworkInterface.1.SecurityGroupId.1={sg_id}"),
        "Placement.AvailabilityZone=us-west-2c",
        "MinCount=1",
        "MaxCount=1",
        "BlockDeviceMapping.1.Ebs.DeleteOnTermination=true",
    ] {
        assert!(body.contains(part), "{part} not in {body}");
    }
    let d = describe(&env, &instance_id(&inst)).await;
    assert_eq!(d.subnet_id(), Some(subnet_id.as_str()));
    assert_eq!(inst.az.as_deref(), Some("us-west-2c"));
    assert!(inst.public_ipv4.is_none(), "no public IPv4 asked for");
    assert_eq!(inst.interface_ip, inst.private_ipv4);
    run_delete(&p, &inst.external_id).await.unwrap();
}

const FLEET: &str = r#"
          - name: ubuntu
            cloud-image: ubuntu
            key-name: zuul
            volume-size: 40
            fleet:
              instance-types: [t3.medium, t3.large]
              allocation-strategy: prioritized
          - name: spot
            cloud-image: ubuntu
            key-name: zuul
            use-spot: true
            fleet:
              instance-types: [t3.medium]
              allocation-strategy: price-capacity-optimized
"#;

async fn template_names(env: &TestEnv) -> Vec<String> {
    let r = env.ec2().describe_launch_templates().send().await.unwrap();
    let mut names: Vec<String> =
        r.launch_templates().iter().filter_map(|t| t.launch_template_name().map(str::to_owned)).collect();
    names.sort();
    names
}

async fn plant_template(env: &TestEnv, name: &str, provider: &str) {
    use aws_sdk_ec2::types::RequestLaunchTemplateData;
    env.ec2()
        .create_launch_template()
        .launch_template_name(name)
        .launch_template_data(RequestLaunchTemplateData::builder().key_name("zuul").build())
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::LaunchTemplate)
                .tags(Tag::builder().key("nodepool_provider_name").value(provider).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn fleet_labels_launch_through_templates_and_instant_fleets() {
    let env = TestEnv::new().await;
    // Left from an older configuration of this provider (deleted), another
    // provider's (kept) and one that is not Nodepool's (kept).
    plant_template(&env, "nodepool-launch-template-old", PROVIDER).await;
    plant_template(&env, "nodepool-launch-template-other", "other-provider").await;
    plant_template(&env, "my-own-template", PROVIDER).await;

    let yaml = yaml(FLEET, "        security-group-id: sg-0123\n", "");
    let p = env.provider(&yaml, PROVIDER).await;
    let cfg = support::aws_config(&yaml, PROVIDER);
    let pool = &cfg.pools[0];
    let expected: Vec<String> = pool
        .labels
        .iter()
        .map(|l| {
            np_driver_aws::templates::template_name(&np_driver_aws::templates::template_args(
                PROVIDER, pool, l,
            ))
        })
        .collect();
    let mut want = vec!["my-own-template".to_owned(), "nodepool-launch-template-other".to_owned()];
    want.extend(expected.iter().cloned());
    want.sort();
    assert_eq!(template_names(&env).await, want, "configured templates made, our stale one deleted");
    let created = env.faults.sent("CreateLaunchTemplate");
    assert_eq!(created.len(), 2);
    assert!(created.iter().any(|b| b.contains("LaunchTemplateData.BlockDeviceMapping.1.Ebs.VolumeSize=40")));
    assert!(created.iter().all(|b| b.contains("LaunchTemplateData.SecurityGroupId.1=sg-0123")));

    // On-demand fleet: one instance of one of the listed types, tagged.
    let inst = run_create(&p, request("0000000001", "ubuntu"), None).await.unwrap();
    let id = instance_id(&inst);
    assert_eq!(inst.node_properties, Some(json!({"fleet": true, "spot": false})));
    let d = describe(&env, &id).await;
    let itype = d.instance_type().map(|t| t.as_str().to_owned()).unwrap_or_default();
    assert!(itype == "t3.medium" || itype == "t3.large", "{itype}");
    let tags = np_driver_aws::tag_map(d.tags());
    assert_eq!(tags["nodepool_node_id"], "0000000001");
    assert_eq!(tags["nodepool_provider_name"], PROVIDER);
    let fleets = env.faults.sent("CreateFleet");
    assert_eq!(fleets.len(), 1);
    let body = &fleets[0];
    for part in [
        "Type=instant",
        &format!("LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateName={}", expected[0]),
        "LaunchTemplateConfigs.1.LaunchTemplateSpecification.Version=%24Latest",
        "LaunchTemplateConfigs.1.Overrides.1.InstanceType=t3.medium",
        "LaunchTemplateConfigs.1.Overrides.2.InstanceType=t3.large",
        "OnDemandOptions.AllocationStrategy=prioritized",
        "TargetCapacitySpecification.TotalTargetCapacity=1",
        "TargetCapacitySpecification.DefaultTargetCapacityType=on-demand",
        "TagSpecification.2.ResourceType=volume",
    ] {
        assert!(body.contains(part), "CreateFleet lacks {part}: {body}");
    }
    // A fleet label counts one instance (its type is only known afterwards).
    assert_eq!(p.quota_for_label("main", "ubuntu").get("instances"), 1.0);

    // Spot fleet.
    let spot = run_create(&p, request("0000000002", "spot"), None).await.unwrap();
    assert_eq!(spot.node_properties, Some(json!({"fleet": true, "spot": true})));
    let body = env.faults.sent("CreateFleet").pop().unwrap();
    assert!(body.contains("SpotOptions.AllocationStrategy=price-capacity-optimized"), "{body}");
    assert!(body.contains("TargetCapacitySpecification.DefaultTargetCapacityType=spot"), "{body}");

    for i in [&inst, &spot] {
        run_delete(&p, &i.external_id).await.unwrap();
    }
    // A second launcher on the same provider finds the templates and makes none.
    let _again = env.provider(&yaml, PROVIDER).await;
    assert_eq!(env.faults.sent("CreateLaunchTemplate").len(), 2);
    assert_eq!(template_names(&env).await, want);
}

#[tokio::test]
async fn fleet_api_errors_are_classified() {
    let env = TestEnv::new().await;
    let p = env.provider(&yaml(FLEET, "", ""), PROVIDER).await;
    env.faults.arm("CreateFleet", "InsufficientInstanceCapacity", 1);
    let err = run_create(&p, request("0000000003", "ubuntu"), None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Capacity(_)), "{err:?}");
    env.faults.arm("CreateFleet", "VcpuLimitExceeded", 1);
    let err = run_create(&p, request("0000000004", "ubuntu"), None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Quota(_)), "{err:?}");
    // And the next launch goes through.
    run_create(&p, request("0000000005", "ubuntu"), None).await.unwrap();
}

#[tokio::test]
async fn instance_usage_covers_every_instance_with_its_type_and_volumes() {
    let env = TestEnv::new().await;
    let p = env.provider(&simple(), PROVIDER).await;
    let ours = run_create(&p, request("0000000001", "ubuntu"), None).await.unwrap();
    // Someone else's m5.large, untagged, and a spot t3.medium.
    let foreign = plant_instance(&env, |r| r.instance_type(aws_sdk_ec2::types::InstanceType::M5Large)).await;
    let spot = plant_instance(&env, |r| {
        r.instance_type(aws_sdk_ec2::types::InstanceType::T3Medium).instance_market_options(
            aws_sdk_ec2::types::InstanceMarketOptionsRequest::builder()
                .market_type(aws_sdk_ec2::types::MarketType::Spot)
                .build(),
        )
    })
    .await;
    p.invalidate_caches().await;
    let usage = p.instance_usage().await.unwrap();
    assert_eq!(usage.len(), 3, "{usage:?}");
    let mine: Vec<_> = usage
        .iter()
        .filter(|u| u.metadata.get("nodepool_node_id").map(String::as_str) == Some("0000000001"))
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].metadata["nodepool_provider_name"], PROVIDER);
    assert_eq!(mine[0].quota.get("cores"), 1.0);
    assert_eq!(mine[0].quota.get("L-1216C47A"), 2.0);
    let untagged: Vec<_> = usage.iter().filter(|u| u.metadata.is_empty()).collect();
    assert_eq!(untagged.len(), 2);
    // m5.large: 1 core, 2 vCPUs, 8 GiB, standard on-demand family; the
    // spot t3.medium counts against the spot code.
    let m5 = untagged.iter().find(|u| u.quota.get("ram") == 8192.0).expect("m5.large usage");
    assert_eq!(m5.quota.get("instances"), 1.0);
    assert_eq!(m5.quota.get("L-1216C47A"), 2.0);
    let t3 = untagged.iter().find(|u| u.quota.get("ram") == 4096.0).expect("spot t3.medium usage");
    assert_eq!(t3.quota.get("L-34B43A08"), 2.0);
    assert_eq!(t3.quota.get("L-1216C47A"), 0.0);
    // The root volumes count too (moto gives each an 8 GiB gp2 volume).
    assert!(m5.quota.get("L-D18FCD1D") > 0.0, "{:?}", m5.quota);
    assert_eq!(p.usage_refresh(), Some(TestEnv::settings().cache_ttl));
    let _ = (foreign, spot, ours);
}

/// A provider whose `built` label boots the diskimage `built-image`;
/// `built_extra` continues that provider diskimage entry (more keys, more
/// entries).
fn diskimage_yaml(built_extra: &str) -> String {
    support::diskimage_yaml(
        &["built-image", "other-image"],
        "",
        &format!("      - name: built-image\n{built_extra}"),
        "        host-key-checking: false\n",
        "built-image",
    )
}

#[tokio::test]
async fn diskimage_labels_boot_the_upload_the_launcher_names() {
    let env = TestEnv::new().await;
    let yaml = diskimage_yaml("        username: builder\n");
    let p = env.provider(&yaml, PROVIDER).await;
    let ami = ubuntu_ami(&env).await;
    let err = run_create(&p, request("0000000001", "built"), None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Fatal(ref m) if m.contains("no uploaded image")), "{err:?}");
    let mut req = request("0000000002", "built");
    req.image_external_id = Some(ami.clone());
    let inst = run_create(&p, req, None).await.unwrap();
    let d = describe(&env, &instance_id(&inst)).await;
    assert_eq!(d.image_id(), Some(ami.as_str()));
    run_delete(&p, &inst.external_id).await.unwrap();
}

#[tokio::test]
async fn ebs_direct_upload_registers_a_tagged_ami_and_delete_removes_it() {
    let env = TestEnv::new().await;
    let yaml = diskimage_yaml(
        "        import-method: ebs-direct\n        volume-type: gp3\n        tags:\n          team: ci\n      - name: other-image\n        import-method: snapshot\n",
    );
    let p = env.provider(&yaml, PROVIDER).await;
    // A raw image of 1.2 MiB: three blocks, the last one padded.
    let dir = std::env::temp_dir().join(format!("np-ebs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("built-image.raw");
    let data: Vec<u8> = (0..1_250_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let metadata = std::collections::BTreeMap::from([
        ("nodepool_provider_name".to_owned(), PROVIDER.to_owned()),
        ("nodepool_build_id".to_owned(), "0123abcd".to_owned()),
        ("nodepool_upload_id".to_owned(), "0000000001".to_owned()),
    ]);
    let ami = p.upload_image("built-image", &file, "built-image-0123abcd", &metadata).await.unwrap();
    assert!(ami.starts_with("ami-"), "{ami}");
    let sent = env.faults.sent("RegisterImage");
    assert_eq!(sent.len(), 1);
    for part in [
        "RootDeviceName=%2Fdev%2Fsda1",
        "VirtualizationType=hvm",
        "BlockDeviceMapping.1.Ebs.VolumeSize=1",
        "BlockDeviceMapping.1.Ebs.VolumeType=gp3",
        "Name=built-image-0123abcd",
    ] {
        assert!(sent[0].contains(part), "RegisterImage lacks {part}: {}", sent[0]);
    }

    // The AMI and its snapshot carry the upload's tags (and the diskimage's).
    let images = env.ec2().describe_images().image_ids(&ami).send().await.unwrap();
    let image = &images.images()[0];
    let tags = np_driver_aws::tag_map(image.tags());
    assert_eq!(tags["nodepool_upload_id"], "0000000001");
    assert_eq!(tags["team"], "ci");
    // The uploaded snapshot carries them too. (moto's RegisterImage makes a
    // snapshot of its own for the AMI instead of using ours; on EC2 the
    // AMI's block device is our snapshot.)
    let image_snapshots: Vec<String> = image
        .block_device_mappings()
        .iter()
        .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
        .collect();
    let snaps = env
        .ec2()
        .describe_snapshots()
        .owner_ids("self")
        .filters(Filter::builder().name("tag:nodepool_upload_id").values("0000000001").build())
        .send()
        .await
        .unwrap();
    assert_eq!(snaps.snapshots().len(), 1);
    let snapshot = snaps.snapshots()[0].snapshot_id().unwrap().to_owned();
    assert_eq!(np_driver_aws::tag_map(snaps.snapshots()[0].tags())["nodepool_build_id"], "0123abcd");
    assert_eq!(snaps.snapshots()[0].volume_size(), Some(1));

    // Leak cleanup sees both, with their upload ids.
    let listed = p.list_instances().await.unwrap();
    let kinds: Vec<(String, String)> = listed
        .iter()
        .filter(|i| i.metadata.contains_key("nodepool_upload_id"))
        .map(|i| {
            (
                i.node_properties.as_ref().unwrap()["resource"].as_str().unwrap().to_owned(),
                i.external_id.to_string(),
            )
        })
        .collect();
    assert!(kinds.contains(&("image".to_owned(), json!({"image": ami}).to_string())), "{kinds:?}");
    assert!(kinds.contains(&("snapshot".to_owned(), json!({"snapshot": snapshot}).to_string())), "{kinds:?}");

    // A node boots it.
    let mut req = request("0000000005", "built");
    req.image_external_id = Some(ami.clone());
    let inst = run_create(&p, req, None).await.unwrap();
    assert_eq!(describe(&env, &instance_id(&inst)).await.image_id(), Some(ami.as_str()));
    run_delete(&p, &inst.external_id).await.unwrap();

    // Deleting the image removes the AMI and its snapshots; again is fine.
    p.delete_image(&ami).await.unwrap();
    let left = env.ec2().describe_images().owners("self").send().await.unwrap();
    assert!(left.images().iter().all(|i| i.image_id() != Some(ami.as_str())));
    let snaps = env.ec2().describe_snapshots().owner_ids("self").send().await.unwrap();
    assert!(snaps
        .snapshots()
        .iter()
        .all(|s| !image_snapshots.contains(&s.snapshot_id().unwrap().to_owned())));
    p.delete_image(&ami).await.unwrap();
    // A snapshot on its own (as leak cleanup finds them) is deleted too.
    run_delete(&p, &json!({"snapshot": snapshot})).await.unwrap();
    let snaps = env.ec2().describe_snapshots().owner_ids("self").send().await.unwrap();
    assert!(snaps.snapshots().iter().all(|s| s.snapshot_id() != Some(snapshot.as_str())));

    // The import methods need a bucket to stage the image in.
    let err = p.upload_image("other-image", &file, "x", &metadata).await.unwrap_err();
    assert!(err.to_string().contains("needs the provider's object-storage bucket-name"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
