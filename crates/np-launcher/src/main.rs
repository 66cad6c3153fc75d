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

/// Reports changes to the configuration files on a channel.
fn watch_files(
    files: &[PathBuf],
) -> anyhow::Result<(np_config::watch::FileWatch, tokio::sync::mpsc::UnboundedReceiver<()>)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = np_config::watch::watch_files(files, move || {
        let _ = tx.send(());
    })?;
    Ok((watch, rx))
}

/// mimalloc: the launcher's work is many small, short-lived allocations
/// (JSON records, ZooKeeper packets); it costs noticeably less CPU than glibc's
/// allocator here (see doc/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The async runtime: one thread by default. The launcher's work is short
/// reactions to ZooKeeper events; on one thread no task wake-up has to cross
/// threads, which takes a quarter off its CPU per request (doc/benchmarks.md).
/// `NODEPOOL_RUNTIME_THREADS=N` (N > 1) selects a multi-threaded runtime for
/// launchers with very many providers.
fn main() -> anyhow::Result<()> {
    let threads = match std::env::var("NODEPOOL_RUNTIME_THREADS") {
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .with_context(|| format!("NODEPOOL_RUNTIME_THREADS={v:?} is not a positive number"))?,
        Err(_) => 1,
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    };
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let default = if args.debug { "debug" } else { "info" };
    tracing_subscriber::fmt()
        // Colours only on a terminal, not in journald or a log file.
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
    if let Some(pidfile) = &args.pidfile {
        std::fs::write(pidfile, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing pid file {}", pidfile.display()))?;
    }
    let providers = np_launcher::launcher::build_providers_async(&config, &HashMap::new(), None).await?;
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
    let mut launcher = np_launcher::Launcher::start(&config, zk.clone(), providers).await?;
    if !args.no_webapp {
        launcher.start_webapp().await?;
    }

    let mut files = vec![args.config.clone()];
    files.extend(args.secure.clone());
    let (_watcher, mut changes) = watch_files(&files)?;
    // Signal streams made once: a signal arriving while the loop is busy
    // (reloading) is kept for the next turn instead of being lost.
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = int.recv() => { info!("SIGINT received"); break; }
            _ = term.recv() => { info!("SIGTERM received"); break; }
            Some(()) = changes.recv() => {
                // Editors write in several steps: let the burst settle.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while changes.try_recv().is_ok() {}
                info!("configuration file changed; reloading");
                match np_config::load_file(&args.config, args.secure.as_deref()) {
                    Ok(new) => {
                        if new.zookeeper != launcher.config().zookeeper {
                            warn!("zookeeper settings changed; restart the launcher to apply them");
                        }
                        if let Err(e) = launcher.reload(&new).await {
                            warn!(error = %e, "configuration reload failed; keeping the old one");
                        }
                    }
                    Err(errors) => warn!("new configuration is invalid, keeping the old one:\n{errors}"),
                }
            }
        }
    }
    launcher.stop().await;
    zk.close();
    if let Some(pidfile) = &args.pidfile {
        let _ = std::fs::remove_file(pidfile);
    }
    Ok(())
}
