//! The content-addressed file store under `media.dir`.
//!
//! A file is named by the hex SHA-256 of its bytes, `<dir>/ab/cd/abcd…`, so identical uploads
//! share one file and a name always describes its content. New content is written to
//! `<dir>/tmp/<random>` (the same file system as its final place), fsynced, renamed into place
//! and the directory fsynced: after a crash the final name holds either nothing or the complete
//! file, never a prefix. Left-over temporary files are removed at start-up.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::storage::media::ContentRef;

/// Temporary files older than this are left-overs of a crash (an upload in progress in another
/// process sharing the directory is younger).
const STALE_TMP_AGE: Duration = Duration::from_secs(6 * 3600);

/// The file store; cheap to clone.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

/// Content that is durably stored.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Hex SHA-256 of the bytes: the file's name.
    pub sha256: String,
    /// Length in bytes.
    pub size: u64,
}

impl Stored {
    /// How this content is recorded for a media id, with its (sanitized) type and file name.
    pub fn record<'a>(&'a self, content_type: Option<&'a str>, filename: Option<&'a str>) -> ContentRef<'a> {
        ContentRef { content_type, filename, size: self.size as i64, sha256: &self.sha256 }
    }
}

/// A file being written; becomes visible only through [`PendingFile::finish`]. Dropping it
/// unfinished removes the temporary file.
pub struct PendingFile {
    file: Option<tokio::fs::File>,
    tmp_path: PathBuf,
    hasher: Sha256,
    size: u64,
    store: FileStore,
    finished: bool,
}

impl FileStore {
    /// Opens (creating) the store at `root` and removes stale temporary files.
    pub fn open(root: &Path) -> io::Result<Self> {
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let now = SystemTime::now();
        for entry in std::fs::read_dir(&tmp)? {
            let entry = entry?;
            let age = entry.metadata()?.modified().ok().and_then(|m| now.duration_since(m).ok());
            if age.is_some_and(|a| a > STALE_TMP_AGE) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self { root: root.to_owned() })
    }

    /// Where the file with this hash lives (whether or not it exists).
    pub fn path_of(&self, sha256: &str) -> io::Result<PathBuf> {
        // The hash comes from our own database, but a malformed one must never become a path
        // outside the store.
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "malformed content hash"));
        }
        Ok(self.root.join(&sha256[0..2]).join(&sha256[2..4]).join(sha256))
    }

    /// Starts writing a new file.
    pub async fn begin(&self) -> io::Result<PendingFile> {
        let name = format!("{:032x}", rand::random::<u128>());
        let tmp_path = self.root.join("tmp").join(name);
        let file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(&tmp_path).await?;
        Ok(PendingFile {
            file: Some(file),
            tmp_path,
            hasher: Sha256::new(),
            size: 0,
            store: self.clone(),
            finished: false,
        })
    }

    /// Stores `bytes` in one go (thumbnails, fetched remote media).
    pub async fn put(&self, bytes: &[u8]) -> io::Result<Stored> {
        let mut file = self.begin().await?;
        file.write(bytes).await?;
        file.finish().await
    }

    /// Opens a stored file for reading.
    pub async fn open_file(&self, sha256: &str) -> io::Result<tokio::fs::File> {
        tokio::fs::File::open(self.path_of(sha256)?).await
    }

    /// Reads a whole stored file.
    pub async fn read(&self, sha256: &str) -> io::Result<Bytes> {
        Ok(tokio::fs::read(self.path_of(sha256)?).await?.into())
    }
}

impl PendingFile {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends bytes.
    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        self.file.as_mut().expect("file open until finish").write_all(chunk).await
    }

    /// Makes the content durable under its hash and returns the hash.
    pub async fn finish(mut self) -> io::Result<Stored> {
        let mut file = self.file.take().expect("file open until finish");
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        let sha256 = hex(&std::mem::take(&mut self.hasher).finalize());
        let dest = self.store.path_of(&sha256)?;
        let tmp = self.tmp_path.clone();
        let root = self.store.root.clone();
        let dest_for_task = dest.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let dir = dest_for_task.parent().expect("hash path has a parent");
            if dest_for_task.exists() {
                // Same bytes already stored (identical upload): keep the existing file.
                std::fs::remove_file(&tmp)?;
                return Ok(());
            }
            let created_dirs = !dir.exists();
            std::fs::create_dir_all(dir)?;
            std::fs::rename(&tmp, &dest_for_task)?;
            // The rename is durable only once the directory holding the new name is synced;
            // newly created directories must be durable in their parents too.
            sync_dir(dir)?;
            if created_dirs {
                sync_dir(dir.parent().expect("two levels"))?;
                sync_dir(&root)?;
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)??;
        self.finished = true;
        Ok(Stored { sha256, size: self.size })
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.finished {
            // An aborted upload (client went away, too large, error): nothing may remain.
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_by_hash_and_removes_aborted_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let stored = store.put(b"hello").await.unwrap();
        assert_eq!(stored.sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(&store.read(&stored.sha256).await.unwrap()[..], b"hello");
        // The same bytes again share the file.
        assert_eq!(store.put(b"hello").await.unwrap().sha256, stored.sha256);

        let mut aborted = store.begin().await.unwrap();
        aborted.write(b"partial").await.unwrap();
        drop(aborted);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(store.path_of("../../etc/passwd").is_err());
    }
}
