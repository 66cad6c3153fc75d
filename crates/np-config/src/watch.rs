//! Watching the configuration files for changes (the daemons reload on
//! their own, as upstream's do when the files' mtimes change).
//!
//! The directories of the files are watched, not the files themselves:
//! editors and configuration management replace a file rather than write
//! it in place, which would end a watch on the file.

use std::path::{Path, PathBuf};

/// The watch could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {source}")]
pub struct WatchError {
    /// The directory.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: notify::Error,
}

/// A running watch; dropping it stops it.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
}

/// Calls `on_change` (on the watcher's thread) whenever one of `files` is
/// written, created, replaced or removed.
pub fn watch_files(
    files: &[PathBuf],
    on_change: impl Fn() + Send + 'static,
) -> Result<FileWatch, WatchError> {
    use notify::Watcher;
    let names: Vec<PathBuf> = files.iter().map(|f| f.canonicalize().unwrap_or_else(|_| f.clone())).collect();
    let wanted = names.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reading a file (as the reload itself does) is no change: without
        // this, every reload would trigger the next one.
        if matches!(event.kind, notify::EventKind::Access(_) | notify::EventKind::Other) {
            return;
        }
        if event.paths.iter().any(|p| wanted.iter().any(|w| w == p || w.file_name() == p.file_name())) {
            on_change();
        }
    })
    .map_err(|source| WatchError { path: PathBuf::new(), source })?;
    for f in &names {
        let dir = f.parent().map_or_else(|| Path::new(".").to_path_buf(), Path::to_path_buf);
        watcher
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .map_err(|source| WatchError { path: dir.clone(), source })?;
    }
    Ok(FileWatch { _watcher: watcher })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn writes_are_reported_and_reads_are_not() {
        let dir = std::env::temp_dir().join(format!("np-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("nodepool.yaml");
        std::fs::write(&file, "a: 1\n").unwrap_or_else(|e| panic!("{e}"));
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let _watch = watch_files(std::slice::from_ref(&file), move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..5 {
            let _ = std::fs::read_to_string(&file);
        }
        // Another file in the directory is not ours either.
        std::fs::write(dir.join("other.log"), "x").unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(seen.load(Ordering::SeqCst), 0, "reads and other files are no change");
        std::fs::write(&file, "a: 2\n").unwrap_or_else(|e| panic!("{e}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while seen.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(seen.load(Ordering::SeqCst) > 0, "a write is a change");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
