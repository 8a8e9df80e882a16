//! Helpers for end-to-end tests that start the real binaries.
//!
//! # Layout
//! - `Proc`: a child process killed (SIGKILL) and reaped on drop, so a failing test never
//!   leaves daemons behind.
//! - `Coordinator`, `Agent`: start `tandem-coordinator serve` / `tandem-agent run` on ports
//!   chosen at run time (the coordinator binds port 0 and reports its ports in
//!   `DATA_DIR/endpoints.json`).
//! - `Api`: a small client of the admin API.
//! - `wait_for`: polls a condition until a deadline; tests never sleep blindly.
//! - `relay`: a UDP relay between agents and the coordinator that can cut either direction.
//! - `browser`: a real headless Chromium over WebDriver (installed when root, else skipped).
//! - `dev`: `tandem-coordinator dev` and its agents, killed together on drop.
//! - `fleet`: a coordinator, a cluster, agents and "writer" jobs for failover tests.
//! - `jobs`: small `sh -c` jobs for the promise tests and the stamps they write.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod browser;
pub mod dev;
pub mod fleet;
pub mod jobs;
pub mod relay;

/// The directory holding the workspace's built binaries: beside this executable (a bench
/// binary in target/release) or one level up (a test in target/debug/deps).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let here = exe.parent().expect("exe dir").to_path_buf();
    if here.join("tandem-coordinator").is_file() {
        return here;
    }
    here.parent().expect("target dir").to_path_buf()
}

/// The path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is not built; run `cargo build --workspace --bins` (cargo test --workspace builds it)",
        p.display()
    );
    p
}

/// Polls `f` every 20 ms until it returns `Some`, or fails after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process that is killed and reaped when dropped.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Its stderr log file.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program args`, stderr to `log`.
    pub fn spawn(program: &Path, args: &[&str], log: &Path) -> Result<Proc> {
        let err = std::fs::File::create(log)?;
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Proc {
            child,
            log: log.to_path_buf(),
        })
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A client of the admin API.
#[derive(Clone)]
pub struct Api {
    /// `http://host:port`.
    pub base: String,
    /// The bearer token.
    pub token: String,
    agent: ureq::Agent,
}

impl Api {
    /// A client for `base` with `token`.
    pub fn new(base: String, token: String) -> Api {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        Api { base, token, agent }
    }

    /// Any request (GET, DELETE without a body; POST, PATCH with one): returns status and
    /// parsed body (or the text as a JSON string).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<(u16, Value)> {
        let url = format!("{}{}", self.base, path);
        let auth = token.map(|t| format!("Bearer {t}"));
        let res = match method {
            "GET" | "DELETE" => {
                let mut r = match method {
                    "GET" => self.agent.get(&url),
                    _ => self.agent.delete(&url),
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            _ => {
                let r = match method {
                    "PATCH" => self.agent.patch(&url),
                    _ => self.agent.post(&url),
                };
                let mut r = r.header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send(body.unwrap_or(b""))
            }
        };
        let mut res = res.map_err(|e| anyhow!("{method} {url}: {e}"))?;
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string().unwrap_or_default();
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// GET with the token; fails on a non-2xx answer.
    pub fn get(&self, path: &str) -> Result<Value> {
        let (s, v) = self.request("GET", path, Some(&self.token), None)?;
        if !(200..300).contains(&s) {
            bail!("GET {path}: {s} {v}");
        }
        Ok(v)
    }

    /// POST JSON with the token; fails on a non-2xx answer.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let (s, v) = self.request(
            "POST",
            path,
            Some(&self.token),
            Some(body.to_string().as_bytes()),
        )?;
        if !(200..300).contains(&s) {
            bail!("POST {path}: {s} {v}");
        }
        Ok(v)
    }

