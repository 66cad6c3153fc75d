//! Shared helpers: this crate's directory and comparing against checked-in snapshots.

use std::path::{Path, PathBuf};

/// This crate's directory.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compares `actual` with the checked-in file `path`; rewrites it when
/// `NP_UPDATE_SNAPSHOTS=1`.
pub fn check_snapshot(path: &Path, actual: &str) {
    if std::env::var("NP_UPDATE_SNAPSHOTS").as_deref() == Ok("1") {
        std::fs::write(path, actual).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected != actual {
        let mut msg = format!("snapshot {} differs (NP_UPDATE_SNAPSHOTS=1 to accept):\n", path.display());
        for (i, (e, a)) in expected.lines().zip(actual.lines()).enumerate() {
            if e != a {
                msg.push_str(&format!("line {}:\n- {e}\n+ {a}\n", i + 1));
                break;
            }
        }
        msg.push_str(&format!("expected {} lines, got {}", expected.lines().count(), actual.lines().count()));
        panic!("{msg}");
    }
}
