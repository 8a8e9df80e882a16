//! The records of a job: what was asked for ([`JobSpec`]), where it runs ([`Placement`]), and
//! how it stands ([`JobRecord`]).
//!
//! Stored as JSON like every other record (a person can read a dump; old records gain fields
//! through `#[serde(default)]`). A spec refuses unknown fields: a typo such as `"restarts"` for
//! `"max_restarts"` must be a 400 naming the field, not a silently ignored setting.
//!
//! # The invariants a record keeps
//! - `current` is `Some` exactly in the states that hold a node (`starting`, `running`,
//!   `migrating`); `pending`, `failed`, `stopped` and `completed` have none.
//! - `last_fencing_token` is the highest token ever issued for the job and only grows; the
//!   current placement (if any) carries it. See [`super::fencing`].
//! - `history` holds ended placements, oldest first, at most [`HISTORY_MAX`].

use crate::model::TaintEffect;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use tandem_common::ids::NodeId;

/// The most ended placements a record keeps (the oldest are dropped): a job that restarts all
/// day must not grow without bound.
pub const HISTORY_MAX: usize = 100;

/// What a job needs on a node. CPU and memory are an allocation (what placement counts), not a
/// limit the agent enforces; GPUs are given whole, by UUID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU in thousandths of a core.
    pub cpu_millis: u64,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// Whole GPUs.
    #[serde(default)]
    pub gpus: u32,
}

/// When the agent starts a job again after it exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// After a non-zero exit or a signal, up to `max_restarts` times (`on-failure` is accepted
    /// too, the spelling of the example).
    #[default]
    #[serde(alias = "on-failure")]
    OnFailure,
    /// After every exit, up to `max_restarts` times.
    Always,
    /// Never: the first exit ends the job.
    Never,
}

/// Where a job may run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// Every one must be a label of the node, with the same value.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A taint the job accepts: a node tainted `key` (with `value`, when given) is not closed to it.
///
/// Kept because taints exist (issue 4: "no new work unless the work tolerates it"): without
/// tolerations a tainted node could never be given work on purpose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    /// The taint's key.
    pub key: String,
    /// The taint's value; `None` tolerates every value of the key.
    #[serde(default)]
    pub value: Option<String>,
    /// The taint's effect; `None` tolerates every effect.
    #[serde(default)]
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// Whether it tolerates `taint`.
    pub fn tolerates(&self, taint: &crate::model::Taint) -> bool {
        self.key == taint.key
            && self.value.as_ref().is_none_or(|v| *v == taint.value)
            && self.effect.is_none_or(|e| e == taint.effect)
    }
}

fn default_max_restarts() -> u32 {
    5
}

/// A job as asked for (`POST /v1/jobs`). Check it with [`super::validate::validate_spec`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Unique name, by the cluster name rules (not shaped like a job id).
    pub name: String,
    /// The cluster's id. The API takes an id or a name and stores the id.
    pub cluster: String,
    /// The program and its arguments; `command[0]` is run (looked up in `PATH` if relative).
    pub command: Vec<String>,
    /// Added to the agent's environment (after which the agent sets the `TANDEM_*` variables
    /// and `CUDA_VISIBLE_DEVICES`, which a spec may not set).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The working directory, absolute; `None`: the job's directory in the agent's state dir.
    #[serde(default)]
    pub workdir: Option<String>,
    /// What it needs on a node.
    pub resources: Resources,
    /// When it is started again after an exit.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// How many restarts in all before it is `failed` (or `completed`).
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// Where it may run.
    #[serde(default)]
    pub constraints: Constraints,
    /// The taints it accepts.
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// The user it runs as on its node, by name; `None`: the node's default (its agent's
    /// `job_user`: `nobody` unless configured otherwise). A node runs a job as a named user
    /// only if its agent's `allowed_job_users` lists it, and refuses the start otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The group it runs as, by name; `None`: its user's primary group (for the node's default
    /// user, the agent's `job_group` if set). A node runs a job under a named group only if
    /// the job's user is a member of it or its agent's `allowed_job_groups` lists it; nodes
    /// older than protocol 6 refuse every start that names a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// How a job stands. `tandemctl` keeps its own copy of these names for `jobs list --state`
