//! Files and directories only the service's own user may read: the data
//! directory holds the database and the API key. Used by the store (the
//! SQLite file's directory) and the configuration (the key file).

use std::path::Path;

/// Create `dir` (and its parents) if missing; directories this creates are
/// owner-only (0700), since they hold the database and the API key.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}
