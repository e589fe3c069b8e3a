//! Headless Chromium through chromedriver, for the tests of the pages.

use super::*;

/// Set to write the pages' screenshots into docs/ (the README shows them); without it a test
/// only checks that its screenshot is a PNG, so a test run leaves the tree as it was.
/// (Not `TIFFIN_`: the hub takes every such variable as its configuration.)
const UPDATE_SCREENSHOTS: &str = "UPDATE_SCREENSHOTS";

/// The browser's screenshot, written to `docs/<path>` when `UPDATE_SCREENSHOTS` is set.
pub async fn screenshot(browser: &fantoccini::Client, path: &str) {
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{path}: a PNG screenshot");
    if std::env::var_os(UPDATE_SCREENSHOTS).is_some() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, png).unwrap();
    }
}

/// chromedriver on a free loopback port, stopped when dropped.
pub struct ChromeDriver {
    child: std::process::Child,
    url: String,
}

impl ChromeDriver {
    pub async fn start() -> ChromeDriver {
        for needed in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                std::path::Path::new(needed).exists(),
                "the browser test needs {needed}: apt-get install chromium chromium-driver \
                 (scripts/test installs them when it can)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while client().get(format!("{url}/status")).send().await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "chromedriver did not start"
            );
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
        ChromeDriver { child, url }
    }

    pub async fn browser(&self) -> fantoccini::Client {
        self.browser_with(&[]).await
    }

    /// A session with more Chromium switches (`--autoplay-policy=...`).
    pub async fn browser_with(&self, switches: &[&str]) -> fantoccini::Client {
        // The network is closed: keep Chromium from trying to reach outside hosts.
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ];
        args.extend_from_slice(switches);
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": "/usr/bin/chromium", "args": args}),
        );
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a headless Chromium session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
