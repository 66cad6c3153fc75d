//! `nodepool-launcher`: the launcher daemon.

use std::collections::HashMap;

use anyhow::Context;
use clap::Parser;
use np_daemon::{CommonArgs, Event, Events};
use tracing::warn;

/// Fulfils Zuul's node requests from ZooKeeper.
#[derive(Debug, Parser)]
#[command(name = "nodepool-launcher", version = np_launcher::VERSION)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Do not start the web app.
    #[arg(long = "no-webapp")]
    no_webapp: bool,
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

/// `NODEPOOL_MAINTENANCE_INTERVAL=S`: seconds between the maintenance
/// passes (lost requests, leaked instances, stale locks; default 60 s, as
/// upstream). For test and chaos tooling that must not wait a minute per
/// leak check; production keeps the default.
fn maintenance_interval() -> anyhow::Result<Option<std::time::Duration>> {
    match std::env::var("NODEPOOL_MAINTENANCE_INTERVAL") {
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Some(std::time::Duration::from_secs_f64(s)))
            .with_context(|| {
                format!("NODEPOOL_MAINTENANCE_INTERVAL={v:?} is not a positive number of seconds")
            }),
        Err(_) => Ok(None),
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let common = &args.common;
    common.init_logging();
    let config = common.load_or_exit();
    common.write_pidfile()?;
    let providers = np_launcher::launcher::build_providers_async(&config, &HashMap::new(), None).await?;
    let zk = common.connect(&config).await?;
    let mut launcher =
        np_launcher::Launcher::start_with(&config, zk.clone(), providers, maintenance_interval()?).await?;
    if !args.no_webapp {
        launcher.start_webapp().await?;
    }
    let mut events = Events::new(common)?;
    while events.next().await == Event::Reload {
        match common.load() {
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
    launcher.stop().await;
    zk.close();
    common.remove_pidfile();
    Ok(())
}
