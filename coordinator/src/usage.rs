//! What each node's jobs use, as its agent last reported it (protocol 6, `AgentMsg::Usage`):
//! the node's containment mode, the disk use of its jobs' dirs, and each job copy's CPU time
//! and memory (now and at peak) from its cgroup.
//!
//! Why apart from the engine's durable state: usage is a reading, not a decision. It is never
//! written to the store (no fsync), never changes what runs where, and is lost with a restart
//! of the coordinator until the next report (every ~10 s). At 10,000 nodes that is ~1,000
//! small reports a second, each one map insert under a write lock that no decision waits on;
//! heartbeats carry none of it.
//!
//! A copy's usage is shown only for the copy that reported it (node and fencing token): a
//! job that moved shows nothing until its new node reports.

use crate::clock::Map as HashMap;
use std::fmt::Write;
use std::sync::RwLock;
use std::time::{Duration, Instant};
use tandem_common::ids::NodeId;
use tandem_common::proto::{JobUsage, NodeUsage};

/// Fleets with more job copies (or nodes) than this get no per-job (per-node) usage series on
/// `/metrics`, only the fleet's totals: a scrape would otherwise grow without bound.
pub const MAX_USAGE_SERIES: usize = 10_000;

/// The most job copies kept from one report; a node never holds near this many.
pub const MAX_JOBS_PER_REPORT: usize = 4096;
/// The longest containment note kept, bytes.
const MAX_NOTE: usize = 512;

/// A report as kept: what a node sends is not trusted to be small or well formed (its text
/// goes into `/metrics` labels and API answers). The mode must be one of the three names
/// (else `unknown`), the note is cut to [`MAX_NOTE`] bytes, job ids must look like job ids
/// (at most 128 of `A-Z a-z 0-9 . _ -`; others are dropped), and at most
/// [`MAX_JOBS_PER_REPORT`] copies are kept.
pub fn bounded(mut u: NodeUsage) -> NodeUsage {
    if !["cgroup-v2", "cgroup-hybrid", "process-group"].contains(&u.containment.as_str()) {
        u.containment = "unknown".into();
    }
    if u.containment_note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE;
        while !u.containment_note.is_char_boundary(cut) {
            cut -= 1;
        }
        u.containment_note.truncate(cut);
    }
    u.jobs.retain(|j| {
        !j.job_id.is_empty()
            && j.job_id.len() <= 128
            && j.job_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    });
    u.jobs.truncate(MAX_JOBS_PER_REPORT);
    u
}

/// The latest report of one node.
#[derive(Clone, Debug)]
struct Reported {
    at: Instant,
    usage: NodeUsage,
}

/// A node's containment and disk use, as last reported.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    /// `cgroup-v2`, `cgroup-hybrid` or `process-group`.
    pub containment: String,
    /// Why, or where its cgroup tree is.
    pub containment_note: String,
    /// Bytes on disk of its jobs' dirs and default working dirs.
    pub jobs_disk_bytes: u64,
    /// Finished jobs' dirs its retention removed since its agent started.
    pub jobs_retired: u64,
    /// How old the report is.
    pub age: Duration,
}

/// One copy's usage, as last reported by its node.
#[derive(Clone, Debug, PartialEq)]
pub struct CopyView {
    /// What its cgroup counts.
    pub usage: JobUsage,
    /// How its node contains it.
    pub containment: String,
    /// How old the report is.
    pub age: Duration,
}

/// The latest usage report of every node that sent one.
#[derive(Default)]
pub struct UsageBoard {
    nodes: RwLock<HashMap<NodeId, Reported>>,
}

impl UsageBoard {
    /// Keeps `usage` as `node`'s latest report, bounded (see [`bounded`]).
    pub fn record(&self, node: &NodeId, usage: NodeUsage, now: Instant) {
        let usage = bounded(usage);
        let mut m = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        m.insert(node.clone(), Reported { at: now, usage });
    }

    /// Forgets the copy `token` of `job_id` on `node`, whose end was recorded: its series leave
    /// `/metrics` now, not at the node's next report.
    pub fn ended(&self, node: &NodeId, job_id: &str, token: u64) {
        let mut m = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = m.get_mut(node) {
            r.usage
                .jobs
                .retain(|u| !(u.job_id == job_id && u.fencing_token == token));
        }
    }

    /// Forgets `node` (removed from the fleet).
    pub fn forget(&self, node: &NodeId) {
        let mut m = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        m.remove(node);
    }

    /// `node`'s containment and disk use; `None` if it never reported (an agent older than
    /// protocol 6, or none since the coordinator started).
    pub fn node(&self, node: &NodeId, now: Instant) -> Option<NodeView> {
        let m = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let r = m.get(node)?;
        Some(NodeView {
            containment: r.usage.containment.clone(),
            containment_note: r.usage.containment_note.clone(),
            jobs_disk_bytes: r.usage.jobs_disk_bytes,
            jobs_retired: r.usage.jobs_retired,
            age: now.saturating_duration_since(r.at),
        })
    }

