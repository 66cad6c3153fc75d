//! The builder's integration tests in one test binary (a binary per file
//! would link the builder with the AWS SDK twice): `builder` with the fake
//! provider and `aws` with uploads to moto.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod aws;
mod builder;
mod openstack;

/// What the upload tests share.
mod common {
    use std::time::Duration;

    use np_builder::cleanup::CleanupSettings;
    use np_builder::BuilderSettings;
    use np_core::{ImageUpload, UploadState};
    use np_testing::TestZk;

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
