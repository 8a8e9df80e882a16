//! The command line: `Cli`, the commands and their arguments (clap derive). What each does is
//! in `clusters`, `nodes` and `jobs`; `run` dispatches.

use crate::parse::{parse_cpu, parse_duration, parse_env, parse_label, parse_size};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// tandemctl's arguments.
#[derive(Parser, Debug)]
#[command(
    name = "tandemctl",
    version,
    about = "Command-line client of the Tandem coordinator's admin API"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Options for every command.
#[derive(Args, Debug)]
pub struct Global {
    /// The admin endpoint, e.g. http://127.0.0.1:7070.
    #[arg(
        long,
        env = "TANDEM_ENDPOINT",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub endpoint: String,
    /// The admin bearer token.
    #[arg(long, env = "TANDEM_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A file holding the admin bearer token (e.g. DATA_DIR/admin.token).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// For an https:// endpoint: the CA certificate to trust (the coordinator's
    /// DATA_DIR/ca.pem when it serves with `admin_tls = true`). Without it, the public web
    /// roots are trusted.
    #[arg(long, env = "TANDEM_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

/// Output formats.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// Tables for people.
    Table,
    /// The API's JSON answer.
    Json,
}

/// Commands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Clusters: list, show, create, edit, delete.
    #[command(subcommand)]
    Clusters(ClustersCmd),
    /// Nodes: list, show, check, drain, undrain, remove, label, protect.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Primary/standby pairs of an ha_pairs cluster.
    #[command(subcommand)]
    Pairs(PairsCmd),
    /// Jobs: run, list, show, stop, logs.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Remove every node that has been down longer than --down-for.
    Recycle {
        /// How long a node must have been down, e.g. 90s, 10m, 2h, 1d.
        #[arg(long, value_parser = parse_duration)]
        down_for: Duration,
    },
    /// Operations (e.g. a cluster's creation).
    #[command(subcommand)]
    Operations(OperationsCmd),
    /// Join tokens.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Recent events.
    Events {
        /// Only events of this node (id or name).
        #[arg(long)]
        node: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// A cluster's placement mode.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Mode {
    /// Primary/standby pairs of one hardware model.
    #[value(name = "ha_pairs")]
    HaPairs,
    /// Any node with room.
    #[value(name = "pool")]
    Pool,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::HaPairs => "ha_pairs",
            Mode::Pool => "pool",
        }
    }
}

/// Cluster commands.
#[derive(Subcommand, Debug)]
pub enum ClustersCmd {
    /// List clusters, optionally filtered.
    List {
        /// Only clusters whose name or alias contains this.
        #[arg(long)]
        query: Option<String>,
        /// Only clusters with this label (key=value).
        #[arg(long, value_parser = parse_label)]
        label: Option<(String, String)>,
        /// Only clusters created at or after this RFC 3339 time.
        #[arg(long)]
        created_after: Option<String>,
        /// Only clusters created before this RFC 3339 time.
        #[arg(long)]
        created_before: Option<String>,
    },
    /// Show a cluster (id, short id or name): status, capacity, nodes, pairs.
    Show {
        /// Cluster id or name.
        cluster: String,
    },
    /// Create a cluster.
    Create(CreateCluster),
    /// Edit a cluster.
    Edit(EditCluster),
    /// Delete a cluster without deletion protection, nodes or jobs that have not ended.
    Delete {
        /// Cluster id or name.
        cluster: String,
    },
    /// Fail over now: place the jobs of the cluster's down nodes elsewhere even where the
    /// disruption guard held them back (more than half the nodes went down at once).
    Failover {
        /// Cluster id or name.
        cluster: String,
    },
}

