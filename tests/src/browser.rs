//! A real headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, installed by `scripts/install-peers.sh`): for the pages
//! the control plane serves.
//!
//! [`Browser::require`] starts `chromedriver` on a free loopback port (it
//! accepts only local clients); [`Browser::session`] opens a headless
//! browser session through it with `fantoccini`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use crate::net::{free_addr, wait_for_port};
use crate::process::Process;

/// A running `chromedriver`; stopped on drop.
#[derive(Debug)]
pub struct Browser {
    process: Process,
    url: String,
}

impl Browser {
    /// Starts `chromedriver`. Without `chromium` and `chromedriver` installed
    /// this panics saying to run `scripts/install-peers.sh` — unless
    /// `TOLLGATE_SKIP_PEERS=1`, when it prints "skipped" and returns `None`.
    pub fn require() -> Option<Browser> {
        let (Some(_), Some(driver)) = (which("chromium"), which("chromedriver")) else {
            if std::env::var("TOLLGATE_SKIP_PEERS").is_ok_and(|v| v == "1") {
                println!(
                    "skipped: chromium and chromedriver are not installed (TOLLGATE_SKIP_PEERS=1)"
                );
                return None;
            }
            panic!(
                "chromium and chromedriver are not installed: run scripts/install-peers.sh \
                 (Debian's chromium and chromium-driver), or set TOLLGATE_SKIP_PEERS=1 to skip"
            );
        };
        let addr = free_addr();
        let mut cmd = Command::new(driver);
        cmd.arg(format!("--port={}", addr.port()));
        let mut process = Process::spawn("chromedriver", cmd);
        wait_for_port(addr, &mut process, Duration::from_secs(30));
        Some(Browser {
            process,
            url: format!("http://{addr}"),
        })
    }

    /// A new headless browser session (a fresh profile: no cookies).
    pub async fn session(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1100,1000"]
            }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "could not open a Chromium session through chromedriver at {}: {e}",
                    self.url
                )
            })
    }

    /// The driver process (its output is shown when a test fails).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
