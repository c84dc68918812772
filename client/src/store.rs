//! Where the refresh token outlives the process. Rotation makes this a hard
//! requirement, not a convenience: once a refresh has answered, the server holds the
//! successor as current and the token the client had is spent (reusable only for
//! `REFRESH_GRACE_SECS`, then a reuse that revokes the session). So the client saves
//! the successor before it uses it, and a restart resumes from what was saved.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;

/// A boxed future, so stores can be used behind `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Persists the session's newest refresh token.
pub trait TokenStore: Send + Sync + 'static {
    /// Saves `refresh_token`, replacing the previous one. Called after each login and
    /// refresh, before the new tokens are used; until it succeeds the client answers
    /// [`crate::Error::Storage`] and keeps the token in memory (nothing is lost).
    fn save(&self, refresh_token: String) -> BoxFuture<'_, io::Result<()>>;

    /// Forgets the token: the session ended.
    fn clear(&self) -> BoxFuture<'_, io::Result<()>>;
}

/// Keeps nothing beyond the process (a service that logs in at start).
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryStore;

impl TokenStore for MemoryStore {
    fn save(&self, _: String) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn clear(&self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// A file readable by its owner only (a CLI's session). Written whole to a temporary
/// file beside it, synced, then renamed over it: a crash leaves the old token or the
/// new one, never half of one.
#[derive(Clone, Debug)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore { path: path.into() }
    }

    /// The saved token, if there is one.
    pub fn load(&self) -> io::Result<Option<String>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    // A file left there (or a link planted there) is removed, never written through:
    // the new one is created here, mode 0600 from the start.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    // The rename itself survives a power cut only once the directory is synced.
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl TokenStore for FileStore {
    fn save(&self, refresh_token: String) -> BoxFuture<'_, io::Result<()>> {
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || write_private(&path, &refresh_token))
                .await
                .map_err(io::Error::other)?
        })
    }

    fn clear(&self) -> BoxFuture<'_, io::Result<()>> {
        let path = self.path.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || std::fs::remove_file(path))
                .await
                .map_err(io::Error::other)?
            {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_store_keeps_the_newest_token_private_and_forgets_it() {
        let dir = std::env::temp_dir().join(format!("edge-auth-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = FileStore::new(dir.join("session"));
        assert_eq!(store.load().unwrap(), None);
        store.save("first".into()).await.unwrap();
        store.save("second".into()).await.unwrap();
        assert_eq!(store.load().unwrap().as_deref(), Some("second"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join("session"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        store.clear().await.unwrap();
        store.clear().await.unwrap();
        assert_eq!(store.load().unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A link planted where the temporary file goes is replaced, never written through.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_planted_temporary_file_is_not_written_through() {
        let dir = std::env::temp_dir().join(format!("edge-auth-client-tmp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let elsewhere = dir.join("elsewhere");
        std::fs::write(&elsewhere, "untouched").unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("session.tmp")).unwrap();
        let store = FileStore::new(dir.join("session"));
        store.save("token".into()).await.unwrap();
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "untouched");
        assert_eq!(store.load().unwrap().as_deref(), Some("token"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
