//! Process plumbing the binaries share. For `nodepool-launcher` and
//! `nodepool-builder`: upstream's common daemon flags ([`CommonArgs`]),
//! logging, loading the configuration (exit 64 on errors, before touching
//! ZooKeeper), the pid file, the ZooKeeper connection, and the main loop's
//! events ([`Events`]): stop on SIGINT/SIGTERM, reload on SIGHUP or when the
//! configuration or secure file changes. For every binary, the `nodepool`
//! CLI included: the ZooKeeper client settings of a configuration
//! ([`zk_config`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use np_config::Config;
use np_zk::{Zk, ZkConfig, ZkTls};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// The flags every Nodepool daemon takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Path to the config file.
    #[arg(short = 'c', default_value = "/etc/nodepool/nodepool.yaml")]
    pub config: PathBuf,
    /// Path to the secure config file.
    #[arg(short = 's')]
    pub secure: Option<PathBuf>,
    /// Path to a Python logging config (not supported: use RUST_LOG).
    #[arg(short = 'l')]
    pub logconfig: Option<PathBuf>,
    /// Run in the foreground (always the case; kept for compatibility).
    #[arg(short = 'f')]
    pub foreground: bool,
    /// Debug logging.
    #[arg(short = 'd')]
    pub debug: bool,
    /// Write the process id to this file (removed on exit).
    #[arg(short = 'p')]
    pub pidfile: Option<PathBuf>,
}

impl CommonArgs {
    /// Logs to stdout at `RUST_LOG`, else info (debug with `-d`); colours
    /// only on a terminal, not in journald or a log file.
    pub fn init_logging(&self) {
        let default = if self.debug { "debug" } else { "info" };
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
        tracing_subscriber::fmt()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_env_filter(without_secrets(filter))
            .init();
        if self.logconfig.is_some() {
            warn!("-l (Python logging config) is ignored; set RUST_LOG instead");
        }
    }

    /// The configuration (and secure file).
    pub fn load(&self) -> Result<Config, np_config::ConfigErrors> {
        np_config::load_file(&self.config, self.secure.as_deref())
    }

    /// The configuration; on errors prints them and exits 64 (EX_USAGE),
    /// before touching ZooKeeper.
    pub fn load_or_exit(&self) -> Config {
        match self.load() {
            Ok(c) => c,
            Err(errors) => {
                eprintln!("{errors}");
                std::process::exit(64);
            }
        }
    }

    /// Writes the pid file, if asked for.
    pub fn write_pidfile(&self) -> anyhow::Result<()> {
        if let Some(pidfile) = &self.pidfile {
            std::fs::write(pidfile, format!("{}\n", std::process::id()))
                .with_context(|| format!("writing pid file {}", pidfile.display()))?;
        }
        Ok(())
    }

    /// Removes the pid file, if any.
    pub fn remove_pidfile(&self) {
        if let Some(pidfile) = &self.pidfile {
            let _ = std::fs::remove_file(pidfile);
        }
    }

    /// Connects to the configuration's ZooKeeper.
    pub async fn connect(&self, config: &Config) -> anyhow::Result<Zk> {
        if config.zookeeper.servers.is_empty() {
            anyhow::bail!("{}: no zookeeper-servers are configured", self.config.display());
        }
        Zk::connect(zk_config(&config.zookeeper, Duration::from_secs(60)))
            .await
            .context("connecting to ZooKeeper")
    }
}

/// The client settings for `zookeeper-servers`, `zookeeper-tls` and
/// `zookeeper-timeout`, giving up connecting after `connect_timeout`.
pub fn zk_config(zookeeper: &np_config::ZooKeeperConfig, connect_timeout: Duration) -> ZkConfig {
    let mut zk_config = ZkConfig::new(zookeeper.connect_string());
    zk_config.tls =
        zookeeper.tls.as_ref().map(|t| ZkTls { ca: t.ca.clone(), cert: t.cert.clone(), key: t.key.clone() });
    zk_config.session_timeout = zookeeper.timeout;
    zk_config.connect_timeout = connect_timeout;
    zk_config
}

