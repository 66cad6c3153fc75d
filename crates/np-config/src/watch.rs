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
        if let Ok(event) = event {
            if event.paths.iter().any(|p| wanted.iter().any(|w| w == p || w.file_name() == p.file_name())) {
                on_change();
            }
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
