//! Running diskimage-builder for one build: the command line, the
//! environment, the build log and the timeout, as upstream's builder does.
//!
//! The command line is
//! `<dib-cmd> -x -t <formats> --checksum --no-tmpfs [--qemu-img-options compat=0.10] -o <images-dir>/<image>-<build-id> <elements>`
//! (the qemu option whenever qcow2 is built), split shell-style. The
//! environment is the daemon's, plus `DIB_RELEASE`, `DIB_IMAGE_NAME`,
//! `DIB_IMAGE_FILENAME`, `ELEMENTS_PATH` (with `elements-dir`), and the
//! image's `env-vars` last so they can override all of these. Standard output
//! and error go to `<build-log-dir>/<image>-<build-id>.log`, which ends with
//! `Exit code: <rc>` when diskimage-builder exits by itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

/// A build that could not run or did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DibError {
    /// The command could not be started.
    #[error("Failed to exec '{command}'. Error: '{error}'")]
    Exec {
        /// The command line.
        command: String,
        /// Why.
        error: std::io::Error,
    },
    /// `dib-cmd` is not a valid shell-style word list.
    #[error("cannot split dib-cmd {0:?} into words")]
    BadCommand(String),
    /// The build log could not be written.
    #[error("cannot write the build log {path}: {error}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// diskimage-builder exited non-zero.
    #[error("diskimage-builder failed with exit code {0}")]
    Failed(i32),
    /// The build ran longer than `build-timeout` and was killed.
    #[error("build timed out after {0:?}")]
    Timeout(Duration),
    /// The builder is shutting down; the build was killed.
    #[error("build cancelled")]
    Cancelled,
}

/// Everything one build run needs.
#[derive(Debug, Clone)]
pub struct DibJob {
    /// Image name.
    pub image: String,
    /// Build id (uuid hex).
    pub build_id: String,
    /// `dib-cmd` (may carry arguments).
    pub dib_cmd: String,
    /// Formats to produce.
    pub formats: BTreeSet<String>,
    /// Elements, in order.
    pub elements: Vec<String>,
    /// `release` (may be empty).
    pub release: String,
    /// `env-vars`.
    pub env_vars: BTreeMap<String, String>,
    /// `elements-dir`.
    pub elements_dir: Option<PathBuf>,
    /// `images-dir`.
    pub images_dir: PathBuf,
    /// `build-log-dir`.
    pub log_dir: PathBuf,
    /// `build-timeout`.
    pub timeout: Duration,
}

impl DibJob {
    /// `<images-dir>/<image>-<build-id>`: the base name of the output files.
    pub fn output_base(&self) -> PathBuf {
        self.images_dir.join(format!("{}-{}", self.image, self.build_id))
    }

    /// The build log file.
    pub fn log_path(&self) -> PathBuf {
        self.log_dir.join(format!("{}-{}.log", self.image, self.build_id))
    }

    /// The command line as one string (as upstream logs it). `%p` in
    /// `dib-cmd` (upstream: Nodepool's package directory, where its test
    /// tools live) becomes the directory of the builder's executable.
    pub fn command_line(&self) -> String {
        let formats: Vec<&str> = self.formats.iter().map(String::as_str).collect();
        let dib_cmd = if self.dib_cmd.contains("%p") {
            let dir = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from("."));
            self.dib_cmd.replace("%p", &dir.display().to_string())
        } else {
            self.dib_cmd.clone()
        };
        let mut cmd = format!("{dib_cmd} -x -t {} --checksum --no-tmpfs", formats.join(","));
        // Upstream adds this for old qemu compatibility whenever qcow2 is built.
        if self.formats.contains("qcow2") {
            cmd.push_str(" --qemu-img-options 'compat=0.10'");
        }
        cmd.push_str(&format!(" -o {} {}", self.output_base().display(), self.elements.join(" ")));
        cmd
    }

    /// The environment added to the daemon's.
    pub fn environment(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("DIB_RELEASE".to_owned(), self.release.clone());
        env.insert("DIB_IMAGE_NAME".to_owned(), self.image.clone());
        env.insert("DIB_IMAGE_FILENAME".to_owned(), self.output_base().display().to_string());
        if let Some(dir) = &self.elements_dir {
            env.insert("ELEMENTS_PATH".to_owned(), dir.display().to_string());
        }
        // The image's own variables come last and may override the above.
        env.extend(self.env_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }
}

