//! The Tandem agent: reports its node's hardware, heartbeats to the coordinator over QUIC,
//! and holds the lease under which the node may run jobs.
//!
//! # Layout
//! - `config`: flags and TOML, checked into a typed `Config`.
//! - `cli`: the `run` arguments, and `check`'s.
//! - `check`: `tandem-agent check`, the six steps of a join tried without joining.
//! - `containment`: a cgroup per job (cgroup v2, or a hybrid host's unified hierarchy) or,
//!   where none can be used, the job's process group; the mode is decided once at start.
//! - `exits`: job exits kept on disk until the coordinator acknowledges them.
//! - `identity`: the node's key, certificate and id on disk.
//! - `lease`: the lease, a plain struct driven by `now` (the agent's half of the fencing argument).
//! - `leftovers`: which job supervisors of a previous agent run live; those not re-adopted
//!   (`supervisor::adopt`) are waited out before registering.
//! - `link`: join, register, heartbeat, reconnect; its `handshake` steps (connect, the `Hello`s,
//!   refusals, backoff) are public, and tandem-swarm's simulated agents run them too.
//! - `statelock`: one agent per state dir (a `flock` on `agent.lock`).
//! - `status`: `tandem-agent status`: a snapshot the link publishes, served on a unix socket
//!   in the state dir (0600), and the client that prints it.
//! - `retention`: which finished jobs' dirs may be removed, and when (a plain decision).
//! - `renewal`: renewing the node certificate over the live connection, before it runs out.
//! - `probe`: the hardware report: the host through sysinfo and `/proc`, GPUs through NVML on a
//!   dedicated thread with a deadline, GPU health events, GPU fixtures.
//! - `inventory`: the `tandem-agent inventory` command's output (table or JSON).
//! - `supervisor`: runs jobs, each under a per-job `shim` process that holds the lease deadline
//!   and fences the job when it passes, even if the agent crashed or hung; a new agent run
//!   re-adopts the shims through their control sockets (`supervisor::adopt`).

pub mod check;
pub mod cli;
pub mod config;
pub mod containment;
pub mod exits;
pub mod identity;
pub mod inventory;
pub mod lease;
pub mod leftovers;
pub mod link;
pub mod probe;
pub mod renewal;
pub mod retention;
pub mod statelock;
pub mod status;
pub mod supervisor;

use std::future::Future;
use tokio::sync::watch;

pub use link::{AgentError, LeaseView};

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    cfg: config::Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    // Before anything in the state dir is touched: a second agent on it is refused.
    let _state_lock = statelock::lock(&cfg.state_dir)?;
    let (lease_tx, _lease_rx) = watch::channel(LeaseView::default());
    let prober = probe::Prober::new(probe::ProbeOptions {
        gpu_fixture: cfg.gpu_fixture.clone(),
        ..Default::default()
    });
    let reports = probe::spawn_sampler(prober, cfg.sample_interval).await;
    let mut link = link::Link::new(cfg.clone(), reports, lease_tx)?;
    let contained = std::sync::Arc::new(containment::Containment::detect(
        &cfg.state_dir,
        cfg.containment,
    ));
    match contained.mode() {
        containment::Mode::ProcessGroup => tracing::warn!(
            containment = contained.mode().name(),
            why = contained.note(),
            "jobs are contained by their process group only: a job that leaves it (setsid, \
             set -m, a daemon) escapes the fence"
        ),
        m => tracing::info!(containment = m.name(), "{}", contained.note()),
    }
    if let Some(hint) = contained.slow_moves_hint() {
        tracing::info!("{hint}");
    }
    link.set_containment(std::sync::Arc::clone(&contained));
    match &cfg.job_user {
        Some(u) => {
            tracing::info!(user = %u.name, uid = u.uid, gid = u.gid, allowed_users = ?cfg.allowed_job_users, allowed_groups = ?cfg.allowed_job_groups, "jobs run as this user unless they name an allowed one")
        }
        None => tracing::warn!(
            "jobs run as the agent's own user (it is not root, and cannot switch to another): \
             they can read the node's key and every job's spec"
        ),
    }
    // `tandem-agent status` is a convenience: an agent that cannot serve it still runs.
    let _status = match status::serve(&cfg.state_dir, link.status()) {
        Ok(task) => Some(AbortOnDrop(task)),
        Err(e) => {
            tracing::warn!(error = %e, "tandem-agent status will not answer");
            None
        }
    };
    // Ready once local state is loaded: boot never waits on the network.
    tandem_common::notify::ready(&format!("starting: connecting to {}", cfg.coordinator));
    // Never register while copies from a previous run may still be alive (see `leftovers`).
    // Ends no agent saw (a copy that ended while no agent ran) are then kept as exits to
    // report, or a `restart: never` job that ended meanwhile would be placed again.
    let mut link = link;
    tokio::pin!(shutdown);
    // First the copies that can be re-adopted (they continue); then the wait for the others.
    let alive = leftovers::held(&cfg.state_dir, &contained);
    let adopted: Vec<String> = tokio::select! {
        a = link.adopt_leftovers(&alive) => a.into_iter().map(|a| a.job_id).collect(),
        _ = &mut shutdown => return Ok(()),
    };
    tokio::select! {
        r = leftovers::wait_until_fenced(&cfg.state_dir, &contained, &adopted, leftovers::MAX_WAIT) => {
            if let Err(still) = r {
                tracing::error!(jobs = ?still, "job copies of a previous run outlived the longest lease; registering anyway");
            }
        }
        _ = &mut shutdown => return Ok(()),
    }
    link.keep_leftover_exits();
    let result = link.run(shutdown).await;
    // The link (and its supervisor) is gone: leave no empty cgroups behind.
    contained.remove_empty_tree();
    result
}

/// Ends a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub use tandem_common::signal::shutdown_signal;
