//! When `NP_PYTHON` (the test venv's Python) is set, runs the venv's `nodepool` program: re-runs its
//! `config-validate` on a few fixtures and checks the recorded expectations still hold
//! (so a new upstream release that changes verdicts is noticed). Skipped otherwise.

use std::process::Command;

use crate::support::{crate_dir, upstream_dir};

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
    let Ok(python) = std::env::var("NP_PYTHON") else {
        eprintln!("NP_PYTHON not set; skipping the drift check against Python Nodepool");
        return;
    };
    // NP_PYTHON is the venv's interpreter; Nodepool's CLI sits beside it.
    let nodepool = std::path::Path::new(&python).with_file_name("nodepool").display().to_string();
    let expectations = std::fs::read_to_string(crate_dir().join("tests/expectations/upstream.tsv"))
        .unwrap_or_else(|e| panic!("reading expectations: {e}"));
    for file in SAMPLE {
        let recorded = expectations
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{file}\t")))
            .and_then(|rest| rest.split('\t').next())
            .unwrap_or_else(|| panic!("{file} not in expectations"));
        let status = Command::new(&nodepool)
            .arg("-c")
            .arg(upstream_dir().join(file))
            .arg("config-validate")
            .output()
            .unwrap_or_else(|e| panic!("running {nodepool}: {e}"))
            .status;
        let rc = status.code().unwrap_or(-1).to_string();
        assert_eq!(
            rc, recorded,
            "{file}: Python now says rc {rc}, expectations say {recorded}; rerun gen_expectations.sh"
        );
    }
}
