//! `tandem-coordinator dev`: a whole system on loopback in one command.
//!
//! It initialises a data directory (a temporary one unless `--dir` is given), serves a
//! coordinator in this process, makes a `pool` cluster named `dev` and a join token for it, and
//! starts N agents as real child processes with their own state dirs, so a job submitted with
//! `--cluster dev` runs at once and moves when its node is killed (the banner prints that demo). The agents are the real `tandem-agent` binary (this crate does not
//! link the agent): the one beside this binary (cargo's target dir, as `cargo build --bins`
//! leaves them), else the first on `PATH`; with neither, dev mode refuses before it starts
//! anything and says how to build it. Each agent gets its own loopback address (127.0.0.2, .3,
//! ...) so the node list shows who is who. Ctrl-C stops the agents, then the coordinator.
//!
//! # The agents never outlive dev mode
//! Each agent is started with `PR_SET_PDEATHSIG = SIGKILL` (set between fork and exec), so
//! the kernel kills it when dev mode dies, even by `kill -9`, which runs no code of ours. The
//! signal follows the *thread* that forked: agents are spawned from the task `run` drives,
//! which `main` runs under `block_on` on the main thread, whose end is the process's end. A
//! dev mode killed between the fork and the `prctl` is caught by comparing the parent's pid.
//! The agents' jobs are fenced by their shims when the dead agents' lease runs out, as after
//! any agent crash. Each agent's pid is in `STATE/agents/NAME/agent.pid`.

use crate::config::RawConfig;
use crate::engine::{NewCluster, OpError};
use crate::model::{ClusterMode, NewEvent, TokenRecord};
use crate::store::Change;
use crate::CoordinatorError;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tandem_common::token::JoinToken;

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

/// The agent binary's file name.
const AGENT_BIN: &str = "tandem-agent";

/// Whether `p` is a file someone may execute (as a shell's PATH search would take it).
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where dev mode finds `tandem-agent`: in `exe_dir` (the directory of this binary), else in
/// the first directory of `path` (a `PATH` value) that holds an executable one.
pub fn find_agent(
    exe_dir: Option<&Path>,
    path: Option<&OsStr>,
) -> Result<PathBuf, CoordinatorError> {
    let beside = exe_dir.map(|d| d.join(AGENT_BIN));
    let on_path = path
        .into_iter()
        .flat_map(std::env::split_paths)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(AGENT_BIN));
    beside
        .clone()
        .into_iter()
        .chain(on_path)
        .find(|p| is_executable(p))
        .ok_or_else(|| CoordinatorError::AgentBinaryMissing {
            beside: beside
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(this binary's directory is unknown)".into()),
        })
}

