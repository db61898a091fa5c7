//! The bootstrap API key when none is configured: generated once into the
//! data directory, owner-only, and read back on later starts.

use std::path::{Path, PathBuf};

use super::parse::MIN_KEY_LEN;
use super::Secret;
use crate::private_files::create_private_dir;

/// Where the bootstrap API key came from, for the startup log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `OPSCORE_API_KEY` / `--api-key`.
    Configured,
    /// The key file in the data directory.
    File {
        /// Its path.
        path: PathBuf,
        /// Whether this start generated it.
        created: bool,
    },
}

/// Read the generated key at `path`, or generate and store one (owner-only
/// permissions) if there is none. Returns the key and whether it is new.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<(Secret, bool)> {
    use std::io::Write;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            check_private(path)?;
            let key = text.trim();
            if key.len() < MIN_KEY_LEN {
                anyhow::bail!(
                    "API key file {} is too short or empty; delete it to generate a new key",
                    path.display()
                );
            }
            Ok((Secret::new(key), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                create_private_dir(dir).map_err(|e| {
                    anyhow::anyhow!("cannot create data directory {}: {e}", dir.display())
                })?;
            }
            let key = generate_key();
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut file = opts.open(path).map_err(|e| {
                anyhow::anyhow!("cannot create API key file {}: {e}", path.display())
            })?;
            file.write_all(format!("{key}\n").as_bytes())?;
            file.sync_all()?;
            Ok((Secret::new(key), true))
        }
        Err(e) => anyhow::bail!("cannot read API key file {}: {e}", path.display()),
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "API key file {} is readable by others (mode {:o}); run chmod 600 on it",
            path.display(),
            mode & 0o777
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// A new random key: 32 bytes from the OS generator, hex-encoded.
pub fn generate_key() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("opscore_{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/api_key");
        let (k1, created) = load_or_create_key(&path).unwrap();
        assert!(created);
        assert!(k1.expose().len() > 64);
        let (k2, created) = load_or_create_key(&path).unwrap();
        assert!(!created);
        assert_eq!(k1, k2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let dir_mode = std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(dir_mode & 0o777, 0o700);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = load_or_create_key(&path).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
        }
    }
}
