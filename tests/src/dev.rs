//! `tandem-coordinator dev` started as a user would, in a process group of its own with its
//! agents (killed on drop), and read through its banner and its `--dir`.

use crate::{wait_for, Api, Proc};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);

/// SIGKILLs a process group on drop unless disarmed: dev mode's agents are in its group, so a
/// failing test leaves none of them behind.
pub struct Group {
    /// The group (dev mode's pid).
    pub pgid: i32,
    /// Whether drop kills it.
    pub armed: bool,
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.armed {
            unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        }
    }
}

/// Whether process `pid` exists (a zombie counts).
pub fn alive(pid: i32) -> bool {
    unsafe { libc::kill(pid, 0) == 0 }
}

/// A running `tandem-coordinator dev`, in a process group of its own with its agents.
pub struct Dev {
    /// The dev mode process.
    pub proc: Proc,
    /// Its process group (killed on drop).
    pub group: Group,
    /// Its admin API.
    pub api: Api,
    /// Its stdout file.
    pub out_path: std::path::PathBuf,
    /// Its `--dir`.
    pub dir: std::path::PathBuf,
}

/// Starts `coordinator dev --agents N` with state under `tmp` (and `PATH` set to `path`, if
/// given), and waits until it serves and its N agents are ready.
pub fn start_dev(
    coordinator: &Path,
    tmp: &Path,
    agents: u32,
    path: Option<&std::ffi::OsStr>,
) -> Result<Dev> {
    start_dev_with(coordinator, tmp, agents, path, &[])
}

/// [`start_dev`] with more arguments for `dev` (e.g. `--gpu-fixture F`).
pub fn start_dev_with(
    coordinator: &Path,
    tmp: &Path,
    agents: u32,
    path: Option<&std::ffi::OsStr>,
    extra: &[&str],
) -> Result<Dev> {
    use std::os::unix::process::CommandExt;
    let dir = tmp.join("dev");
    let out_path = tmp.join("dev.out");
    let mut cmd = Command::new(coordinator);
    cmd.args([
        "dev",
        "--agents",
        &agents.to_string(),
        "--admin-addr",
        "127.0.0.1:0",
        "--dir",
    ])
    .arg(&dir)
    .args(extra)
    .env("RUST_LOG", "info")
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&out_path)?)
    .stderr(std::fs::File::create(tmp.join("dev.log"))?)
    .process_group(0);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let mut proc = Proc {
        child: cmd.spawn()?,
        log: tmp.join("dev.log"),
    };
    let pid = proc.pid();
    let group = Group {
        pgid: pid,
        armed: true,
    };
    let coord_dir = dir.join("coordinator");
    let endpoints: Value = wait_for(LONG, "dev mode to serve", || {
        if proc.exited().is_some() {
            return Some(Value::Null);
        }
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(coord_dir.join("endpoints.json")).ok()?)
                .ok()?;
        (v["pid"].as_i64() == Some(pid as i64)).then_some(v)
    })?;
    if endpoints.is_null() {
        bail!("dev mode exited:\n{}", proc.log_text());
    }
    let token = std::fs::read_to_string(coord_dir.join("admin.token"))?
        .trim()
        .to_string();
    let api = Api::new(
        format!("http://{}", endpoints["admin"].as_str().context("admin")?),
        token,
    );
    wait_for(LONG, "the dev agents ready", || {
        let nodes = api.nodes().ok()?;
        (nodes.len() == agents as usize && nodes.iter().all(|n| n["state"] == "ready"))
            .then_some(())
    })
    .with_context(|| proc.log_text())?;
    Ok(Dev {
        proc,
        group,
        api,
        out_path,
        dir,
    })
}

impl Dev {
    /// What it printed so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out_path).unwrap_or_default()
    }

    /// The pids of the `Agent pids:` line, once it has `n` of them.
    pub fn agent_pids(&self, n: usize) -> Result<Vec<i32>> {
        wait_for(Duration::from_secs(10), "the `Agent pids:` line", || {
            let text = self.stdout();
            let line = text.lines().find(|l| l.starts_with("Agent pids:"))?;
            let pids: Vec<i32> = line["Agent pids:".len()..]
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            (pids.len() == n).then_some(pids)
        })
    }

    /// SIGTERM, then waits for a clean exit and for the agents `pids` to be gone.
    pub fn stop(mut self, pids: &[i32]) -> Result<()> {
        self.proc.signal(libc::SIGTERM);
        let asked = Instant::now();
        let status = wait_for(
            Duration::from_secs(15),
            "dev mode to exit after SIGTERM",
            || self.proc.exited(),
        )
        .with_context(|| self.proc.log_text())?;
        println!(
            "dev mode exited {status} {:?} after SIGTERM",
            asked.elapsed()
        );
        ensure!(
            status.success(),
            "dev mode exit: {status}\n{}",
            self.proc.log_text()
        );
        wait_for(Duration::from_secs(5), "the dev agents to be gone", || {
            pids.iter().all(|p| !alive(*p)).then_some(())
        })?;
        self.group.armed = false;
        Ok(())
    }
}
