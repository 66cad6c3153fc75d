//! Hand-written cases: error locations, defaults, drivers, inheritance, secure file and
//! the checks that are stricter than upstream.

use std::time::Duration;

use np_config::{load_str_with, Config, ConfigErrors, ErrorKind, LabelImage, ProviderDriver};

use crate::corpus::upstream_dir;
use crate::support::crate_dir;

fn load(text: &str) -> Result<Config, ConfigErrors> {
    load_str_with(text, "test.yaml", None, &[])
}

fn ok(text: &str) -> Config {
    load(text).unwrap_or_else(|e| panic!("expected a valid config, got:\n{e}"))
}

fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.errors().iter().map(ToString::to_string).collect(),
    }
}

fn has(errs: &[String], needle: &str) {
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "no error containing {needle:?} in:\n{}",
        errs.join("\n")
    );
}

#[test]
fn typo_inside_driver_section_reports_its_line() {
    let path = crate_dir().join("tests/fixtures/local/typo-in-driver.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let err =
        load_str_with(&text, "typo-in-driver.yaml", None, &[]).err().unwrap_or_else(|| panic!("accepted"));
    // Only the typo: the label then also lacks min-ram/flavor-name, reported at the label.
    let typo = err
        .errors()
        .iter()
        .find(|e| matches!(&e.kind, ErrorKind::UnknownKey { key, .. } if key == "flavr-name"))
        .unwrap_or_else(|| panic!("no unknown-key error in:\n{err}"));
    let loc = typo.location.unwrap_or_else(|| panic!("no location"));
    assert_eq!((loc.line, loc.column), (17, 13));
    assert_eq!(typo.path.to_string(), "providers[0].pools[0].labels[0].flavr-name");
    assert_eq!(
        typo.to_string(),
        "typo-in-driver.yaml:17:13: providers[0].pools[0].labels[0].flavr-name: \
         unknown key 'flavr-name' (did you mean 'flavor-name'?)"
    );
}

#[test]
fn all_errors_are_reported() {
    let text = "labels:\n  - name: a\n    min-ready: x\n  - name: b\n    max-ready-age: y\nbogus: 1\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert_eq!(errs[0], "test.yaml:3:16: labels[0].min-ready: expected an integer, found a string");
    assert_eq!(
        errs[1],
        "test.yaml:5:20: labels[1].max-ready-age: expected a non-negative integer, found a string"
    );
    assert_eq!(errs[2], "test.yaml:6:1: bogus: unknown key 'bogus'");
}

#[test]
fn defaults_are_applied() {
    let c = ok("zookeeper-servers:\n  - host: zk1\n");
    assert_eq!(c.webapp.port, 8005);
    assert_eq!(c.webapp.listen_address, "0.0.0.0");
    assert_eq!(c.zookeeper.servers[0].port, 2281);
    assert_eq!(c.zookeeper.timeout, Duration::from_secs(10));
    assert_eq!(c.zookeeper.tls, None);
    assert_eq!(c.build_log_retention, 7);
    assert_eq!(c.max_hold_age, None);
    assert_eq!(c.zookeeper.connect_string(), "zk1:2281");
}

#[test]
fn zookeeper_settings() {
    let c = ok("zookeeper-servers:\n  - host: zk1\n    port: 2181\n    chroot: /np\n  - host: '::1'\n    chroot: /np\n\
                zookeeper-tls:\n  ca: /ca.pem\n  cert: /c.pem\n  key: /k.pem\nzookeeper-timeout: 30\n\
                webapp:\n  port: 9000\n  listen_address: 127.0.0.1\n");
    assert_eq!(c.zookeeper.connect_string(), "zk1:2181,[::1]:2281/np");
    assert_eq!(c.zookeeper.chroot(), Some("/np"));
    let tls = c.zookeeper.tls.unwrap_or_else(|| panic!("no tls"));
    assert_eq!(tls.key.to_str(), Some("/k.pem"));
    assert_eq!(c.zookeeper.timeout, Duration::from_secs(30));
    assert_eq!((c.webapp.port, c.webapp.listen_address.as_str()), (9000, "127.0.0.1"));
}

#[test]
fn partial_tls_and_mixed_chroots_are_rejected() {
    let errs = errors(
        "zookeeper-servers:\n  - host: a\n    chroot: /x\n  - host: b\nzookeeper-tls:\n  ca: /ca.pem\n",
    );
    has(&errs, "missing required key 'cert'");
    has(&errs, "missing required key 'key'");
    has(&errs, "all zookeeper-servers must use the same chroot");
}

const STATIC: &str = r#"
labels:
  - name: small
  - name: big
providers:
  - name: rack
    driver: static
    pools:
      - name: main
        nodes:
          - name: h1.example.com
            labels: small big
            host-key: [k1, k2]
          - name: h2.example.com
            labels: [small]
            connection-type: winrm
            max-parallel-jobs: 2
"#;

#[test]
fn static_provider() {
    let c = ok(STATIC);
    let p = c.provider("rack").unwrap_or_else(|| panic!("no provider"));
    let ProviderDriver::Static(s) = &p.driver else { panic!("not static") };
    let pool = s.pool("main").unwrap_or_else(|| panic!("no pool"));
    assert_eq!(pool.nodes[0].labels, vec!["small", "big"]);
    assert_eq!(pool.nodes[0].host_keys, vec!["k1", "k2"]);
    assert_eq!(pool.nodes[0].username, "zuul");
    assert_eq!(pool.nodes[0].timeout, Duration::from_secs(5));
    assert_eq!(pool.nodes[1].connection_port, 22, "upstream keeps 22 even for winrm on static nodes");
    assert_eq!(pool.nodes[1].max_parallel_jobs, 2);
    assert_eq!(pool.nodes[1].python_path, "auto");
    assert!(p.supported_labels(Some("main")).contains("big"));
    assert_eq!(p.effective_priority(None), 100);
    assert!(!p.manages_images());
}

#[test]
fn fake_driver_by_name_prefix() {
    let c = ok(r#"
labels:
  - name: l
providers:
  - name: fake-provider
    cloud: fake
    pools:
      - name: main
        labels:
          - name: l
            cloud-image: c
            min-ram: 8192
    cloud-images:
      - name: c
"#);
    let p = &c.providers[0];
    let ProviderDriver::Fake(o) = &p.driver else { panic!("not fake") };
    let label = &o.pools[0].labels[0];
    assert_eq!(label.image, LabelImage::CloudImage("c".into()));
    assert_eq!(label.volume_size, 50);
    assert!(label.host_key_checking);
    assert_eq!(o.boot_timeout, Duration::from_secs(60));
    assert_eq!(o.cloud_images[0].external_name(), "c");
    assert_eq!(p.max_concurrency, None);
}

#[test]
fn unsupported_and_unknown_drivers() {
    let errs =
        errors("providers:\n  - name: g\n    driver: gce\n    project: p\n  - name: v\n    driver: vmware\n");
    assert_eq!(errs[0], "test.yaml:3:5: providers[0].driver: driver gce is not supported by this version");
    has(&errs, "unknown driver 'vmware'");
    assert_eq!(errs.len(), 2, "no per-key noise for unsupported drivers: {errs:?}");
}

#[test]
fn diskimage_inheritance() {
    let c = ok(r#"
diskimages:
  - name: base
    abstract: true
    elements: [a, b]
    pause: true
    rebuild-age: 100
    env-vars: {X: '1', Y: '2'}
    metadata: {m: 1}
  - name: mid
    parent: base
    elements: [c]
    release: 21
    env-vars: {Y: '3'}
  - name: leaf
    parent: mid
    elements: [d]
    pause: false
    rebuild-age: 0
    delete-after-upload: true
    shell-type: bash
"#);
    assert!(c.diskimage("base").is_none(), "abstract images are not built");
    let mid = c.diskimage("mid").unwrap_or_else(|| panic!("no mid"));
    assert_eq!(mid.elements_string(), "a b c");
    assert_eq!(mid.release, "21");
    assert_eq!(mid.env_vars.get("Y").map(String::as_str), Some("3"));
    assert!(mid.metadata.is_empty(), "metadata is not inherited");
    let leaf = c.diskimage("leaf").unwrap_or_else(|| panic!("no leaf"));
    assert_eq!(leaf.elements_string(), "a b c d");
    assert!(leaf.pause, "a falsy child value does not override the parent (upstream)");
    assert_eq!(leaf.rebuild_age, Duration::from_secs(100));
    assert!(leaf.delete_after_upload);
    assert_eq!(leaf.shell_type.as_deref(), Some("bash"));
    assert_eq!(leaf.build_timeout, Duration::from_secs(8 * 3600));
    assert_eq!(leaf.dib_cmd, "disk-image-create");
}

#[test]
fn parent_cycles_and_missing_parents() {
    let errs = errors(
        "diskimages:\n  - name: a\n    parent: b\n  - name: b\n    parent: a\n  - name: c\n    parent: zz\n",
    );
    has(&errs, "test.yaml:3:5: diskimages[0].parent: diskimage 'a' is part of a parent cycle");
    has(&errs, "diskimage 'b' is part of a parent cycle");
    has(&errs, "diskimage 'c' has parent 'zz', which is not defined");
}

#[test]
fn stricter_checks() {
    let errs = errors(
        r#"labels:
  - name: l
    min-ready: 5
  - name: l
diskimages:
  - name: d
  - name: e
providers:
  - name: c
    cloud: x
    diskimages:
      - name: e
    pools:
      - name: p
        max-servers: 2
        max-ram: -1
        labels:
          - name: l
            diskimage: d
            min-ram: 1
"#,
    );
    has(&errs, "label 'l' is already defined at line 2");
    has(&errs, "providers[0].pools[0].max-ram: expected a non-negative integer, found -1");
    has(&errs, "label 'l' uses diskimage 'd', which is not in the diskimages of provider 'c'");
    has(&errs, "label 'l' has min-ready 5 but the pools that provide it allow at most 2 nodes");
}

#[test]
fn leniencies_documented_in_config_differences() {
    // Upstream's validator wants a float and rejects diskimage shell-type; its daemons
    // accept both, and so do we.
    let c = ok("zookeeper-timeout: 20\ndiskimages:\n  - name: d\n    shell-type: sh\n");
    assert_eq!(c.zookeeper.timeout, Duration::from_secs(20));
}

#[test]
fn yaml11_scalars_and_env_substitution() {
    let env = vec![("NODEPOOL_PORT".to_string(), "8123".to_string()), ("OTHER".to_string(), "1".to_string())];
    let c = load_str_with(
        r#"
webapp:
  port: %(NODEPOOL_PORT)
labels:
  - name: l
providers:
  - name: s
    driver: static
    pools:
      - name: p
        nodes:
          - name: h
            labels: l
            host-key-checking: no
"#,
        "env.yaml",
        None,
        &env,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.webapp.port, 8123);
    let ProviderDriver::Static(s) = &c.providers[0].driver else { panic!("not static") };
    assert!(!s.pools[0].nodes[0].host_key_checking, "`no` is a boolean in YAML 1.1");
}

#[test]
fn secure_file_merge_upstream_fixture() {
    let dir = upstream_dir();
    let main = dir.join("secure_file_config.yaml");
    let secure = dir.join("secure_file_secure.yaml");
    let c = np_config::load_file(&main, Some(&secure)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.zookeeper.connect_string(), "localhost:2181/nodepool-test");
    assert!(c.zookeeper.tls.is_some());
    let image = c.diskimage("fake-image").unwrap_or_else(|| panic!("no image"));
    assert_eq!(image.env_vars.get("REG_PASSWORD").map(String::as_str), Some("secret"));
    // Alone, the main file's invalid chroot is reported.
    let err = np_config::validate_file(&main, None).err().unwrap_or_else(|| panic!("accepted"));
    assert!(err.to_string().contains("a chroot must start with '/'"), "{err}");
}

#[test]
fn missing_file_is_an_error() {
    let err = np_config::load_file(std::path::Path::new("/nonexistent/nodepool.yaml"), None)
        .err()
        .unwrap_or_else(|| panic!("loaded a missing file"));
    assert!(err.to_string().starts_with("/nonexistent/nodepool.yaml: cannot read file"), "{err}");
}

#[test]
fn keys_upstream_ignores_are_refused_where_they_stand() {
    let text = "labels:\n  - name: small\nproviders:\n  - name: os\n    cloud: c\n    nodepool-id: legacy\n    pools: []\n\
                \x20 - name: k8s\n    driver: kubernetes\n    max-servers: 10\n    pools:\n      - name: main\n        labels: []\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with(
            "test.yaml:6:5: providers[0].nodepool-id: key 'nodepool-id' is not supported by nodepool-rs: "
        ),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with(
            "test.yaml:10:5: providers[1].max-servers: key 'max-servers' is not supported by nodepool-rs: "
        ),
        "{errs:?}"
    );
    has(&errs, "set max-servers on each pool");
    // Without the keys the same file loads.
    ok(&text.replace("    nodepool-id: legacy\n", "").replace("    max-servers: 10\n", ""));
}
