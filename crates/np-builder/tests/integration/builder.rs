//! The builder against a real ZooKeeper, with a fake diskimage-builder
//! (`tests/fake-dib`). Operators act through Python Nodepool 11's own API
//! (`tests/python/np_state.py`: build requests, pause flags) and read our
//! build records with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use np_builder::cleanup::CleanupSettings;
use np_builder::{Builder, BuilderSettings};
use np_core::BuildState;
use np_driver_fake::{FakeCloud, FakeSettings};
use np_testing::{env, eventually, repo_root, TestZk};
use serde_json::Value;

struct Env {
    t: TestZk,
    dir: PathBuf,
    /// The simulated clouds of the fake providers.
    clouds: HashMap<String, FakeCloud>,
}

impl Env {
    async fn new() -> Env {
        Self::with(TestZk::new().await)
    }

    /// On the TLS port (Python Nodepool insists on TLS).
    async fn new_tls() -> Env {
        Self::with(TestZk::new_tls().await)
    }

    fn with(t: TestZk) -> Env {
        let dir = std::env::temp_dir().join(format!("np-builder-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let clouds = ["fake-provider", "paused-provider"]
            .into_iter()
            .map(|n| (n.to_owned(), FakeCloud::new(n, FakeSettings::default())))
            .collect();
        Env { t, dir, clouds }
    }

    fn images_dir(&self) -> PathBuf {
        self.dir.join("images")
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// A configuration with one diskimage `ubuntu` (extra keys indented for
    /// it), uploaded to one fake provider (so qcow2 is built).
    fn config(&self, image_extra: &str) -> np_config::Config {
        self.config_with(image_extra, "")
    }

    /// [`Env::config`] with more keys for `fake-provider` (indented for it).
    fn config_with(&self, image_extra: &str, provider_extra: &str) -> np_config::Config {
        let fake_dib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fake-dib");
        let yaml = format!(
            r#"
zookeeper-servers:
  - host: 127.0.0.1
images-dir: {images}
build-log-dir: {logs}
build-log-retention: 2
elements-dir: /etc/nodepool/elements
labels:
  - name: small
diskimages:
  - name: ubuntu
    dib-cmd: {fake_dib}
    elements: [ubuntu-minimal, vm]
    formats: [raw]
    release: 22
    username: builder
    metadata:
      team: ci
{image_extra}
providers:
  - name: fake-provider
    driver: fake
    cloud: fake
    image-name-format: "np-{{image_name}}-{{upload_id}}"
{provider_extra}
    diskimages:
      - name: ubuntu
        meta:
          os: ubuntu
    pools:
      - name: main
        labels:
          - name: small
            diskimage: ubuntu
            min-ram: 1024
  - name: paused-provider
    driver: fake
    cloud: fake
    diskimages:
      - name: ubuntu
        pause: true
    pools:
      - name: main
        labels:
          - name: small
            diskimage: ubuntu
            min-ram: 1024
"#,
            images = self.images_dir().display(),
            logs = self.log_dir().display(),
            fake_dib = fake_dib.display(),
        );
        np_config::load_str(&yaml, "nodepool.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    /// A builder with quick retries and a quick cleanup.
    async fn start(&self, config: &np_config::Config) -> Builder {
        let cleanup =
            CleanupSettings { interval: Duration::from_secs(1), settle: Duration::from_millis(100) };
        self.start_with(config, cleanup).await
    }

    /// A builder whose cleanup waits a minute after changes (so failed
    /// records stay to be looked at).
    async fn start_slow_cleanup(&self, config: &np_config::Config) -> Builder {
        let cleanup = CleanupSettings { interval: Duration::from_secs(60), settle: Duration::from_secs(60) };
        self.start_with(config, cleanup).await
    }

    async fn start_with(&self, config: &np_config::Config, cleanup: CleanupSettings) -> Builder {
        let settings =
            BuilderSettings { retry_delay: Duration::from_millis(200), cleanup, ..Default::default() };
        Builder::start(config, self.t.zk.clone(), self.providers(config), settings).await.unwrap()
    }

    fn providers(&self, config: &np_config::Config) -> np_provider::ProviderSet {
        np_drivers::build_providers(config, &self.clouds).unwrap()
    }

    /// Python Nodepool's view of the image's builds.
    fn python_builds(&self, image: &str) -> Vec<Value> {
        self.python(&["builds", image]).as_array().unwrap().clone()
    }

    fn python(&self, args: &[&str]) -> Value {
        let hosts = format!("{}{}", env("NP_ZK_HOSTS"), self.t.chroot);
        let out = Command::new(env("NP_PYTHON"))
            .arg(repo_root().join("tests/python/np_state.py"))
            .args(args)
            .args(["--hosts", &hosts])
            .output()
            .unwrap();
        assert!(out.status.success(), "np_state.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    async fn builds(&self, image: &str) -> Vec<(String, np_core::ImageBuild)> {
        let mut out = Vec::new();
        for id in self.t.zk.build_ids(image).await.unwrap() {
            if let Some((b, _)) = self.t.zk.get_build(image, &id).await.unwrap() {
                out.push((id, b));
            }
        }
        out.sort_by(|a, b| a.1.state_time.total_cmp(&b.1.state_time));
        out
    }

    async fn count(&self, image: &str, state: BuildState) -> usize {
        self.builds(image).await.iter().filter(|(_, b)| b.state == state).count()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_built_and_recorded_as_python_reads_it() {
    let e = Env::new().await;
    let args_file = e.dir.join("args");
    let config = e.config(&format!("    env-vars:\n      FAKE_DIB_ARGS_TO: {}\n", args_file.display()));
    let builder = e.start(&config).await;
    assert!(
        eventually(Duration::from_secs(20), || async { e.count("ubuntu", BuildState::Ready).await == 1 })
            .await
    );
    let (id, build) = e.builds("ubuntu").await.remove(0);

    // The record, as Python Nodepool reads it.
    let py = e.python_builds("ubuntu");
    assert_eq!(py.len(), 1, "{py:?}");
    assert_eq!(py[0]["id"], id.as_str());
    assert_eq!(py[0]["state"], "ready");
    assert_eq!(py[0]["formats"], serde_json::json!(["qcow2", "raw"]));
    assert_eq!(py[0]["builder_id"], builder.builder_id());
    assert_eq!(py[0]["builder"], np_builder::hostname().as_str());
    assert_eq!(py[0]["username"], "builder");
    assert_eq!(build.formats, ["qcow2", "raw"]);

    // builder_id.txt holds the id; the files and the log are where
    // upstream puts them.
    let id_file = std::fs::read_to_string(e.images_dir().join("builder_id.txt")).unwrap();
    assert_eq!(id_file.trim(), builder.builder_id());
    uuid::Uuid::parse_str(builder.builder_id()).unwrap();
    let stem = format!("ubuntu-{id}");
    let images = files(&e.images_dir());
    for f in ["qcow2", "qcow2.md5", "qcow2.sha256", "raw", "raw.md5", "raw.sha256", "d"] {
        assert!(images.contains(&format!("{stem}.{f}")), "{f} missing: {images:?}");
    }
    let log = std::fs::read_to_string(e.log_dir().join(format!("{stem}.log"))).unwrap();
    assert!(log.ends_with("Exit code: 0\n"), "{log}");
    // The command line and environment diskimage-builder got.
    let args = std::fs::read_to_string(&args_file).unwrap();
    let want = format!(
        "args: -x -t qcow2,raw --checksum --no-tmpfs --qemu-img-options compat=0.10 -o {base} ubuntu-minimal vm | \
         DIB_RELEASE=22 DIB_IMAGE_NAME=ubuntu DIB_IMAGE_FILENAME={base} ELEMENTS_PATH=/etc/nodepool/elements\n",
        base = e.images_dir().join(&stem).display()
    );
    assert_eq!(args, want);

    // Up to date: no second build.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(e.builds("ubuntu").await.len(), 1);
    builder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pauses_failures_and_rebuild_age() {
    let e = Env::new().await;
    // Paused through Python's API (which needs the image's znode): nothing
    // is built, even when asked.
    e.t.zk.ensure_path(&np_zk::paths::image("ubuntu")).await.unwrap();
    e.python(&["pause", "ubuntu"]);
    e.python(&["build-request", "ubuntu"]);
    let args_file = e.dir.join("args");
    // A second image, not paused, shows the worker at work meanwhile.
    let fake_dib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fake-dib");
    let failing = e.config(&format!(
        "    env-vars:\n      FAKE_DIB_FAIL: '1'\n      FAKE_DIB_ARGS_TO: {}\n  \
         - name: debian\n    dib-cmd: {}\n    elements: [vm]\n    formats: [raw]\n",
        args_file.display(),
        fake_dib.display()
    ));
    let builder = e.start(&failing).await;
    assert!(
        eventually(Duration::from_secs(20), || async { ready_builds(&e, "debian").await.len() == 1 }).await
    );
    assert!(e.builds("ubuntu").await.is_empty(), "paused, requested or not");

    // Unpaused: the requested build runs, fails, and is tried again; the
    // request stays until a build is ready. (The cleanup removes failed
    // builds, so the attempts are counted from diskimage-builder's runs.)
    e.python(&["pause", "ubuntu", "--off"]);
    let runs = || std::fs::read_to_string(&args_file).map(|t| t.lines().count()).unwrap_or(0);
    assert!(eventually(Duration::from_secs(20), || async { runs() >= 2 }).await);
    assert!(e.builds("ubuntu").await.iter().all(|(_, b)| b.state != BuildState::Ready));
    let py = e.python_builds("ubuntu");
    // (Retries go on meanwhile: one may be building.)
    assert!(
        py.iter().all(|b| ["failed", "deleting", "building"].contains(&b["state"].as_str().unwrap())),
        "{py:?}"
    );
    assert!(e.t.zk.exists(&np_zk::paths::image_build_request("ubuntu")).await.unwrap().is_some());
    let logs: Vec<String> = files(&e.log_dir())
        .iter()
        .map(|f| std::fs::read_to_string(e.log_dir().join(f)).unwrap_or_default())
        .collect();
    assert!(logs.iter().any(|l| l.ends_with("Exit code: 127\n")), "{logs:?}");
    // An image's logs are pruned to build-log-retention (2) before each of
    // its builds, so at most 3 of ubuntu's exist (retries go on meanwhile).
    let ubuntu_logs = || files(&e.log_dir()).into_iter().filter(|f| f.starts_with("ubuntu-")).count();
    assert!(eventually(Duration::from_secs(20), || async { runs() >= 4 }).await);
    assert!(ubuntu_logs() <= 3, "{:?}", files(&e.log_dir()));

    // Fixed: the next build is ready and the request is gone.
    let fixed = e.config("    rebuild-age: 2\n");
    builder.reconfigure(&fixed, e.providers(&fixed));
    assert!(
        eventually(Duration::from_secs(20), || async { e.count("ubuntu", BuildState::Ready).await == 1 })
            .await
    );
    let py = e.python_builds("ubuntu");
    assert_eq!(py.last().unwrap()["requested"], false, "{py:?}");

    // rebuild-age 2 s: a second ready build follows, woken by its deadline.
    assert!(
        eventually(Duration::from_secs(20), || async { e.count("ubuntu", BuildState::Ready).await == 2 })
            .await
    );
    let ready: Vec<f64> = e
        .builds("ubuntu")
        .await
        .iter()
        .filter(|(_, b)| b.state == BuildState::Ready)
        .map(|(_, b)| b.state_time)
        .collect();
    assert!(ready[1] - ready[0] >= 2.0, "{ready:?}");
    builder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_builder_at_a_time_and_timeouts_kill_the_build() {
    let e = Env::new().await;
    // Two builders, one slow build: the image lock lets only one run it.
    // Each with its own images-dir (and so its own builder id), as on two
    // hosts.
    let slow = e.config("    env-vars:\n      FAKE_DIB_SLEEP: '1.5'\n");
    let mut elsewhere = slow.clone();
    elsewhere.images_dir = Some(e.dir.join("images-2"));
    let first = e.start(&slow).await;
    let second = e.start(&elsewhere).await;
    assert_ne!(first.builder_id(), second.builder_id());
    assert!(
        eventually(Duration::from_secs(20), || async { e.count("ubuntu", BuildState::Ready).await == 1 })
            .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(e.builds("ubuntu").await.len(), 1, "{:?}", e.builds("ubuntu").await);
    first.stop().await;
    second.stop().await;

    // A build over build-timeout is killed and failed; its log has no exit
    // code line.
    let e = Env::new().await;
    let hanging = e.config("    build-timeout: 1\n    env-vars:\n      FAKE_DIB_SLEEP: '30'\n");
    let started = std::time::Instant::now();
    let builder = e.start_slow_cleanup(&hanging).await;
    assert!(
        eventually(Duration::from_secs(10), || async { e.count("ubuntu", BuildState::Failed).await >= 1 })
            .await
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    let (id, _) = e.builds("ubuntu").await.remove(0);
    let log = std::fs::read_to_string(e.log_dir().join(format!("ubuntu-{id}.log"))).unwrap();
    assert!(!log.contains("Exit code"), "{log}");
    builder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_kills_a_running_build_and_records_it_failed() {
    let e = Env::new().await;
    let builder = e.start_slow_cleanup(&e.config("    env-vars:\n      FAKE_DIB_SLEEP: '30'\n")).await;
    assert!(
        eventually(Duration::from_secs(10), || async { e.count("ubuntu", BuildState::Building).await == 1 })
            .await
    );
    let started = std::time::Instant::now();
    builder.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(e.count("ubuntu", BuildState::Failed).await, 1);
    // The lock is free again: the component is gone, nobody holds it.
    assert!(!e.t.zk.is_locked(&np_zk::paths::image_build_lock("ubuntu")).await.unwrap());
}

#[test]
fn the_daemon_refuses_a_config_without_zookeeper_or_images_dir() {
    let dir = std::env::temp_dir().join(format!("np-builder-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("nodepool.yaml");
    std::fs::write(&config, "labels: []\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nodepool-builder")).arg("-c").arg(&config).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no zookeeper-servers"), "{out:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn uploads(e: &Env, image: &str, build: &str, provider: &str) -> Vec<(String, np_core::ImageUpload)> {
    np_builder::upload::uploads_of(&e.t.zk, image, build, provider).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_build_is_uploaded_with_its_metadata_and_failures_are_retried() {
    let e = Env::new().await;
    let cloud = e.clouds["fake-provider"].clone();
    cloud.fail_next_uploads(1);
    let builder = e.start(&e.config("")).await;
    assert!(
        eventually(Duration::from_secs(20), || async { e.count("ubuntu", BuildState::Ready).await == 1 })
            .await
    );
    let (build, _) = e.builds("ubuntu").await.remove(0);
    let ready = || async {
        uploads(&e, "ubuntu", &build, "fake-provider")
            .await
            .into_iter()
            .filter(|(_, u)| u.state == np_core::UploadState::Ready)
            .count()
    };
    assert!(eventually(Duration::from_secs(20), || async { ready().await == 1 }).await);
    // The first attempt failed; the cleanup removes its record.
    assert!(
        eventually(Duration::from_secs(10), || async {
            uploads(&e, "ubuntu", &build, "fake-provider").await.len() == 1
        })
        .await
    );
    let records = uploads(&e, "ubuntu", &build, "fake-provider").await;
    let (upload_id, upload) = &records[0];
    assert_eq!(upload_id, "0000000002", "the second attempt");

    // In the cloud: the qcow2 file, named by image-name-format, with the
    // diskimage's metadata, the provider entry's meta and the builder's ids.
    let images = cloud.images();
    assert_eq!(images.len(), 1, "{images:?}");
    let image = &images[0];
    assert_eq!(upload.external_id.as_deref(), Some(image.id.as_str()));
    assert_eq!(image.name, format!("np-ubuntu-{upload_id}"));
    assert_eq!(upload.external_name.as_deref(), Some(image.name.as_str()));
    assert_eq!(image.format, "qcow2");
    assert_eq!(image.size, 4096);
    assert_eq!(image.metadata["team"], "ci");
    assert_eq!(image.metadata["os"], "ubuntu");
    assert_eq!(image.metadata["nodepool_build_id"], build);
    assert_eq!(image.metadata["nodepool_upload_id"], upload_id.as_str());
    assert_eq!(image.metadata["nodepool_provider_name"], "fake-provider");

    // Python reads the upload; the paused provider got none.
    let py = e.python(&["uploads", "ubuntu", &build, "fake-provider"]);
    let py = py.as_array().unwrap();
    assert_eq!(py.len(), 1, "{py:?}");
    assert_eq!(py[0]["state"], "ready");
    assert_eq!(py[0]["external_id"], image.id.as_str());
    assert_eq!(py[0]["format"], "qcow2");
    assert!(uploads(&e, "ubuntu", &build, "paused-provider").await.is_empty());
    assert!(e.clouds["paused-provider"].images().is_empty());

    // Nothing more to do: no second upload.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cloud.images().len(), 1);
    builder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_post_upload_hook_runs_and_a_failing_one_discards_the_image() {
    let e = Env::new().await;
    let hook = e.dir.join("hook");
    let calls = e.dir.join("hook-calls");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$@\" >> {calls}\n[ -e {fail} ] && exit 3\nexit 0\n",
            calls = calls.display(),
            fail = e.dir.join("hook-fails").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(e.dir.join("hook-fails"), "").unwrap();
    let config = e.config_with("", &format!("    post-upload-hook: {}", hook.display()));
    let builder = e.start_slow_cleanup(&config).await;
    let cloud = e.clouds["fake-provider"].clone();
    // The failing hook: the image is deleted again and the upload failed.
    assert!(eventually(Duration::from_secs(20), || async { cloud.image_deletes() >= 1 }).await);
    let (build, _) = e.builds("ubuntu").await.remove(0);
    assert!(
        eventually(Duration::from_secs(5), || async {
            uploads(&e, "ubuntu", &build, "fake-provider")
                .await
                .first()
                .is_some_and(|(_, u)| u.state == np_core::UploadState::Failed)
        })
        .await
    );
    assert!(cloud.images().is_empty());
    // A working hook: the upload is ready, the hook saw provider, id, file.
    std::fs::remove_file(e.dir.join("hook-fails")).unwrap();
    assert!(eventually(Duration::from_secs(20), || async { cloud.images().len() == 1 }).await);
    let image = cloud.images().remove(0);
    let file = e.images_dir().join(format!("ubuntu-{build}.qcow2"));
    assert!(
        eventually(Duration::from_secs(5), || async {
            std::fs::read_to_string(&calls).unwrap_or_default().contains(&format!(
                "fake-provider {} {}",
                image.id,
                file.display()
            ))
        })
        .await
    );
    builder.stop().await;
}

/// Waits (up to 20 s) until `fake-provider`'s cloud has one image; the
/// ready build of `ubuntu` it came from.
async fn first_build(e: &Env) -> String {
    let cloud = &e.clouds["fake-provider"];
    assert!(eventually(Duration::from_secs(20), || async { cloud.images().len() == 1 }).await);
    ready_builds(e, "ubuntu").await.remove(0)
}

/// Ready builds of `image`, oldest first.
async fn ready_builds(e: &Env, image: &str) -> Vec<String> {
    e.builds(image)
        .await
        .into_iter()
        .filter(|(_, b)| b.state == BuildState::Ready)
        .map(|(id, _)| id)
        .collect()
}

fn build_files(e: &Env, build: &str) -> Vec<String> {
    files(&e.images_dir()).into_iter().filter(|f| f.contains(build)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_builds_rotate_out_with_their_uploads_and_files() {
    let e = Env::new().await;
    let cloud = e.clouds["fake-provider"].clone();
    // A new build every second: the third one retires the first.
    let builder = e.start(&e.config("    rebuild-age: 1\n")).await;
    assert!(eventually(Duration::from_secs(30), || async { e.builds("ubuntu").await.len() >= 3 }).await);
    let first = e.builds("ubuntu").await.remove(0).0;
    assert!(
        eventually(Duration::from_secs(20), || async {
            !e.builds("ubuntu").await.iter().any(|(id, _)| *id == first)
        })
        .await,
        "the oldest build is deleted"
    );
    assert!(build_files(&e, &first).is_empty(), "{:?}", build_files(&e, &first));
    // Stop rebuilding, then look: two ready builds, each build's upload
    // in the cloud, nothing of the first.
    let steady = e.config("");
    builder.reconfigure(&steady, e.providers(&steady));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let kept = ready_builds(&e, "ubuntu").await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            ready_builds(&e, "ubuntu").await.len() == 2 && e.builds("ubuntu").await.len() == 2
        })
        .await,
        "{kept:?}"
    );
    let kept = ready_builds(&e, "ubuntu").await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            let mut in_cloud: Vec<String> =
                cloud.images().iter().map(|i| i.metadata["nodepool_build_id"].clone()).collect();
            in_cloud.sort();
            let mut want = kept.clone();
            want.sort();
            in_cloud == want
        })
        .await,
        "cloud images {:?}, kept {kept:?}",
        cloud.images()
    );
    for id in &kept {
        assert!(!build_files(&e, id).is_empty());
    }
    builder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_images_and_providers_are_cleaned_and_cloud_errors_retried() {
    let e = Env::new().await;
    let cloud = e.clouds["fake-provider"].clone();
    let builder = e.start(&e.config("")).await;
    let build = first_build(&e).await;

    // The provider drops the image; its cloud refuses the first two
    // deletes: the upload stays `deleting` and is retried.
    cloud.fail_next_image_deletes(2);
    let mut dropped = e.config("");
    if let Some(p) = dropped.providers.iter_mut().find(|p| p.name == "fake-provider") {
        if let np_config::ProviderDriver::Fake(os) = &mut p.driver {
            os.diskimages.clear();
        }
    }
    builder.reconfigure(&dropped, e.providers(&dropped));
    assert!(
        eventually(Duration::from_secs(10), || async {
            uploads(&e, "ubuntu", &build, "fake-provider")
                .await
                .first()
                .is_some_and(|(_, u)| u.state == np_core::UploadState::Deleting)
        })
        .await
    );
    assert!(eventually(Duration::from_secs(20), || async { cloud.images().is_empty() }).await);
    assert!(cloud.image_deletes() >= 3, "{}", cloud.image_deletes());
    assert!(
        eventually(Duration::from_secs(10), || async {
            uploads(&e, "ubuntu", &build, "fake-provider").await.is_empty()
        })
        .await
    );
    // The build itself stays: the image is still configured.
    assert_eq!(ready_builds(&e, "ubuntu").await, vec![build.clone()]);

    // The image leaves the configuration: its builds and files go.
    let mut gone = dropped.clone();
    gone.diskimages.clear();
    builder.reconfigure(&gone, e.providers(&gone));
    assert!(eventually(Duration::from_secs(20), || async { e.builds("ubuntu").await.is_empty() }).await);
    assert!(eventually(Duration::from_secs(10), || async { build_files(&e, &build).is_empty() }).await);
    builder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_failed_and_abandoned_records_are_removed() {
    let e = Env::new().await;
    let cloud = e.clouds["fake-provider"].clone();
    let builder = e.start_slow_cleanup(&e.config("")).await;
    let build = first_build(&e).await;
    builder.stop().await;
    // Leftovers of crashed processes: an `uploading` record nobody holds,
    // a failed build with files, a `building` build whose builder died.
    let zk = &e.t.zk;
    let stale = np_core::ImageUpload::new(np_core::UploadState::Uploading);
    zk.store_upload("ubuntu", &build, "fake-provider", None, &stale).await.unwrap();
    let failed = zk.store_build("ubuntu", None, &np_core::ImageBuild::new(BuildState::Failed)).await.unwrap();
    std::fs::write(e.images_dir().join(format!("ubuntu-{failed}.qcow2")), "x").unwrap();
    let dead = zk.store_build("ubuntu", None, &np_core::ImageBuild::new(BuildState::Building)).await.unwrap();
    // And a file of a build ZooKeeper never heard of.
    let stray = "0123456789abcdef0123456789abcdef";
    std::fs::write(e.images_dir().join(format!("ubuntu-{stray}.qcow2")), "x").unwrap();

    let builder = e.start(&e.config("")).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            let ids: Vec<String> = e.builds("ubuntu").await.into_iter().map(|(id, _)| id).collect();
            ids == [build.clone()] && uploads(&e, "ubuntu", &build, "fake-provider").await.len() == 1
        })
        .await,
        "{:?}",
        e.builds("ubuntu").await
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            build_files(&e, &failed).is_empty()
                && build_files(&e, stray).is_empty()
                && build_files(&e, &dead).is_empty()
        })
        .await
    );

    // `nodepool dib-image-delete` marks the build deleting: its upload and
    // cloud image, files and record go.
    let (mut record, _) = zk.get_build("ubuntu", &build).await.unwrap().unwrap();
    record.state = BuildState::Deleting;
    zk.store_build("ubuntu", Some(&build), &record).await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            !e.builds("ubuntu").await.iter().any(|(id, _)| *id == build)
                && cloud.images().iter().all(|i| i.metadata["nodepool_build_id"] != build)
                && build_files(&e, &build).is_empty()
        })
        .await
    );
    builder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_upload_keeps_only_what_is_still_needed() {
    let e = Env::new().await;
    let other = e.clouds["paused-provider"].clone();
    // The other provider refuses uploads until told otherwise.
    other.fail_next_uploads(u32::MAX);
    let mut config = e.config("    delete-after-upload: true\n    keep-formats: [raw]\n");
    for p in &mut config.providers {
        if let np_config::ProviderDriver::Fake(os) = &mut p.driver {
            os.diskimages.iter_mut().for_each(|d| d.pause = false);
        }
    }
    let builder = e.start(&config).await;
    let build = first_build(&e).await;
    let qcow2 = format!("ubuntu-{build}.qcow2");
    // The other provider's upload still needs the qcow2 file: it stays over
    // several cleanup passes (one a second here).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(other.images().is_empty());
    assert!(build_files(&e, &build).contains(&qcow2));
    other.fail_next_uploads(0);
    // Uploaded everywhere: deleted; raw is in keep-formats.
    assert!(
        eventually(Duration::from_secs(10), || async {
            other.images().len() == 1 && !build_files(&e, &build).contains(&qcow2)
        })
        .await
    );
    assert!(build_files(&e, &build).contains(&format!("ubuntu-{build}.raw")));
    builder.stop().await;
}

/// Our builder and our launcher on one ZooKeeper and one (fake) cloud: a
/// diskimage label boots the builder's upload; a requested
/// rebuild gives new nodes the new image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_launcher_boots_what_the_builder_uploaded() {
    use np_core::{NodeRequest, RequestState};
    let e = Env::new().await;
    let cloud = e.clouds["fake-provider"].clone();
    let config = e.config("");
    let launcher = np_launcher::Launcher::start(&config, e.t.zk.clone(), e.providers(&config)).await.unwrap();
    let builder = e.start(&config).await;
    let fulfilled = |id: String| {
        let zk = e.t.zk.clone();
        async move {
            eventually(Duration::from_secs(30), || async {
                zk.get_request(&id).await.unwrap().is_some_and(|(r, _)| r.state == RequestState::Fulfilled)
            })
            .await
        }
    };
    let node_image = |id: String| {
        let zk = e.t.zk.clone();
        let cloud = cloud.clone();
        async move {
            let (req, _) = zk.get_request(&id).await.unwrap().unwrap();
            let (node, _) = zk.get_node(&req.nodes[0]).await.unwrap().unwrap();
            let server = node.external_id.as_ref().and_then(|v| v.as_str()).unwrap().to_owned();
            (node, cloud.server_image(&server).unwrap())
        }
    };
    // (Before the first upload every pool declines and a request fails, as
    // upstream's launchers do.)
    assert!(eventually(Duration::from_secs(30), || async { cloud.images().len() == 1 }).await);
    let mut first = NodeRequest::new(vec!["small".into()]);
    e.t.zk.create_request(&mut first, 100, false).await.unwrap();
    assert!(fulfilled(first.id.clone()).await);
    let (node, booted) = node_image(first.id.clone()).await;
    let images = cloud.images();
    assert_eq!(images.len(), 1);
    assert_eq!(booted, images[0].id);
    assert_eq!(node.username.as_deref(), Some("builder"), "the diskimage's username");
    let build = ready_builds(&e, "ubuntu").await.remove(0);
    assert!(node.image_id.as_deref().unwrap().contains(&build), "{:?}", node.image_id);

    // A rebuild asked for through Python's API: the next node boots it.
    e.python(&["build-request", "ubuntu"]);
    assert!(eventually(Duration::from_secs(30), || async { cloud.images().len() == 2 }).await);
    let newest = cloud.images().into_iter().find(|i| i.metadata["nodepool_build_id"] != build).unwrap();
    let mut second = NodeRequest::new(vec!["small".into()]);
    e.t.zk.create_request(&mut second, 100, false).await.unwrap();
    assert!(fulfilled(second.id.clone()).await);
    assert_eq!(node_image(second.id.clone()).await.1, newest.id);
    builder.stop().await;
    launcher.stop().await;
}

/// Python Nodepool 11's `nodepool-builder`, killed on drop.
/// Python's builder and ours share ZooKeeper during a migration: the image
/// build lock gives each image to one of them, each uploads what it built,
/// and neither removes the other's builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_builders_share_the_images() {
    let e = Env::new_tls().await;
    let fake_dib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fake-dib");
    let py_dir = e.dir.join("python");
    std::fs::create_dir_all(py_dir.join("images")).unwrap();
    std::fs::create_dir_all(py_dir.join("logs")).unwrap();
    // The same diskimages and provider for both; the Python builder's
    // files and logs in its own directories. ubuntu's build is held until
    // ours has taken debian, so the builder that takes ubuntu first is still
    // busy when the other arrives, however slow the machine is.
    let hold = e.dir.join("hold-ubuntu");
    std::fs::write(&hold, b"").unwrap();
    let yaml = |images: &Path, logs: &Path| {
        format!(
            r#"{zk}
images-dir: {images}
build-log-dir: {logs}
labels:
  - name: small
diskimages:
  - name: ubuntu
    dib-cmd: {fake_dib}
    elements: [vm]
    env-vars:
      FAKE_DIB_HOLD: {hold}
  - name: debian
    dib-cmd: {fake_dib}
    elements: [vm]
providers:
  - name: fake-provider
    driver: fake
    cloud: fake
    diskimages:
      - name: ubuntu
      - name: debian
    pools:
      - name: main
        labels:
          - name: small
            diskimage: ubuntu
            min-ram: 1024
"#,
            zk = np_testing::zk_yaml_tls(&e.t.chroot),
            images = images.display(),
            logs = logs.display(),
            fake_dib = fake_dib.display(),
            hold = hold.display(),
        )
    };
    let py_config = py_dir.join("nodepool.yaml");
    std::fs::write(&py_config, yaml(&py_dir.join("images"), &py_dir.join("logs"))).unwrap();
    std::fs::write(
        py_dir.join("clouds.yaml"),
        "clouds:\n  fake:\n    auth:\n      username: fake\n      password: fake\n      project_id: fake\n      auth_url: fake\n",
    )
    .unwrap();
    let python = PathBuf::from(env("NP_PYTHON"));
    let log = std::fs::File::create(py_dir.join("builder.out")).unwrap();
    let _py = np_testing::ChildGuard(
        Command::new(python.parent().unwrap().join("nodepool-builder"))
            .args(["-f", "-c"])
            .arg(&py_config)
            .env("OS_CLIENT_CONFIG_FILE", py_dir.join("clouds.yaml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // Python takes the first image (ubuntu) ...
    let python_building = eventually(Duration::from_secs(30), || async {
        e.builds("ubuntu").await.iter().any(|(_, b)| b.state == BuildState::Building)
    })
    .await;
    assert!(python_building, "{}", std::fs::read_to_string(py_dir.join("builder.out")).unwrap_or_default());
    let py_builder_id = std::fs::read_to_string(py_dir.join("images/builder_id.txt")).unwrap();
    // ... and ours, started now, finds it locked and takes debian.
    let ours_config = np_config::load_str(&yaml(&e.images_dir(), &e.log_dir()), "nodepool.yaml").unwrap();
    let builder = e.start(&ours_config).await;
    let ours_took_debian = eventually(Duration::from_secs(20), || async {
        e.builds("debian").await.iter().any(|(_, b)| b.builder_id.as_deref() == Some(builder.builder_id()))
    })
    .await;
    assert!(ours_took_debian, "{:?}", e.builds("debian").await);
    std::fs::remove_file(&hold).unwrap();
    let done = eventually(Duration::from_secs(40), || async {
        let mut ok = true;
        for image in ["ubuntu", "debian"] {
            let ready = ready_builds(&e, image).await;
            ok &= ready.len() == 1
                && uploads(&e, image, &ready[0], "fake-provider")
                    .await
                    .iter()
                    .any(|(_, u)| u.state == np_core::UploadState::Ready);
        }
        ok
    })
    .await;
    assert!(done, "{}", std::fs::read_to_string(py_dir.join("builder.out")).unwrap_or_default());
    let (_, ubuntu) =
        e.builds("ubuntu").await.into_iter().find(|(_, b)| b.state == BuildState::Ready).unwrap();
    let (_, debian) =
        e.builds("debian").await.into_iter().find(|(_, b)| b.state == BuildState::Ready).unwrap();
    assert_eq!(
        ubuntu.builder_id.as_deref(),
        Some(py_builder_id.trim()),
        "{}",
        std::fs::read_to_string(py_dir.join("builder.out")).unwrap_or_default()
    );
    let our_logs: Vec<String> = files(&e.log_dir())
        .iter()
        .map(|f| format!("{f}: {}", std::fs::read_to_string(e.log_dir().join(f)).unwrap_or_default()))
        .collect();
    assert_eq!(debian.builder_id.as_deref(), Some(builder.builder_id()), "our logs: {our_logs:?}");
    // Each uploaded what it built: our cloud has debian only.
    let ours: Vec<String> = e.clouds["fake-provider"].images().iter().map(|i| i.name.clone()).collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert!(ours[0].starts_with("debian-"), "{ours:?}");
    // A while later: still one build each, nobody deleted the other's.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for image in ["ubuntu", "debian"] {
        assert_eq!(e.builds(image).await.len(), 1, "{image}: {:?}", e.builds(image).await);
    }
    builder.stop().await;
}

/// The daemon itself: builds what its configuration file says, picks up an
/// edited file by itself, and on SIGTERM stops and unregisters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reloads_its_file_and_stops_on_sigterm() {
    let e = Env::new().await;
    let fake_dib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fake-dib");
    let hosts = env("NP_ZK_HOSTS");
    let (host, port) = hosts.rsplit_once(':').unwrap();
    // `uploaded`: the images the (in-process, simulated) fake provider lists.
    let yaml = |images: &[&str], uploaded: &[&str]| {
        let mut text = format!(
            "zookeeper-servers:\n  - host: {host}\n    port: {port}\n    chroot: {chroot}\n\
             images-dir: {dir}\nbuild-log-dir: {logs}\nlabels:\n  - name: small\ndiskimages:\n",
            chroot = e.t.chroot,
            dir = e.images_dir().display(),
            logs = e.log_dir().display(),
        );
        for image in images {
            text.push_str(&format!(
                "  - name: {image}\n    dib-cmd: {}\n    elements: [vm]\n    formats: [raw]\n",
                fake_dib.display()
            ));
        }
        text.push_str(
            "providers:\n  - name: fake-provider\n    driver: fake\n    cloud: fake\n    \
             cloud-images:\n      - name: fake-image\n    diskimages:",
        );
        if uploaded.is_empty() {
            text.push_str(" []\n");
        } else {
            text.push('\n');
            for image in uploaded {
                text.push_str(&format!("      - name: {image}\n"));
            }
        }
        text.push_str(
            "    pools:\n      - name: main\n        labels:\n          - name: small\n            \
             cloud-image: fake-image\n            min-ram: 1024\n",
        );
        text
    };
    let config = e.dir.join("nodepool.yaml");
    std::fs::write(&config, yaml(&["ubuntu"], &["ubuntu"])).unwrap();
    let pidfile = e.dir.join("builder.pid");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nodepool-builder"))
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(&pidfile)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async { ready_builds(&e, "ubuntu").await.len() == 1 }).await
    );
    let build = ready_builds(&e, "ubuntu").await.remove(0);
    let uploaded = || async {
        uploads(&e, "ubuntu", &build, "fake-provider")
            .await
            .iter()
            .any(|(_, u)| u.state == np_core::UploadState::Ready)
    };
    assert!(eventually(Duration::from_secs(20), uploaded).await);
    let components =
        || async { e.t.zk.children("/nodepool/components/builder").await.unwrap().unwrap_or_default().len() };
    assert_eq!(components().await, 1, "the builder is registered");
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap().trim(), child.id().unwrap().to_string());

    // The file is replaced, as configuration management does: debian too.
    let next = e.dir.join("nodepool.yaml.new");
    std::fs::write(&next, yaml(&["ubuntu", "debian"], &["ubuntu"])).unwrap();
    std::fs::rename(&next, &config).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async { ready_builds(&e, "debian").await.len() == 1 }).await
    );
    // The provider's list is emptied (upstream's provider-removal step): its
    // upload goes.
    std::fs::write(&next, yaml(&["ubuntu", "debian"], &[])).unwrap();
    std::fs::rename(&next, &config).unwrap();
    let gone = || async { uploads(&e, "ubuntu", &build, "fake-provider").await.is_empty() };
    assert!(eventually(Duration::from_secs(20), gone).await);

    let pid = child.id().unwrap();
    let killed = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(components().await, 0, "unregistered on the way out");
    assert!(!pidfile.exists(), "the pid file is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_during_a_session_loss_fails_and_is_done_again() {
    let e = Env::new().await;
    let args_file = e.dir.join("args");
    // The first DIB run is held until the session has been replaced, so the
    // loss falls inside the build however slow the machine is.
    let hold = e.dir.join("hold");
    std::fs::write(&hold, b"").unwrap();
    let config = e.config(&format!(
        "    env-vars:\n      FAKE_DIB_HOLD: {}\n      FAKE_DIB_ARGS_TO: {}\n",
        hold.display(),
        args_file.display()
    ));
    let builder = e.start_slow_cleanup(&config).await;
    assert!(
        eventually(Duration::from_secs(10), || async { e.count("ubuntu", BuildState::Building).await == 1 })
            .await
    );
    let generation = e.t.zk.status().generation;
    e.t.zk.expire_session().await.unwrap();
    // (The test shares the builder's client: reads fail until it is back.)
    let replaced = || async {
        let status = e.t.zk.status();
        status.connected && status.generation != generation
    };
    assert!(eventually(Duration::from_secs(20), replaced).await, "a new session");
    std::fs::remove_file(&hold).unwrap();
    let ready =
        || async { np_builder::upload::newest_ready_build(&e.t.zk, "ubuntu").await.ok().flatten().is_some() };
    assert!(eventually(Duration::from_secs(20), ready).await);
    let states: Vec<BuildState> = e.builds("ubuntu").await.into_iter().map(|(_, b)| b.state).collect();
    let runs = std::fs::read_to_string(&args_file).unwrap().lines().count();
    assert_eq!(states, [BuildState::Failed, BuildState::Ready], "the first build failed ({runs} DIB runs)");
    assert_eq!(runs, 2);
    builder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_are_skipped_and_left_alone() {
    let e = Env::new().await;
    let garbage = "0123456789abcdef0123456789abcdef";
    let path = np_zk::paths::build("ubuntu", garbage);
    e.t.zk.create(&path, b"{not json", zookeeper_client::CreateMode::Persistent, true).await.unwrap();
    let builder = e.start(&e.config("")).await;
    assert!(
        eventually(Duration::from_secs(20), || async { e.clouds["fake-provider"].images().len() == 1 }).await
    );
    // Several cleanup passes later the record is still there, untouched.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (data, _) = e.t.zk.get(&path).await.unwrap().unwrap();
    assert_eq!(data, b"{not json");
    builder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_delete_that_keeps_failing_is_retried_once_an_interval() {
    let e = Env::new().await;
    let cloud = e.clouds["fake-provider"].clone();
    let builder = e.start(&e.config("")).await;
    assert!(eventually(Duration::from_secs(20), || async { cloud.images().len() == 1 }).await);
    cloud.fail_next_image_deletes(u32::MAX);
    let mut dropped = e.config("");
    for p in &mut dropped.providers {
        if let np_config::ProviderDriver::Fake(os) = &mut p.driver {
            os.diskimages.clear();
        }
    }
    builder.reconfigure(&dropped, e.providers(&dropped));
    assert!(eventually(Duration::from_secs(10), || async { cloud.image_deletes() >= 1 }).await);
    let before = cloud.image_deletes();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tries = cloud.image_deletes() - before;
    // The interval is 1 s here: about three more tries, not one per wake-up.
    assert!((1..=5).contains(&tries), "{tries} delete calls in 3 s");
    cloud.fail_next_image_deletes(0);
    assert!(eventually(Duration::from_secs(10), || async { cloud.images().is_empty() }).await);
    builder.stop().await;
}
