//! `nodepool-builder`: the image builder daemon.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use np_zk::{Zk, ZkConfig, ZkTls};
use tracing::{info, warn};

/// NodePool Image Builder.
#[derive(Debug, Parser)]
#[command(name = "nodepool-builder", version = np_builder::VERSION)]
struct Args {
    /// Path to the config file.
    #[arg(short = 'c', default_value = "/etc/nodepool/nodepool.yaml")]
    config: PathBuf,
    /// Path to the secure config file.
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
    /// Number of builds at once.
    #[arg(long = "build-workers", default_value_t = 1)]
    build_workers: usize,
    /// Number of uploads at once.
    #[arg(long = "upload-workers", default_value_t = 4)]
    upload_workers: usize,
}

/// Reads the configuration again and hands it to the builder; a bad file is
/// reported and the running configuration kept.
async fn reload(args: &Args, builder: &np_builder::Builder) {
    match np_config::load_file(&args.config, args.secure.as_deref()) {
        Ok(new) => match image_providers(&new).await {
            Ok(providers) => {
                info!("configuration reloaded");
                builder.reconfigure(&new, providers);
            }
            Err(e) => warn!("configuration not reloaded: {e:#}"),
        },
        Err(errors) => warn!("configuration not reloaded: {errors}"),
    }
}

/// The providers the builder uploads to and deletes from: every provider of
/// a driver that manages images (fake, AWS), with or without `diskimages`
/// (a provider whose list was emptied still needs its uploads removed).
/// OpenStack providers are skipped with a warning: builds go on, uploads to
/// them are not supported yet.
async fn image_providers(config: &np_config::Config) -> anyhow::Result<np_provider::ProviderSet> {
    let mut names = std::collections::BTreeSet::new();
    for p in &config.providers {
        match &p.driver {
            np_config::ProviderDriver::Fake(_) | np_config::ProviderDriver::Aws(_) => {
                names.insert(p.name.clone());
            }
            np_config::ProviderDriver::OpenStack(_) if !p.diskimage_names().is_empty() => {
                warn!(provider = %p.name, "uploads to OpenStack providers are not supported yet; not uploading there");
            }
            _ => {}
        }
    }
    np_drivers::build_providers_async(config, &std::collections::HashMap::new(), Some(&names)).await
}

fn main() -> anyhow::Result<()> {
    // A builder mostly waits for diskimage-builder: one thread is plenty.
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let default = if args.debug { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
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
    if config.zookeeper.servers.is_empty() {
        anyhow::bail!("{}: no zookeeper-servers are configured", args.config.display());
    }
    if let Some(pidfile) = &args.pidfile {
        std::fs::write(pidfile, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing pid file {}", pidfile.display()))?;
    }
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
    let settings = np_builder::BuilderSettings {
        build_workers: args.build_workers.max(1),
        upload_workers: args.upload_workers.max(1),
        ..Default::default()
    };
    let providers = image_providers(&config).await?;
    let builder = np_builder::Builder::start(&config, zk.clone(), providers, settings).await?;
    // Signal streams made once: a signal arriving while the loop is busy
    // (reloading) is kept for the next turn instead of being lost.
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // Reload when the files change (as upstream's workers do when the
    // mtimes change), or on SIGHUP.
    let mut files = vec![args.config.clone()];
    files.extend(args.secure.clone());
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let _watch = np_config::watch::watch_files(&files, move || {
        let _ = tx.send(());
    })?;
    loop {
        tokio::select! {
            _ = int.recv() => { info!("SIGINT received"); break; }
            _ = term.recv() => { info!("SIGTERM received"); break; }
            _ = hup.recv() => reload(&args, &builder).await,
            Some(()) = changes.recv() => {
                // Editors write in several steps: let the burst settle.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while changes.try_recv().is_ok() {}
                reload(&args, &builder).await;
            }
        }
    }
    builder.stop().await;
    zk.close();
    if let Some(pidfile) = &args.pidfile {
        let _ = std::fs::remove_file(pidfile);
    }
    Ok(())
}
