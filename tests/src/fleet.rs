//! A small fleet for job and failover tests: a coordinator, one cluster, agents joined to it,
//! and "writer" jobs that append `"<node> <token> <unix ns> <CUDA_VISIBLE_DEVICES>"` to a file
//! every 10 ms — the file is the evidence: two copies running at once show up as interleaved
//! lines of two tokens.

use crate::{start_agent, wait_for, Api, Coordinator, Proc};
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a test waits for anything that should take a second or two.
pub const LONG: Duration = Duration::from_secs(30);
/// The generous bound on a failover in tests (speed is measured by the benchmarks).
pub const FAILOVER_BOUND: Duration = Duration::from_secs(10);

/// The two-GPU (NVIDIA L4) fixture, by absolute path.
pub fn l4_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gpus-2x-l4.json")
}

/// One line a writer job wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// `TANDEM_NODE_NAME`.
    pub node: String,
    /// `TANDEM_FENCING_TOKEN`.
    pub token: u64,
    /// Unix nanoseconds when it was written.
    pub ns: u128,
    /// `CUDA_VISIBLE_DEVICES`, `-` when unset.
    pub gpus: String,
}

/// The lines of a writer's file (torn or partial lines are skipped).
pub fn read_lines(path: &Path) -> Vec<Line> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some(Line {
                node: it.next()?.to_string(),
                token: it.next()?.parse().ok()?,
                ns: it.next()?.parse().ok()?,
                gpus: it.next()?.to_string(),
            })
        })
        .collect()
}

/// The shell loop of a writer job appending to `out`. Like a job that shuts down gracefully,
/// it goes on writing for about half a second after SIGTERM (longer than the fence kill
/// timeout), so a stop is only over when the copy has exited — or was SIGKILLed — and a new copy
/// started before that shows up as overlapping lines.
pub fn writer_script(out: &Path) -> String {
    let line = format!(
        "echo \"$TANDEM_NODE_NAME $TANDEM_FENCING_TOKEN $(date +%s%N) ${{CUDA_VISIBLE_DEVICES:--}}\" >> {}",
        out.display()
    );
    format!(
        "trap 'n=0; while [ $n -lt 50 ]; do {line}; sleep 0.01; n=$((n+1)); done; exit 0' TERM; \
         while true; do {line}; sleep 0.01; done"
    )
}

/// What one copy (one fencing token) wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    /// Its token.
    pub token: u64,
    /// The node(s) it ran on (one, unless something is very wrong).
    pub nodes: Vec<String>,
    /// Its first line (unix ns).
    pub first: u128,
    /// Its last line (unix ns).
    pub last: u128,
    /// How many lines.
    pub lines: usize,
}

/// The copies in a writer's file, by token, checked: no two copies ever wrote at overlapping
/// times, every copy ran on one node, and a later copy always has a higher token.
pub fn copies(path: &Path) -> Result<Vec<Copy>> {
    let mut by: BTreeMap<u64, Copy> = BTreeMap::new();
    for l in read_lines(path) {
        let c = by.entry(l.token).or_insert(Copy {
            token: l.token,
            nodes: vec![],
            first: l.ns,
            last: l.ns,
            lines: 0,
        });
        if !c.nodes.contains(&l.node) {
            c.nodes.push(l.node.clone());
        }
        c.first = c.first.min(l.ns);
        c.last = c.last.max(l.ns);
        c.lines += 1;
    }
    let v: Vec<Copy> = by.into_values().collect();
    for c in &v {
        ensure!(c.nodes.len() == 1, "token {} ran on {:?}", c.token, c.nodes);
    }
    for w in v.windows(2) {
        ensure!(
            w[0].last < w[1].first,
            "two copies ran at once: token {} on {:?} wrote until {}, token {} on {:?} from {} \
             ({} ms of overlap)",
            w[0].token,
            w[0].nodes,
            w[0].last,
            w[1].token,
            w[1].nodes,
            w[1].first,
            (w[0].last - w[1].first) / 1_000_000
        );
    }
    Ok(v)
}

/// Checks the hand-over from the copy with `old` to the copy with `new` (no overlap, tokens
/// grow) and returns the gap between the old copy's last line and the new one's first, in ms.
pub fn handover(path: &Path, old: u64, new: u64, what: &str) -> Result<i128> {
    ensure!(new > old, "tokens only grow: {old} -> {new}");
    let cs = copies(path)?;
    let o = cs
        .iter()
        .find(|c| c.token == old)
        .context("old copy's lines")?;
    let n = cs
        .iter()
        .find(|c| c.token == new)
        .context("new copy's lines")?;
    ensure!(
        o.last < n.first,
        "two copies ran at once: {} wrote until {}, {} from {}",
        old,
        o.last,
        new,
        n.first
    );
    let gap = (n.first as i128 - o.last as i128) / 1_000_000;
    println!(
        "{what}: last line of the old copy ({} token {old}) -> first line of the new copy ({} token {new}): {gap} ms",
        o.nodes[0], n.nodes[0]
    );
    Ok(gap)
}

