//! The upstream fixture corpus: the YAML configurations of upstream Nodepool's unit tests, taken
//! from the `nodepool==11.0.0` package that `tools/setup.sh` installs into the test venv (its
//! wheel ships `nodepool/tests/fixtures/`). Their test-time placeholders are filled with the
//! values below and a subfolder's name becomes a `dir__` prefix (`aws/aws.yaml` is
//! `aws__aws.yaml`); the result is written once per build under `CARGO_TARGET_TMPDIR`.
//!
//! `NP_UPSTREAM_FIXTURES` names an already filled corpus instead. Without either, the tests that
//! need the corpus fail, saying why and what to run; they never skip.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The release whose fixtures and `config-validate` verdicts (`tests/expectations/upstream.tsv`)
/// the tests hold us to.
const NODEPOOL_VERSION: &str = "11.0.0";

/// What upstream's tests format into their fixtures (a temporary ZooKeeper, image and log
/// directories, cloud resource ids), as fixed plausible values. `%(NODEPOOL_PORT)` is the
/// environment reference of `config_validate/good.yaml`, which upstream's test sets.
const PLACEHOLDERS: &[(&str, &str)] = &[
    ("{zookeeper_host}", "localhost"),
    ("{zookeeper_port}", "2181"),
    ("{zookeeper_chroot}", "/nodepool-test"),
    ("{zookeeper_ca}", "/etc/nodepool/ca.crt"),
    ("{zookeeper_cert}", "/etc/nodepool/zk.crt"),
    ("{zookeeper_key}", "/etc/nodepool/zk.key"),
    ("{images_dir}", "/var/lib/nodepool/images"),
    ("{build_log_dir}", "/var/log/nodepool/builds"),
    ("{subnet_id}", "subnet-0123456789abcdef0"),
    ("{security_group_id}", "sg-0123456789abcdef0"),
    ("{instance_profile_arn}", "arn:aws:iam::123456789012:instance-profile/nodepool"),
    ("{auth_path}", "/etc/nodepool/auth.json"),
    ("{context_name}", "admin-cluster.local"),
    ("%(NODEPOOL_PORT)", "2181"),
];

/// The fix to print whenever the corpus cannot be had.
const FIX: &str = "run tools/setup.sh (it installs nodepool==11.0.0 into the venv), \
                   or set NP_UPSTREAM_FIXTURES to a filled corpus";

/// The directory holding the filled corpus (one `.yaml` per upstream fixture).
pub fn upstream_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("NP_UPSTREAM_FIXTURES") {
            let dir = PathBuf::from(dir);
            assert!(dir.is_dir(), "NP_UPSTREAM_FIXTURES={} is not a directory", dir.display());
            return dir;
        }
        let files = build(&fixtures_dir());
        materialize(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("np-config-upstream-configs"), &files)
    })
    .clone()
}

/// The test venv's Python: `NP_PYTHON` (set by `tools/test-env.sh`), else
/// `${NP_VENV:-<repo>/.venv}/bin/python`, as `tools/setup.sh` creates it.
pub fn venv_python() -> PathBuf {
    if let Some(python) = std::env::var_os("NP_PYTHON") {
        return python.into();
    }
    let venv = std::env::var_os("NP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    venv.join("bin/python")
}

/// `nodepool/tests/fixtures` of the venv's Nodepool, which must be the expected release.
fn fixtures_dir() -> PathBuf {
    let python = venv_python();
    assert!(
        python.exists(),
        "upstream fixture corpus not found: no Python venv at {} (the corpus comes from its nodepool package); {FIX}",
        python.display()
    );
    let out = Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m, importlib.util as u\n\
                      print(m.version('nodepool'))\n\
                      print(u.find_spec('nodepool').submodule_search_locations[0])",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!("upstream fixture corpus not found: cannot run {}: {e}; {FIX}", python.display())
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let (Some(version), Some(package), true) = (lines.next(), lines.next(), out.status.success()) else {
        panic!(
            "upstream fixture corpus not found: {} has no nodepool package ({}); {FIX}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("no output")
        )
    };
    assert_eq!(
        version,
        NODEPOOL_VERSION,
        "upstream fixture corpus: {} has nodepool {version}, the recorded verdicts are Nodepool {NODEPOOL_VERSION}'s; {FIX}",
        python.display()
    );
    let dir = Path::new(package).join("tests/fixtures");
    assert!(
        dir.is_dir(),
        "upstream fixture corpus not found: the nodepool package at {package} has no tests/fixtures; {FIX}"
    );
    dir
}

/// The filled corpus, by flattened file name: every `.yaml` below `fixtures` except the
/// top-level `clouds.yaml` (the OpenStack client configuration of upstream's tests).
pub fn build(fixtures: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    collect(fixtures, "", &mut out);
    out.remove("clouds.yaml");
    assert!(out.len() >= 180, "only {} fixtures under {}", out.len(), fixtures.display());
    out
}

fn collect(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())).path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path.is_dir() {
            collect(&path, &format!("{prefix}{name}__"), out);
        } else if name.ends_with(".yaml") {
            let text =
                std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            out.insert(format!("{prefix}{name}"), fill(&text, &path));
        }
    }
}

fn fill(text: &str, path: &Path) -> String {
    let filled = PLACEHOLDERS.iter().fold(text.to_string(), |t, (k, v)| t.replace(k, v));
    // A placeholder a new upstream release adds must not slip through as a literal.
    for (i, _) in filled.match_indices('{') {
        let word: String =
            filled[i + 1..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        assert!(
            word.is_empty() || !filled[i + 1 + word.len()..].starts_with('}'),
            "{}: placeholder {{{word}}} has no value in tests/it/corpus.rs",
            path.display()
        );
    }
    assert!(
        !filled.contains("%("),
        "{}: an environment reference has no value in tests/it/corpus.rs",
        path.display()
    );
    filled
}

/// Writes `files` into `dir` unless it holds exactly them already. Test processes run in
/// parallel: they take turns through a lock file, so none reads a half-written corpus.
fn materialize(dir: &Path, files: &BTreeMap<String, String>) -> PathBuf {
    let lock_path = dir.with_extension("lock");
    let lock = File::create(&lock_path).unwrap_or_else(|e| panic!("creating {}: {e}", lock_path.display()));
    lock.lock().unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));
    if !holds(dir, files) {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("removing {}: {e}", dir.display()),
        }
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        }
    }
    dir.to_path_buf()
}

/// Whether `dir` holds exactly `files`.
fn holds(dir: &Path, files: &BTreeMap<String, String>) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    let mut count = 0;
    for entry in entries {
        let Ok(entry) = entry else { return false };
        let name = entry.file_name().to_string_lossy().into_owned();
        match files.get(&name) {
            Some(text) if std::fs::read_to_string(entry.path()).is_ok_and(|t| &t == text) => count += 1,
            _ => return false,
        }
    }
    count == files.len()
}
