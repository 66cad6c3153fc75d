//! The configuration key audit (issue 14): every key the schema takes must have a row in
//! the audit table of `doc/config-differences.md` saying which function acts on it, or
//! that it is refused, and every row must name a key the schema takes.
//!
//! The schema is what the readers ask for ([`np_config::schema_keys`]), recorded over
//! `tests/fixtures/schema/every-section.yaml` (one instance of every section of every
//! driver) and every upstream fixture of the corpus.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use np_config::KeyUse;

use crate::corpus::upstream_dir;
use crate::support::crate_dir;

const DOC: &str = "doc/config-differences.md";

/// One audit row: `| `section` | `key`[, `key`...] | status | acted on by |`.
#[derive(Debug)]
struct Row {
    line: usize,
    section: String,
    keys: Vec<String>,
    status: String,
    by: String,
}

/// The code spans of a table cell, in order.
fn spans(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

fn audit_rows(doc: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for (i, line) in doc.lines().enumerate() {
        if !line.starts_with("| `") {
            continue;
        }
        let cols: Vec<String> =
            line.trim().trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect();
        assert!(cols.len() >= 4, "{DOC}:{}: an audit row needs 4 columns: {line}", i + 1);
        let section = spans(&cols[0]).into_iter().next().unwrap_or_default();
        rows.push(Row {
            line: i + 1,
            section,
            keys: spans(&cols[1]),
            status: cols[2].clone(),
            by: cols[3..].join(" | "),
        });
    }
    rows
}

/// Every `fn name` defined in the workspace's sources.
fn workspace_fns() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "target") {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                for (i, _) in text.match_indices("fn ") {
                    let name: String =
                        text[i + 3..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() {
                        out.insert(name);
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&crate_dir().join(".."), &mut out);
    out
}

fn recorded() -> BTreeMap<(String, String), KeyUse> {
    let dir = crate_dir().join("tests/fixtures/schema");
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap_or_else(|e| panic!("reading {n}: {e}"));
    let mut keys =
        np_config::schema_keys(&read("every-section.yaml"), Some(&read("every-section-secure.yaml")));
    let upstream = upstream_dir();
    for e in std::fs::read_dir(&upstream).unwrap_or_else(|e| panic!("reading {}: {e}", upstream.display())) {
        let p = e.unwrap_or_else(|e| panic!("reading {}: {e}", upstream.display())).path();
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        for (k, u) in np_config::schema_keys(&text, None) {
            let entry = keys.entry(k).or_insert(u);
            *entry = (*entry).max(u);
        }
    }
    keys
}

#[test]
fn schema_audit() {
    let keys = recorded();
    if std::env::var_os("NP_SCHEMA_DUMP").is_some() {
        for ((section, key), u) in &keys {
            eprintln!("{section}\t{key}\t{u:?}");
        }
    }
    let doc_path = crate_dir().join("../..").join(DOC);
    let doc =
        std::fs::read_to_string(&doc_path).unwrap_or_else(|e| panic!("reading {}: {e}", doc_path.display()));
    let rows = audit_rows(&doc);
    let fns = workspace_fns();
    let mut failures = Vec::new();
    let mut listed: BTreeMap<(String, String), usize> = BTreeMap::new();
    for row in &rows {
        if row.status == "used" {
            let named: Vec<String> = spans(&row.by)
                .into_iter()
                .filter(|s| s.contains("::"))
                .map(|s| s.trim_end_matches("()").rsplit("::").next().unwrap_or_default().to_string())
                .collect();
            if named.is_empty() {
                failures.push(format!(
                    "{DOC}:{}: `{}` {:?} are used: name the function acting on them (`crate::module::fn`)",
                    row.line, row.section, row.keys
                ));
            }
            for f in named.iter().filter(|f| !fns.contains(*f)) {
                failures.push(format!("{DOC}:{}: no function `{f}` in the workspace", row.line));
            }
        }
        for key in &row.keys {
            let id = (row.section.clone(), key.clone());
            if let Some(first) = listed.insert(id, row.line) {
                failures.push(format!(
                    "{DOC}:{}: `{}` `{key}` is already listed at line {first}",
                    row.line, row.section
                ));
            }
            let Some(u) = keys.get(&(row.section.clone(), key.clone())) else {
                failures.push(format!(
                    "{DOC}:{}: `{}` `{key}` is not a key the schema takes (remove the row, or add the section to tests/fixtures/schema/every-section.yaml)",
                    row.line, row.section
                ));
                continue;
            };
            let status = row.status.as_str();
            match (u, status) {
                (KeyUse::Refused, "refused") => {}
                (KeyUse::Refused, _) => failures.push(format!(
                    "{DOC}:{}: `{}` `{key}` is refused by the loader (MapReader::refuse) but the row says {status:?}",
                    row.line, row.section
                )),
                (KeyUse::Read, "used") => {}
                (KeyUse::Read, s) => failures.push(format!(
                    "{DOC}:{}: `{}` `{key}`: status {s:?}; a key the loader reads is `used` (naming the function), \
                     or refused with MapReader::refuse (status `refused`)",
                    row.line, row.section
                )),
            }
        }
    }
    for ((section, key), _) in keys.iter().filter(|(id, _)| !listed.contains_key(*id)) {
        failures.push(format!(
            "`{section}` `{key}`: accepted by the schema but missing from the audit table of {DOC}; \
             add a row naming the function that acts on it, or refuse the key (MapReader::refuse)"
        ));
    }
    assert!(rows.len() > 100, "{DOC}: only {} audit rows found", rows.len());
    assert!(failures.is_empty(), "{} audit problems:\n{}", failures.len(), failures.join("\n"));
}
