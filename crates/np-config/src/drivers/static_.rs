//! The `static` driver: pools of pre-existing hosts.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::defaults;
use crate::drivers::{common_pool, CommonPool, Refs};
use crate::error::{ErrorKind, KeyPath};
use crate::model::Dict;
use crate::read::{Ctx, MapReader};
use crate::yaml::Node;

/// Static provider settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticProvider {
    /// `pools`.
    pub pools: Vec<StaticPool>,
}

impl StaticProvider {
    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&StaticPool> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// A static pool.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticPool {
    /// `name`.
    pub name: String,
    /// `max-servers`; `None` = unlimited.
    pub max_servers: Option<u64>,
    /// `node-attributes`.
    pub node_attributes: Option<Dict>,
    /// `priority`.
    pub priority: Option<i64>,
    /// `nodes`, in file order.
    pub nodes: Vec<StaticNode>,
}

impl StaticPool {
    /// Every label any node of the pool offers.
    pub fn labels(&self) -> BTreeSet<String> {
        self.nodes.iter().flat_map(|n| n.labels.iter().cloned()).collect()
    }
}

/// A `nodes` entry: one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNode {
    /// `name`: host name or IP address.
    pub name: String,
    /// `labels` (a string in the file is split on whitespace).
    pub labels: Vec<String>,
    /// `username`, default `zuul`.
    pub username: String,
    /// `timeout` for ssh-keyscan, default 5 s.
    pub timeout: Duration,
    /// `host-key-checking`, default true.
    pub host_key_checking: bool,
    /// `host-key` (string or list).
    pub host_keys: Vec<String>,
    /// `connection-type`, default `ssh`.
    pub connection_type: String,
    /// `connection-port`, default 22 (whatever the connection type, as upstream).
    pub connection_port: u16,
    /// `shell-type`.
    pub shell_type: Option<String>,
    /// `max-parallel-jobs`, default 1.
    pub max_parallel_jobs: u32,
    /// `python-path`, default `auto`.
    pub python_path: String,
}

/// Reads the static-specific provider keys.
pub(crate) fn parse(
    cx: &mut Ctx,
    m: &mut MapReader<'_>,
    provider: &str,
    refs: &mut Refs,
) -> Option<StaticProvider> {
    let mut pools = Vec::new();
    for (node, path) in m.list(cx, "pools").unwrap_or_default() {
        if let Some(p) = parse_pool(cx, node, &path, provider, refs) {
            pools.push(p);
        }
    }
    Some(StaticProvider { pools })
}

fn parse_pool(
    cx: &mut Ctx,
    node: &Node,
    path: &KeyPath,
    provider: &str,
    refs: &mut Refs,
) -> Option<StaticPool> {
    let mut p = MapReader::new(cx, node, path.clone())?;
    let CommonPool { name, max_servers, node_attributes, priority } = common_pool(cx, &mut p, provider, refs);
    let mut nodes = Vec::new();
    for (nnode, npath) in p.list(cx, "nodes").unwrap_or_default() {
        let Some(mut n) = MapReader::new(cx, nnode, npath.clone()) else { continue };
        let host = n.req_str(cx, "name");
        if !n.has("labels") {
            n.missing(cx, "labels");
        }
        let labels_loc = n.key_loc("labels");
        let labels: Vec<String> = n
            .str_or_list(cx, "labels")
            .unwrap_or_default()
            .iter()
            .flat_map(|s| s.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .collect();
        let username = n.str(cx, "username").unwrap_or_else(|| defaults::USERNAME.into());
        let timeout = n.uint(cx, "timeout").unwrap_or(defaults::STATIC_TIMEOUT_SECS);
        let host_key_checking = n.bool(cx, "host-key-checking").unwrap_or(true);
        let host_keys = n.str_or_list(cx, "host-key").unwrap_or_default();
        let connection_port = n.port(cx, "connection-port").unwrap_or(22);
        let connection_type =
            n.str(cx, "connection-type").unwrap_or_else(|| defaults::CONNECTION_TYPE.into());
        let shell_type = n.str(cx, "shell-type");
        let max_parallel_jobs = crate::drivers::u32_of(cx, &mut n, "max-parallel-jobs")
            .unwrap_or(defaults::STATIC_MAX_PARALLEL_JOBS);
        if max_parallel_jobs == 0 {
            cx.error(
                n.key_loc("max-parallel-jobs"),
                &npath.key("max-parallel-jobs"),
                ErrorKind::InvalidValue("max-parallel-jobs must be at least 1".into()),
            );
        }
        let python_path = n.str(cx, "python-path").unwrap_or_else(|| defaults::PYTHON_PATH.into());
        n.finish(cx);
        for (i, l) in labels.iter().enumerate() {
            let _ = i;
            refs.label_use(provider, l, labels_loc, npath.key("labels"));
        }
        if let Some(host) = host {
            nodes.push(StaticNode {
                name: host,
                labels,
                username,
                timeout: Duration::from_secs(timeout),
                host_key_checking,
                host_keys,
                connection_type,
                connection_port,
                shell_type,
                max_parallel_jobs,
                python_path,
            });
        }
    }
    p.finish(cx);
    Some(StaticPool { name: name?, max_servers, node_attributes, priority, nodes })
}
