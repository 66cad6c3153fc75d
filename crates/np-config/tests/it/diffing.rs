//! `diff()`: which providers, pools and labels changed.

use np_config::{diff, load_str_with, Config};

fn cfg(text: &str) -> Config {
    load_str_with(text, "d.yaml", None, &[]).unwrap_or_else(|e| panic!("{e}"))
}

const BASE: &str = r#"
labels:
  - name: a
  - name: b
providers:
  - name: fake-1
    cloud: fake
    cloud-images:
      - name: img
    pools:
      - name: p1
        max-servers: 5
        labels:
          - name: a
            cloud-image: img
            min-ram: 1
      - name: p2
        labels:
          - name: b
            cloud-image: img
            min-ram: 1
  - name: rack
    driver: static
    pools:
      - name: main
        nodes:
          - name: h1
            labels: a
"#;

#[test]
fn identical_configs_have_no_diff() {
    let d = diff(&cfg(BASE), &cfg(BASE));
    assert!(d.is_empty(), "{d:?}");
    // Writing a default explicitly is not a change.
    let explicit = BASE.replace("max-servers: 5\n", "max-servers: 5\n        auto-floating-ip: true\n");
    assert!(diff(&cfg(BASE), &cfg(&explicit)).is_empty());
}

#[test]
fn pool_and_label_changes() {
    let new = BASE.replace("max-servers: 5", "max-servers: 6").replace(
        "          - name: b\n            cloud-image: img\n            min-ram: 1\n",
        "          - name: b\n            cloud-image: img\n            min-ram: 2\n",
    );
    let d = diff(&cfg(BASE), &cfg(&new));
    assert_eq!(d.affected_providers(), vec!["fake-1"]);
    let p = &d.providers_changed[0];
    assert!(!p.settings_changed);
    assert_eq!(p.pools_changed.len(), 2);
    assert!(p.pools_changed[0].settings_changed && p.pools_changed[0].labels_changed.is_empty());
    assert_eq!(p.pools_changed[1].labels_changed, vec!["b"]);
}

#[test]
fn providers_and_labels_added_removed() {
    let new = BASE.replace("  - name: b\nproviders:", "  - name: b\n    min-ready: 1\n  - name: c\nproviders:").replace(
        "  - name: rack\n    driver: static\n    pools:\n      - name: main\n        nodes:\n          - name: h1\n            labels: a\n",
        "  - name: rack2\n    driver: static\n    pools: []\n",
    );
    let d = diff(&cfg(BASE), &cfg(&new));
    assert_eq!(d.providers_added, vec!["rack2"]);
    assert_eq!(d.providers_removed, vec!["rack"]);
    assert_eq!(d.labels_added, vec!["c"]);
    assert_eq!(d.labels_changed, vec!["b"]);
    assert!(d.providers_changed.is_empty());
}

#[test]
fn static_node_changes_show_as_label_changes() {
    let new = BASE.replace(
        "          - name: h1\n            labels: a\n",
        "          - name: h1\n            labels: a\n            timeout: 9\n",
    );
    let d = diff(&cfg(BASE), &cfg(&new));
    let p = &d.providers_changed[0];
    assert_eq!(p.name, "rack");
    assert_eq!(p.pools_changed[0].labels_changed, vec!["a"]);
    let settings = BASE.replace("    driver: static\n", "    driver: static\n    max-concurrency: 2\n");
    let d = diff(&cfg(BASE), &cfg(&settings));
    assert!(d.providers_changed[0].settings_changed);
}