    /// Any method with a JSON body (or none) and the token: status and body, whatever the
    /// status.
    pub fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let bytes = body.map(|b| b.to_string().into_bytes());
        self.request(method, path, Some(&self.token), bytes.as_deref())
    }

    /// A join token for `uses` nodes.
    pub fn token(&self, uses: u32) -> Result<String> {
        let v = self.post(
            "/v1/join-tokens",
            &serde_json::json!({"ttl_s": 600, "uses": uses}),
        )?;
        Ok(v["token"].as_str().context("token in answer")?.to_string())
    }

    /// All nodes.
    pub fn nodes(&self) -> Result<Vec<Value>> {
        Ok(self.get("/v1/nodes")?["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// One node by id or name, if it exists.
    pub fn node(&self, id: &str) -> Option<Value> {
        self.get(&format!("/v1/nodes/{id}")).ok()
    }

    /// The state of a node by name.
    pub fn state(&self, name: &str) -> Option<String> {
        self.node(name)
            .and_then(|n| n["state"].as_str().map(str::to_string))
    }

    /// Every node, read page by page (`limit` / `page_token`).
    pub fn all_nodes(&self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut path = "/v1/nodes?limit=64".to_string();
        for _ in 0..1000 {
            let page = self.get(&path)?;
            out.extend(page["nodes"].as_array().cloned().unwrap_or_default());
            match page["next_page_token"].as_str() {
                Some(t) => path = format!("/v1/nodes?limit=64&page_token={t}"),
                None => return Ok(out),
            }
        }
        bail!("more than 1000 pages of nodes")
    }

    /// Events, oldest first.
    pub fn events(&self) -> Result<Vec<Value>> {
        Ok(self.get("/v1/events?limit=1000")?["events"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// A coordinator process.
pub struct Coordinator {
    /// The process.
    pub proc: Proc,
    /// Its data dir.
    pub dir: PathBuf,
    /// The admin client.
    pub api: Api,
    /// The QUIC address agents use.
    pub quic: String,
}

impl Coordinator {
    /// Waits until the coordinator's restart grace is over (it declares nobody down before).
    pub fn wait_restart_grace(&self) -> Result<()> {
        wait_for(Duration::from_secs(30), "the restart grace to end", || {
            let (_, v) = self.api.request("GET", "/healthz", None, None).ok()?;
            (v["restart_grace_remaining_ms"].as_u64() == Some(0)).then_some(())
        })
    }

    /// Initialises `dir` (if needed) and serves from it; `quic` fixes the QUIC address (for a
    /// restart that agents must find again), else port 0.
    pub fn start(dir: &Path, quic: Option<&str>) -> Result<Coordinator> {
        let exe = bin("tandem-coordinator");
        init_dir(dir)?;
        let _ = std::fs::remove_file(dir.join("endpoints.json"));
        let d = dir.to_str().context("utf-8 dir")?;
        let mut args = vec!["serve", "--data-dir", d];
        if let Some(q) = quic {
            args.extend(["--quic-addr", q]);
        }
        let n = std::fs::read_dir(dir)?.count();
        let mut proc = Proc::spawn(&exe, &args, &dir.join(format!("coordinator-{n}.log")))?;
        let pid = proc.pid();
        let endpoints: Value =
            wait_for(Duration::from_secs(20), "the coordinator to serve", || {
                if proc.exited().is_some() {
                    return Some(Value::Null);
                }
                let v: Value = serde_json::from_str(
                    &std::fs::read_to_string(dir.join("endpoints.json")).ok()?,
                )
                .ok()?;
                (v["pid"].as_i64() == Some(pid as i64)).then_some(v)
            })?;
        if endpoints.is_null() {
            bail!("the coordinator exited:\n{}", proc.log_text());
        }
        let token = std::fs::read_to_string(dir.join("admin.token"))?
            .trim()
            .to_string();
        let api = Api::new(
            format!("http://{}", endpoints["admin"].as_str().unwrap_or_default()),
            token,
        );
        Ok(Coordinator {
            proc,
            dir: dir.to_path_buf(),
            api,
            quic: endpoints["quic"].as_str().unwrap_or_default().to_string(),
        })
    }
}

impl Coordinator {
    /// Like [`Coordinator::start`], but first passes the text of `DATA_DIR/coordinator.toml`
    /// through `edit` (after initialising `dir` if needed): e.g. shorter heartbeats for a
    /// benchmark. The edited file is what `serve` reads, on this and later starts.
    pub fn start_with(
        dir: &Path,
        quic: Option<&str>,
        edit: impl FnOnce(&str) -> String,
    ) -> Result<Coordinator> {
        let toml = dir.join("coordinator.toml");
        init_dir(dir)?;
        let text = std::fs::read_to_string(&toml)?;
        std::fs::write(&toml, edit(&text))?;
        Coordinator::start(dir, quic)
    }
}

/// `tandem-coordinator init` of `dir` on port 0 for both endpoints, unless it was done already.
fn init_dir(dir: &Path) -> Result<()> {
    if dir.join("coordinator.toml").exists() {
        return Ok(());
    }
    let d = dir.to_str().context("utf-8 dir")?;
    let out = Command::new(bin("tandem-coordinator"))
        .args([
            "init",
            "--data-dir",
            d,
            "--admin-addr",
            "127.0.0.1:0",
            "--quic-addr",
            "127.0.0.1:0",
        ])
        .output()?;
    if !out.status.success() {
        bail!("init failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Given to [`start_agent`] (in `extra`): start the agent with its own default job user
/// (`nobody` as root) instead of the `--job-user root` the tests' agents get otherwise. Not
/// passed on to the agent.
pub const DEFAULT_JOB_USER: &str = "--tandem-tests-default-job-user";

/// Starts an agent named `name` with state in `state_dir`. Its jobs run as root (`--job-user
/// root`: most tests' jobs write to the test's own temporary dir, which only root can reach)
/// unless `extra` names `--job-user` or holds [`DEFAULT_JOB_USER`].
pub fn start_agent(
    quic: &str,
    state_dir: &Path,
    token: Option<&str>,
    name: &str,
    extra: &[&str],
) -> Result<Proc> {
    std::fs::create_dir_all(state_dir)?;
    let sd = state_dir.to_str().context("utf-8 dir")?;
    let mut args = vec![
        "run",
        "--state-dir",
        sd,
        "--coordinator",
        quic,
        "--name",
        name,
        "--bind-addr",
        "127.0.0.1",
    ];
    if let Some(t) = token {
        args.extend(["--token", t]);
    }
    let own_user = extra
        .iter()
        .any(|a| *a == "--job-user" || *a == DEFAULT_JOB_USER);
    if !own_user {
        args.extend(["--job-user", "root"]);
    }
    args.extend(extra.iter().filter(|a| **a != DEFAULT_JOB_USER));
    let n = std::fs::read_dir(state_dir)?.count();
    Proc::spawn(
        &bin("tandem-agent"),
        &args,
        &state_dir.join(format!("agent-{n}.log")),
    )
}

/// What a finished `tandemctl` left.
pub struct CtlOut {
    /// Whether it exited 0.
    pub ok: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `tandemctl --endpoint E --token T args` against `api` (no inherited TANDEM_*
/// variables), killed after 20 s.
pub fn tandemctl(api: &Api, args: &[&str]) -> Result<CtlOut> {
    let dir = tempfile::tempdir()?;
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut p = Proc {
        child: Command::new(bin("tandemctl"))
            .args(["--endpoint", &api.base, "--token", &api.token])
            .args(args)
            .env_remove("TANDEM_ENDPOINT")
            .env_remove("TANDEM_TOKEN")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()?,
        log: err.clone(),
    };
    let status = wait_for(Duration::from_secs(20), "tandemctl to finish", || {
        p.exited()
    })
    .with_context(|| format!("tandemctl {args:?}"))?;
    Ok(CtlOut {
        ok: status.success(),
        stdout: std::fs::read_to_string(&out)?,
        stderr: std::fs::read_to_string(&err)?,
    })
}

/// `tandemctl` that must succeed; returns its standard output.
pub fn tandemctl_ok(api: &Api, args: &[&str]) -> Result<String> {
    let o = tandemctl(api, args)?;
    anyhow::ensure!(
        o.ok,
        "tandemctl {args:?} failed:\n{}\n{}",
        o.stdout,
        o.stderr
    );
    Ok(o.stdout)
}

/// What a finished short-lived command left.
pub struct RunOut {
    /// Its exit code (`None` if a signal ended it).
    pub code: Option<i32>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `tandem-agent args` (a one-shot command such as `check` or `status`), killed after
/// `limit`; no inherited `TANDEM_*` variables.
pub fn agent_cmd(args: &[&str], limit: Duration) -> Result<RunOut> {
    let dir = tempfile::tempdir()?;
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut p = Proc {
        child: Command::new(bin("tandem-agent"))
            .args(args)
            .env_remove("TANDEM_JOIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()?,
        log: err.clone(),
    };
    let status = wait_for(limit, "tandem-agent to finish", || p.exited())
        .with_context(|| format!("tandem-agent {args:?}"))?;
    Ok(RunOut {
        code: status.code(),
        stdout: std::fs::read_to_string(&out)?,
        stderr: std::fs::read_to_string(&err)?,
    })
}

/// `tandem-agent status --state-dir DIR -o json` of a running agent, parsed.
pub fn agent_status(dir: &Path) -> Result<Value> {
    let o = agent_cmd(
        &[
            "status",
            "--state-dir",
            dir.to_str().context("utf-8 dir")?,
            "-o",
            "json",
        ],
        Duration::from_secs(30),
    )?;
    if o.code != Some(0) {
        bail!("tandem-agent status failed: {}", o.stderr);
    }
    serde_json::from_str(&o.stdout).with_context(|| o.stdout.clone())
}

/// Reads one HTTP/1.1 answer from `s` whole: its head and its body (by `content-length`, none
/// without one). `None` if the connection ended, or a read failed, before it was all there.
pub fn read_http_answer(s: &mut impl std::io::Read) -> Option<(String, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while got.len() < end + 4 + len {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).to_string();
            return Some((head, body));
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}
