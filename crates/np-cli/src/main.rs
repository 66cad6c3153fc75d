//! `nodepool`: the operator command line of nodepool-rs, a drop-in for Python
//! Nodepool 11's `nodepool` (spec config-cli-builder §3.2).
//!
//! Same options, subcommands, table layouts and messages as upstream, so
//! scripts that parse its output keep working; in addition every listing takes
//! `--format json`, ZooKeeper connection attempts are bounded
//! (`--zk-connect-timeout`, default 10 s) and failures are one-line errors
//! with a non-zero exit code instead of tracebacks. See `doc/operation.md`.
//!
//! Exit codes: 0 success; 1 failure (also no subcommand, an invalid
//! configuration, an unknown node id for `hold`/`delete`, a node locked by
//! someone else, ZooKeeper unreachable); 2 usage error.

mod cli;
mod commands;
mod pyfmt;
mod report;
mod table;
mod validate;
mod zkread;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser};
use np_core::NodeState;

use cli::{Cli, Command};
use commands::Ctx;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("Nodepool version: {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command.as_ref() else {
        // Upstream prints the full help to stdout and returns 1.
        let _ = Cli::command().print_help();
        println!();
        return ExitCode::from(1);
    };
    if let Err(e) = setup_logging(&cli) {
        eprintln!("nodepool: error: {e:#}");
        return ExitCode::from(1);
    }
    if matches!(command, Command::ConfigValidate) {
        return ExitCode::from(validate::run(&cli.config));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nodepool: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(&cli, command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("nodepool: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `--debug` wins over `-l`; logs go to stderr (tables go to stdout).
fn setup_logging(cli: &Cli) -> Result<()> {
    let filter = if cli.debug {
        "debug"
    } else {
        if let Some(path) = &cli.logconfig {
            // Python logging configs cannot be applied here; like upstream,
            // a missing file is an error, an existing one selects INFO.
            if !path.is_file() {
                bail!("Unable to read logging config file at {}", path.display());
            }
        }
        "info,zookeeper_client=warn,np_zk=warn"
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(np_daemon::without_secrets(tracing_subscriber::EnvFilter::new(filter)))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(true)
        .try_init();
    Ok(())
}

async fn run(cli: &Cli, command: &Command) -> Result<u8> {
    let config = np_config::load_file(&cli.config, cli.secure.as_deref())
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let timeout = Duration::try_from_secs_f64(cli.zk_connect_timeout)
        .context("--zk-connect-timeout must be a non-negative number of seconds")?;
    let zk = commands::connect(&config, timeout).await?;
    let ctx = Ctx { zk, config, format: cli.format };
    let result = dispatch(&ctx, cli, command).await;
    ctx.zk.close();
    result.map(|code| u8::try_from(code).unwrap_or(1))
}

async fn dispatch(ctx: &Ctx, cli: &Cli, command: &Command) -> Result<i32> {
    match command {
        Command::List { detail } => commands::list(ctx, *detail).await,
        Command::ImageList => commands::image_list(ctx).await,
        Command::DibImageList => commands::dib_image_list(ctx).await,
        Command::ImageStatus => commands::image_status(ctx).await,
        Command::ImageBuild { image } => commands::image_build(ctx, image).await,
        Command::AlienImageList { provider } => commands::alien_image_list(ctx, provider.as_deref()).await,
        Command::Delete { id, now } => commands::set_node_state(ctx, id, NodeState::Deleting, *now).await,
        Command::Hold { id } => commands::set_node_state(ctx, id, NodeState::Hold, false).await,
        Command::ImageDelete { provider, image, upload_id, build_id } => {
            commands::image_delete(ctx, provider, image, build_id, upload_id).await
        }
        Command::DibImageDelete { id } => commands::dib_image_delete(ctx, id).await,
        Command::ConfigValidate => Ok(i32::from(validate::run(&cli.config))),
        Command::RequestList => commands::request_list(ctx).await,
        Command::Info { provider } => commands::info(ctx, provider).await,
        Command::Erase { provider, force } => commands::erase(ctx, provider, *force).await,
        Command::ImagePause { image } => commands::image_pause(ctx, image, true).await,
        Command::ImageUnpause { image } => commands::image_pause(ctx, image, false).await,
        Command::ExportImageData { path } => commands::export_image_data(ctx, path).await,
        Command::ImportImageData { path } => commands::import_image_data(ctx, path).await,
    }
}
