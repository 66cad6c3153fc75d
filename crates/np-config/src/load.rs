//! The loading pipeline: environment substitution, YAML parsing, the typed read of
//! every section (collecting all schema errors), diskimage inheritance, the secure
//! file merge and the semantic checks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::checks;
use crate::defaults;
use crate::diskimage::{self, RawDiskImage};
use crate::drivers::{self, Refs};
use crate::error::{ConfigError, ConfigErrors, ErrorKind, KeyPath, Location};
use crate::model::{
    Config, Label, TenantResourceLimit, WebApp, ZooKeeperConfig, ZooKeeperServer, ZooKeeperTls,
};
use crate::read::{Ctx, KeyUse, MapReader};
use crate::yaml::{self, Node, Value};

/// Replaces every `%(NAME)` whose `NAME` starts with `NODEPOOL_` and is in `env`.
pub fn substitute_env_vars(text: &str, env: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (k, v) in env {
        if k.starts_with("NODEPOOL_") {
            out = out.replace(&format!("%({k})"), v);
        }
    }
    out
}

/// The `NODEPOOL_*` variables of this process's environment.
pub fn nodepool_env() -> Vec<(String, String)> {
    std::env::vars().filter(|(k, _)| k.starts_with("NODEPOOL_")).collect()
}

/// A `zookeeper-tls` section as written: each file optional until the merge is done.
#[derive(Debug, Clone, Default)]
pub(crate) struct RawTls {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    loc: Option<Location>,
    file: String,
}

/// The main file, read but not yet checked across sections.
pub(crate) struct Parsed {
    pub(crate) config: Config,
    pub(crate) raw_diskimages: Vec<RawDiskImage>,
    pub(crate) refs: Refs,
    pub(crate) tls: Option<RawTls>,
    pub(crate) label_locs: Vec<(String, Location, KeyPath)>,
    /// Errors about the ZooKeeper servers, reported only if they stay in use.
    pub(crate) zk_deferred: Vec<ConfigError>,
}

fn parse_text(cx: &mut Ctx, text: &str, env: &[(String, String)]) -> Option<Node> {
    let text = substitute_env_vars(text, env);
    match yaml::parse(&text) {
        Ok(node) => Some(node),
        Err(e) => {
            cx.error(e.loc, &KeyPath::root(), ErrorKind::Yaml(e.message));
            None
        }
    }
}

/// Reads `zookeeper-servers`. Problems that only matter if these servers end up being
/// used (the secure file may replace them) are returned instead of reported.
fn parse_servers(cx: &mut Ctx, m: &mut MapReader<'_>) -> Option<(Vec<ZooKeeperServer>, Vec<ConfigError>)> {
    let items = m.list(cx, "zookeeper-servers")?;
    let list_path = m.path.key("zookeeper-servers");
    let list_loc = m.key_loc("zookeeper-servers");
    let mut servers = Vec::new();
    let mut deferred = Vec::new();
    let mut first_chroot: Option<Option<String>> = None;
    for (node, path) in items {
        let Some(mut s) = MapReader::new(cx, node, path.clone()) else { continue };
        // Upstream's schema lets `host` out, then its loader fails: required here.
        let host = s.req_str(cx, "host");
        let port = s.port(cx, "port").unwrap_or(defaults::ZOOKEEPER_PORT);
        let chroot = s.str(cx, "chroot").filter(|c| !c.is_empty());
        if let Some(c) = &chroot {
            if !c.starts_with('/') {
                deferred.push(ConfigError {
                    file: cx.file.clone(),
                    location: s.key_loc("chroot"),
                    path: path.key("chroot"),
                    kind: ErrorKind::InvalidValue(format!("a chroot must start with '/', found '{c}'")),
                });
            }
        }
        match &first_chroot {
            None => first_chroot = Some(chroot.clone()),
            Some(first) if *first != chroot => deferred.push(ConfigError {
                file: cx.file.clone(),
                location: list_loc,
                path: list_path.clone(),
                kind: ErrorKind::Semantic("all zookeeper-servers must use the same chroot".into()),
            }),
            Some(_) => {}
        }
        s.finish(cx);
        if let Some(host) = host {
            servers.push(ZooKeeperServer { host, port, chroot });
        }
    }
    Some((servers, deferred))
}

