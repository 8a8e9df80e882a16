//! `tandem-coordinator dev`: a whole system on loopback in one command.
//!
//! It initialises a data directory (a temporary one unless `--dir` is given), serves a
//! coordinator in this process, makes a join token, and starts N agents as real child processes
//! with their own state dirs — `tandem-agent` from beside this binary when it is there, else this
//! binary itself in its hidden `agent` mode, which runs the same agent code. Each agent gets its
//! own loopback address (127.0.0.2, .3, ...) so the node list shows who is who. Ctrl-C stops the
//! agents, then the coordinator.

use crate::config::RawConfig;
use crate::model::{NewEvent, TokenRecord};
use crate::store::Change;
use crate::CoordinatorError;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tandem_common::token::{self, JoinToken};

/// Dev mode options.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Agents to start.
    pub agents: u32,
    /// State directory (temporary if `None`).
    pub dir: Option<PathBuf>,
    /// Admin address (default 127.0.0.1:7070, or any free port if that is taken).
    pub admin_addr: Option<String>,
    /// GPU fixture for the agents (testing aid).
    pub gpu_fixture: Option<PathBuf>,
}

fn agent_command(exe_dir: Option<&Path>) -> (PathBuf, Vec<String>) {
    if let Some(dir) = exe_dir {
        let sibling = dir.join("tandem-agent");
        if sibling.is_file() {
            return (sibling, vec!["run".into()]);
        }
    }
    let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("tandem-coordinator"));
    (me, vec!["agent".into()])
}

/// Runs dev mode until `shutdown` resolves.
pub async fn run(
    opts: DevOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), CoordinatorError> {
    let _tmp;
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => {
            let t = tempfile::Builder::new()
                .prefix("tandem-dev-")
                .tempdir()
                .map_err(|source| CoordinatorError::Io {
                    what: "making a temporary dir".into(),
                    source,
                })?;
            let p = t.path().to_path_buf();
            _tmp = t;
            p
        }
    };
    let coord_dir = dir.join("coordinator");
    if !coord_dir.join("coordinator.toml").exists() {
        let admin = match &opts.admin_addr {
            Some(a) => a.clone(),
            None if std::net::TcpListener::bind("127.0.0.1:7070").is_ok() => {
                "127.0.0.1:7070".into()
            }
            None => "127.0.0.1:0".into(),
        };
        crate::init::init(&coord_dir, Some(&admin), Some("127.0.0.1:0"))?;
    }
    let cfg = RawConfig::load(&coord_dir.join("coordinator.toml"))?.validate(&coord_dir)?;
    let running = crate::start(cfg.clone()).await?;

    let tok = JoinToken::generate(running.ca.pin());
    let now = tandem_common::time::unix_ms();
    running.membership.store().commit(vec![
        Change::PutToken(TokenRecord {
            id: tok.id.clone(),
            secret_sha256: hex::encode(token::hash_secret(&tok.secret)),
            created_ms: now,
            expires_ms: now + 3_600_000,
            uses_allowed: opts.agents.max(1),
            uses: 0,
            cluster: None,
            revoked_ms: None,
        }),
        Change::Event(NewEvent {
            kind: "token_created",
            node: None,
            message: format!("dev mode token {} for {} agents", tok.id, opts.agents),
        }),
    ])?;

    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let (program, base_args) = agent_command(exe_dir.as_deref());
    let mut children = Vec::new();
    for i in 1..=opts.agents {
        let state = dir.join(format!("agents/agent-{i}"));
        std::fs::create_dir_all(&state).map_err(|source| CoordinatorError::Io {
            what: format!("creating {}", state.display()),
            source,
        })?;
        let log = std::fs::File::create(state.join("agent.log")).map_err(|source| {
            CoordinatorError::Io {
                what: "creating the agent log".into(),
                source,
            }
        })?;
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&base_args)
            .arg("--state-dir")
            .arg(&state)
            .arg("--coordinator")
            .arg(running.quic_addr.to_string())
            .arg("--token")
            .arg(tok.to_string())
            .arg("--name")
            .arg(format!("dev-agent-{i}"))
            .arg("--bind-addr")
            .arg(format!("127.0.0.{}", 1 + i.min(250)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(f) = &opts.gpu_fixture {
            cmd.arg("--gpu-fixture").arg(f);
        }
        let child = cmd.spawn().map_err(|source| CoordinatorError::Io {
            what: format!("starting {}", program.display()),
            source,
        })?;
        children.push(child);
    }

    let endpoint = format!("http://{}", running.admin_addr);
    println!(
        "Tandem dev mode is running: a coordinator and {} agents on loopback.",
        opts.agents
    );
    println!();
    println!("  admin API   {endpoint}");
    println!("  admin token {}", cfg.admin_token);
    println!("  QUIC        {}", running.quic_addr);
    println!("  state       {}", dir.display());
    println!();
    println!("Try, in another shell:");
    println!(
        "  export TANDEM_ENDPOINT={endpoint} TANDEM_TOKEN={}",
        cfg.admin_token
    );
    println!("  tandemctl nodes list        # or: curl -H \"Authorization: Bearer $TANDEM_TOKEN\" $TANDEM_ENDPOINT/v1/nodes");
    println!("  tandemctl events");
    println!("  kill -9 <an agent's pid>    # and watch it go suspect, then down");
    println!();
    println!(
        "Agent pids: {}",
        children
            .iter()
            .filter_map(|c| c.id())
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("Press Ctrl-C to stop.");

    let r = running.run_until(shutdown).await;
    for c in &mut children {
        if let Some(pid) = c.id() {
            // SIGTERM first, so agents close their connections cleanly.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    for c in &mut children {
        if tokio::time::timeout(Duration::from_secs(3), c.wait())
            .await
            .is_err()
        {
            let _ = c.kill().await;
        }
    }
    r
}
