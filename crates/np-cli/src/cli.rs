//! The command line: the same options, subcommands and positional arguments as
//! Python Nodepool 11's `nodepool` (spec config-cli-builder §3.2), plus the
//! additions `--format json` and `--zk-connect-timeout`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Output format of the listing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// PrettyTable text, as the Python CLI prints it.
    #[default]
    Table,
    /// One JSON document (a list of objects) on one line.
    Json,
}

/// `nodepool`: the operator command line.
#[derive(Debug, Parser)]
#[command(name = "nodepool", about = "Node pool.", disable_version_flag = true)]
pub struct Cli {
    /// path to log config file
    #[arg(short = 'l', value_name = "LOGCONFIG")]
    pub logconfig: Option<PathBuf>,
    /// show nodepool version
    #[arg(long)]
    pub version: bool,
    /// path to config file
    #[arg(short = 'c', value_name = "CONFIG", default_value = "/etc/nodepool/nodepool.yaml")]
    pub config: PathBuf,
    /// path to secure file
    #[arg(short = 's', value_name = "SECURE")]
    pub secure: Option<PathBuf>,
    /// show DEBUG level logging
    #[arg(long)]
    pub debug: bool,
    /// output format of listings (table: as the Python CLI; json: for scripts)
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    pub format: Format,
    /// give up connecting to ZooKeeper after this many seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, global = true)]
    pub zk_connect_timeout: f64,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands, in upstream's order.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// list nodes
    List {
        /// Output detailed node info
        #[arg(long)]
        detail: bool,
    },
    /// list images from providers
    ImageList,
    /// list images built with diskimage-builder
    DibImageList,
    /// list image status
    ImageStatus,
    /// build image using diskimage-builder
    ImageBuild {
        /// image name
        image: String,
    },
    /// list images not accounted for by nodepool
    AlienImageList {
        /// provider name
        provider: Option<String>,
    },
    /// place a node in the DELETE state
    Delete {
        /// node id
        id: String,
        /// delete the node in the foreground
        #[arg(long)]
        now: bool,
    },
    /// place a node in the HOLD state e.g. for running maintenance tasks
    Hold {
        /// node id
        id: String,
    },
    /// delete an image
    ImageDelete {
        /// provider name
        #[arg(long)]
        provider: String,
        /// image name
        #[arg(long)]
        image: String,
        /// image upload id
        #[arg(long = "upload-id")]
        upload_id: String,
        /// image build id
        #[arg(long = "build-id")]
        build_id: String,
    },
    /// Delete a dib built image from disk along with all cloud uploads of this image
    DibImageDelete {
        /// dib image id
        id: String,
    },
    /// Validate configuration file
    ConfigValidate,
    /// list the current node requests
    RequestList,
    /// Show provider data from zookeeper
    Info {
        /// Provider name
        #[arg(value_name = "PROVIDER")]
        provider: String,
    },
    /// Erase provider data from zookeeper
    Erase {
        /// Provider name
        #[arg(value_name = "PROVIDER")]
        provider: String,
        /// Bypass the warning prompt
        #[arg(long)]
        force: bool,
    },
    /// pause an image
    ImagePause {
        /// image name
        image: String,
    },
    /// unpause an image
    ImageUnpause {
        /// image name
        image: String,
    },
    /// Export image data from ZooKeeper
    ExportImageData {
        /// Export file path
        path: PathBuf,
    },
    /// Import image data to ZooKeeper
    ImportImageData {
        /// Import file path
        path: PathBuf,
    },
}
