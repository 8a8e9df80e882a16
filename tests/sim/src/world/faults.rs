//! The faults of the storm: what is broken at each fault event (agents killed, hung and
//! restarted, nodes losing power, links cut, the coordinator crashed or stopped), and the
//! fence parameters a restarted coordinator is configured with.

use super::*;

impl World {
    pub(super) fn fault(&mut self) -> Result<(), String> {
        let now = self.clock.ns();
        self.report.faults += 1;
        let n = self.agents.len();
        let i = self.rng.random_range(0..n);
        match self.rng.random_range(0..100) {
            10..=14 if self.agents[i].up => {
                // A planned stop (SIGTERM): a hand-over first, then the process exits.
                let local = self.agents[i].local(now);
                let mut out = Vec::new();
                let clock = Arc::clone(&self.clock);
                if self.agents[i].planned_stop(&clock, &mut self.rng, local, &mut out) {
                    self.note(|| format!("FAULT agent {i} is stopped as planned (hand-over)"));
                    self.report.agent_handovers += 1;
                    let run = self.agents[i].run;
                    self.at(now + ms(3_000), Ev::AgentStopTimeout(i, run));
                    self.agent_outs(i, out)?;
                } else {
                    self.note(|| {
                        format!("FAULT agent {i} is stopped as planned (nothing to hand over)")
                    });
                    self.agent_exits(i);
                }
            }
            0..=14 => {
                if self.agents[i].up {
                    self.note(|| format!("FAULT agent {i} is killed"));
                    if let Some(conn) = self.agents[i].conn {
                        if let Some(c) = self.net.conns.get_mut(&conn) {
                            c.open_at_agent = false;
                        }
                        self.at(now + crate::net::IDLE_TIMEOUT_NS, Ev::ConnTimeout(conn));
                    }
                    self.agents[i].crash();
                    let t = now + self.rng.random_range(ms(50)..=ms(3_000));
                    self.at(t, Ev::AgentStart(i));
                }
            }
            15..=27 => {
                if self.agents[i].up {
                    let until = now + self.rng.random_range(ms(100)..=ms(3_000));
                    self.note(|| {
                        format!("FAULT agent {i} hangs for {} ms", (until - now) / 1_000_000)
                    });
                    self.agents[i].hung_until = self.agents[i].hung_until.max(until);
                }
            }
            28..=35 => {
                if self.agents[i].powered {
                    self.note(|| format!("FAULT node {i} loses power"));
                    if let Some(conn) = self.agents[i].conn {
                        if let Some(c) = self.net.conns.get_mut(&conn) {
                            c.open_at_agent = false;
                        }
                        self.at(now + crate::net::IDLE_TIMEOUT_NS, Ev::ConnTimeout(conn));
                    }
                    let mut out = Vec::new();
                    self.agents[i].power_cut(&mut out);
                    self.agent_outs(i, out)?;
                    let t = now + self.rng.random_range(ms(300)..=ms(5_000));
                    self.at(t, Ev::AgentStart(i));
                }
            }
            36..=80 => {
                let dirs: &[Dir] = match self.rng.random_range(0..3) {
                    0 => &[Dir::Up],
                    1 => &[Dir::Down],
                    _ => &[Dir::Up, Dir::Down],
                };
                let len = self.rng.random_range(ms(50)..=ms(4_000));
                self.note(|| format!("FAULT link {i} cut {dirs:?} for {} ms", len / 1_000_000));
                let w = self.weather;
                for d in dirs {
                    self.net.set_cut(&mut self.rng, w, now, i, *d, true);
                    self.at(now + len, Ev::Heal(i, *d));
                }
            }
            86..=90 => {
                if self.coord.is_some() {
                    // A planned restart (SIGTERM): the hold is recorded, made durable, then
                    // hold leases are granted for three beats and the process exits.
                    // At least lease + fence grace + 1 s, as the config requires.
                    let least =
                        (self.params.lease + self.params.fence_grace).as_nanos() as u64 + ms(1_000);
                    let hold = self.rng.random_range(least.max(ms(3_000))..=ms(20_000));
                    self.note(|| {
                        format!(
                            "FAULT the coordinator restarts (planned, hold {} ms)",
                            hold / 1_000_000
                        )
                    });
                    self.report.planned_restarts += 1;
                    let at = tandem_coordinator::clock::Clock::now(&*self.clock);
                    let h = self.coord.as_ref().expect("checked");
                    match h.m.begin_restart_hold(Duration::from_nanos(hold), at) {
                        Ok(ticket) => {
                            h.store.wait_durable(ticket);
                            h.m.grant_hold_leases();
                        }
                        Err(e) => return Err(format!("recording the hold: {e}")),
                    }
                    let run = self.coord_run;
                    let stop = now + 3 * self.params.heartbeat.as_nanos() as u64 + ms(500);
                    self.at(stop, Ev::CoordStop(run));
                    // Back within the hold, mostly; sometimes only after it.
                    let back = stop + self.rng.random_range(ms(50)..=hold + ms(5_000));
                    self.at(back, Ev::CoordStart);
                }
            }
            81..=85 => {
                if self.coord.is_some() {
                    self.note(|| "FAULT the coordinator is killed".into());
                    self.crash_coordinator();
                    let t = now + self.rng.random_range(ms(50)..=ms(4_000));
                    self.at(t, Ev::CoordStart);
                }
            }
            _ => {
                // Weather changes.
                self.weather.loss = self.rng.random_range(0.0..0.3);
                self.weather.max_delay_ns = self.rng.random_range(ms(1)..=ms(60));
            }
        }
        Ok(())
    }