/// Unix nanoseconds now.
pub fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Checks `f` every 50 ms for `window`: an invariant that must keep holding (not a wait).
pub fn holds_for(window: Duration, mut f: impl FnMut() -> Result<()>) -> Result<()> {
    let end = Instant::now() + window;
    loop {
        f()?;
        if Instant::now() >= end {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A writer job.
#[derive(Clone, Debug)]
pub struct Writer {
    /// The job's id.
    pub id: String,
    /// The file it writes.
    pub out: PathBuf,
}

/// A coordinator, one cluster and its agents. Dropping it kills the agents, then the
/// coordinator, then removes the directory.
pub struct Fleet {
    /// Agents by name.
    pub agents: HashMap<String, Proc>,
    /// The coordinator.
    pub coord: Coordinator,
    /// The cluster's name.
    pub cluster: String,
    /// A join token for the cluster (many uses).
    pub token: String,
    /// The test's directory.
    pub tmp: tempfile::TempDir,
}

impl Fleet {
    /// A coordinator on port 0 with a cluster `name` in `mode` (`pool` or `ha_pairs`).
    pub fn new(name: &str, mode: &str) -> Result<Fleet> {
        Self::with_quic(name, mode, None)
    }

    /// The same, with the coordinator's QUIC address fixed (`HOST:0` for a given host).
    pub fn with_quic(name: &str, mode: &str, quic: Option<&str>) -> Result<Fleet> {
        let tmp = tempfile::tempdir()?;
        let coord = Coordinator::start(&tmp.path().join("coord"), quic)?;
        let (s, v) = coord.api.send(
            "POST",
            "/v1/clusters",
            Some(&json!({"name": name, "mode": mode})),
        )?;
        ensure!(s == 201, "creating cluster {name}: {s} {v}");
        if let Some(op) = v["operation_id"].as_str() {
            wait_for(LONG, "the cluster's create operation", || {
                let o = coord.api.get(&format!("/v1/operations/{op}")).ok()?;
                (o["state"] != "pending").then_some(())
            })?;
        }
        let token = coord
            .api
            .post("/v1/join-tokens", &json!({"uses": 20, "cluster": name}))?["token"]
            .as_str()
            .context("token")?
            .to_string();
        Ok(Fleet {
            agents: HashMap::new(),
            coord,
            cluster: name.to_string(),
            token,
            tmp,
        })
    }

    /// The admin client.
    pub fn api(&self) -> &Api {
        &self.coord.api
    }

    /// An agent's state dir.
    pub fn state_dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Starts (or restarts) agent `name`, connecting to `via` (a relay) or the coordinator.
    pub fn start_agent(&mut self, name: &str, via: Option<&str>, extra: &[&str]) -> Result<()> {
        let quic = via.unwrap_or(&self.coord.quic).to_string();
        let p = start_agent(&quic, &self.state_dir(name), Some(&self.token), name, extra)?;
        self.agents.insert(name.to_string(), p);
        Ok(())
    }

    /// Starts agents `names` and waits until all are ready.
    pub fn start_agents(&mut self, names: &[&str], extra: &[&str]) -> Result<()> {
        for n in names {
            self.start_agent(n, None, extra)?;
        }
        for n in names {
            self.wait_ready(n)?;
        }
        Ok(())
    }

    /// Waits until node `name` is ready.
    pub fn wait_ready(&self, name: &str) -> Result<Value> {
        wait_for(LONG, &format!("{name} ready"), || {
            self.api().node(name).filter(|n| n["state"] == "ready")
        })
        .with_context(|| self.agent_log(name))
    }

    /// The agent's log (for failure messages).
    pub fn agent_log(&self, name: &str) -> String {
        self.agents
            .get(name)
            .map(|p| format!("log of agent {name}:\n{}", p.log_text()))
            .unwrap_or_default()
    }

    /// The agent process of `name`.
    pub fn agent(&mut self, name: &str) -> Result<&mut Proc> {
        self.agents
            .get_mut(name)
            .with_context(|| format!("no agent {name}"))
    }

    /// Submits a writer job named `name` asking for `gpus` GPUs, with label constraints.
    pub fn submit_writer(&self, name: &str, gpus: u32, labels: Value) -> Result<Writer> {
        let out = self.tmp.path().join(format!("{name}.out"));
        let j = self.api().post(
            "/v1/jobs",
            &json!({"name": name, "cluster": self.cluster,
                    "command": ["/bin/sh", "-c", writer_script(&out)],
                    "resources": {"cpu_millis": 100, "memory_bytes": 67108864, "gpus": gpus},
                    "restart": "always", "constraints": {"labels": labels}}),
        )?;
        Ok(Writer {
            id: j["job"]["id"].as_str().context("job id")?.to_string(),
            out,
        })
    }

    /// The job object.
    pub fn job(&self, id: &str) -> Result<Value> {
        self.api().get(&format!("/v1/jobs/{id}"))
    }

    /// Waits until the job runs and its current copy has written a few lines; returns the job.
    pub fn wait_running(&self, w: &Writer) -> Result<Value> {
        wait_for(LONG, "the job running and writing", || {
            let j = self.job(&w.id).ok()?;
            let tok = j["fencing_token"].as_u64()?;
            let n = read_lines(&w.out).iter().filter(|l| l.token == tok).count();
            (j["state"] == "running" && n >= 5).then_some(j)
        })
    }

    /// Waits (up to `bound`) until a copy with a token above `old` runs and has written a few
    /// lines; returns the job object and how long it took.
    pub fn wait_new_copy(
        &self,
        w: &Writer,
        old: u64,
        bound: Duration,
    ) -> Result<(Value, Duration)> {
        let t0 = Instant::now();
        let j = wait_for(bound, "a new copy of the job running and writing", || {
            let j = self.job(&w.id).ok()?;
            let tok = j["fencing_token"].as_u64()?;
            let n = read_lines(&w.out).iter().filter(|l| l.token == tok).count();
            (j["state"] == "running" && tok > old && n >= 5).then_some(j)
        })
        .with_context(|| format!("job now: {:?}", self.job(&w.id).ok()))?;
        Ok((j, t0.elapsed()))
    }

    /// The name of node `id`.
    pub fn node_name(&self, id: &str) -> Result<String> {
        Ok(self.api().node(id).context("node")?["name"]
            .as_str()
            .context("name")?
            .to_string())
    }

    /// The node name and token of the job's current copy.
    pub fn placement(&self, job: &Value) -> Result<(String, u64)> {
        let node = job["node"].as_str().context("job's node")?;
        Ok((
            self.node_name(node)?,
            job["fencing_token"].as_u64().context("token")?,
        ))
    }

    /// Events of `kind`, oldest first.
    pub fn events(&self, kind: &str) -> Result<Vec<Value>> {
        Ok(self
            .api()
            .events()?
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect())
    }

    /// The job dir's `status.json` on agent `node`, once it is there.
    pub fn job_status(&self, node: &str, job: &str) -> Option<Value> {
        let p = self
            .state_dir(node)
            .join("jobs")
            .join(job)
            .join("status.json");
        serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
    }

    /// Waits until the copy of `job` with `token` on agent `node` is recorded as ended, and
    /// returns why (`fenced`, `stopped`, ...).
    pub fn wait_copy_ended(&self, node: &str, job: &str, token: u64) -> Result<String> {
        wait_for(LONG, "the old copy recorded as ended", || {
            let s = self.job_status(node, job)?;
            (s["fencing_token"].as_u64() == Some(token) && s["state"] == "exited")
                .then(|| s["reason"].as_str().unwrap_or("?").to_string())
        })
        .with_context(|| format!("status now: {:?}", self.job_status(node, job)))
    }
}

/// Live (not zombie) processes whose environment holds `TANDEM_JOB_ID=job` and, if given,
/// `TANDEM_FENCING_TOKEN=token`.
pub fn copy_pids(job: &str, token: Option<u64>) -> Vec<i32> {
    let id = format!("TANDEM_JOB_ID={job}");
    let tok = token.map(|t| format!("TANDEM_FENCING_TOKEN={t}"));
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        let has = |s: &str| vars.contains(&s.as_bytes());
        if has(&id) && tok.as_deref().is_none_or(has) && alive(pid) {
            v.push(pid);
        }
    }
    v
}

/// Kills every process of a job (any token) when dropped: a failing test leaves none behind.
pub struct Reaper(pub String);

impl Drop for Reaper {
    fn drop(&mut self) {
        for _ in 0..3 {
            for pid in copy_pids(&self.0, None) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Fails with `what` unless `cond`.
pub fn check(cond: bool, what: impl FnOnce() -> String) -> Result<()> {
    if !cond {
        bail!("{}", what());
    }
    Ok(())
}
