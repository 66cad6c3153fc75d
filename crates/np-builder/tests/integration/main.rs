//! The builder's integration tests in one test binary (a binary per file
//! would link the builder with the AWS SDK twice): `builder` with the fake
//! provider and `aws` with uploads to moto.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod aws;
mod builder;
mod metrics;
mod openstack;

/// What the upload tests share.
mod common {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use np_builder::cleanup::CleanupSettings;
    use np_builder::{Builder, BuilderSettings};
    use np_core::{ImageUpload, UploadState};
    use np_testing::{eventually, TestZk};

    /// A scratch directory of this test's own, `prefix` and a UUID in the
    /// system's temporary directory.
    pub fn scratch_dir(prefix: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A configuration with the diskimage `built-image` (built by
    /// tests/fake-dib, its images and logs in `dir`) and one provider that
    /// uploads it and boots it for the label `built`. The other arguments
    /// are YAML lines, unindented: more keys of the diskimage, the
    /// provider's keys (its name among them), the keys of its diskimage
    /// entry and of its label `built`.
    pub fn built_image_yaml(dir: &Path, image: &str, provider: &str, upload: &str, label: &str) -> String {
        let fake_dib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fake-dib");
        format!(
            "zookeeper-servers:\n  - host: 127.0.0.1\nimages-dir: {}\nbuild-log-dir: {}\nlabels:\n  - name: built\ndiskimages:\n  - name: built-image\n    dib-cmd: {}\n    elements: [vm]\n{}providers:\n  -{}    diskimages:\n      - name: built-image\n{}    pools:\n      - name: main\n        labels:\n          - name: built\n            diskimage: built-image\n{}",
            dir.join("images").display(),
            dir.join("logs").display(),
            fake_dib.display(),
            indent(image, 4),
            &indent(provider, 4)[3..],
            indent(upload, 8),
            indent(label, 12),
        )
    }

    /// Each line of `yaml` indented by `by` spaces, each ending in a newline.
    fn indent(yaml: &str, by: usize) -> String {
        yaml.lines().map(|l| format!("{:by$}{l}\n", "")).collect()
    }

    /// A builder on `config` whose one provider, `name`, is `provider`,
    /// with [`quick_settings`].
    pub async fn start(
        t: &TestZk,
        config: &np_config::Config,
        name: &str,
        provider: impl np_provider::Provider + 'static,
    ) -> Builder {
        let providers: np_provider::ProviderSet = HashMap::from([(name.to_owned(), Arc::new(provider) as _)]);
        Builder::start(config, t.zk.clone(), providers, quick_settings()).await.unwrap()
    }

    /// The first ready upload of `built-image` to `provider` (within 30 s):
    /// (build, upload id, record).
    pub async fn first_upload(t: &TestZk, provider: &str) -> (String, String, ImageUpload) {
        let ready = || ready_uploads(t, "built-image", provider);
        assert!(eventually(Duration::from_secs(30), || async { !ready().await.is_empty() }).await);
        ready().await.remove(0)
    }

    /// Settings for a builder that retries and cleans up quickly.
    pub fn quick_settings() -> BuilderSettings {
        BuilderSettings {
            retry_delay: Duration::from_millis(200),
            cleanup: CleanupSettings { interval: Duration::from_secs(1), settle: Duration::from_millis(100) },
            ..Default::default()
        }
    }

    /// The ready uploads of `image` to `provider`: (build, upload id, record).
    pub async fn ready_uploads(
        t: &TestZk,
        image: &str,
        provider: &str,
    ) -> Vec<(String, String, ImageUpload)> {
        let mut out = Vec::new();
        for build in t.zk.build_ids(image).await.unwrap() {
            for (id, u) in np_builder::upload::uploads_of(&t.zk, image, &build, provider).await.unwrap() {
                if u.state == UploadState::Ready {
                    out.push((build.clone(), id, u));
                }
            }
        }
        out
    }
}
