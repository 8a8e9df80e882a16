//! An agent restart, as the coordinator sees it: the hand-over of a planned restart, and the
//! record of copies a new agent run re-adopted.
//!
//! # Hand-over (protocol 5)
//! An agent asked to stop (SIGTERM, `systemctl restart`, an upgrade) asks for a hand-over
//! lease ([`tandem_common::proto::AgentMsg::RequestHandover`]) before it exits without
//! stopping its jobs. The coordinator records "this node is not declared down before T"
//! durably (a [`crate::model::RestartHold`] per node, kept in the store so that a restarted
//! coordinator honours it too), takes it in the detector, and only once it is durable grants
//! a lease that ends before T by the same rule as a planned restart's hold leases
//! ([`crate::detector::hold_lease`]: `now + 1.05 L + kill timeout + 50 ms <= T`, the lease
//! counted on the agent from before it sent the request). The agent pushes it to its shims.
//!
//! Why nothing runs twice: the node is not declared down before T, and its jobs are placed
//! elsewhere only once it is down (or once a registration of it reports it does not hold
//! them; a new agent run reports what it re-adopted, and waits until whatever it could not
//! re-adopt has fenced before it registers). Every copy on the node is dead by T: the shims
//! fence at the lease's end. If the new agent never comes, the node is declared down at T and
//! its jobs fail over as after any down. The hold is kept until T even when a new agent run
//! registers meanwhile: its shims may still hold the hand-over lease if it dies before it
//! pushes one of its own. A hand-over longer than `max_handover_ms` is refused with the
//! reason, and the agent exits with the lease it holds.

use super::core::{lock, Engine};
use crate::detector::Liveness;
use crate::model::RestartHold;
use crate::store::{Change, StoreError, Ticket};
use std::time::{Duration, Instant};
use tandem_common::ids::NodeId;

impl Engine {
    /// Whether `session` is `node`'s live session and the detector has not declared it down.
    fn alive_on(&self, node: &NodeId, session: u64) -> bool {
        let live = lock(&self.table)
            .nodes
            .get(node)
            .and_then(|e| e.live.as_ref().map(|l| l.session))
            == Some(session);
        live && matches!(
            lock(&self.detector).liveness(node),
            Some(Liveness::Alive | Liveness::Suspect)
        )
    }

    /// The first step of a hand-over: records durably that `node` is not declared down
    /// before `now + hold` (with an event), and takes the hold in the detector. Grant the
    /// lease ([`Engine::grant_handover`]) only once the returned ticket is durable. `Err`:
    /// refused, with the reason (logged).
    pub fn begin_node_hold(
        &self,
        node: &NodeId,
        session: u64,
        hold: Duration,
        now: Instant,
    ) -> Result<Ticket, String> {
        let refuse = |why: String| {
            tracing::warn!(%node, session, hold_ms = hold.as_millis() as u64, "refused an agent hand-over: {why}");
            why
        };
        if self.max_handover.is_zero() {
            return Err(refuse(
                "this coordinator grants no hand-overs (max_handover_ms = 0)".into(),
            ));
        }
        if hold > self.max_handover {
            return Err(refuse(format!(
                "a hand-over of {} ms is longer than the {} ms this coordinator allows (max_handover_ms)",
                hold.as_millis(),
                self.max_handover.as_millis()
            )));
        }
        if !self.alive_on(node, session) {
            return Err(refuse(
                "the node is not alive on this session (declared down, or replaced)".into(),
            ));
        }
        let unix_ms = self.clock.unix_ms();
        let rec = RestartHold::new(hold, unix_ms, &self.clock.boot_time());
        let t = self.lock();
        let name = t
            .nodes
            .get(node)
            .map_or_else(|| node.to_string(), |e| e.record.name.clone());
        let applied = self.store.apply(vec![
            Change::PutNodeHold(node.clone(), Some(rec.clone())),
            Change::Event(crate::model::NewEvent {
                kind: "handover",
                node: Some(node.clone()),
                message: format!(
                    "node {name} restarting its agent: it is not declared down before {} ({} ms); its jobs keep running",
                    tandem_common::time::rfc3339(rec.until_unix_ms),
                    hold.as_millis()
                ),
            }),
        ]);
        let (_, ticket) = applied.map_err(|e| refuse(format!("the store refused: {e}")))?;
        lock(&self.detector).hold_node(node.clone(), now + hold);
        drop(t);
        tracing::info!(%node, hold_ms = hold.as_millis() as u64, "agent hand-over: the node is not declared down before its hold ends");
        Ok(ticket)
    }

