//! Signing keys: several key ids, one of which signs; all are published in the JWKS.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use shared::{KeyId, KeySet, SigningKey};

use crate::config::Config;

/// The key that signs and every key whose tokens may still be alive.
pub struct Keys {
    pub active: SigningKey,
    pub published: KeySet,
    /// Keys of remembered-device cookies (`crate::device`), derived from the signing
    /// keys' seeds: the active key's first. A cookie made under a retired key keeps
    /// working while that key is loaded.
    pub device: Vec<[u8; 32]>,
    /// The JWKS document, rendered once.
    pub jwks: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("active", &self.active.kid())
            .finish_non_exhaustive()
    }
}

impl Keys {
    fn new(active: SigningKey, mut others: Vec<SigningKey>) -> Result<Self, String> {
        others.retain(|k| k.kid() != active.kid());
        let mut public = vec![active.verifying_key()];
        public.extend(others.iter().map(SigningKey::verifying_key));
        let published = KeySet::new(public).map_err(|e| format!("key set: {e}"))?;
        let jwks = published.to_jwks();
        let device = std::iter::once(&active)
            .chain(&others)
            .map(|k| k.derive_secret(b"remembered device cookie"))
            .collect();
        Ok(Keys {
            active,
            published,
            device,
            jwks,
        })
    }

    /// Production keys from `SIGNING_KEYS_DIR`, or the development key (generated on
    /// first use and kept in `SIGNING_KEY_FILE`).
    pub fn load(config: &Config) -> Result<Self, String> {
        match &config.signing_keys_dir {
            Some(dir) => Self::from_dir(dir, config.active_kid.as_deref()),
            None => {
                let key = dev_key(&config.signing_key_file)?;
                tracing::warn!(
                    kid = %key.kid(),
                    file = %config.signing_key_file.display(),
                    "using a DEVELOPMENT signing key (SIGNING_KEYS_DIR is not set); do not use in production"
                );
                Self::new(key, Vec::new())
            }
        }
    }

    fn from_dir(dir: &Path, active_kid: Option<&str>) -> Result<Self, String> {
        let active_kid = active_kid.ok_or("ACTIVE_KID is required with SIGNING_KEYS_DIR")?;
        let mut keys = Vec::new();
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            let Some(kid) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".key"))
            else {
                continue;
            };
            let kid = KeyId::new(kid)
                .map_err(|_| format!("{}: file name is not a valid key id", path.display()))?;
            keys.push(read_seed(&path)?.with_kid(kid));
        }
        let position = keys
            .iter()
            .position(|k| k.kid().as_str() == active_kid)
            .ok_or_else(|| {
                format!(
                    "ACTIVE_KID {active_kid} has no file {active_kid}.key in {}",
                    dir.display()
                )
            })?;
        let active = keys.swap_remove(position);
        tracing::info!(active = %active.kid(), published = keys.len() + 1, "signing keys loaded");
        Self::new(active, keys)
    }
}

fn read_seed(path: &Path) -> Result<SigningKey, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let seed = URL_SAFE_NO_PAD
        .decode(text.trim())
        .map_err(|_| format!("{}: not base64url", path.display()))?;
    SigningKey::from_seed_slice(&seed)
        .map_err(|_| format!("{}: not a 32-byte Ed25519 seed", path.display()))
}

/// The development key: read it, or create it (mode 0600) with a fresh seed.
fn dev_key(path: &Path) -> Result<SigningKey, String> {
    if path.exists() {
        return read_seed(path);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let seed: [u8; 32] = crate::random::bytes();
    write_private(path, URL_SAFE_NO_PAD.encode(seed).as_bytes())?;
    Ok(SigningKey::from_seed(seed))
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    file.write_all(contents)
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(keys: &[(&str, [u8; 32])]) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("origin-keys-{}-{}", std::process::id(), keys.len()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (kid, seed) in keys {
            std::fs::write(dir.join(format!("{kid}.key")), URL_SAFE_NO_PAD.encode(seed)).unwrap();
        }
        std::fs::write(dir.join("README"), "not a key").unwrap();
        dir
    }

    #[test]
    fn every_key_in_the_directory_is_published_and_the_active_one_signs() {
        let dir = dir_with(&[("2026-10", [1; 32]), ("2026-11", [2; 32])]);
        let keys = Keys::from_dir(&dir, Some("2026-11")).unwrap();
        assert_eq!(keys.active.kid().as_str(), "2026-11");
        assert_eq!(
            keys.active.verifying_key(),
            SigningKey::from_seed([2; 32])
                .with_kid(KeyId::new("2026-11").unwrap())
                .verifying_key()
        );
        let published: Vec<_> = keys
            .published
            .iter()
            .map(|k| k.kid().as_str().to_string())
            .collect();
        assert_eq!(published, ["2026-11", "2026-10"]);
        assert_eq!(
            KeySet::from_jwks(keys.jwks.as_bytes()).unwrap(),
            keys.published
        );
    }

    #[test]
    fn a_missing_active_key_or_a_bad_file_is_a_clear_error() {
        let dir = dir_with(&[("a", [1; 32])]);
        assert!(
            Keys::from_dir(&dir, Some("b"))
                .unwrap_err()
                .contains("ACTIVE_KID b")
        );
        assert!(
            Keys::from_dir(&dir, None)
                .unwrap_err()
                .contains("ACTIVE_KID is required")
        );
        std::fs::write(dir.join("bad.key"), "not base64!").unwrap();
        assert!(
            Keys::from_dir(&dir, Some("a"))
                .unwrap_err()
                .contains("not base64url")
        );
    }

    #[test]
    fn the_development_key_is_created_once_private_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let path =
            std::env::temp_dir().join(format!("origin-dev-key-{}/signing.key", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let first = dev_key(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(dev_key(&path).unwrap().kid(), first.kid());
    }
}