/// What the daemon's loop should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// SIGINT or SIGTERM: stop.
    Stop,
    /// SIGHUP, or the configuration or secure file changed: load it again.
    Reload,
}

/// Signals and configuration file changes, as [`Event`]s. The signal
/// streams are made once, so a signal arriving while the loop is busy (a
/// reload) waits for the next turn instead of being lost.
pub struct Events {
    int: Signal,
    term: Signal,
    hup: Signal,
    changes: mpsc::UnboundedReceiver<()>,
    _watch: np_config::watch::FileWatch,
}

impl Events {
    /// Watches the signals and `args`' configuration and secure files.
    pub fn new(args: &CommonArgs) -> anyhow::Result<Events> {
        let mut files = vec![args.config.clone()];
        files.extend(args.secure.clone());
        let (tx, changes) = mpsc::unbounded_channel();
        let watch = np_config::watch::watch_files(&files, move || {
            let _ = tx.send(());
        })?;
        Ok(Events {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            changes,
            _watch: watch,
        })
    }

    /// The next event.
    pub async fn next(&mut self) -> Event {
        tokio::select! {
            _ = self.int.recv() => { info!("SIGINT received"); Event::Stop }
            _ = self.term.recv() => { info!("SIGTERM received"); Event::Stop }
            _ = self.hup.recv() => { info!("SIGHUP received; reloading"); Event::Reload }
            Some(()) = self.changes.recv() => {
                // Editors write in several steps: let the burst settle.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while self.changes.try_recv().is_ok() {}
                info!("configuration file changed; reloading");
                Event::Reload
            }
        }
    }
}

/// Log targets of libraries that write credentials into their debug and
/// trace events, each capped at the level where they stop doing so: the AWS
/// SDK's crates (its orchestrator logs the endpoint parameters, with the
/// access key id, at debug on every call; the resolved identity and the
/// request signer at trace; the chaos suite's security scenario found the
/// key id in both).
pub const SECRET_BEARING_TARGETS: &[(&str, &str)] = &[
    ("aws_config", "info"),
    ("aws_credential_types", "info"),
    ("aws_runtime", "info"),
    ("aws_sigv4", "info"),
    ("aws_smithy_http", "info"),
    ("aws_smithy_http_client", "info"),
    ("aws_smithy_runtime", "info"),
    ("aws_smithy_runtime_api", "info"),
    ("aws_sdk_ec2", "info"),
    ("aws_sdk_s3", "info"),
    ("aws_sdk_ebs", "info"),
    ("aws_sdk_servicequotas", "info"),
    ("aws_sdk_sts", "info"),
    ("aws_sdk_sso", "info"),
    ("aws_sdk_ssooidc", "info"),
];

/// `filter` with [`SECRET_BEARING_TARGETS`] capped, whatever `RUST_LOG` or
/// `-d` asked for: no log level shows credentials.
pub fn without_secrets(mut filter: tracing_subscriber::EnvFilter) -> tracing_subscriber::EnvFilter {
    for (target, level) in SECRET_BEARING_TARGETS {
        if let Ok(directive) = format!("{target}={level}").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_bearing_targets_stay_capped_at_any_level() {
        use tracing::level_filters::LevelFilter;
        for spec in ["trace", "debug", "aws_smithy_runtime=trace", "info,aws_config=debug"] {
            let filter = without_secrets(tracing_subscriber::EnvFilter::new(spec));
            let text = filter.to_string();
            for (target, _) in SECRET_BEARING_TARGETS {
                assert!(text.contains(&format!("{target}=info")), "{spec}: {text}");
                assert!(!text.contains(&format!("{target}=trace")), "{spec}: {text}");
                assert!(!text.contains(&format!("{target}=debug")), "{spec}: {text}");
            }
            assert!(filter.max_level_hint().unwrap_or(LevelFilter::TRACE) >= LevelFilter::INFO);
        }
    }
}
