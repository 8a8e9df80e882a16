//! How records look in the API: times in RFC 3339 next to Unix milliseconds, plus what only
//! the live table knows (connection, heartbeat age).

use crate::membership::{Membership, NodeEntry};
use crate::model::Event;
use serde_json::{json, Value};
use std::time::Instant;
use tandem_common::time::rfc3339;

/// A node object.
pub fn node(m: &Membership, e: &NodeEntry, now: Instant) -> Value {
    let r = &e.record;
    json!({
        "id": r.id,
        "name": r.name,
        "state": r.state.as_str(),
        "state_reason": r.state_reason,
        "state_since": rfc3339(r.state_since_ms),
        "state_since_ms": r.state_since_ms,
        "last_heartbeat_age_ms": m.silent_for_ms(&r.id, now),
        "connected": e.live.is_some(),
        "address": r.address,
        "agent_version": r.agent_version,
        "created_at": rfc3339(r.created_ms),
        "cert_serial": r.cert_serial,
        "cert_not_after": rfc3339((r.cert_not_after_unix.max(0) as u64) * 1000),
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
