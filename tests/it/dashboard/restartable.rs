//! An Ops-Core that can be stopped and started again on the same address
//! and database, for the dashboard's reconnection test.

use std::time::Duration;

use reqwest::StatusCode;

use crate::common::{test_config, Backend, TestDb};

/// An Ops-Core that can be stopped and started again on the same address
/// and database, so an open page sees its stream drop and come back.
pub struct Restartable {
    addr: std::net::SocketAddr,
    db: TestDb,
    running: Option<(
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
}

impl Restartable {
    pub async fn start() -> Self {
        let db = TestDb::new(Backend::Sqlite).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut s = Self {
            addr,
            db,
            running: None,
        };
        s.run(listener).await;
        s
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn run(&mut self, listener: tokio::net::TcpListener) {
        let token = tokio_util::sync::CancellationToken::new();
        let config = test_config(&self.db);
        let handle = tokio::spawn(opscore::serve(config, listener, token.clone()));
        self.running = Some((token, handle));
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client.get(format!("{}/ready", self.base())).send().await {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server at {} never became ready", self.base());
    }

    pub async fn stop(&mut self) {
        if let Some((token, handle)) = self.running.take() {
            token.cancel();
            handle.await.expect("server task").expect("server result");
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("bind the same address again");
        self.run(listener).await;
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        if let Some((token, _)) = &self.running {
            token.cancel();
        }
    }
}
