//! Runs the test venv's Python Nodepool (`config-validate`) on a few fixtures and checks the
//! recorded expectations still hold, so a new upstream release that changes verdicts is noticed.
//! Needs the venv that the corpus comes from anyway (see `corpus.rs`); fails without it.

use std::process::Command;

use crate::corpus::{upstream_dir, venv_python};
use crate::support::crate_dir;

const SAMPLE: &[&str] = &[
    "node.yaml",
    "static-basic.yaml",
    "kubernetes.yaml",
    "aws__aws.yaml",
    "config_validate__schema_error.yaml",
    "config_validate__missing_top_label.yaml",
    "config_validate__k8s_spec_duplicate.yaml",
    "integration_noocc.yaml",
];

#[test]
fn python_verdicts_have_not_drifted() {
    let dir = upstream_dir();
    // Nodepool's CLI sits beside the venv's interpreter.
    let nodepool = venv_python().with_file_name("nodepool");
    assert!(nodepool.exists(), "{} not found: run tools/setup.sh", nodepool.display());
    let expectations = std::fs::read_to_string(crate_dir().join("tests/expectations/upstream.tsv"))
        .unwrap_or_else(|e| panic!("reading expectations: {e}"));
    // Each run takes seconds (Python imports its drivers): run them side by side.
    let runs: Vec<_> = SAMPLE
        .iter()
        .map(|file| {
            let child = Command::new(&nodepool)
                .arg("-c")
                .arg(dir.join(file))
                .arg("config-validate")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("running {}: {e}", nodepool.display()));
            (file, child)
        })
        .collect();
    for (file, mut child) in runs {
        let recorded = expectations
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{file}\t")))
            .and_then(|rest| rest.split('\t').next())
            .unwrap_or_else(|| panic!("{file} not in expectations"));
        let status = child.wait().unwrap_or_else(|e| panic!("waiting for {}: {e}", nodepool.display()));
        let rc = status.code().unwrap_or(-1).to_string();
        assert_eq!(
            rc, recorded,
            "{file}: Python now says rc {rc}, expectations say {recorded}; rerun gen_expectations.sh"
        );
    }
}
