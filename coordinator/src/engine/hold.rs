//! A planned restart's hold carried out: recorded durably before any lease that relies on it
//! is granted, and honoured by the next run. The rule itself (no down before the hold's end,
//! hold leases that end before it) is the detector's (`crate::detector`, "hold").

use super::core::{lock, Engine};
use crate::model::{FenceParams, RestartHold};
use crate::store::{Change, StateStore, StoreError, Ticket};
use std::time::{Duration, Instant};

/// At start-up, before the engine is loaded and before any Welcome: the fence parameters in
/// force (the larger of each stored and configured value: what any agent may still hold, see
/// the detector's "Fence parameters"), recorded, and every hold that has not ended made to
/// allow for a longer kill timeout.
///
/// # Why a longer kill timeout moves the holds
/// A hold (a planned restart's, or an agent hand-over's) is "nobody is declared down before T",
/// and the leases granted under it end at `T - kill - 50 ms` (with drift), `kill` being the
/// timeout in force when they were granted, which is at most the one stored now (see below).
/// A Welcome from this run gives the agent the configured kill timeout, which its shims apply
/// at once, lease or no lease. If that is longer, a node that goes silent after its Welcome
/// still holds the old hold lease and now kills its copies up to `configured - stored` later
/// than T: declared down at T, it would have two copies that long (the simulation found it:
/// 250 -> 2000 ms across a planned restart, and a node removed during the hold). So each hold
/// is moved on by that difference, in the same batch as the new parameters: a crash cannot
/// record one without the other, and a later run, which reads the larger value as stored,
/// finds the holds already moved.
///
/// Why the stored value bounds the granted one: a run grants hold leases for the larger of
/// the stored and its configured kill timeout, and it writes the configured one as stored only
/// once no agent may hold an older one, so what it stores is never below what it granted for
/// after that; before that, the stored value was the larger of the two.
pub fn fence_params_at_start(
    store: &dyn StateStore,
    configured: FenceParams,
) -> Result<FenceParams, StoreError> {
    let stored = store.fence_params()?;
    let in_force = stored.map_or(configured, |s| s.max(configured));
    if stored == Some(in_force) {
        return Ok(in_force);
    }
    let mut changes = vec![Change::PutFenceParams(in_force)];
    let longer_kill_ms = stored.map_or(0, |s| {
        in_force
            .fence_kill_timeout_ms
            .saturating_sub(s.fence_kill_timeout_ms)
    });
    if longer_kill_ms > 0 {
        let later = |h: RestartHold| RestartHold {
            until_unix_ms: h.until_unix_ms + longer_kill_ms,
            until_boottime_ms: h.until_boottime_ms + longer_kill_ms,
            boot_id: h.boot_id,
        };
        let mut moved = 0usize;
        if let Some(h) = store.restart_hold()? {
            changes.push(Change::PutRestartHold(Some(later(h))));
            moved += 1;
        }
        for (node, h) in store.node_holds()? {
            changes.push(Change::PutNodeHold(node, Some(later(h))));
            moved += 1;
        }
        if moved > 0 {
            changes.push(Change::Event(crate::model::NewEvent {
                kind: "restart_hold",
                node: None,
                message: format!(
                    "the fence kill timeout grew from {} to {} ms: {moved} holds of earlier runs end {longer_kill_ms} ms later, since their leases' copies now take that much longer to be killed",
                    in_force.fence_kill_timeout_ms - longer_kill_ms,
                    in_force.fence_kill_timeout_ms
                ),
            }));
            tracing::warn!(
                longer_kill_ms,
                holds = moved,
                "the fence kill timeout grew: the holds of earlier runs end that much later"
            );
        }
    }
    // Before any Welcome: each waits for its registration's later ticket.
    store.apply(changes)?;
    Ok(in_force)
}

impl Engine {
    /// The first step of a planned restart: records "nobody is declared down before now +
    /// `hold`" with an event, and takes the hold in the detector (no transition before it from
    /// now on). Returns the batch's ticket: grant hold leases ([`Engine::grant_hold_leases`])
    /// only once it is durable.
    ///
    /// A hold never ends earlier than one already taken: leases may have been granted up to
    /// the earlier hold's end (the simulation found it: two stops in a row, the second with a
    /// shorter hold, and the restarted coordinator declared a node down while its first hold
    /// lease still ran).
    pub fn begin_restart_hold(&self, hold: Duration, now: Instant) -> Result<Ticket, StoreError> {
        let unix_ms = self.clock.unix_ms();
        let boot = self.clock.boot_time();
        let _t = self.lock();
        let stored = self
            .store
            .restart_hold()?
            .map_or(Duration::ZERO, |h| h.left(unix_ms, &boot));
        let taken = lock(&self.detector)
            .hold_until()
            .map_or(Duration::ZERO, |u| u.saturating_duration_since(now));
        let hold = hold.max(stored).max(taken);
        let rec = RestartHold::new(hold, unix_ms, &boot);
        let (_, ticket) = self.store.apply(vec![
            Change::PutRestartHold(Some(rec.clone())),
            Change::Event(crate::model::NewEvent {
                kind: "restart_hold",
                node: None,
                message: format!(
                    "coordinator restarting: nobody is declared down before {} ({} s); a node that dies meanwhile is failed over then",
                    tandem_common::time::rfc3339(rec.until_unix_ms),
                    hold.as_secs()
                ),
            }),
        ])?;
        lock(&self.detector).hold(now + hold);
        tracing::warn!(
            until = %tandem_common::time::rfc3339(rec.until_unix_ms),
            hold_ms = hold.as_millis() as u64,
            "coordinator restarting: nobody is declared down before the hold ends"
        );
        Ok(ticket)
    }