/// (`coordinator/ctl/src/lib.rs`): add a state there too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Fits nowhere (yet); `state_reason` says why.
    Pending,
    /// Placed; the start command is out, the agent has not confirmed it.
    Starting,
    /// The agent confirmed the start of the current placement.
    Running,
    /// Moving to a new node (node down, drain); running again once the new node confirms.
    Migrating,
    /// Ended on a failure it is not restarted after.
    Failed,
    /// Stopped by a user.
    Stopped,
    /// Ended successfully and is not restarted.
    Completed,
}

impl JobState {
    /// All states, for metrics.
    pub const ALL: [JobState; 7] = [
        Self::Pending,
        Self::Starting,
        Self::Running,
        Self::Migrating,
        Self::Failed,
        Self::Stopped,
        Self::Completed,
    ];

    /// The name used in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Migrating => "migrating",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
            Self::Completed => "completed",
        }
    }

    /// Whether the job is over (`failed`, `stopped`, `completed`): nothing places it again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Failed | Self::Stopped | Self::Completed)
    }

    /// Whether the job holds a node in this state (`starting`, `running`, `migrating`).
    pub fn holds_node(self) -> bool {
        matches!(self, Self::Starting | Self::Running | Self::Migrating)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One assignment of a job to a node: one start command, one fencing token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The node.
    pub node: NodeId,
    /// The token the start command carries (and the job sees as `TANDEM_FENCING_TOKEN`).
    pub fencing_token: u64,
    /// The GPUs given to it, by UUID (its `CUDA_VISIBLE_DEVICES`).
    #[serde(default)]
    pub gpus: Vec<String>,
    /// When the agent confirmed the start (Unix ms).
    #[serde(default)]
    pub started_ms: Option<u64>,
    /// When it ended (Unix ms).
    #[serde(default)]
    pub ended_ms: Option<u64>,
    /// Why it ended: `exited 1`, `killed by signal 9`, `node down`, `drained`,
    /// `stopped by user`, ...
    #[serde(default)]
    pub end_reason: Option<String>,
    /// A copy that must have ended before this placement may start (a move stops the old
    /// copy first): stored, so that a coordinator restarted in the middle of a move still
    /// waits for it. Cleared, durably, when that copy's exit is reported, its node is
    /// declared down, or its node registers without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<OldCopy>,
}

/// A copy of a job on a node, by its token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OldCopy {
    /// The node.
    pub node: NodeId,
    /// The copy's token.
    pub fencing_token: u64,
}

impl Placement {
    /// A placement that has not started yet.
    pub fn new(node: NodeId, fencing_token: u64, gpus: Vec<String>) -> Self {
        Self {
            node,
            fencing_token,
            gpus,
            started_ms: None,
            ended_ms: None,
            end_reason: None,
            after: None,
        }
    }
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// `j-` and 12 hex digits ([`new_job_id`]).
    pub id: String,
    /// What was asked for.
    pub spec: JobSpec,
    /// How it stands.
    pub state: JobState,
    /// Why it is in that state (for `pending`: why it fits nowhere).
    pub state_reason: String,
    /// Where it runs now (see the module docs for when this is `Some`).
    #[serde(default)]
    pub current: Option<Placement>,
    /// Ended placements, oldest first.
    #[serde(default)]
    pub history: Vec<Placement>,
    /// Restarts after exits so far (moves are not restarts).
    #[serde(default)]
    pub restarts: u32,
    /// The highest fencing token ever issued for this job (0: none yet). Only grows; the next
    /// one is [`super::fencing::next_token`].
    #[serde(default)]
    pub last_fencing_token: u64,
    /// When it was made (Unix ms).
    pub created_ms: u64,
    /// A copy that may still run, left from a placement that waited for it and was given up
    /// (its new node died and no other could take the job): the job's next placement waits
    /// for it too. On a stopped job: its last copy, not yet known to have ended; the job keeps
    /// its name and its room on that node until then ([`JobRecord::stopping`]). Cleared once
    /// that copy has ended, its node is down, or its node registers without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waits_for: Option<OldCopy>,
}