/// Runs the job; `Ok(())` when diskimage-builder exited 0. `cancel` kills a
/// running build (shutdown).
pub async fn run(job: &DibJob, cancel: &tokio_util::sync::CancellationToken) -> Result<(), DibError> {
    let command = job.command_line();
    let words = shlex::split(&command).ok_or_else(|| DibError::BadCommand(job.dib_cmd.clone()))?;
    let Some((program, args)) = words.split_first() else {
        return Err(DibError::BadCommand(job.dib_cmd.clone()));
    };
    let log_path = job.log_path();
    let log_error = |error| DibError::Log { path: log_path.clone(), error };
    tokio::fs::create_dir_all(&job.log_dir).await.map_err(log_error)?;
    tokio::fs::create_dir_all(&job.images_dir).await.map_err(log_error)?;
    let log = std::fs::File::create(&log_path).map_err(log_error)?;
    let log_err = log.try_clone().map_err(log_error)?;
    info!(image = %job.image, build = %job.build_id, log = %log_path.display(), "running {command}");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(job.environment())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| DibError::Exec { command: command.clone(), error })?;
    let status = tokio::select! {
        status = child.wait() => status.map_err(|error| DibError::Exec { command: command.clone(), error })?,
        () = tokio::time::sleep(job.timeout) => {
            warn!(image = %job.image, build = %job.build_id, log = %log_path.display(), "build timeout; killing diskimage-builder");
            let _ = child.kill().await;
            return Err(DibError::Timeout(job.timeout));
        }
        () = cancel.cancelled() => {
            let _ = child.kill().await;
            return Err(DibError::Cancelled);
        }
    };
    // Killed by a signal: Python reports the negated signal number.
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        -status.signal().unwrap_or(1)
    });
    let mut log = tokio::fs::OpenOptions::new().append(true).open(&log_path).await.map_err(log_error)?;
    log.write_all(format!("Exit code: {code}\n").as_bytes()).await.map_err(log_error)?;
    if code == 0 {
        Ok(())
    } else {
        Err(DibError::Failed(code))
    }
}

/// Deletes old build logs of `image` before a build: of the files in `dir`
/// whose names start with the image name, all but the newest `keep` (at
/// least 1) by modification time; a negative `keep` keeps them all. QUIRK
/// (upstream, kept for identical retention): the prefix match also counts
/// the logs of images whose names start with this one (`foo` prunes
/// `foo-bar`'s logs).
pub fn prune_logs(dir: &Path, image: &str, keep: i64) {
    if keep < 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut logs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(image))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    logs.sort_by_key(|l| std::cmp::Reverse(l.0));
    let keep = usize::try_from(keep.max(1)).unwrap_or(1);
    for (_, path) in logs.into_iter().skip(keep) {
        if let Err(e) = std::fs::remove_file(&path) {
            warn!(log = %path.display(), error = %e, "cannot delete an old build log");
        }
    }
}

/// The files of a build in `images_dir`: `<image>-<build>.<format>` for each
/// format, with their `.md5` / `.sha256` files and the `.d` directory.
pub fn build_files(images_dir: &Path, image: &str, build: &str) -> Vec<PathBuf> {
    let stem = format!("{image}-{build}");
    let Ok(entries) = std::fs::read_dir(images_dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.strip_prefix(stem.as_str()).is_some_and(|rest| rest.starts_with('.') && rest.len() > 1)
            })
        })
        .collect()
}

/// Removes a build's files (see [`build_files`]).
pub fn remove_build_files(images_dir: &Path, image: &str, build: &str) {
    for path in build_files(images_dir, image, build) {
        let removed =
            if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        if let Err(e) = removed {
            warn!(path = %path.display(), error = %e, "cannot delete a build file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> DibJob {
        DibJob {
            image: "ubuntu".into(),
            build_id: "0123abcd".into(),
            dib_cmd: "disk-image-create".into(),
            formats: ["qcow2".to_owned(), "raw".to_owned()].into(),
            elements: vec!["ubuntu-minimal".into(), "vm".into()],
            release: "21".into(),
            env_vars: [
                ("DIB_RELEASE".to_owned(), "jammy".to_owned()),
                ("TMPDIR".to_owned(), "/opt".to_owned()),
            ]
            .into(),
            elements_dir: Some("/etc/nodepool/elements".into()),
            images_dir: "/opt/nodepool/images".into(),
            log_dir: "/var/log/nodepool/builds".into(),
            timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_command_line_is_upstreams() {
        assert_eq!(
            job().command_line(),
            "disk-image-create -x -t qcow2,raw --checksum --no-tmpfs --qemu-img-options 'compat=0.10' \
             -o /opt/nodepool/images/ubuntu-0123abcd ubuntu-minimal vm"
        );
        let mut raw = job();
        raw.formats = ["raw".to_owned()].into();
        assert!(!raw.command_line().contains("qemu-img-options"));
        assert_eq!(
            shlex::split(&job().command_line()).unwrap()[6..8],
            ["--qemu-img-options".to_owned(), "compat=0.10".to_owned()]
        );
    }

    #[test]
    fn old_logs_are_pruned_unless_retention_is_negative() {
        let dir = std::env::temp_dir().join(format!("np-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in 0..4 {
            std::fs::write(dir.join(format!("ubuntu-{n}.log")), "x").unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::write(dir.join("debian-0.log"), "x").unwrap();
        prune_logs(&dir, "ubuntu", -1);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 5);
        prune_logs(&dir, "ubuntu", 2);
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["debian-0.log", "ubuntu-2.log", "ubuntu-3.log"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn env_vars_come_last_and_override() {
        let env = job().environment();
        assert_eq!(env["DIB_RELEASE"], "jammy");
        assert_eq!(env["DIB_IMAGE_NAME"], "ubuntu");
        assert_eq!(env["DIB_IMAGE_FILENAME"], "/opt/nodepool/images/ubuntu-0123abcd");
        assert_eq!(env["ELEMENTS_PATH"], "/etc/nodepool/elements");
        assert_eq!(env["TMPDIR"], "/opt");
    }
}