    /// The second step, once the hold is durable: the hand-over lease for `node` at `now`,
    /// which ends before its hold with drift and the kill timeout to spare, and the hold's end
    /// (Unix ms). `Err` when the node is no longer alive on `session`, or no lease fits.
    pub fn grant_handover(
        &self,
        node: &NodeId,
        session: u64,
        now: Instant,
    ) -> Result<(Duration, u64), String> {
        if !self.alive_on(node, session) {
            return Err("the node is not alive on this session any more".into());
        }
        let Some(until) = lock(&self.detector).node_hold_until(node) else {
            return Err("the node's hold has ended".into());
        };
        let kill = self
            .store
            .fence_params()
            .ok()
            .flatten()
            .map_or(0, |p| p.fence_kill_timeout_ms)
            .max(self.jobs.fence_kill_timeout_ms.into());
        let left = until.saturating_duration_since(now);
        let lease = crate::detector::hold_lease(left, Duration::from_millis(kill));
        if lease.is_zero() {
            return Err(format!(
                "no lease fits in the {} ms left of the hold",
                left.as_millis()
            ));
        }
        let until_unix = self.clock.unix_ms() + left.as_millis() as u64;
        tracing::info!(%node, lease_ms = lease.as_millis() as u64, "agent hand-over lease granted");
        Ok((lease, until_unix))
    }

    /// At start-up: the hand-over holds of the run before that have not ended are honoured
    /// (those nodes are not declared down before them); ended ones are cleared. Returns how
    /// many are honoured.
    pub fn honour_node_holds(&self, now: Instant) -> Result<usize, StoreError> {
        let (unix_ms, boot) = (self.clock.unix_ms(), self.clock.boot_time());
        let mut honoured = 0;
        let mut ended = Vec::new();
        for (node, rec) in self.store.node_holds()? {
            let left = rec.left(unix_ms, &boot);
            if left.is_zero() {
                ended.push(Change::PutNodeHold(node, None));
                continue;
            }
            tracing::info!(%node, left_ms = left.as_millis() as u64, "honouring an agent hand-over of the run before: the node is not declared down before it ends");
            lock(&self.detector).hold_node(node, now + left);
            honoured += 1;
        }
        if !ended.is_empty() {
            let _t = self.lock();
            self.store.apply(ended)?;
        }
        Ok(honoured)
    }