impl JobRecord {
    /// A new job: `pending` until it is placed, no token issued yet.
    pub fn new(id: String, spec: JobSpec, created_ms: u64) -> Self {
        Self {
            id,
            spec,
            state: JobState::Pending,
            state_reason: "not placed yet".into(),
            current: None,
            history: Vec::new(),
            restarts: 0,
            last_fencing_token: 0,
            created_ms,
            waits_for: None,
        }
    }

    /// A stopped job's last copy that may still run (the API's `stopping`): its name is not
    /// free, nor its room on that node, until the copy's end is known.
    pub fn stopping(&self) -> Option<&OldCopy> {
        self.waits_for.as_ref().filter(|_| self.state.is_terminal())
    }

    /// The GPUs the copy `c` of this job was given (from its placement).
    pub fn gpus_of(&self, c: &OldCopy) -> &[String] {
        self.current
            .iter()
            .chain(self.history.iter().rev())
            .find(|p| p.node == c.node && p.fencing_token == c.fencing_token)
            .map(|p| p.gpus.as_slice())
            .unwrap_or_default()
    }

    /// The node it runs on now (the API's `node`).
    pub fn node(&self) -> Option<&NodeId> {
        self.current.as_ref().map(|p| &p.node)
    }

    /// The token of its current placement (the API's `fencing_token`).
    pub fn fencing_token(&self) -> Option<u64> {
        self.current.as_ref().map(|p| p.fencing_token)
    }

    /// Ends the current placement (if any) at `now_ms` for `why` and moves it to the history.
    pub fn end_current(&mut self, now_ms: u64, why: &str) {
        if let Some(mut p) = self.current.take() {
            p.ended_ms = Some(now_ms);
            p.end_reason = Some(why.to_string());
            self.history.push(p);
            if self.history.len() > HISTORY_MAX {
                let extra = self.history.len() - HISTORY_MAX;
                self.history.drain(..extra);
            }
        }
    }
}

/// A job id from 48 random bits: `j-` and 12 hex digits (the shape of cluster and pair ids).
pub fn new_job_id(random: u64) -> String {
    format!("j-{:012x}", random & 0xffff_ffff_ffff)
}

