//! Top-level `diskimages`: reading entries and resolving `parent`/`abstract` inheritance.
//!
//! Inheritance follows upstream exactly: the chain is applied root first, then the
//! image itself; `elements` are appended, `env-vars` are merged (child wins),
//! `formats`/`keep-formats` replace when non-empty, `delete-after-upload` replaces when
//! given, `metadata` is always replaced (not inherited), and every other value replaces
//! only when it is "truthy" (so a child cannot set `pause: false` or `rebuild-age: 0`
//! against its parent). Unlike upstream, a parent cycle is reported instead of
//! recursing forever.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use crate::defaults;
use crate::error::{ErrorKind, KeyPath, Location};
use crate::model::{Dict, DiskImage};
use crate::read::{Ctx, MapReader};
use crate::yaml::{Node, Value};

/// One `diskimages` entry as written.
#[derive(Debug, Clone)]
pub(crate) struct RawDiskImage {
    pub(crate) name: String,
    pub(crate) is_abstract: bool,
    pub(crate) parent: Option<String>,
    build_timeout: Option<u64>,
    dib_cmd: Option<String>,
    elements: Vec<String>,
    env_vars: BTreeMap<String, String>,
    formats: Vec<String>,
    keep_formats: Vec<String>,
    delete_after_upload: Option<bool>,
    pause: bool,
    python_path: Option<String>,
    shell_type: Option<String>,
    rebuild_age: Option<u64>,
    release: Option<String>,
    username: Option<String>,
    metadata: Dict,
    pub(crate) loc: Location,
    pub(crate) path: KeyPath,
    parent_loc: Option<Location>,
}

/// Reads one `diskimages` entry.
pub(crate) fn parse(cx: &mut Ctx, node: &Node, path: &KeyPath) -> Option<RawDiskImage> {
    let mut m = MapReader::new(cx, node, path.clone())?;
    let name = m.req_str(cx, "name");
    let is_abstract = m.bool(cx, "abstract").unwrap_or(false);
    let dib_cmd = m.str(cx, "dib-cmd");
    let pause = m.bool(cx, "pause").unwrap_or(false);
    let elements = m.str_list(cx, "elements").unwrap_or_default();
    let formats = m.str_list(cx, "formats").unwrap_or_default();
    let keep_formats = m.str_list(cx, "keep-formats").unwrap_or_default();
    let delete_after_upload = m.bool(cx, "delete-after-upload");
    let parent = m.str(cx, "parent");
    let release = match m.node("release") {
        None => None,
        Some(n) => match &n.value {
            Value::Str(s) => Some(s.clone()),
            // Upstream ignores falsy values, and 0 is falsy.
            Value::Int(0) => None,
            Value::Int(i) => Some(i.to_string()),
            _ => {
                cx.wrong_type(n, &path.key("release"), "a string or an integer");
                None
            }
        },
    };
    let rebuild_age = m.uint(cx, "rebuild-age");
    let env_vars = m.str_map(cx, "env-vars").unwrap_or_default();
    let username = m.str(cx, "username");
    let python_path = m.str(cx, "python-path");
    let build_timeout = m.uint(cx, "build-timeout");
    let metadata = m.dict(cx, "metadata").unwrap_or_default();
    // Rejected by upstream's validator but read by its loader and documented: accepted.
    let shell_type = m.str(cx, "shell-type");
    let loc = m.key_loc("name").unwrap_or(node.loc);
    let parent_loc = m.key_loc("parent");
    m.finish(cx);
    Some(RawDiskImage {
        name: name?,
        is_abstract,
        parent,
        build_timeout,
        dib_cmd,
        elements,
        env_vars,
        formats,
        keep_formats,
        delete_after_upload,
        pause,
        python_path,
        shell_type,
        rebuild_age,
        release,
        username,
        metadata,
        loc,
        path: path.clone(),
        parent_loc,
    })
}

