//! Storage faults: what the service promises about its database files and
//! about a database that cannot take writes.

mod common;

use std::path::Path;

use common::{test_config, Backend, TestDb, TestServer};
use opscore::config::Secret;

/// The mode bits of `path`.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `opscore.db` and its `-wal` and `-shm` files in `dir`.
fn db_files(dir: &Path) -> [std::path::PathBuf; 3] {
    ["opscore.db", "opscore.db-wal", "opscore.db-shm"].map(|f| dir.join(f))
}

#[track_caller]
fn assert_private(dir: &Path, when: &str) {
    for f in db_files(dir) {
        assert_eq!(
            mode(&f),
            0o600,
            "{when}: {} is {:o}, not 0600",
            f.display(),
            mode(&f)
        );
    }
}

/// The database and its WAL and shared-memory files are readable by their
/// owner only: created so in a directory anyone may read (0755), and made so
/// again when an earlier version left them readable (0644).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_files_are_private_whatever_the_directory_mode() {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|m| m.trim().to_owned())
        .unwrap_or_default();
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = db.dir.path().join("data");
    std::fs::create_dir(&dir).expect("data dir");
    set_mode(&dir, 0o755);
    let mut config = test_config(&db);
    config.database_url = Secret::new(format!("sqlite://{}", dir.join("opscore.db").display()));
    config.data_dir = dir.clone();
    let s = TestServer::start_on(db, config.clone()).await;
    s.register("a1").await;
    assert_eq!(
        s.report("a1", "idle", &chrono::Utc::now().to_rfc3339())
            .await
            .0,
        202
    );
    assert_private(&dir, &format!("new files (umask {umask})"));

    // Left readable by an earlier version: made private again at start.
    let db = s.stop().await;
    for f in db_files(&dir) {
        if f.exists() {
            set_mode(&f, 0o644);
        } else {
            // A clean stop removes the WAL; an older crash may have left it.
            std::fs::File::create(&f).expect("create");
            set_mode(&f, 0o644);
        }
    }
    let s = TestServer::start_on(db, config).await;
    assert_eq!(
        s.report("a1", "active", &chrono::Utc::now().to_rfc3339())
            .await
            .0,
        202
    );
    assert_private(&dir, "files an earlier version left at 0644");
    assert_eq!(mode(&dir), 0o755, "the operator's directory is left alone");
    s.stop().await;
}
