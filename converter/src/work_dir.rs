//! The converter's scratch space. Each process works in a folder of its own under
//! `CONVERTER_WORK_DIR`, kept alive by an exclusive lock on its `.lock` file. The kernel drops
//! that lock when the process dies, however it dies (SIGKILL, OOM), so at start a folder
//! whose lock can be taken belongs to a process that is gone: its half-done files are removed.
//! Several converters may share one `CONVERTER_WORK_DIR` safely.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

const LOCK_FILE: &str = ".lock";
const RUN_PREFIX: &str = "run-";

#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    /// Held for the life of the process; closing it releases the lock.
    _lock: File,
}

impl WorkDir {
    /// Removes the folders of dead converters under `root`, then makes and locks this one's.
    pub fn claim(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let swept = sweep(root)?;
        if swept > 0 {
            info!(root = %root.display(), folders = swept, "removed the work folders of converters that died");
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = root.join(format!("{RUN_PREFIX}{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path)?;
        let lock = File::create(path.join(LOCK_FILE))?;
        lock.try_lock().map_err(|e| match e {
            TryLockError::Error(e) => e,
            TryLockError::WouldBlock => std::io::Error::other("a fresh work folder is locked by someone else"),
        })?;
        Ok(Self { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Removes every `run-*` folder whose lock is free; returns how many went.
fn sweep(root: &Path) -> std::io::Result<usize> {
    let mut swept = 0;
    for entry in std::fs::read_dir(root)? {
        let dir = entry?.path();
        let is_run = dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(RUN_PREFIX));
        if !is_run || !dir.is_dir() {
            continue;
        }
        // No lock file yet: a converter is creating it right now.
        let Ok(lock) = File::open(dir.join(LOCK_FILE)) else { continue };
        match lock.try_lock() {
            Ok(()) => match std::fs::remove_dir_all(&dir) {
                Ok(()) => swept += 1,
                Err(e) => warn!(dir = %dir.display(), error = %e, "could not remove a dead converter's work folder"),
            },
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                warn!(dir = %dir.display(), error = %e, "could not test a work folder's lock")
            }
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_dead_converters_folder_is_swept_and_a_live_ones_is_kept() -> std::io::Result<()> {
        let root = std::env::temp_dir().join(format!("tw-workdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let live = WorkDir::claim(&root)?;
        std::fs::write(live.path().join("job.source"), b"in flight")?;
        // A converter that died: its folder is there, its lock is free.
        let dead = root.join("run-1-1");
        std::fs::create_dir_all(&dead)?;
        std::fs::write(dead.join(LOCK_FILE), b"")?;
        std::fs::write(dead.join("job.mp3"), b"half written")?;

        let next = WorkDir::claim(&root)?;
        let left = files_in(&root);
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(!dead.exists());
        assert_eq!(files_in(live.path()), [".lock", "job.source"]);
        assert_eq!(files_in(next.path()), [".lock"]);
        drop((live, next));
        std::fs::remove_dir_all(&root)
    }
}
