//! The job side's settings and the log requests waiting for their answer (the planner and
//! the commands in flight, `fleet::InFlight`, are kept in the fleet table under its lock), and
//! the commands the planner's decisions become.

use super::fleet::Fleet;
use crate::clock::Map as HashMap;
use crate::jobs::model::JobRecord;
use crate::store::StoreError;
use std::sync::Mutex;
use std::time::Duration;
use tandem_common::ids::NodeId;
use tandem_common::proto::{AgentMsg, CoordMsg, StartJob};

/// A start unanswered this long makes the coordinator ask its node what it holds.
pub const START_DEADLINE: Duration = Duration::from_secs(20);

/// How long a user stop waits between SIGTERM and SIGKILL.
pub const USER_KILL_TIMEOUT_MS: u32 = 5_000;

/// Why a job was not submitted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// A job that has not ended already has this name.
    #[error("a job named `{name}` is already {state} ({id})")]
    NameTaken {
        /// The name.
        name: String,
        /// The other job's state.
        state: &'static str,
        /// The other job's id.
        id: String,
    },
    /// A stopped job of this name still has a copy that may run (its end is not known yet):
    /// a job submitted under the name now would run beside it.
    #[error("a job named `{name}` is still stopping ({id}): its copy on {node} (token {token}) has not ended yet; submit it again once that copy has ended (`tandemctl jobs stop` waits for that)")]
    NameStopping {
        /// The name.
        name: String,
        /// The stopped job's id.
        id: String,
        /// The node of its copy.
        node: String,
        /// The copy's token.
        token: u64,
    },
    /// The store failed; the job was not recorded (or, if it was, it is placed at the next
    /// start's reconciliation).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A command for an agent, decided (it leaves once durable).
#[derive(Debug)]
pub enum Outgoing {
    /// Start a copy (after `delay`, or once `after` — an old copy — has ended).
    Start {
        /// Where.
        node: NodeId,
        /// The order.
        cmd: StartJob,
        /// Restart backoff.
        delay: Duration,
        /// `(node, token)` of a copy that must end first.
        after: Option<(NodeId, u64)>,
    },
    /// Stop a copy.
    Stop {
        /// Where.
        node: NodeId,
        /// The job.
        job: String,
        /// The copy's token.
        token: u64,
        /// SIGTERM to SIGKILL.
        kill_timeout_ms: u32,
    },
}

/// The job side of the coordinator.
pub struct JobRuntime {
    /// Log requests waiting for their answer.
    pub(super) logs: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<AgentMsg>>>,
    pub(super) fence_kill_timeout_ms: u32,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl JobRuntime {
    /// A runtime for a coordinator with this fencing kill timeout.
    pub fn new(fence_kill_timeout: Duration) -> Self {
        Self {
            logs: Mutex::new(HashMap::default()),
            fence_kill_timeout_ms: fence_kill_timeout.as_millis() as u32,
        }
    }
}

pub(super) fn start_cmd(job: &JobRecord, token: u64, gpus: &[String]) -> StartJob {
    StartJob {
        job_id: job.id.clone(),
        job_name: job.spec.name.clone(),
        fencing_token: token,
        command: job.spec.command.clone(),
        env: job.spec.env.clone(),
        workdir: job.spec.workdir.clone(),
        gpus: gpus.to_vec(),
    }
}

/// The start command for `cmd`, with its job's resources as limits (the outbox gives older
/// sessions a plain start).
pub(super) fn start_msg(t: &Fleet, cmd: StartJob) -> CoordMsg {
    let job = t.jobs.get(&cmd.job_id);
    let limits = job
        .map(|j| tandem_common::proto::JobLimits {
            memory_bytes: j.spec.resources.memory_bytes,
            cpu_millis: j.spec.resources.cpu_millis,
        })
        .unwrap_or_default();
    CoordMsg::StartAs {
        user: job.and_then(|j| j.spec.user.clone()),
        group: job.and_then(|j| j.spec.group.clone()),
        start: Box::new(cmd),
        limits,
    }
}

/// Queues `msg` to `node`'s session, with the fleet table `t` locked by the caller (so that
/// what decided the command and its sending see the same state).
pub(super) fn send_in(t: &Fleet, node: &NodeId, msg: CoordMsg) {
    match t.nodes.get(node).and_then(|e| e.live.as_ref()) {
        Some(l) => {
            // Not queued only when the session is ending: the node's next registration is
            // reconciled against the job records, which hold this decision.
            if let Err(e) = l.control.push(msg) {
                tracing::info!(%node, error = %e, "job command not queued; reconciled when the node registers again");
            }
        }
        None => {
            tracing::info!(%node, "node has no connection; its job command waits for it to register")
        }
    }
}

/// Whether `j`'s current placement is `(node, token)` and still waits for its start (not
/// started, not replaced, the job not ended): what a delayed or re-sent start is checked
/// against.
pub(super) fn awaits_start(j: &JobRecord, node: &NodeId, token: u64) -> bool {
    !j.state.is_terminal()
        && j.current
            .as_ref()
            .is_some_and(|p| p.node == *node && p.fencing_token == token && p.started_ms.is_none())
}

/// The older copy the job's current placement waits for, if any.
pub(super) fn waits_for(j: &JobRecord) -> Option<(NodeId, u64)> {
    j.current
        .as_ref()
        .filter(|p| p.started_ms.is_none())
        .and_then(|p| p.after.as_ref())
        .map(|a| (a.node.clone(), a.fencing_token))
}