    /// The agent process exits (a planned stop): as a kill, then started again after a while,
    /// within the hand-over mostly, sometimes long after it.
    pub(super) fn agent_exits(&mut self, i: usize) {
        let now = self.clock.ns();
        if let Some(conn) = self.agents[i].conn {
            if let Some(c) = self.net.conns.get_mut(&conn) {
                c.open_at_agent = false;
            }
            self.at(now + crate::net::IDLE_TIMEOUT_NS, Ev::ConnTimeout(conn));
        }
        self.agents[i].crash();
        let handover = ms(crate::agent::HANDOVER_MS.into());
        let back = if self.rng.random_range(0..4) == 0 {
            handover + self.rng.random_range(ms(1_000)..=ms(10_000))
        } else {
            self.rng.random_range(ms(50)..=ms(3_000))
        };
        self.at(now + back, Ev::AgentStart(i));
    }

    /// An operator changes the coordinator's lease or fence kill timeout while it is down
    /// (issue 12, defect 7): agents that stayed up keep the old kill timeout until they are
    /// welcomed again, and their copies the old lease.
    pub(super) fn change_fence_params(&mut self) {
        const LEASES_MS: [u64; 3] = [600, 1_000, 1_500];
        const KILLS_MS: [u64; 5] = [50, 250, 500, 1_000, 2_000];
        let lease = Duration::from_millis(LEASES_MS[self.param_rng.random_range(0..3)]);
        let fence_kill = Duration::from_millis(KILLS_MS[self.param_rng.random_range(0..5)]);
        if lease == self.params.lease && fence_kill == self.params.fence_kill {
            return;
        }
        self.report.fence_changes += 1;
        let old = self.params;
        self.note(|| {
            format!(
                "CONFIG lease {} -> {} ms, fence kill timeout {} -> {} ms",
                old.lease.as_millis(),
                lease.as_millis(),
                old.fence_kill.as_millis(),
                fence_kill.as_millis()
            )
        });
        self.params.lease = lease;
        self.params.fence_kill = fence_kill;
        self.params.fence_grace = if self.knobs.no_fence_grace {
            Duration::ZERO
        } else {
            fence_kill + lease / 20 + Duration::from_millis(50)
        };
        // The config's least restart grace follows the new values (lease + fence grace): an
        // operator who shortens both gets a short one, shorter than the old values needed.
        // Half the time the least.
        let least = (lease + self.params.fence_grace).as_nanos() as u64;
        let grace = if self.param_rng.random_bool(0.5) {
            least
        } else {
            self.param_rng.random_range(least..=least.max(ms(5_000)))
        };
        self.params.restart_grace = Duration::from_nanos(grace);
    }

    pub(super) fn crash_coordinator(&mut self) {
        self.report.coordinator_crashes += 1;
        self.coord = None;
        for c in self.net.conns.values_mut() {
            c.open_at_coord = false;
        }
        // What the store had not flushed is lost with the process.
        self.store = Arc::new(self.store.crash());
    }
}