fn parse_tls(cx: &mut Ctx, m: &mut MapReader<'_>) -> Option<RawTls> {
    let mut t = m.map(cx, "zookeeper-tls")?;
    let tls = RawTls {
        cert: t.str(cx, "cert"),
        key: t.str(cx, "key"),
        ca: t.str(cx, "ca"),
        loc: Some(t.loc),
        file: cx.file.clone(),
    };
    t.finish(cx);
    Some(tls)
}

/// Reads the main file's every section. `None` only when the text is not a mapping.
pub(crate) fn parse_main(cx: &mut Ctx, text: &str, env: &[(String, String)]) -> Option<Parsed> {
    let root = parse_text(cx, text, env)?;
    let mut m = MapReader::new(cx, &root, KeyPath::root())?;

    let webapp = match m.map(cx, "webapp") {
        Some(mut w) => {
            let port = w.port(cx, "port").unwrap_or(defaults::WEBAPP_PORT);
            let listen_address =
                w.str(cx, "listen_address").unwrap_or_else(|| defaults::WEBAPP_LISTEN_ADDRESS.to_string());
            w.finish(cx);
            WebApp { port, listen_address }
        }
        None => WebApp::default(),
    };
    let elements_dir = m.str(cx, "elements-dir").map(PathBuf::from);
    let images_dir = m.str(cx, "images-dir").map(PathBuf::from);
    let build_log_dir = m.str(cx, "build-log-dir").map(PathBuf::from);
    let build_log_retention = m.int(cx, "build-log-retention").unwrap_or(defaults::BUILD_LOG_RETENTION);
    let (servers, zk_deferred) = parse_servers(cx, &mut m).unwrap_or_default();
    let tls = parse_tls(cx, &mut m);
    let timeout = match m.number(cx, "zookeeper-timeout") {
        Some(t) if t.is_finite() && t > 0.0 => t,
        Some(t) => {
            cx.error(
                m.key_loc("zookeeper-timeout"),
                &KeyPath::root().key("zookeeper-timeout"),
                ErrorKind::InvalidValue(format!("expected a positive number of seconds, found {t}")),
            );
            defaults::ZOOKEEPER_TIMEOUT_SECS
        }
        None => defaults::ZOOKEEPER_TIMEOUT_SECS,
    };
    let max_hold_age = m.int(cx, "max-hold-age").filter(|v| *v > 0).map(|v| Duration::from_secs(v as u64));

    let mut labels: Vec<Label> = Vec::new();
    let mut label_locs = Vec::new();
    for (node, path) in m.list(cx, "labels").unwrap_or_default() {
        let Some(mut l) = MapReader::new(cx, node, path.clone()) else { continue };
        // Upstream's schema lets `name` out, then crashes: required here.
        let name = l.req_str(cx, "name");
        let min_ready = l.int(cx, "min-ready").unwrap_or(0);
        let max_ready_age = l.uint(cx, "max-ready-age").unwrap_or(0);
        let loc = l.key_loc("name").unwrap_or(node.loc);
        l.finish(cx);
        let Some(name) = name else { continue };
        if let Some((_, first, _)) = label_locs.iter().find(|(n, _, _)| *n == name) {
            cx.error(
                Some(loc),
                &path.key("name"),
                ErrorKind::Duplicate { what: "label", name: name.clone(), first: Some(*first) },
            );
            continue;
        }
        label_locs.push((name.clone(), loc, path.clone()));
        labels.push(Label {
            name,
            min_ready: u32::try_from(min_ready.max(0)).unwrap_or(u32::MAX),
            max_ready_age: (max_ready_age > 0).then(|| Duration::from_secs(max_ready_age)),
        });
    }

    let mut raw_diskimages = Vec::new();
    for (node, path) in m.list(cx, "diskimages").unwrap_or_default() {
        if let Some(d) = diskimage::parse(cx, node, &path) {
            raw_diskimages.push(d);
        }
    }

    let mut refs = Refs::default();
    let mut providers = Vec::new();
    for (node, path) in m.list(cx, "providers").unwrap_or_default() {
        if let Some(p) = drivers::parse_provider(cx, node, &path, &mut refs) {
            providers.push(p);
        }
    }

    let mut tenant_resource_limits: Vec<TenantResourceLimit> = Vec::new();
    for (node, path) in m.list(cx, "tenant-resource-limits").unwrap_or_default() {
        let Some(mut t) = MapReader::new(cx, node, path.clone()) else { continue };
        let tenant_name = t.req_str(cx, "tenant-name");
        let mut limit = TenantResourceLimit {
            tenant_name: tenant_name.clone().unwrap_or_default(),
            max_cores: t.uint(cx, "max-cores"),
            max_servers: t.uint(cx, "max-servers"),
            max_ram: t.uint(cx, "max-ram"),
            max_volumes: t.uint(cx, "max-volumes"),
            max_volume_gb: t.uint(cx, "max-volume-gb"),
            other: Default::default(),
        };
        // Any other `<resource>: <int>` key is a limit (upstream's `str: int`).
        t.declare(&["*"]);
        for (key, vnode, _) in t.take_unused() {
            match &vnode.value {
                Value::Int(i) if *i >= 0 => {
                    limit.other.insert(key.to_string(), *i as u64);
                }
                Value::Int(i) => cx.error(
                    Some(vnode.loc),
                    &path.key(key),
                    ErrorKind::InvalidValue(format!("expected a non-negative integer, found {i}")),
                ),
                _ => cx.wrong_type(vnode, &path.key(key), "an integer"),
            }
        }
        let loc = t.key_loc("tenant-name").unwrap_or(node.loc);
        t.finish(cx);
        if tenant_name.is_none() {
            continue;
        }
        if tenant_resource_limits.iter().any(|x| x.tenant_name == limit.tenant_name) {
            cx.error(
                Some(loc),
                &path.key("tenant-name"),
                ErrorKind::Duplicate { what: "tenant", name: limit.tenant_name.clone(), first: None },
            );
            continue;
        }
        tenant_resource_limits.push(limit);
    }

    m.finish(cx);

    let diskimages = diskimage::resolve(cx, &raw_diskimages);
    let config = Config {
        zookeeper: ZooKeeperConfig { servers, tls: None, timeout: Duration::from_secs_f64(timeout) },
        webapp,
        elements_dir,
        images_dir,
        build_log_dir,
        build_log_retention,
        max_hold_age,
        labels,
        diskimages,
        providers,
        tenant_resource_limits,
    };
    Some(Parsed { config, raw_diskimages, refs, tls, label_locs, zk_deferred })
}

