//! Semantic checks across sections, run after every section has been read.
//!
//! Upstream's validator checks label and diskimage references for OpenStack providers
//! only; its loader then crashes on the same mistakes in other drivers. We check every
//! driver, and add the checks upstream lacks (see `doc/config-differences.md`).

use crate::error::{ErrorKind, KeyPath};
use crate::load::Parsed;
use crate::model::ProviderDriver;
use crate::read::Ctx;

/// Runs every cross-section check, recording errors in `cx`.
pub(crate) fn check(cx: &mut Ctx, parsed: &mut Parsed) {
    check_label_refs(cx, parsed);
    check_diskimage_refs(cx, parsed);
    fill_provider_diskimages(parsed);
    check_min_ready(cx, parsed);
}

fn check_label_refs(cx: &mut Ctx, parsed: &Parsed) {
    for u in &parsed.refs.label_uses {
        if parsed.config.label(&u.label).is_none() {
            cx.error(
                u.loc,
                &u.path,
                ErrorKind::Undefined(format!(
                    "label '{}' in provider '{}' is not defined in the top-level labels",
                    u.label, u.provider
                )),
            );
        }
    }
}

fn diskimage_problem(parsed: &Parsed, name: &str) -> Option<String> {
    if parsed.config.diskimage(name).is_some() {
        return None;
    }
    if parsed.raw_diskimages.iter().any(|d| d.name == name && d.is_abstract) {
        Some(format!("diskimage '{name}' is abstract and cannot be used by a provider"))
    } else {
        Some(format!("diskimage '{name}' is not defined in the top-level diskimages"))
    }
}

fn check_diskimage_refs(cx: &mut Ctx, parsed: &Parsed) {
    for r in &parsed.refs.provider_diskimages {
        if let Some(msg) = diskimage_problem(parsed, &r.diskimage) {
            cx.error(
                r.loc,
                &r.path,
                ErrorKind::Undefined(format!("{msg} (used by provider '{}')", r.provider)),
            );
        }
    }
    for r in &parsed.refs.label_diskimages {
        if let Some(msg) = diskimage_problem(parsed, &r.diskimage) {
            cx.error(r.loc, &r.path, ErrorKind::Undefined(format!("label '{}': {msg}", r.label)));
            continue;
        }
        // The builder only uploads an image to providers that list it, so a label using
        // an image its provider does not list could never boot.
        let listed = parsed
            .config
            .provider(&r.provider)
            .is_none_or(|p| p.diskimage_names().iter().any(|d| d == &r.diskimage));
        if !listed {
            cx.error(
                r.loc,
                &r.path,
                ErrorKind::Undefined(format!(
                    "label '{}' uses diskimage '{}', which is not in the diskimages of provider '{}' \
                     (the image would never be uploaded there)",
                    r.label, r.diskimage, r.provider
                )),
            );
        }
    }
}

/// Copies username, python-path and shell-type of top-level diskimages into OpenStack
/// provider diskimages (as upstream does), and the username into AWS ones without one.
fn fill_provider_diskimages(parsed: &mut Parsed) {
    let images = parsed.config.diskimages.clone();
    for p in &mut parsed.config.providers {
        match &mut p.driver {
            ProviderDriver::OpenStack(o) | ProviderDriver::Fake(o) => {
                for d in &mut o.diskimages {
                    if let Some(top) = images.iter().find(|t| t.name == d.name) {
                        d.username = top.username.clone();
                        d.python_path = top.python_path.clone();
                        d.shell_type = top.shell_type.clone();
                    }
                }
            }
            ProviderDriver::Aws(a) => {
                for d in &mut a.diskimages {
                    if d.username.is_none() {
                        d.username = images.iter().find(|t| t.name == d.name).map(|t| t.username.clone());
                    }
                }
            }
            ProviderDriver::Static(_) | ProviderDriver::Kubernetes(_) => {}
        }
    }
}

/// How many nodes of `label` the configured pools could ever hold at once
/// (`None` = unlimited).
fn capacity(parsed: &Parsed, label: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut add = |cap: Option<u64>| -> Option<()> {
        total = total.saturating_add(cap?);
        Some(())
    };
    for p in &parsed.config.providers {
        if p.max_concurrency == Some(0) {
            continue;
        }
        match &p.driver {
            ProviderDriver::OpenStack(o) | ProviderDriver::Fake(o) => {
                for pool in o.pools.iter().filter(|x| x.labels.iter().any(|l| l.name == label)) {
                    add(pool.max_servers)?;
                }
            }
            ProviderDriver::Aws(a) => {
                for pool in a.pools.iter().filter(|x| x.labels.iter().any(|l| l.name == label)) {
                    add(pool.max_servers)?;
                }
            }
            ProviderDriver::Kubernetes(k) => {
                for pool in k.pools.iter().filter(|x| x.labels.iter().any(|l| l.name == label)) {
                    add(pool.max_servers)?;
                }
            }
            ProviderDriver::Static(s) => {
                for pool in &s.pools {
                    let slots: u64 = pool
                        .nodes
                        .iter()
                        .filter(|n| n.labels.iter().any(|l| l == label))
                        .map(|n| u64::from(n.max_parallel_jobs))
                        .sum();
                    if slots > 0 {
                        add(Some(pool.max_servers.map_or(slots, |m| m.min(slots))))?;
                    }
                }
            }
        }
    }
    Some(total)
}

/// A label whose `min-ready` exceeds what its pools may ever hold can never be satisfied.
/// Labels served by no pool at all are left alone (upstream simply never launches them,
/// and test fixtures rely on that).
fn check_min_ready(cx: &mut Ctx, parsed: &Parsed) {
    for label in &parsed.config.labels {
        if label.min_ready == 0 {
            continue;
        }
        let served = parsed.config.providers.iter().any(|p| p.supported_labels(None).contains(&label.name));
        if !served {
            continue;
        }
        if let Some(cap) = capacity(parsed, &label.name) {
            if cap > 0 && u64::from(label.min_ready) > cap {
                let (loc, path) = parsed
                    .label_locs
                    .iter()
                    .find(|(n, _, _)| *n == label.name)
                    .map(|(_, l, p)| (Some(*l), p.key("min-ready")))
                    .unwrap_or((None, KeyPath::root().key("labels")));
                cx.error(
                    loc,
                    &path,
                    ErrorKind::Semantic(format!(
                        "label '{}' has min-ready {} but the pools that provide it allow at most {cap} nodes",
                        label.name, label.min_ready
                    )),
                );
            }
        }
    }
}