/// Runs dev mode until `shutdown` resolves.
pub async fn run(
    opts: DevOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), CoordinatorError> {
    // Before anything is made or started: without an agent binary there is no dev fleet.
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let program = match opts.agents {
        0 => None,
        _ => Some(find_agent(
            exe_dir.as_deref(),
            std::env::var_os("PATH").as_deref(),
        )?),
    };
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
    let mut cfg = RawConfig::load(&coord_dir.join("coordinator.toml"))?.validate(&coord_dir)?;
    // Dev mode stops its agents with itself: a restart hold would only leave their jobs
    // running for its length after Ctrl-C.
    cfg.restart_hold = crate::config::RestartHold::Off;
    let running = crate::start(cfg.clone()).await?;

    // The `dev` pool cluster the agents join (kept from an earlier run of the same `--dir`).
    let made = running
        .engine
        .call(|e| {
            e.create_cluster(
                NewCluster {
                    name: DEV_CLUSTER.into(),
                    alias: String::new(),
                    description: "made by tandem-coordinator dev".into(),
                    mode: ClusterMode::Pool,
                    labels: Default::default(),
                    deletion_protection: false,
                    min_node: None,
                    failback: false,
                },
                e.quotas,
            )
            .map(|(c, _)| Some(c))
            .or_else(|err| match err {
                // Kept from an earlier run of the same `--dir`.
                OpError::AlreadyExists(_) => Ok(e.cluster(DEV_CLUSTER)),
                other => Err(other),
            })
        })
        .await;
    let cluster = match made {
        Ok(c) => c.ok_or_else(|| {
            CoordinatorError::Dev(format!("cluster {DEV_CLUSTER} vanished meanwhile"))
        })?,
        Err(e) => {
            return Err(CoordinatorError::Dev(format!(
                "creating the {DEV_CLUSTER} cluster: {e}"
            )))
        }
    };

    let tok = JoinToken::generate(running.ca.pin());
    let now = tandem_common::time::unix_ms();
    let store = running.engine.store();
    let (_, ticket) = store.apply(vec![
        Change::PutToken(TokenRecord::issued(
            &tok,
            now,
            3_600_000,
            opts.agents.max(1),
            Some(cluster.id.clone()),
        )),
        Change::Event(NewEvent {
            kind: "token_created",
            node: None,
            message: format!(
                "dev mode token {} for {} agents of cluster {DEV_CLUSTER}",
                tok.id, opts.agents
            ),
        }),
    ])?;
    // On disk before any agent is given it.
    store.durable(ticket).await;

    let mut children = Vec::new();
    for i in 1..=opts.agents {
        let Some(program) = &program else { break };
        let name = format!("dev-agent-{i}");
        let state = dir.join("agents").join(&name);
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
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg("run")
            .arg("--state-dir")
            .arg(&state)
            .arg("--coordinator")
            .arg(running.quic_addr.to_string())
            .arg("--token")
            .arg(tok.to_string())
            .arg("--name")
            .arg(&name)
            .arg("--bind-addr")
            .arg(format!("127.0.0.{}", 1 + i.min(250)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(f) = &opts.gpu_fixture {
            cmd.arg("--gpu-fixture").arg(f);
        }
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|source| CoordinatorError::Io {
            what: format!("starting {}", program.display()),
            source,
        })?;
        if let Some(pid) = child.id() {
            let pid_file = state.join("agent.pid");
            std::fs::write(&pid_file, format!("{pid}\n")).map_err(|source| {
                CoordinatorError::Io {
                    what: format!("writing {}", pid_file.display()),
                    source,
                }
            })?;
        }
        children.push(child);
    }

    let endpoint = format!("http://{}", running.admin_addr);
    let pids: Vec<String> = children
        .iter()
        .filter_map(|c| c.id())
        .map(|p| p.to_string())
        .collect();
    print!(
        "{}",
        banner(&Banner {
            agents: opts.agents,
            endpoint: &endpoint,
            token: &cfg.admin_token,
            quic: &running.quic_addr.to_string(),
            dir: &dir,
            agent: program.as_deref(),
            bin_dir: exe_dir.as_deref(),
            pids: &pids,
        })
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

/// The cluster dev mode makes and its agents join.
pub const DEV_CLUSTER: &str = "dev";

/// Makes `cmd`'s child die (SIGKILL) when the thread that spawns it, and so dev mode, dies.
fn die_with_parent(cmd: &mut tokio::process::Command) {
    let parent = std::process::id();
    // SAFETY: between fork and exec only async-signal-safe calls are made (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Dev mode died before the prctl: nobody would kill this agent.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other(
                    "dev mode exited while starting agents",
                ));
            }
            Ok(())
        });
    }
}

/// What the banner shows.
struct Banner<'a> {
    agents: u32,
    endpoint: &'a str,
    token: &'a str,
    quic: &'a str,
    dir: &'a Path,
    agent: Option<&'a Path>,
    bin_dir: Option<&'a Path>,
    pids: &'a [String],
}