    /// The usage of `job_id`'s copy `token` on `node`, if that node reported it.
    pub fn copy(&self, node: &NodeId, job_id: &str, token: u64, now: Instant) -> Option<CopyView> {
        let m = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let r = m.get(node)?;
        let u = r
            .usage
            .jobs
            .iter()
            .find(|u| u.job_id == job_id && u.fencing_token == token)?;
        Some(CopyView {
            usage: u.clone(),
            containment: r.usage.containment.clone(),
            age: now.saturating_duration_since(r.at),
        })
    }

    /// The `/metrics` lines: per-node disk use and per-copy CPU and memory (up to
    /// [`MAX_USAGE_SERIES`] each), and the fleet's totals always. Labels are ids (the job's, the
    /// node's), which the API resolves.
    pub fn render(&self, out: &mut String) {
        let m = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let mut nodes: Vec<(&NodeId, &Reported)> = m.iter().collect();
        nodes.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        let copies: usize = nodes.iter().map(|(_, r)| r.usage.jobs.len()).sum();
        let disk: u64 = nodes.iter().map(|(_, r)| r.usage.jobs_disk_bytes).sum();
        let _ = writeln!(out, "# HELP tandem_jobs_disk_bytes Bytes on disk of the nodes' job dirs and working dirs, as last reported (all nodes).\n# TYPE tandem_jobs_disk_bytes gauge\ntandem_jobs_disk_bytes {disk}");
        let cpu: u64 = nodes
            .iter()
            .flat_map(|(_, r)| &r.usage.jobs)
            .filter_map(|j| j.cpu_usec)
            .sum();
        let _ = writeln!(out, "# HELP tandem_jobs_cpu_seconds CPU time of the job copies running now, as last reported (all nodes).\n# TYPE tandem_jobs_cpu_seconds gauge\ntandem_jobs_cpu_seconds {:.3}", cpu as f64 / 1e6);
        if nodes.len() <= MAX_USAGE_SERIES {
            let _ = writeln!(out, "# HELP tandem_node_jobs_disk_bytes Bytes on disk of a node's job dirs and working dirs.\n# TYPE tandem_node_jobs_disk_bytes gauge");
            for (id, r) in &nodes {
                let _ = writeln!(
                    out,
                    "tandem_node_jobs_disk_bytes{{node=\"{id}\",containment=\"{}\"}} {}",
                    r.usage.containment, r.usage.jobs_disk_bytes
                );
            }
        } else {
            let _ = writeln!(
                out,
                "# per-node usage series left out: more than {MAX_USAGE_SERIES} nodes"
            );
        }
        if copies > MAX_USAGE_SERIES {
            let _ = writeln!(
                out,
                "# per-job usage series left out: more than {MAX_USAGE_SERIES} job copies"
            );
            return;
        }
        type Value = fn(&JobUsage) -> Option<String>;
        let families: [(&str, &str, &str, Value); 3] = [
            (
                "tandem_job_cpu_seconds_total",
                "counter",
                "CPU time a job copy used, from its cgroup.",
                |j| j.cpu_usec.map(|c| format!("{:.3}", c as f64 / 1e6)),
            ),
            (
                "tandem_job_memory_bytes",
                "gauge",
                "Memory charged to a job copy now, from its cgroup.",
                |j| j.memory_bytes.map(|b| b.to_string()),
            ),
            (
                "tandem_job_memory_peak_bytes",
                "gauge",
                "The most memory charged to a job copy at once, from its cgroup.",
                |j| j.memory_peak_bytes.map(|b| b.to_string()),
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (node, r) in &nodes {
                for j in &r.usage.jobs {
                    if let Some(v) = value(j) {
                        let _ = writeln!(
                            out,
                            "{name}{{job=\"{}\",node=\"{node}\",fencing_token=\"{}\"}} {v}",
                            j.job_id, j.fencing_token
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(jobs: Vec<JobUsage>) -> NodeUsage {
        NodeUsage {
            containment: "cgroup-v2".into(),
            containment_note: "here".into(),
            jobs_disk_bytes: 4096,
            jobs_retired: 1,
            jobs,
        }
    }

    fn job(id: &str, token: u64, cpu: u64) -> JobUsage {
        JobUsage {
            job_id: id.into(),
            fencing_token: token,
            cpu_usec: Some(cpu),
            memory_bytes: Some(1 << 20),
            memory_peak_bytes: Some(2 << 20),
        }
    }

    #[test]
    fn the_latest_report_wins_and_only_the_reported_copy_has_usage() {
        let b = UsageBoard::default();
        let n = NodeId::random();
        let t0 = Instant::now();
        assert!(b.node(&n, t0).is_none());
        b.record(&n, report(vec![job("j-1", 3, 1_500_000)]), t0);
        b.record(&n, report(vec![job("j-1", 3, 2_500_000)]), t0);
        let later = t0 + Duration::from_secs(2);
        let c = b.copy(&n, "j-1", 3, later).unwrap();
        assert_eq!(c.usage.cpu_usec, Some(2_500_000));
        assert_eq!(c.age, Duration::from_secs(2));
        assert!(b.copy(&n, "j-1", 4, later).is_none(), "another copy");
        assert!(b.copy(&NodeId::random(), "j-1", 3, later).is_none());
        assert_eq!(b.node(&n, later).unwrap().containment, "cgroup-v2");
        let mut text = String::new();
        b.render(&mut text);
        assert!(
            text.contains(&format!(
            "tandem_job_cpu_seconds_total{{job=\"j-1\",node=\"{n}\",fencing_token=\"3\"}} 2.500"
        )),
            "{text}"
        );
        assert!(text.contains("tandem_jobs_disk_bytes 4096"), "{text}");
        assert!(
            text.contains("# TYPE tandem_job_memory_peak_bytes gauge"),
            "{text}"
        );
        b.forget(&n);
        assert!(b.node(&n, later).is_none());
    }

    /// A benchmark, not a test: the board's cost at fleet scale. 10,000 nodes of 5 running
    /// copies each, 10 rounds of reports (100,000 reports: 10,000 nodes at the default 10 s
    /// send 1,000 a second), then `/metrics` and a job lookup. Run:
    /// `cargo test -p tandem-coordinator --lib usage::tests::bench_usage_board -- --ignored --nocapture`
    #[test]
    #[ignore = "a benchmark, not a check: 100,000 reports take seconds in a debug build; run it by hand for BENCHMARKS.md"]
    fn bench_usage_board() {
        let (nodes, jobs, rounds) = (10_000usize, 5usize, 10usize);
        let b = UsageBoard::default();
        let ids: Vec<NodeId> = (0..nodes).map(|_| NodeId::random()).collect();
        let t0 = Instant::now();
        for r in 0..rounds {
            for (n, id) in ids.iter().enumerate() {
                let js = (0..jobs)
                    .map(|k| job(&format!("j-{n:06}-{k}"), 1, (r * 1000 + k) as u64))
                    .collect();
                b.record(id, report(js), Instant::now());
            }
        }
        let per = t0.elapsed() / (nodes * rounds) as u32;
        let t1 = Instant::now();
        let mut text = String::new();
        b.render(&mut text);
        let render = t1.elapsed();
        let t2 = Instant::now();
        let hit = b.copy(
            &ids[nodes / 2],
            &format!("j-{:06}-3", nodes / 2),
            1,
            Instant::now(),
        );
        let lookup = t2.elapsed();
        assert!(hit.is_some());
        println!(
            "usage board: {nodes} nodes x {jobs} copies: record {per:?} a report (building it \
             included); /metrics {render:?} for {} lines ({} KiB); one lookup {lookup:?}",
            text.lines().count(),
            text.len() / 1024
        );
    }

    #[test]
    fn an_ended_copy_leaves_metrics_at_once_and_the_others_stay() {
        let b = UsageBoard::default();
        let n = NodeId::random();
        let now = Instant::now();
        b.record(&n, report(vec![job("j-a", 1, 5), job("j-b", 2, 7)]), now);
        b.ended(&n, "j-a", 9);
        assert!(
            b.copy(&n, "j-a", 1, now).is_some(),
            "another token of the job stays"
        );
        b.ended(&n, "j-a", 1);
        assert!(b.copy(&n, "j-a", 1, now).is_none());
        assert!(b.copy(&n, "j-b", 2, now).is_some());
        let mut out = String::new();
        b.render(&mut out);
        assert!(!out.contains("job=\"j-a\""), "{out}");
        assert!(out.contains("job=\"j-b\""), "{out}");
        b.ended(&NodeId::random(), "j-b", 2);
        assert!(
            b.copy(&n, "j-b", 2, now).is_some(),
            "another node's end changes nothing"
        );
    }

    #[test]
    fn a_report_is_kept_bounded_and_its_text_safe_for_metrics() {
        let mut r = report(vec![job("j-ok", 1, 1), job("j\"} 1\nevil", 1, 1)]);
        r.jobs
            .extend((0..MAX_JOBS_PER_REPORT + 10).map(|i| job(&format!("j-{i}"), 1, 1)));
        r.containment = "cgroup-v9\"".into();
        r.containment_note = "é".repeat(MAX_NOTE);
        let b = bounded(r);
        assert_eq!(b.containment, "unknown");
        assert!(b.containment_note.len() <= MAX_NOTE);
        assert_eq!(b.jobs.len(), MAX_JOBS_PER_REPORT);
        assert!(b.jobs.iter().all(|j| !j.job_id.contains('"')));
        assert_eq!(b.jobs[0].job_id, "j-ok");
    }
}