/// `clusters create`.
#[derive(Args, Debug)]
pub struct CreateCluster {
    /// Unique name: 1-63 letters, digits, CJK characters and `-`.
    #[arg(long)]
    pub name: String,
    /// A second name.
    #[arg(long, default_value = "")]
    pub alias: String,
    /// A note.
    #[arg(long, default_value = "")]
    pub description: String,
    /// ha_pairs (primary/standby pairs of one model) or pool.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// A label, key=value (repeatable; the same key overwrites).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Refuse deletion until this is cleared.
    #[arg(long)]
    pub deletion_protection: bool,
    /// Nodes need at least this many logical cores to join.
    #[arg(long)]
    pub min_cores: Option<u32>,
    /// Nodes need at least this much memory to join, e.g. 4GiB.
    #[arg(long, value_parser = parse_size)]
    pub min_memory: Option<u64>,
    /// A recovered old primary takes its role back.
    #[arg(long)]
    pub failback: bool,
}

/// `clusters edit`.
#[derive(Args, Debug)]
pub struct EditCluster {
    /// Cluster id or name.
    pub cluster: String,
    /// New alias.
    #[arg(long)]
    pub alias: Option<String>,
    /// New description.
    #[arg(long)]
    pub description: Option<String>,
    /// Set a label, key=value (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Remove a label by key (repeatable).
    #[arg(long = "remove-label")]
    pub remove_labels: Vec<String>,
    /// Deletion protection: `--deletion-protection` or `--deletion-protection=false`.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub deletion_protection: Option<bool>,
    /// New minimum cores (keeps the memory minimum).
    #[arg(long)]
    pub min_cores: Option<u32>,
    /// New minimum memory, e.g. 4GiB (keeps the cores minimum).
    #[arg(long, value_parser = parse_size)]
    pub min_memory: Option<u64>,
    /// Drop the node minimums.
    #[arg(long, conflicts_with_all = ["min_cores", "min_memory"])]
    pub clear_min_node: bool,
    /// Failback: `--failback` or `--failback=false`.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub failback: Option<bool>,
}

/// Node commands.
#[derive(Subcommand, Debug)]
pub enum NodesCmd {
    /// List every node.
    List,
    /// Show one node (id, short id or name).
    Show {
        /// Node id or name.
        node: String,
    },
    /// Ask the node now whether it is alive (exits 1 when it is not).
    Check {
        /// Node id or name.
        node: String,
    },
    /// Drain a node: it takes no new work and its work moves away.
    Drain {
        /// Node id or name.
        node: String,
    },
    /// Return a drained node to service.
    Undrain {
        /// Node id or name.
        node: String,
    },
    /// Move a node to another cluster (the rules of a join there apply); its pair is
    /// dissolved and its jobs move away, each old copy stopped first.
    Move {
        /// Node id or name.
        node: String,
        /// The cluster to move it to (id, short id or name).
        #[arg(long)]
        cluster: String,
    },
    /// Remove a node: its certificate is revoked and its pair dissolved.
    Remove {
        /// Node id or name.
        node: String,
    },
    /// Set (key=value) or remove (--remove key) node labels.
    Label {
        /// Node id or name.
        node: String,
        /// Labels to set, key=value.
        #[arg(value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// A label key to remove (repeatable).
        #[arg(long = "remove")]
        remove: Vec<String>,
    },
    /// Protect a node from removal (or, with --off, stop protecting it).
    Protect {
        /// Node id or name.
        node: String,
        /// Clear the protection.
        #[arg(long)]
        off: bool,
    },
}

/// Pair commands.
#[derive(Subcommand, Debug)]
pub enum PairsCmd {
    /// List a cluster's pairs.
    List {
        /// Cluster id or name.
        #[arg(long)]
        cluster: String,
    },
    /// Pair two nodes by hand.
    Create {
        /// Cluster id or name.
        #[arg(long)]
        cluster: String,
        /// The node that runs the work.
        #[arg(long)]
        primary: String,
        /// The node that takes over.
        #[arg(long)]
        standby: String,
    },
    /// Dissolve a pair.
    Delete {
        /// Cluster id or name.
        #[arg(long)]
        cluster: String,
        /// Pair id (or short id).
        pair: String,
    },
}

