//! How records look in the API: times in RFC 3339 next to Unix milliseconds, plus what only
//! the live table knows (connection, heartbeat age).

use crate::engine::{Engine, NodeEntry};
use crate::model::{ClusterRecord, Event, NodeState, PairRecord};
use crate::usage::UsageBoard;
use serde_json::{json, Value};
use std::time::Instant;
use tandem_common::ids::NodeId;
use tandem_common::time::rfc3339;

/// A node and what only the engine knows of it: milliseconds since its last beat.
pub type NodeFacts = (NodeEntry, Option<u64>);

/// The facts of `e` (read in the engine task; the JSON is made outside it).
pub fn node_facts(m: &Engine, e: NodeEntry, now: Instant) -> NodeFacts {
    let silent = m.silent_for_ms(&e.record.id, now);
    (e, silent)
}

/// A node object.
pub fn node(usage: &UsageBoard, (e, silent_ms): &NodeFacts, now: Instant) -> Value {
    let r = &e.record;
    // From the node's last usage report (protocol 6); `null` where its agent is older.
    let u = usage.node(&r.id, now);
    json!({
        "id": r.id,
        "name": r.name,
        "state": if r.draining && r.state == NodeState::Ready { "draining" } else { r.state.as_str() },
        "state_reason": r.state_reason,
        "state_since": rfc3339(r.state_since_ms),
        "state_since_ms": r.state_since_ms,
        "last_heartbeat_age_ms": silent_ms,
        "connected": e.live.is_some(),
        "address": r.address,
        "agent_version": r.agent_version,
        "containment": u.as_ref().map(|u| u.containment.clone()),
        "containment_note": u.as_ref().map(|u| u.containment_note.clone()),
        "jobs_disk_bytes": u.as_ref().map(|u| u.jobs_disk_bytes),
        "jobs_retired": u.as_ref().map(|u| u.jobs_retired),
        "usage_age_ms": u.as_ref().map(|u| u.age.as_millis() as u64),
        "created_at": rfc3339(r.created_ms),
        "cert_serial": r.cert_serial,
        "previous_cert_serial": r.previous_cert_serial,
        "cert_not_after": rfc3339((r.cert_not_after_unix.max(0) as u64) * 1000),
        "cluster": r.cluster,
        "labels": r.labels,
        "taints": r.taints,
        "protected": r.protected,
        "draining": r.draining,
        "model": r.hardware.model(),
        "hardware": r.hardware,
    })
}

/// An event object.
pub fn event(e: &Event) -> Value {
    json!({
        "seq": e.seq,
        "time": rfc3339(e.time_ms),
        "time_ms": e.time_ms,
        "kind": e.kind,
        "node": e.node,
        "message": e.message,
    })
}

/// What a cluster object shows, read together in the engine task; the JSON is made outside it.
pub struct ClusterFacts {
    c: ClusterRecord,
    nodes: Vec<crate::engine::Member>,
    pairs: Vec<PairRecord>,
    status: crate::cluster::pairing::ClusterStatus,
    capacity: crate::cluster::capacity::Capacity,
    jobs: Vec<crate::jobs::model::JobRecord>,
}

/// The facts of cluster `c`.
pub fn cluster_facts(m: &Engine, c: ClusterRecord) -> ClusterFacts {
    let (nodes, pairs, status, capacity) = m.cluster_overview(&c.id);
    let jobs = m.jobs_of(&c.id);
    ClusterFacts {
        c,
        nodes,
        pairs,
        status,
        capacity,
        jobs,
    }
}

/// A cluster object: the record, its status, capacity, nodes, pairs and jobs.
pub fn cluster(f: &ClusterFacts) -> Value {
    let ClusterFacts {
        c,
        nodes,
        pairs,
        status,
        capacity,
        jobs,
    } = f;
    let name_of = |id: &NodeId| nodes.iter().find(|n| n.id == *id).map(|n| n.name.clone());
    json!({
        "id": c.id,
        "name": c.name,
        "alias": c.alias,
        "description": c.description,
        "mode": c.mode,
        "status": status,
        "labels": c.labels,
        "deletion_protection": c.deletion_protection,
        "min_node": c.min_node,
        "failback": c.failback,
        "model": c.model,
        "created_at": rfc3339(c.created_ms),
        "created_ms": c.created_ms,
        "capacity": capacity,
        "nodes": nodes.iter().map(|n| json!({
            "id": n.id,
            "name": n.name,
            "state": if n.draining && n.state == NodeState::Ready { "draining" } else { n.state.as_str() },
            "model": n.model,
        })).collect::<Vec<_>>(),
        "pairs": pairs.iter().map(|p| pair(p, name_of(&p.primary), name_of(&p.standby))).collect::<Vec<_>>(),
        "jobs": jobs.iter().map(|j| json!({
            "id": j.id,
            "name": j.spec.name,
            "state": j.state.as_str(),
            "node": j.current.as_ref().map(|p| p.node.clone()),
        })).collect::<Vec<_>>(),
    })
}

/// A pair object.
pub fn pair(p: &PairRecord, primary_name: Option<String>, standby_name: Option<String>) -> Value {
    json!({
        "id": p.id,
        "cluster": p.cluster,
        "primary": p.primary,
        "primary_name": primary_name,
        "standby": p.standby,
        "standby_name": standby_name,
        "state": p.state,
        "reason": p.reason,
        "since": rfc3339(p.since_ms),
        "created_at": rfc3339(p.created_ms),
    })
}
