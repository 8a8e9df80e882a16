//! A planned restart's hold carried out: recorded durably before any lease that relies on it
//! is granted, and honoured by the next run. The rule itself (no down before the hold's end,
//! hold leases that end before it) is the detector's (`crate::detector`, "hold").

use super::core::{lock, Engine};
use crate::model::RestartHold;
use crate::store::{Change, StoreError, Ticket};
use std::time::{Duration, Instant};

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
