//! Unfinished uploads, so that a run stopped any way (Ctrl-C, a dropped connection, a killed
//! process) and started again continues each file where the server's copy ends. Keyed by the
//! file's path, size and modification time: a file changed since is uploaded afresh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::config;
use crate::error::CliError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub server: String,
    /// The tus upload's address on that server.
    pub url: String,
    /// The `Upload-Metadata` it was made with: other options make another upload.
    #[serde(default)]
    pub options: String,
}

#[derive(Default, Serialize, Deserialize)]
struct Stored {
    uploads: BTreeMap<String, Entry>,
}

/// Which file an entry is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileKey(String);

impl FileKey {
    pub fn of(path: &Path, metadata: &std::fs::Metadata) -> Self {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mtime =
            metadata.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        FileKey(format!("{}|{}|{mtime}", path.display(), metadata.len()))
    }

    fn path(&self) -> &str {
        // The size and mtime are numbers: the path is all before the last two separators.
        self.0.rsplitn(3, '|').nth(2).unwrap_or_default()
    }
}

/// `uploads.json` in the config folder. One process's uploads share it under a lock; two
/// processes uploading at once may each lose the other's newest entry (that file then
/// starts over).
pub struct ResumeStore {
    path: PathBuf,
    lock: Mutex<()>,
}

impl ResumeStore {
    pub fn new(dir: &Path) -> Self {
        ResumeStore { path: dir.join("uploads.json"), lock: Mutex::new(()) }
    }

    fn update<T>(&self, change: impl FnOnce(&mut Stored) -> T) -> Result<T, CliError> {
        let _held = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut stored: Stored = config::read_json(&self.path)?.unwrap_or_default();
        let before = serde_json::to_vec(&stored).unwrap_or_default();
        let out = change(&mut stored);
        if serde_json::to_vec(&stored).unwrap_or_default() != before {
            config::write_json(&self.path, &stored)?;
        }
        Ok(out)
    }

    pub fn get(&self, key: &FileKey, server: &str) -> Result<Option<Entry>, CliError> {
        self.update(|s| s.uploads.get(&key.0).filter(|e| e.server == server).cloned())
    }

    /// Records where `key`'s upload is; returns the entries it replaces (this path's earlier
    /// versions, or the same file's upload with other options), whose uploads the caller ends.
    pub fn put(&self, key: &FileKey, entry: Entry) -> Result<Vec<Entry>, CliError> {
        let path = key.path().to_owned();
        self.update(|s| {
            let replaced: Vec<String> =
                s.uploads.keys().filter(|k| FileKey((*k).clone()).path() == path).cloned().collect();
            let replaced = replaced.into_iter().filter_map(|k| s.uploads.remove(&k)).collect();
            s.uploads.insert(key.0.clone(), entry);
            replaced
        })
    }

    pub fn remove(&self, key: &FileKey) -> Result<(), CliError> {
        self.update(|s| {
            s.uploads.remove(&key.0);
        })
    }

    /// Every entry (the tests read where an upload went).
    pub fn entries(&self) -> Result<Vec<Entry>, CliError> {
        self.update(|s| s.uploads.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_for_one_file_on_one_server() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("a.wav");
        std::fs::write(&file, b"1234").expect("written");
        let key = FileKey::of(&file, &std::fs::metadata(&file).expect("stat"));
        let store = ResumeStore::new(dir.path());
        let entry = |url: &str| Entry { server: "http://a".into(), url: url.into(), options: "filename YQ==".into() };
        assert!(store.put(&key, entry("/v1/tus/1")).expect("put").is_empty());
        assert_eq!(store.get(&key, "http://a").expect("get").map(|e| e.url).as_deref(), Some("/v1/tus/1"));
        assert_eq!(store.get(&key, "http://b").expect("get"), None);
        std::fs::write(&file, b"12345").expect("changed");
        let changed = FileKey::of(&file, &std::fs::metadata(&file).expect("stat"));
        assert_ne!(changed, key, "a changed file is another upload");
        let replaced = store.put(&changed, entry("/v1/tus/2")).expect("put");
        assert_eq!(replaced, vec![entry("/v1/tus/1")], "the earlier version's upload is handed back to end");
        assert_eq!(store.get(&key, "http://a").expect("get"), None);
        assert_eq!(store.entries().expect("entries").len(), 1);
        store.remove(&changed).expect("removed");
        assert!(store.entries().expect("entries").is_empty());
    }
}