    /// The second step: every beat from now on is acked with a lease that ends before the
    /// hold. Only once the hold is durable.
    pub fn grant_hold_leases(&self) {
        let kill = self
            .store
            .fence_params()
            .ok()
            .flatten()
            .map_or(0, |p| p.fence_kill_timeout_ms)
            .max(self.jobs.fence_kill_timeout_ms.into());
        lock(&self.detector).grant_hold_leases(Duration::from_millis(kill));
    }

    /// How many nodes hold a hold lease, and how many are alive.
    pub fn hold_leases_granted(&self) -> (usize, usize) {
        lock(&self.detector).hold_leases_granted()
    }

    /// At start-up: a hold recorded by the run before that has not ended is honoured (nobody
    /// is declared down before it ends). Returns what is left of it.
    pub fn honour_restart_hold(&self, now: Instant) -> Result<Option<Duration>, StoreError> {
        let Some(rec) = self.store.restart_hold()? else {
            return Ok(None);
        };
        let left = rec.left(self.clock.unix_ms(), &self.clock.boot_time());
        if left.is_zero() {
            return Ok(None);
        }
        let _t = self.lock();
        self.store.apply(vec![Change::Event(crate::model::NewEvent {
            kind: "restart_hold",
            node: None,
            message: format!(
                "coordinator back: honouring the restart hold, nobody is declared down before {} ({} ms left)",
                tandem_common::time::rfc3339(self.clock.unix_ms() + left.as_millis() as u64),
                left.as_millis()
            ),
        })])?;
        lock(&self.detector).hold(now + left);
        tracing::info!(
            left_ms = left.as_millis() as u64,
            "honouring the restart hold of the run before: nobody is declared down before it ends"
        );
        Ok(Some(left))
    }

    /// What is left of a hold at `now`, if one is taken.
    pub fn restart_hold_left(&self, now: Instant) -> Option<Duration> {
        lock(&self.detector)
            .hold_until()
            .map(|u| u.saturating_duration_since(now))
            .filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use tandem_common::ids::NodeId;

    fn params(lease_ms: u64, fence_kill_timeout_ms: u64) -> FenceParams {
        FenceParams {
            lease_ms,
            fence_kill_timeout_ms,
        }
    }

    fn hold(until: u64) -> RestartHold {
        RestartHold {
            until_unix_ms: until,
            boot_id: "b".into(),
            until_boottime_ms: until + 7,
        }
    }

    /// A store as a run with lease 1000 ms and kill 250 ms leaves it during a planned restart
    /// in which one agent also handed over.
    fn store_with_holds() -> MemStore {
        let s = MemStore::new();
        s.apply(vec![
            Change::PutFenceParams(params(1000, 250)),
            Change::PutRestartHold(Some(hold(50_000))),
            Change::PutNodeHold(NodeId("n-1".into()), Some(hold(40_000))),
        ])
        .unwrap();
        s
    }

    #[test]
    fn a_longer_kill_timeout_moves_every_hold_by_the_difference_with_the_new_parameters() {
        let s = store_with_holds();
        let in_force = fence_params_at_start(&s, params(600, 2000)).unwrap();
        assert_eq!(in_force, params(1000, 2000));
        assert_eq!(s.fence_params().unwrap(), Some(params(1000, 2000)));
        let h = s.restart_hold().unwrap().unwrap();
        assert_eq!((h.until_unix_ms, h.until_boottime_ms), (51_750, 51_757));
        let nodes = s.node_holds().unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].1.until_unix_ms, 41_750);
        let events = s.events_after(0, 10).unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.message.contains("grew from 250 to 2000 ms")),
            "{events:?}"
        );
        // A later run reads 2000 as stored: the holds are not moved twice.
        fence_params_at_start(&s, params(600, 2000)).unwrap();
        assert_eq!(s.restart_hold().unwrap().unwrap().until_unix_ms, 51_750);
    }

    #[test]
    fn a_shorter_kill_timeout_or_a_longer_lease_leaves_the_holds_as_they_are() {
        for configured in [params(1000, 100), params(3000, 250)] {
            let s = store_with_holds();
            fence_params_at_start(&s, configured).unwrap();
            assert_eq!(s.restart_hold().unwrap().unwrap().until_unix_ms, 50_000);
            assert_eq!(s.node_holds().unwrap()[0].1.until_unix_ms, 40_000);
        }
    }

    #[test]
    fn a_new_store_records_the_configured_parameters() {
        let s = MemStore::new();
        assert_eq!(
            fence_params_at_start(&s, params(1000, 250)).unwrap(),
            params(1000, 250)
        );
        assert_eq!(s.fence_params().unwrap(), Some(params(1000, 250)));
    }
}