/// Job commands.
#[derive(Subcommand, Debug)]
pub enum JobsCmd {
    /// Submit a job: `jobs run --name N --cluster C [options] -- CMD ARGS...`.
    Run(RunJob),
    /// List jobs, optionally filtered.
    List {
        /// Only jobs of this cluster (id or name).
        #[arg(long)]
        cluster: Option<String>,
        /// Only jobs in this state.
        #[arg(long, value_enum)]
        state: Option<JobState>,
        /// Only jobs on this node (id or name).
        #[arg(long)]
        node: Option<String>,
    },
    /// Show a job (id, short id or name): state, node, token, restarts, GPUs and placements.
    Show {
        /// Job id or name.
        job: String,
    },
    /// Stop a job (SIGTERM to its process group, SIGKILL after the kill timeout), and wait
    /// until its last copy has ended: its name is free again once this returns.
    Stop {
        /// Job id or name.
        job: String,
        /// Return once the stop is recorded, without waiting for the copy's end.
        #[arg(long)]
        detach: bool,
        /// How long to wait for the copy's end, in seconds (a copy on a node that is cut off
        /// ends when its lease runs out).
        #[arg(long, default_value_t = 120)]
        wait_s: u64,
    },
    /// Print the name of the node the job is placed on now (exits 1 when it is on none), for
    /// scripts: `kill -9 $(cat $TANDEM_DEV/agents/$(tandemctl jobs node demo)/agent.pid)`.
    Node {
        /// Job id or name.
        job: String,
    },
    /// The tail of a job's stdout (to stdout) and stderr (to stderr).
    Logs {
        /// Job id or name.
        job: String,
        /// How many lines of each.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        tail: u32,
    },
}

/// `jobs run`.
#[derive(Args, Debug)]
pub struct RunJob {
    /// Unique name: 1-63 letters, digits, CJK characters and `-`.
    #[arg(long)]
    pub name: String,
    /// The cluster (id or name).
    #[arg(long)]
    pub cluster: String,
    /// CPU to allocate: cores (`0.5`, `2`) or thousandths of a core (`500m`).
    #[arg(long, value_parser = parse_cpu, default_value = "100m")]
    pub cpu: u64,
    /// Memory to allocate, e.g. 256MiB, 2GiB.
    #[arg(long, value_parser = parse_size, default_value = "256MiB")]
    pub memory: u64,
    /// Whole GPUs (given by UUID in CUDA_VISIBLE_DEVICES).
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
    /// When the job is started again after it exits.
    #[arg(long, value_enum, default_value_t = Restart::OnFailure)]
    pub restart: Restart,
    /// Restarts in all before the job is failed (or completed); the API's default is 5.
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// An environment variable, KEY=VALUE (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Run only on nodes with this label, key=value (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// The working directory on the node (absolute); default: the job's directory there.
    #[arg(long)]
    pub workdir: Option<String>,
    /// The user it runs as on its node (one the node's agent allows); default: the node's.
    #[arg(long)]
    pub user: Option<String>,
    /// The group it runs as on its node (its user's, or one the node's agent allows);
    /// default: its user's.
    #[arg(long)]
    pub group: Option<String>,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1.., value_name = "CMD")]
    pub command: Vec<String>,
}

/// A job's restart policy.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Restart {
    /// After a non-zero exit or a signal.
    OnFailure,
    /// After every exit.
    Always,
    /// Never.
    Never,
}

impl Restart {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Restart::OnFailure => "on_failure",
            Restart::Always => "always",
            Restart::Never => "never",
        }
    }
}

/// A job's state, for `jobs list --state`. The names are the API's (the coordinator's
/// `jobs::model::JobState`, sent as `?state=`); kept here so the ctl does not link the
/// coordinator.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
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
    /// The name used in the API.
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
}

/// Operation commands.
#[derive(Subcommand, Debug)]
pub enum OperationsCmd {
    /// How an operation went.
    Show {
        /// Operation id.
        id: String,
    },
}

/// Token commands.
#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// Create a join token.
    Create {
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 600)]
        ttl_s: u64,
        /// How many nodes may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// The cluster (id or name) nodes joining with it enter.
        #[arg(long)]
        cluster: Option<String>,
    },
    /// List the join tokens kept: state (active, expired, used_up, revoked), uses, cluster.
    List,
    /// Revoke a join token (its id, the part after `tdm1.`): it admits nobody from now on.
    Revoke {
        /// The token's id.
        id: String,
    },
}