/// Reads a secure file and merges it into `parsed` as upstream does: non-empty
/// `zookeeper-servers` replace the main file's, `zookeeper-tls` replaces all three
/// files, and `diskimages[].env-vars` are merged into the named images (secure wins).
/// Unlike upstream, unknown keys are errors.
pub(crate) fn merge_secure(cx: &mut Ctx, parsed: &mut Parsed, text: &str, env: &[(String, String)]) {
    let Some(root) = parse_text(cx, text, env) else { return };
    if root.value == Value::Null {
        return;
    }
    let Some(mut m) = MapReader::new(cx, &root, KeyPath::root()) else { return };
    if let Some((servers, deferred)) = parse_servers(cx, &mut m) {
        if !servers.is_empty() {
            parsed.config.zookeeper.servers = servers;
            parsed.zk_deferred = deferred;
        }
    }
    if let Some(tls) = parse_tls(cx, &mut m) {
        parsed.tls = Some(tls);
    }
    for (node, path) in m.list(cx, "diskimages").unwrap_or_default() {
        let Some(mut d) = MapReader::new(cx, node, path.clone()) else { continue };
        let name = d.req_str(cx, "name");
        let env_vars = d.str_map(cx, "env-vars").unwrap_or_default();
        let loc = d.key_loc("name").unwrap_or(node.loc);
        d.finish(cx);
        let Some(name) = name else { continue };
        match parsed.config.diskimages.iter_mut().find(|x| x.name == name) {
            Some(image) => image.env_vars.extend(env_vars),
            None => cx.error(
                Some(loc),
                &path.key("name"),
                ErrorKind::Undefined(format!(
                    "diskimage '{name}' is not a (non-abstract) diskimage of the main file"
                )),
            ),
        }
    }
    m.finish(cx);
}

