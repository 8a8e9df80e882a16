//! The operator: submits, stops, pair changes, drains and removals at random, and the rarer
//! requests (a node moved to the other cluster or back, failover forced).

use super::*;

impl World {
    pub(super) fn admin(&mut self) -> Result<(), String> {
        let Some(h) = &self.coord else {
            return Ok(());
        };
        let m = h.m.clone();
        let now = self.clock.ns();
        let live: Vec<String> = m.read(|t| {
            let mut v: Vec<_> = t
                .jobs
                .values()
                .filter(|j| !j.state.is_terminal())
                .map(|j| j.id.clone())
                .collect();
            v.sort();
            v
        });
        let roll = self.rng.random_range(0..100);
        if roll < 50 || self.jobs.is_empty() || now < ms(2_000) {
            let n = self.jobs.len();
            let (restart, never) = match self.rng.random_range(0..3) {
                0 => (RestartPolicy::Never, true),
                1 => (RestartPolicy::Always, false),
                _ => (RestartPolicy::OnFailure, false),
            };
            let b = Behaviour {
                runs_for_ns: self
                    .rng
                    .random_bool(0.4)
                    .then(|| self.rng.random_range(ms(500)..=ms(8_000))),
                code: self.rng.random_range(0..=1),
                ignores_term: self.rng.random_bool(0.2),
            };
            let mut env = std::collections::BTreeMap::new();
            env.insert(
                "SIM_RESTART".to_string(),
                if never { "never" } else { "other" }.to_string(),
            );
            // Half the time, a new version of a stopped job: its name again, as an operator
            // changes a job (stop it, submit it again).
            let stopped: Vec<&SimJob> = self
                .jobs
                .iter()
                .filter(|j| self.ledger.was_stopped(&j.id))
                .collect();
            let name = match stopped.len() {
                0 => format!("job-{n}"),
                k if self.name_rng.random_bool(0.5) => {
                    stopped[self.name_rng.random_range(0..k)].name.clone()
                }
                _ => format!("job-{n}"),
            };
            let spec = JobSpec {
                name: name.clone(),
                cluster: self.cluster.clone(),
                command: b.command(),
                env,
                workdir: None,
                resources: Resources {
                    cpu_millis: 1_000,
                    memory_bytes: 1 << 30,
                    // Most jobs want no GPU; some one or all of a node's.
                    gpus: match self.gpu_rng.random_range(0..10) {
                        0..=5 => 0,
                        6..=8 => 1,
                        _ => crate::agent::GPUS_PER_NODE,
                    },
                },
                restart,
                max_restarts: 2,
                constraints: Default::default(),
                tolerations: Vec::new(),
                user: None,
                group: None,
            };
            let id = format!("j-{n:04}");
            let rec = JobRecord::new(
                id.clone(),
                spec,
                tandem_coordinator::clock::Clock::unix_ms(&*self.clock),
            );
            self.note(|| format!("ADMIN submit {id} `{name}` ({restart:?}, {b:?})"));
            let mut ok = false;
            let r = self.coord_io(|h, _| {
                ok = h.m.submit_job(rec).is_ok();
                h.answer();
            });
            r?;
            if ok && m.read(|t| t.jobs.contains_key(&id)) {
                self.ledger.named(&id, &name);
                self.jobs.push(SimJob { id, name });
                self.report.jobs += 1;
            }
        } else if roll < 70 {
            if let Some(job) = live
                .get(self.rng.random_range(0..live.len().max(1)))
                .cloned()
            {
                self.note(|| format!("ADMIN stop {job}"));
                let mut ok = false;
                let j = job.clone();
                self.coord_io(|h, _| {
                    ok =
                        h.m.job_event(tandem_coordinator::jobs::planner::Event::StopRequested {
                            job: j,
                        })
                        .is_ok();
                    h.answer();
                })?;
                if ok {
                    self.ledger.stop_acknowledged(&job, now);
                }
            }
        } else if roll < 80 {
            // Pair changes (refused in a pool cluster, as they should be).
            let pairs: Vec<String> = m.read(|t| {
                let mut v: Vec<_> = t.pairs.keys().cloned().collect();
                v.sort();
                v
            });
            if !pairs.is_empty() && self.rng.random_bool(0.5) {
                let p = pairs[self.rng.random_range(0..pairs.len())].clone();
                self.note(|| format!("ADMIN unpair {p}"));
                let c = self.cluster.clone();
                self.coord_io(|h, _| {
                    let _ = h.m.delete_pair(&c, &p);
                    h.answer();
                })?;
            } else {
                let n = self.agents.len();
                let (a, b) = (self.rng.random_range(0..n), self.rng.random_range(0..n));
                self.note(|| format!("ADMIN pair node {a} with node {b}"));
                let c = self.cluster.clone();
                self.coord_io(|h, _| {
                    let _ =
                        h.m.create_pair(&c, &format!("sim-{a}"), &format!("sim-{b}"));
                    h.answer();
                })?;
            }
        } else if roll < 95 {
            let i = self.rng.random_range(0..self.agents.len());
            let drain = self.rng.random_bool(0.6);
            self.note(|| format!("ADMIN drain node {i}: {drain}"));
            self.coord_io(|h, _| {
                let _ = h.m.set_draining(&format!("sim-{i}"), drain);
                h.answer();
            })?;
        } else {
            let present = self.agents.iter().filter(|a| !a.removed).count();
            let i = self.rng.random_range(0..self.agents.len());
            if present > 2 && !self.agents[i].removed {
                self.note(|| format!("ADMIN remove node {i}"));
                let mut removed = false;
                self.coord_io(|h, _| {
                    removed =
                        h.m.remove_node(&format!("sim-{i}"), "simulated removal")
                            .is_ok();
                    h.answer();
                })?;
                if removed {
                    // Its certificate is revoked: it never comes back.
                    self.agents[i].removed = true;
                }
            }
        }
        Ok(())
    }

    /// A node moved to the other cluster or back (its jobs move away as from a drain, each
    /// old copy stopped first), or failover forced in the paused cluster.
    pub(super) fn operator(&mut self) -> Result<(), String> {
        let Some(h) = &self.coord else {
            return Ok(());
        };
        let m = h.m.clone();
        if self.ops_rng.random_bool(0.6) {
            let present: Vec<usize> = (0..self.agents.len())
                .filter(|&i| !self.agents[i].removed)
                .collect();
            if present.is_empty() {
                return Ok(());
            }
            let i = present[self.ops_rng.random_range(0..present.len())];
            let name = format!("sim-{i}");
            let now_in = m.read(|t| {
                t.nodes
                    .values()
                    .find(|e| e.record.name == name)
                    .and_then(|e| e.record.cluster.clone())
            });
            let to = if now_in.as_deref() == Some("c-other") {
                "c-sim"
            } else {
                "c-other"
            };
            self.note(|| format!("ADMIN move node {i} to cluster {to}"));
            self.report.node_moves += 1;
            self.coord_io(|h, _| {
                let _ = h.m.move_node(&name, to);
                h.answer();
            })?;
        } else {
            self.note(|| "ADMIN force failover in cluster sim".into());
            let c = self.cluster.clone();
            self.coord_io(|h, _| {
                let _ = h.m.force_failover(&c);
                h.answer();
            })?;
        }
        Ok(())
    }
}
