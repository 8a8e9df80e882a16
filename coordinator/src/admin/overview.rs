//! `GET /v1/overview`: what the console's overview shows, counted by the coordinator in one
//! pass, so the page stays small for a fleet of ten thousand nodes (listing every node object
//! to count them would send megabytes of hardware reports).
//!
//! Nodes and jobs by state, and the latest failovers: each a placement that ended `node down`
//! and the placement after it, with how long from the node being declared down to the new
//! copy's confirmed start.

use super::Shared;
use crate::model::NodeState;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The most failovers listed.
const FAILOVERS: usize = 10;

pub(super) async fn overview(State(s): Shared) -> Json<Value> {
    let (nodes, jobs, names, failovers) = s.engine.call(counted).await;
    let name = |n: &tandem_common::ids::NodeId| names.get(n).cloned().unwrap_or(n.to_string());
    let failovers: Vec<Value> = failovers
        .iter()
        .map(|(id, job, from, to)| {
            json!({
                "job": id,
                "job_name": job,
                "from": from.node,
                "from_name": name(&from.node),
                "to": to.node,
                "to_name": name(&to.node),
                "declared_down_ms": from.ended_ms,
                "started_ms": to.started_ms,
                "took_ms": match (from.ended_ms, to.started_ms) {
                    (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                    _ => None,
                },
            })
        })
        .collect();
    Json(json!({
        "nodes_by_state": nodes,
        "nodes_total": nodes.values().sum::<u64>(),
        "jobs_by_state": jobs,
        "jobs_total": jobs.values().sum::<u64>(),
        "failovers": failovers,
    }))
}

type Failover = (
    String,
    String,
    crate::jobs::model::Placement,
    crate::jobs::model::Placement,
);

type Counted = (
    BTreeMap<&'static str, u64>,
    BTreeMap<&'static str, u64>,
    BTreeMap<tandem_common::ids::NodeId, String>,
    Vec<Failover>,
);

/// Counts in one pass over the fleet, in the engine task.
fn counted(e: &crate::engine::Engine) -> Counted {
    let mut nodes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut jobs: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut names = BTreeMap::new();
    let mut failovers = Vec::new();
    let t = e.lock();
    for e in t.nodes.values() {
        let r = &e.record;
        let state = if r.draining && r.state == NodeState::Ready {
            "draining"
        } else {
            r.state.as_str()
        };
        *nodes.entry(state).or_default() += 1;
    }
    for j in t.jobs.values() {
        *jobs.entry(j.state.as_str()).or_default() += 1;
        let placements: Vec<_> = j.history.iter().chain(j.current.iter()).collect();
        for w in placements.windows(2) {
            if w[0].end_reason.as_deref() == Some("node down") {
                failovers.push((
                    j.id.clone(),
                    j.spec.name.clone(),
                    w[0].clone(),
                    w[1].clone(),
                ));
            }
        }
    }
    failovers.sort_by_key(|f| std::cmp::Reverse(f.2.ended_ms));
    failovers.truncate(FAILOVERS);
    for f in &failovers {
        for n in [&f.2.node, &f.3.node] {
            if let Some(e) = t.nodes.get(n) {
                names.insert(n.clone(), e.record.name.clone());
            }
        }
    }
    (nodes, jobs, names, failovers)
}
