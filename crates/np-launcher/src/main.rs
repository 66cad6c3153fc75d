//! `nodepool-launcher`: the launcher daemon.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use np_zk::{Zk, ZkConfig, ZkTls};
use tracing::{info, warn};

/// Fulfils Zuul's node requests from ZooKeeper.
#[derive(Debug, Parser)]
#[command(name = "nodepool-launcher", version = np_launcher::VERSION)]
struct Args {
    /// Path to the config file.
    #[arg(short = 'c', default_value = "/etc/nodepool/nodepool.yaml")]
    config: PathBuf,
    /// Path to the secure file.
    #[arg(short = 's')]
    secure: Option<PathBuf>,
    /// Path to a Python logging config (not supported: use RUST_LOG).
    #[arg(short = 'l')]
    logconfig: Option<PathBuf>,
    /// Run in the foreground (always the case; kept for compatibility).
    #[arg(short = 'f')]
    foreground: bool,
    /// Debug logging.
    #[arg(short = 'd')]
    debug: bool,
    /// Write the process id to this file.
    #[arg(short = 'p')]
    pidfile: Option<PathBuf>,
    /// Do not start the web app.
    #[arg(long = "no-webapp")]
    no_webapp: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let default = if args.debug { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
    if args.logconfig.is_some() {
        warn!("-l (Python logging config) is ignored; set RUST_LOG instead");
    }
    let config = match np_config::load_file(&args.config, args.secure.as_deref()) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            std::process::exit(64); // EX_USAGE, before touching ZooKeeper
        }
    };
    if let Some(pidfile) = &args.pidfile {
        std::fs::write(pidfile, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing pid file {}", pidfile.display()))?;
    }
    let providers = np_launcher::launcher::build_providers(&config, &HashMap::new())?;
    let zk_config = ZkConfig {
        hosts: config.zookeeper.connect_string(),
        tls: config.zookeeper.tls.as_ref().map(|t| ZkTls {
            ca: t.ca.clone(),
            cert: t.cert.clone(),
            key: t.key.clone(),
        }),
        session_timeout: config.zookeeper.timeout,
        connect_timeout: Duration::from_secs(60),
    };
    let zk = Zk::connect(zk_config).await.context("connecting to ZooKeeper")?;
    let launcher = np_launcher::Launcher::start(&config, zk.clone(), providers).await?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        _ = term.recv() => info!("SIGTERM received"),
    }
    launcher.stop().await;
    zk.close();
    if let Some(pidfile) = &args.pidfile {
        let _ = std::fs::remove_file(pidfile);
    }
    Ok(())
}