/// Whether `s` has the shape of a job id (`j-` and 12 lowercase hex digits): the API looks a
/// job up "by id or name", so no name may have this shape.
pub fn looks_like_job_id(s: &str) -> bool {
    s.strip_prefix("j-").is_some_and(|hex| {
        hex.len() == 12
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// How a job's process ended, as the agent reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// The kernel killed it for going past its memory limit (its cgroup's OOM killer).
    OomKilled,
}

impl Exit {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    /// `exited 1`, `killed by signal 9`: the history's end reasons.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            Exit::OomKilled => write!(f, "oom_killed (past its memory limit)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Taint;

    fn spec_json() -> serde_json::Value {
        serde_json::json!({
            "name": "web", "cluster": "c-000000000001",
            "command": ["/bin/sh", "-c", "sleep 1"],
            "resources": {"cpu_millis": 500, "memory_bytes": 268435456}
        })
    }

    #[test]
    fn a_minimal_spec_takes_the_defaults() {
        let s: JobSpec = serde_json::from_value(spec_json()).unwrap();
        assert_eq!(s.restart, RestartPolicy::OnFailure);
        assert_eq!(s.max_restarts, 5);
        assert_eq!(s.resources.gpus, 0);
        assert!(s.env.is_empty() && s.workdir.is_none() && s.tolerations.is_empty());
    }

    #[test]
    fn restart_policies_are_snake_case_and_accept_the_hyphen() {
        for (text, policy) in [
            ("on_failure", RestartPolicy::OnFailure),
            ("on-failure", RestartPolicy::OnFailure),
            ("always", RestartPolicy::Always),
            ("never", RestartPolicy::Never),
        ] {
            let mut v = spec_json();
            v["restart"] = text.into();
            let s: JobSpec = serde_json::from_value(v).unwrap();
            assert_eq!(s.restart, policy);
        }
        assert_eq!(
            serde_json::to_value(RestartPolicy::OnFailure).unwrap(),
            "on_failure"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v = spec_json();
        v["restarts"] = 3.into();
        let e = serde_json::from_value::<JobSpec>(v).unwrap_err();
        assert!(e.to_string().contains("restarts"), "{e}");
    }

    #[test]
    fn records_round_trip_through_json() {
        let spec: JobSpec = serde_json::from_value(spec_json()).unwrap();
        let mut r = JobRecord::new(new_job_id(0xabc), spec, 7);
        r.current = Some(Placement::new(
            NodeId("n-0000000000000001".into()),
            3,
            vec!["GPU-1".into()],
        ));
        r.last_fencing_token = 3;
        r.state = JobState::Starting;
        let back: JobRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(r.id, "j-000000000abc");
        assert_eq!(serde_json::to_value(r.state).unwrap(), "starting");
        assert_eq!(r.fencing_token(), Some(3));
    }

    #[test]
    fn job_ids_have_their_shape() {
        assert!(looks_like_job_id(&new_job_id(u64::MAX)));
        assert_eq!(new_job_id(u64::MAX), "j-ffffffffffff");
        for bad in ["j-", "j-0123456789ab0", "j-0123456789AB", "c-0123456789ab"] {
            assert!(!looks_like_job_id(bad), "{bad}");
        }
    }

    #[test]
    fn history_is_capped_oldest_first() {
        let spec: JobSpec = serde_json::from_value(spec_json()).unwrap();
        let mut r = JobRecord::new(new_job_id(1), spec, 0);
        for t in 1..=(HISTORY_MAX as u64 + 5) {
            r.current = Some(Placement::new(NodeId("n-1".into()), t, vec![]));
            r.end_current(t, "exited 1");
        }
        assert_eq!(r.history.len(), HISTORY_MAX);
        assert_eq!(r.history[0].fencing_token, 6);
        assert_eq!(
            r.history.last().unwrap().end_reason.as_deref(),
            Some("exited 1")
        );
        assert!(r.current.is_none());
    }

    #[test]
    fn tolerations_match_key_then_optional_value_and_effect() {
        let taint = Taint {
            key: "gpu".into(),
            value: "broken".into(),
            effect: TaintEffect::NoSchedule,
        };
        let t = |value: Option<&str>| Toleration {
            key: "gpu".into(),
            value: value.map(Into::into),
            effect: None,
        };
        assert!(t(None).tolerates(&taint));
        assert!(t(Some("broken")).tolerates(&taint));
        assert!(!t(Some("ok")).tolerates(&taint));
        assert!(!Toleration {
            key: "other".into(),
            value: None,
            effect: Some(TaintEffect::NoSchedule)
        }
        .tolerates(&taint));
    }

    #[test]
    fn exits_read_as_end_reasons() {
        assert_eq!(Exit::Code(1).to_string(), "exited 1");
        assert_eq!(Exit::Signal(9).to_string(), "killed by signal 9");
        assert!(Exit::Code(0).success() && !Exit::Signal(0).success());
        assert!(!Exit::OomKilled.success());
        assert_eq!(
            Exit::OomKilled.to_string(),
            "oom_killed (past its memory limit)"
        );
    }
}
