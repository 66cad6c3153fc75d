//! Error messages of the hand-written invalid fixtures, checked against a snapshot.

use crate::support::{check_snapshot, crate_dir};

#[test]
fn local_error_snapshot() {
    let dir = crate_dir().join("tests/fixtures/local");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".yaml") && !n.starts_with("secure-"))
        .collect();
    names.sort();
    let mut out = String::new();
    for name in &names {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        match np_config::load_str_with(&text, name, None, &[]) {
            Ok(_) => out.push_str(&format!("== {name}\nOK\n")),
            Err(e) => out.push_str(&format!("== {name}\n{e}\n")),
        }
    }
    // The secure file is checked together with a valid main file.
    let main = std::fs::read_to_string(dir.join("typo-in-driver.yaml"))
        .unwrap_or_else(|e| panic!("{e}"))
        .replace("flavr-name", "flavor-name");
    let secure = std::fs::read_to_string(dir.join("secure-bad.yaml")).unwrap_or_else(|e| panic!("{e}"));
    match np_config::load_str_with(&main, "main.yaml", Some((&secure, "secure-bad.yaml")), &[]) {
        Ok(_) => out.push_str("== secure-bad.yaml\nOK\n"),
        Err(e) => out.push_str(&format!("== secure-bad.yaml\n{e}\n")),
    }
    check_snapshot(&crate_dir().join("tests/snapshots/local-errors.txt"), &out);
}
