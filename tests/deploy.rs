//! Deployment: the image's health check command follows the server.

mod common;

use common::{Backend, TestServer};

/// `opscore healthcheck` (the image's HEALTHCHECK) exits 0 while the server
/// answers and 1 once nothing listens there.
#[tokio::test]
async fn healthcheck_command_follows_the_server() {
    let s = TestServer::start(Backend::Sqlite).await;
    let bind = s.base.trim_start_matches("http://").to_owned();
    let check = |path: &'static str| {
        let bind = bind.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_opscore"))
                .args(["healthcheck", "--path", path])
                .env_clear()
                .env("OPSCORE_BIND", &bind)
                .output()
                .await
                .expect("run opscore healthcheck")
        }
    };
    for path in ["/health", "/ready"] {
        let out = check(path).await;
        assert!(out.status.success(), "{path}: {out:?}");
    }
    s.stop().await;
    let out = check("/health").await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&bind), "names where it looked: {err}");
}