/// The banner: where everything is, the `export` line for another shell, and the failover
/// demo (the same lines as the README's first section, which an end-to-end test runs).
fn banner(b: &Banner) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Tandem dev mode is running: a coordinator and {} agents on loopback, in pool cluster `{DEV_CLUSTER}`.",
        b.agents
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "  console     {}/ui (log in with the admin token)",
        b.endpoint
    );
    let _ = writeln!(o, "  admin API   {}", b.endpoint);
    let _ = writeln!(o, "  admin token {}", b.token);
    let _ = writeln!(o, "  QUIC        {}", b.quic);
    let _ = writeln!(o, "  state       {}", b.dir.display());
    if let Some(p) = b.agent {
        let _ = writeln!(o, "  agents      {}", p.display());
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "In another shell:");
    let path = b
        .bin_dir
        .map(|d| format!("PATH={}:$PATH ", d.display()))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "  export {path}TANDEM_ENDPOINT={} TANDEM_TOKEN={} TANDEM_DEV={}",
        b.endpoint,
        b.token,
        b.dir.display()
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Failover demo: run a job, kill -9 the agent running it, watch it move:"
    );
    for l in DEMO {
        let _ = writeln!(o, "  {l}");
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "Agent pids: {}", b.pids.join(" "));
    o
}

/// The failover demo, as printed and as in the README.
pub const DEMO: [&str; 3] = [
    "tandemctl jobs run --name demo --cluster dev -- /bin/sh -c 'while sleep 1; do date; done'",
    "kill -9 $(cat $TANDEM_DEV/agents/$(tandemctl jobs node demo)/agent.pid)",
    "sleep 5; tandemctl jobs show demo   # placements: node down on one agent, running on another",
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, mode: u32) -> PathBuf {
        let p = dir.join(AGENT_BIN);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn the_agent_beside_this_binary_comes_first_then_path() {
        let t = tempfile::tempdir().unwrap();
        let (beside, first, second) =
            (t.path().join("b"), t.path().join("p1"), t.path().join("p2"));
        for d in [&beside, &first, &second] {
            std::fs::create_dir(d).unwrap();
        }
        let path = std::env::join_paths([&first, &second]).unwrap();
        let on_second = file(&second, 0o755);
        assert_eq!(find_agent(Some(&beside), Some(&path)).unwrap(), on_second);
        // Not executable: passed over, as a shell would.
        file(&first, 0o644);
        assert_eq!(find_agent(Some(&beside), Some(&path)).unwrap(), on_second);
        let here = file(&beside, 0o755);
        assert_eq!(find_agent(Some(&beside), Some(&path)).unwrap(), here);
    }

    #[test]
    fn the_banner_prints_the_export_line_and_the_demo() {
        let pids = vec!["11".to_string(), "12".to_string()];
        let text = banner(&Banner {
            agents: 2,
            endpoint: "http://127.0.0.1:7070",
            token: "tok",
            quic: "127.0.0.1:7443",
            dir: Path::new("/tmp/d"),
            agent: None,
            bin_dir: Some(Path::new("/opt/t")),
            pids: &pids,
        });
        assert!(text.contains(
            "export PATH=/opt/t:$PATH TANDEM_ENDPOINT=http://127.0.0.1:7070 TANDEM_TOKEN=tok TANDEM_DEV=/tmp/d"
        ));
        for l in DEMO {
            assert!(text.contains(&format!("  {l}\n")), "{text}");
        }
        assert!(text.contains("Agent pids: 11 12\n"));
    }

    #[test]
    fn no_agent_anywhere_is_refused_with_how_to_build_it() {
        let t = tempfile::tempdir().unwrap();
        let e = find_agent(Some(t.path()), Some(OsStr::new(""))).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CoordinatorError::AgentBinaryMissing { .. }));
        assert!(
            msg.contains("tandem-agent") && msg.contains("PATH"),
            "{msg}"
        );
        assert!(msg.contains("cargo build --release --bins"), "{msg}");
        assert!(msg.contains(&t.path().display().to_string()), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert!(find_agent(None, None).is_err());
    }
}