fn empty(name: &str, parent: Option<String>) -> DiskImage {
    DiskImage {
        name: name.to_string(),
        parent,
        build_timeout: Duration::from_secs(defaults::DISKIMAGE_BUILD_TIMEOUT_SECS),
        dib_cmd: defaults::DISKIMAGE_DIB_CMD.to_string(),
        elements: Vec::new(),
        env_vars: BTreeMap::new(),
        formats: BTreeSet::new(),
        keep_formats: BTreeSet::new(),
        delete_after_upload: false,
        pause: false,
        python_path: defaults::PYTHON_PATH.to_string(),
        shell_type: None,
        rebuild_age: Duration::from_secs(defaults::DISKIMAGE_REBUILD_AGE_SECS),
        release: String::new(),
        username: defaults::USERNAME.to_string(),
        metadata: Dict::new(),
    }
}

fn apply(d: &mut DiskImage, raw: &RawDiskImage) {
    if let Some(v) = raw.build_timeout.filter(|v| *v > 0) {
        d.build_timeout = Duration::from_secs(v);
    }
    if let Some(v) = raw.dib_cmd.as_ref().filter(|v| !v.is_empty()) {
        d.dib_cmd = v.clone();
    }
    d.elements.extend(raw.elements.iter().cloned());
    d.env_vars.extend(raw.env_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    if !raw.formats.is_empty() {
        d.formats = raw.formats.iter().cloned().collect();
    }
    if !raw.keep_formats.is_empty() {
        d.keep_formats = raw.keep_formats.iter().cloned().collect();
    }
    if let Some(v) = raw.delete_after_upload {
        d.delete_after_upload = v;
    }
    if raw.pause {
        d.pause = true;
    }
    if let Some(v) = raw.python_path.as_ref().filter(|v| !v.is_empty()) {
        d.python_path = v.clone();
    }
    if let Some(v) = raw.shell_type.as_ref().filter(|v| !v.is_empty()) {
        d.shell_type = Some(v.clone());
    }
    if let Some(v) = raw.rebuild_age.filter(|v| *v > 0) {
        d.rebuild_age = Duration::from_secs(v);
    }
    if let Some(v) = raw.release.as_ref().filter(|v| !v.is_empty()) {
        d.release = v.clone();
    }
    if let Some(v) = raw.username.as_ref().filter(|v| !v.is_empty()) {
        d.username = v.clone();
    }
    d.metadata = raw.metadata.clone();
}

/// Checks names and parents, and resolves inheritance for every non-abstract image.
pub(crate) fn resolve(cx: &mut Ctx, raws: &[RawDiskImage]) -> Vec<DiskImage> {
    let mut by_name: HashMap<&str, &RawDiskImage> = HashMap::new();
    for raw in raws {
        if let Some(first) = by_name.get(raw.name.as_str()) {
            cx.error(
                Some(raw.loc),
                &raw.path.key("name"),
                ErrorKind::Duplicate { what: "diskimage", name: raw.name.clone(), first: Some(first.loc) },
            );
        } else {
            by_name.insert(&raw.name, raw);
        }
    }
    let mut out = Vec::new();
    let mut bad_chain = BTreeSet::new();
    for raw in raws {
        // Walk up the chain, detecting missing parents and cycles.
        let mut chain: Vec<&RawDiskImage> = Vec::new();
        let mut cur = raw;
        let mut ok = true;
        while let Some(parent) = &cur.parent {
            match by_name.get(parent.as_str()) {
                None => {
                    if cur.name == raw.name {
                        cx.error(
                            cur.parent_loc,
                            &cur.path.key("parent"),
                            ErrorKind::Undefined(format!(
                                "diskimage '{}' has parent '{parent}', which is not defined",
                                cur.name
                            )),
                        );
                    }
                    ok = false;
                    break;
                }
                Some(p) => {
                    if p.name == raw.name || chain.iter().any(|c| c.name == p.name) {
                        if bad_chain.insert(raw.name.clone()) {
                            cx.error(
                                raw.parent_loc,
                                &raw.path.key("parent"),
                                ErrorKind::Semantic(format!(
                                    "diskimage '{}' is part of a parent cycle",
                                    raw.name
                                )),
                            );
                        }
                        ok = false;
                        break;
                    }
                    chain.push(p);
                    cur = p;
                }
            }
        }
        if !ok || raw.is_abstract {
            continue;
        }
        let mut d = empty(&raw.name, raw.parent.clone());
        for p in chain.iter().rev() {
            apply(&mut d, p);
        }
        apply(&mut d, raw);
        if !out.iter().any(|o: &DiskImage| o.name == d.name) {
            out.push(d);
        }
    }
    out
}
