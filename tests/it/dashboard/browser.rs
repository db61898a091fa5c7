//! Headless Chromium for the dashboard test, driven over WebDriver:
//! Debian's `/usr/bin/chromedriver` started on a free port, talking to
//! Debian's `/usr/bin/chromium`, through `fantoccini`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A browser session and the driver process behind it (killed on drop).
pub struct Browser {
    pub client: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

/// Fail (never skip) when the browser is not installed, saying how to get it.
fn require_installed() {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: the dashboard test needs Debian's `chromium` and \
             `chromium-driver` packages (apt-get install chromium chromium-driver; \
             .ci/run installs them)"
        );
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl Browser {
    /// Start chromedriver and open a headless session with a 1280×800
    /// viewport and a fresh profile.
    pub async fn start() -> Self {
        require_installed();
        let mut last_error = String::new();
        // The free port may be taken between probing and chromedriver
        // binding it: try a few.
        for _ in 0..3 {
            let port = free_port();
            let mut driver = tokio::process::Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {CHROMEDRIVER}: {e}"));
            let url = format!("http://127.0.0.1:{port}");
            if !wait_for_driver(&url).await {
                last_error = format!("chromedriver did not answer on {url}");
                let _ = driver.kill().await;
                continue;
            }
            let profile = tempfile::tempdir().expect("profile dir");
            let mut caps = serde_json::Map::new();
            caps.insert(
                "goog:chromeOptions".into(),
                json!({
                    "binary": CHROMIUM,
                    "args": [
                        "--headless=new",
                        // Tests run as root in a container.
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--no-first-run",
                        "--hide-scrollbars",
                        "--window-size=1280,800",
                        format!("--user-data-dir={}", profile.path().display()),
                    ],
                }),
            );
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Self {
                        client,
                        _driver: driver,
                        _profile: profile,
                    }
                }
                Err(e) => {
                    last_error = format!("WebDriver session refused: {e}");
                    let _ = driver.kill().await;
                }
            }
        }
        panic!("could not start headless Chromium: {last_error}");
    }

    /// Make the page's viewport exactly `width`×`height` CSS pixels: the
    /// window is sized with the browser's own frame (which headless Chromium
    /// still counts) added, then checked.
    pub async fn set_viewport(&self, width: u32, height: u32) {
        let mut last = Value::Null;
        for _ in 0..3 {
            let m = self
                .js("return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]")
                .await;
            let extra = |i: usize| m[i].as_u64().unwrap_or(0) as u32;
            self.client
                .set_window_size(width + extra(0), height + extra(1))
                .await
                .expect("set window size");
            last = self
                .js("return [window.innerWidth, window.innerHeight]")
                .await;
            if last == json!([width, height]) {
                return;
            }
        }
        panic!("viewport is {last}, wanted {width}x{height}");
    }

    /// Run `script` (a function body) in the page and return its value.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Poll `script` until it returns something truthy (not null, false,
    /// 0 or ""); returns that value and how long it took. Fails the test
    /// with `what` and the last value after `within`.
    pub async fn wait_js(&self, script: &str, within: Duration, what: &str) -> (Value, Duration) {
        let start = Instant::now();
        loop {
            let v = self.js(script).await;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return (v, start.elapsed());
            }
            if start.elapsed() > within {
                let page = self
                    .js("return document.body ? document.body.innerText : ''")
                    .await;
                panic!("{what}: not seen within {within:?} (last value {v}); page text:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Save a PNG of the viewport, once running animations (a row's
    /// change highlight) have finished, so the picture shows the settled page.
    pub async fn screenshot(&self, path: &Path) {
        self.wait_js(
            "return document.getAnimations().every(a => a.playState !== 'running')",
            Duration::from_secs(5),
            "animations finished before the screenshot",
        )
        .await;
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// End the WebDriver session (the driver process dies with `self`).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

async fn wait_for_driver(url: &str) -> bool {
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{url}/status")).send().await {
            if r.status().is_success() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Where CI artifacts go: `$CARGO_TARGET_DIR`, else this crate's `target/`.
pub fn target_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&dir).expect("create target dir");
    dir
}
