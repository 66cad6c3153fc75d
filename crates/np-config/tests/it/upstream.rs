//! The upstream fixture corpus: every verdict must match Python Nodepool 11's
//! `config-validate` (recorded in `tests/expectations/upstream.tsv` by
//! `tests/gen_expectations.sh`), except the deliberate differences listed in
//! `tests/expectations/differences.tsv` (and explained in `doc/config-differences.md`).

use std::collections::BTreeMap;

use crate::corpus::upstream_dir;
use crate::support::{check_snapshot, crate_dir};

struct Expect {
    python_rc: i32,
}

fn expectations() -> BTreeMap<String, Expect> {
    let text = std::fs::read_to_string(crate_dir().join("tests/expectations/upstream.tsv"))
        .unwrap_or_else(|e| panic!("reading expectations: {e}"));
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1) {
        let mut cols = line.split('\t');
        let (Some(file), Some(rc)) = (cols.next(), cols.next()) else { panic!("bad line {line:?}") };
        let python_rc = rc.parse().unwrap_or_else(|e| panic!("bad rc in {line:?}: {e}"));
        out.insert(file.to_string(), Expect { python_rc });
    }
    out
}

/// `file -> (our rc, reason)` for deliberate differences.
fn differences() -> BTreeMap<String, (i32, String)> {
    let text = std::fs::read_to_string(crate_dir().join("tests/expectations/differences.tsv"))
        .unwrap_or_else(|e| panic!("reading differences: {e}"));
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let mut cols = line.split('\t');
        let (Some(file), Some(rc), Some(reason)) = (cols.next(), cols.next(), cols.next()) else {
            panic!("bad line {line:?}")
        };
        let rc = rc.parse().unwrap_or_else(|e| panic!("bad rc in {line:?}: {e}"));
        out.insert(file.to_string(), (rc, reason.to_string()));
    }
    out
}

fn run(file: &str) -> Result<np_config::Config, np_config::ConfigErrors> {
    let path = upstream_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    np_config::load_str_with(&text, file, None, &[])
}

#[test]
fn upstream_corpus_verdicts() {
    let expect = expectations();
    let diffs = differences();
    assert!(expect.len() >= 180, "expectations look truncated");
    let mut failures = Vec::new();
    let mut snapshot = String::new();
    let (mut agree, mut deliberate) = (0, 0);
    let dir = upstream_dir();
    let corpus: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    for file in &corpus {
        if !expect.contains_key(file) {
            failures.push(format!(
                "{file}: in the corpus but not in the expectations (rerun gen_expectations.sh)"
            ));
        }
    }
    for file in expect.keys().filter(|f| !corpus.contains(f)) {
        failures.push(format!("{file}: in the expectations but not in the corpus at {}", dir.display()));
    }
    for (file, e) in &expect {
        if !corpus.contains(file) {
            continue;
        }
        let result = run(file);
        let ours = i32::from(result.is_err());
        if let Err(errs) = &result {
            snapshot.push_str(&format!("== {file}\n{errs}\n"));
        }
        match diffs.get(file) {
            Some((rc, reason)) => {
                if ours != *rc || *rc == e.python_rc {
                    failures.push(format!("{file}: listed as deliberate difference ({reason}) with rc {rc}, ours {ours}, python {}", e.python_rc));
                } else {
                    deliberate += 1;
                }
            }
            None if ours == e.python_rc => agree += 1,
            None => failures.push(format!(
                "{file}: python rc {}, ours {ours}{}",
                e.python_rc,
                result
                    .err()
                    .map(|x| format!("\n    {}", x.to_string().replace('\n', "\n    ")))
                    .unwrap_or_default()
            )),
        }
    }
    for file in diffs.keys() {
        if !expect.contains_key(file) {
            failures.push(format!("{file}: in differences.tsv but not in the corpus"));
        }
    }
    eprintln!("{} fixtures: {agree} agree with Python, {deliberate} deliberate differences", expect.len());
    assert!(failures.is_empty(), "{} disagreements:\n{}", failures.len(), failures.join("\n"));
    check_snapshot(&crate_dir().join("tests/snapshots/upstream-errors.txt"), &snapshot);
}