/// Final TLS check once the secure file (if any) is merged.
fn finish_tls(cx: &mut Ctx, parsed: &mut Parsed) {
    let Some(t) = parsed.tls.take() else { return };
    let path = KeyPath::root().key("zookeeper-tls");
    let mut missing = Vec::new();
    for (k, v) in [("ca", &t.ca), ("cert", &t.cert), ("key", &t.key)] {
        if v.is_none() {
            missing.push(k);
        }
    }
    if missing.is_empty() {
        parsed.config.zookeeper.tls = Some(ZooKeeperTls {
            ca: PathBuf::from(t.ca.unwrap_or_default()),
            cert: PathBuf::from(t.cert.unwrap_or_default()),
            key: PathBuf::from(t.key.unwrap_or_default()),
        });
    } else {
        let file = std::mem::replace(&mut cx.file, t.file.clone());
        for k in missing {
            cx.error(
                t.loc,
                &path,
                ErrorKind::Semantic(format!(
                    "missing required key '{k}' (zookeeper-tls needs ca, cert and key; \
                     a partial section would silently connect without TLS upstream)"
                )),
            );
        }
        cx.file = file;
    }
}

/// Reads `main` (and `secure`) with every reader recording the keys it takes,
/// whatever errors the files have: the schema as the code defines it.
pub(crate) fn record_schema(main: &str, secure: Option<&str>) -> BTreeMap<(String, String), KeyUse> {
    let mut cx = Ctx::new("main");
    cx.record = Some(BTreeMap::new());
    if let Some(mut parsed) = parse_main(&mut cx, main, &[]) {
        checks::check(&mut cx, &mut parsed);
        if let Some(secure) = secure {
            cx.file_kind = Some("secure");
            merge_secure(&mut cx, &mut parsed, secure, &[]);
        }
    }
    cx.record.unwrap_or_default()
}

/// Runs the whole pipeline on already-read texts.
pub(crate) fn load(
    main: (&str, &str),
    secure: Option<(&str, &str)>,
    env: &[(String, String)],
) -> Result<Config, ConfigErrors> {
    let (text, file_name) = main;
    let mut cx = Ctx::new(file_name);
    let parsed = parse_main(&mut cx, text, env);
    let Some(mut parsed) = parsed else {
        if cx.errors.is_empty() {
            cx.error(None, &KeyPath::root(), ErrorKind::Semantic("empty configuration".into()));
        }
        return Err(ConfigErrors(cx.errors));
    };
    checks::check(&mut cx, &mut parsed);
    let mut errors = std::mem::take(&mut cx.errors);
    if let Some((stext, sname)) = secure {
        let mut scx = Ctx::new(sname);
        merge_secure(&mut scx, &mut parsed, stext, env);
        errors.append(&mut scx.errors);
    }
    finish_tls(&mut cx, &mut parsed);
    errors.append(&mut cx.errors);
    errors.append(&mut parsed.zk_deferred);
    // Main file first, then the secure file; within a file, in text order.
    errors.sort_by_key(|e| {
        let loc = e.location.map_or((usize::MAX, usize::MAX), |l| (l.line, l.column));
        (e.file != file_name, loc)
    });
    if errors.is_empty() {
        Ok(parsed.config)
    } else {
        Err(ConfigErrors(errors))
    }
}
