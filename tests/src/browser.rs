//! A real headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`),
//! for the console's tests.
//!
//! When the two are missing, a test run as root installs them (`apt-get install`, bounded by
//! `timeout 300`, once per test binary); otherwise [`Browser::start`] returns `None` and says
//! why, and the test skips. Chromium runs headless, without a sandbox (root, containers) and
//! with background networking, component updates, sync and QUIC off (a closed network refuses
//! what they try), in a fresh profile. chromedriver runs in a process group of its own, killed
//! with every browser it started when the [`Browser`] is dropped, even on a failing test.

use crate::wait_for;
use anyhow::{anyhow, bail, Context, Result};
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Installs chromium and chromedriver when missing and root; `Err(reason)` when they cannot
/// be had (the test skips with that reason).
fn tools() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let present = || Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
        if present() {
            return Ok(());
        }
        if unsafe { libc::geteuid() } != 0 {
            return Err(format!(
                "{CHROMIUM} or {CHROMEDRIVER} is missing and this is not root: install them with \
                 `apt-get install -y chromium chromium-driver`"
            ));
        }
        let apt = |args: &[&str]| {
            Command::new("timeout")
                .arg("300")
                .arg("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null())
                .output()
        };
        let install = [
            "install",
            "-y",
            "--no-install-recommends",
            "chromium",
            "chromium-driver",
        ];
        let first = apt(&install).map_err(|e| format!("running apt-get: {e}"))?;
        if !first.status.success() {
            // A machine that never fetched the package lists.
            let _ = apt(&["update"]);
            let again = apt(&install).map_err(|e| format!("running apt-get: {e}"))?;
            if !again.status.success() {
                return Err(format!(
                    "apt-get install chromium chromium-driver failed: {}",
                    String::from_utf8_lossy(&again.stderr)
                ));
            }
        }
        if present() {
            Ok(())
        } else {
            Err("apt-get installed chromium but its binaries are not where expected".into())
        }
    })
    .clone()
}

/// A process group killed (SIGKILL) on drop.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
        // Reap the leader (chromedriver); the browsers are its children.
        let mut status = 0;
        unsafe { libc::waitpid(self.0, &mut status, 0) };
    }
}

/// A headless Chromium session.
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    /// Where screenshots go.
    pub shots: PathBuf,
    _driver: Group,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and one Chromium session; `None` (with the reason printed) when
    /// they cannot be had here.
    pub async fn start() -> Result<Option<Browser>> {
        if let Err(why) = tokio::task::spawn_blocking(tools).await? {
            println!("SKIPPED: no browser: {why}");
            return Ok(None);
        }
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let profile = tempfile::tempdir()?;
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                profile.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting chromedriver")?;
        let driver = Group(child.id() as i32);
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        tokio::task::spawn_blocking(move || {
            wait_for(Duration::from_secs(20), "chromedriver to answer", || {
                ureq::get(&status).call().ok().map(|_| ())
            })
        })
        .await??;
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1100",
                    format!("--user-data-dir={}", profile.path().join("profile").display()),
                ],
            },
        });
        let caps = caps.as_object().cloned().context("caps")?;
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .map_err(|e| anyhow!("starting a Chromium session: {e}"))?;
        // target/console-screenshots, beside target/debug.
        let bins = crate::bin_dir();
        let shots = bins.parent().unwrap_or(&bins).join("console-screenshots");
        std::fs::create_dir_all(&shots)?;
        Ok(Some(Browser {
            client,
            shots,
            _driver: driver,
            _profile: profile,
        }))
    }

    /// Saves a screenshot as `NAME.png` and prints its path.
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let png = self.client.screenshot().await?;
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        println!("screenshot: {}", path.display());
        Ok(path)
    }

    /// Waits until the element `css` exists and its text passes `ok`; returns the text.
    pub async fn wait_text(
        &self,
        css: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let end = Instant::now() + timeout;
        let mut last = String::from("(no such element)");
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await {
                if let Ok(t) = e.text().await {
                    if ok(&t) {
                        return Ok(t);
                    }
                    last = t;
                }
            }
            if Instant::now() > end {
                bail!("after {timeout:?}, `{css}` reads: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types `text` into the input `css` (after clearing it).
    pub async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let e = self.client.wait().for_element(Locator::Css(css)).await?;
        e.clear().await?;
        e.send_keys(text).await?;
        Ok(())
    }

    /// Clicks the element `css`.
    pub async fn click(&self, css: &str) -> Result<()> {
        self.client
            .wait()
            .for_element(Locator::Css(css))
            .await?
            .click()
            .await?;
        Ok(())
    }

    /// The console's token in this tab's sessionStorage.
    pub async fn stored_token(&self) -> Result<Option<String>> {
        let v = self
            .client
            .execute(
                "return sessionStorage.getItem('tandem.admin_token')",
                vec![],
            )
            .await?;
        Ok(v.as_str().map(str::to_string))
    }

    /// Ends the session (the browser quits); the driver goes on drop.
    pub async fn close(self) -> Result<()> {
        self.client.clone().close().await?;
        Ok(())
    }
}
