//! `nodepool-builder`: the image builder daemon.

use clap::Parser;
use np_daemon::{CommonArgs, Event, Events};
use tracing::{info, warn};

/// NodePool Image Builder.
#[derive(Debug, Parser)]
#[command(name = "nodepool-builder", version = np_builder::VERSION)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Number of builds at once.
    #[arg(long = "build-workers", default_value_t = 1)]
    build_workers: usize,
    /// Number of uploads at once.
    #[arg(long = "upload-workers", default_value_t = 4)]
    upload_workers: usize,
    /// Serve Prometheus metrics on http://ADDRESS:PORT/metrics (e.g.
    /// 127.0.0.1:8006). Off by default: upstream's builder has no web server.
    #[arg(long = "metrics-listen", value_name = "ADDRESS:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
}

/// Reads the configuration again and hands it to the builder; a bad file is
/// reported and the running configuration kept.
async fn reload(common: &CommonArgs, builder: &np_builder::Builder) {
    match common.load() {
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
/// a driver that manages images (fake, OpenStack, AWS), with or without
/// `diskimages` (a provider whose list was emptied still needs its uploads
/// removed).
async fn image_providers(config: &np_config::Config) -> anyhow::Result<np_provider::ProviderSet> {
    let names: std::collections::BTreeSet<String> =
        config.providers.iter().filter(|p| np_drivers::manages_images(p)).map(|p| p.name.clone()).collect();
    np_drivers::build_providers_async(config, &std::collections::HashMap::new(), Some(&names)).await
}

fn main() -> anyhow::Result<()> {
    // A builder mostly waits for diskimage-builder: one thread is plenty.
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let common = &args.common;
    common.init_logging();
    let config = common.load_or_exit();
    common.write_pidfile()?;
    let zk = common.connect(&config).await?;
    let settings = np_builder::BuilderSettings {
        build_workers: args.build_workers.max(1),
        upload_workers: args.upload_workers.max(1),
        metrics_listen: args.metrics_listen,
        ..Default::default()
    };
    let providers = image_providers(&config).await?;
    let builder = np_builder::Builder::start(&config, zk.clone(), providers, settings).await?;
    // Reload when the files change (as upstream's workers do when the
    // mtimes change), or on SIGHUP.
    let mut events = Events::new(common)?;
    while events.next().await == Event::Reload {
        reload(common, &builder).await;
    }
    builder.stop().await;
    zk.close();
    common.remove_pidfile();
    Ok(())
}