    /// A new agent run of `node` says it re-adopted `jobs` from the run before (its `Hello`
    /// reported them): an event says how many continue here with their tokens.
    pub fn readopted(&self, node: &NodeId, jobs: &[tandem_common::proto::ReadoptedJob]) {
        let t = self.lock();
        let kept = jobs
            .iter()
            .filter(|h| {
                t.jobs.get(&h.job_id).is_some_and(|j| {
                    j.node() == Some(node) && crate::jobs::fencing::is_current(j, h.fencing_token)
                })
            })
            .count();
        let name = t
            .nodes
            .get(node)
            .map_or_else(|| node.to_string(), |e| e.record.name.clone());
        let message = if kept == jobs.len() {
            format!("node {name} re-adopted {kept} running jobs after an agent restart; they continue with their tokens")
        } else {
            format!(
                "node {name} re-adopted {} running jobs after an agent restart; {kept} continue with their tokens, the others were placed again meanwhile and are stopped there",
                jobs.len()
            )
        };
        // Which copies, for the record (the first ten): job, token, pid, since when.
        let listed: Vec<String> = jobs
            .iter()
            .take(10)
            .map(|h| {
                format!(
                    "{} token {} pid {} since {}",
                    h.job_id,
                    h.fencing_token,
                    h.pid,
                    tandem_common::time::rfc3339(h.started_unix_ms)
                )
            })
            .collect();
        let more = jobs.len().saturating_sub(listed.len());
        let message = if more > 0 {
            format!("{message} ({}, and {more} more)", listed.join("; "))
        } else {
            format!("{message} ({})", listed.join("; "))
        };
        tracing::info!(%node, readopted = jobs.len(), kept, "{message}");
        if let Err(e) = self.store.apply(vec![Change::Event(crate::model::NewEvent {
            kind: "node_state",
            node: Some(node.clone()),
            message,
        })]) {
            tracing::error!(%node, error = %e, "could not record the re-adopted jobs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::{DetectorConfig, FailureDetector};
    use crate::store::{MemStore, StateStore};
    use std::sync::Arc;

    fn detector(now: Instant) -> FailureDetector {
        FailureDetector::new(
            DetectorConfig {
                heartbeat: Duration::from_millis(200),
                lease: Duration::from_secs(1),
                fence_grace: Duration::from_millis(350),
                suspect_after_missed: 3,
                restart_grace: Duration::from_secs(2),
            },
            now,
        )
    }

    /// An engine over `store` with one node registered on a live session.
    fn engine_with_node(store: &Arc<MemStore>, now: Instant) -> (Engine, NodeId, u64) {
        let rec = crate::model::test_node("a1");
        let node = rec.id.clone();
        store
            .commit(vec![Change::PutNode(Box::new(rec))])
            .expect("stored");
        let e = Engine::load(store.clone(), detector(now), Default::default(), now)
            .expect("loads")
            .with_max_handover(Duration::from_secs(30));
        let out = Arc::new(crate::outbox::Outbox::new(store.clone()));
        let reg = e
            .register(
                &node,
                2,
                "127.0.0.1:1".parse().expect("literal"),
                "0.1.0".into(),
                Default::default(),
                out,
                now,
            )
            .expect("registers");
        (e, node, reg.session)
    }

    #[test]
    fn a_hand_over_is_recorded_before_its_lease_and_the_lease_ends_before_the_hold() {
        let store = Arc::new(MemStore::new());
        let now = Instant::now();
        let (e, node, session) = engine_with_node(&store, now);
        // Too long, or from a session that is not the node's live one: refused, nothing kept.
        let long = e.begin_node_hold(&node, session, Duration::from_secs(31), now);
        assert!(long.unwrap_err().contains("max_handover_ms"));
        assert!(e
            .begin_node_hold(&node, session + 1, Duration::from_secs(10), now)
            .is_err());
        assert!(store.node_holds().unwrap().is_empty());
        let hold = Duration::from_secs(10);
        e.begin_node_hold(&node, session, hold, now)
            .expect("granted");
        let kept = store.node_holds().unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0, node);
        let (lease, _) = e.grant_handover(&node, session, now).expect("a lease");
        assert!(lease.mul_f64(1.05) + Duration::from_millis(250 + 50) <= hold);
        assert!(lease > Duration::from_secs(9), "{lease:?}");
        assert!(e.grant_handover(&node, session + 1, now).is_err());
        let ev = store.recent_events(10).unwrap();
        assert!(
            ev.iter()
                .any(|e| e.kind == "handover" && e.message.contains("not declared down before")),
            "{ev:?}"
        );
    }

    #[test]
    fn a_restarted_coordinator_honours_a_hand_over_and_clears_ended_ones() {
        let store = Arc::new(MemStore::new());
        let now = Instant::now();
        let (e, node, session) = engine_with_node(&store, now);
        e.begin_node_hold(&node, session, Duration::from_secs(10), now)
            .expect("granted");
        let ended = NodeId::random();
        store
            .commit(vec![Change::PutNodeHold(
                ended.clone(),
                Some(RestartHold {
                    until_unix_ms: 1,
                    boot_id: String::new(),
                    until_boottime_ms: 1,
                }),
            )])
            .unwrap();
        drop(e);
        let later = now + Duration::from_secs(1);
        let e2 =
            Engine::load(store.clone(), detector(later), Default::default(), later).expect("loads");
        assert_eq!(e2.honour_node_holds(later).unwrap(), 1);
        let until = lock(&e2.detector).node_hold_until(&node).expect("held");
        assert!(until > later + Duration::from_secs(8), "{until:?}");
        assert_eq!(
            store.node_holds().unwrap().len(),
            1,
            "the ended hold is cleared"
        );
        // The node is not declared down before the hold ends, though it never beats again
        // (it may be shown as suspect: that decides nothing).
        let mut t = later;
        while t < until {
            let downs: Vec<_> = lock(&e2.detector)
                .handle_tick(t)
                .into_iter()
                .filter(|tr| matches!(tr, crate::detector::Transition::Down { .. }))
                .collect();
            assert!(downs.is_empty(), "declared down at {t:?}: {downs:?}");
            t += Duration::from_millis(250);
        }
    }
}
