//! The end of a run: the storm ends, everything is healed and restarted, and after the
//! settling time every acknowledged job must be where its policy says.

use super::*;

impl World {
    /// The storm ends: every link heals, every node and agent is started, the coordinator too.
    pub(super) fn settle(&mut self) -> Result<(), String> {
        self.settled = true;
        self.note(|| "the storm ends".into());
        let now = self.clock.ns();
        for i in 0..self.agents.len() {
            for d in [Dir::Up, Dir::Down] {
                self.at(now, Ev::Heal(i, d));
            }
            if !self.agents[i].up {
                self.at(now + ms(10), Ev::AgentStart(i));
            }
            // A hang runs its course (cutting it short would reorder what waited for it).
        }
        self.weather.loss = self.weather.loss.min(0.05);
        if self.report.taint_edits > 0 {
            self.at(now + ms(20), Ev::Untaint);
        }
        if self.coord.is_none() {
            self.at(now + ms(10), Ev::CoordStart);
        }
        Ok(())
    }

    /// After settling: every acknowledged job is running (one copy, the one its record names),
    /// pending with a reason, or ended by its policy; no copy runs that no record names.
    pub(super) fn final_check(&mut self) -> Result<(), String> {
        let Some(h) = &self.coord else {
            return Err("the coordinator is not running at the end".into());
        };
        let m = h.m.clone();
        if self.trace.is_some() {
            let lines: Vec<String> = m.read(|t| {
                self.jobs
                    .iter()
                    .filter_map(|j| t.jobs.get(&j.id))
                    .map(|r| {
                        format!(
                            "end: job {} is {:?} ({}) token {}",
                            r.id, r.state, r.state_reason, r.last_fencing_token
                        )
                    })
                    .collect()
            });
            for l in lines {
                self.note(|| l);
            }
        }
        m.read(|t| self.check_jobs(t))
    }

    /// A node of the jobs' cluster that is ready, not draining, connected, and holds no
    /// copy of any job, if there is one (in `ha_pairs`: a pair of two, the primary named).
    pub(super) fn idle_node(&self, t: &tandem_coordinator::engine::Fleet) -> Option<String> {
        let busy: std::collections::BTreeSet<&NodeId> = t
            .jobs
            .values()
            .filter(|j| !j.state.is_terminal())
            .filter_map(|j| j.current.as_ref().map(|p| &p.node))
            .collect();
        let idle = |id: &NodeId| {
            t.nodes.get(id).is_some_and(|e| {
                e.record.cluster.as_deref() == Some(self.cluster.as_str())
                    && e.record.state == NodeState::Ready
                    && !e.record.draining
                    && e.record.taints.is_empty()
                    && e.live.is_some()
                    && !busy.contains(id)
            })
        };
        if self.ha_pairs {
            return t
                .pairs
                .values()
                .filter(|p| p.cluster == self.cluster && idle(&p.primary) && idle(&p.standby))
                .find_map(|p| t.nodes.get(&p.primary).map(|e| e.record.name.clone()));
        }
        t.nodes
            .values()
            .filter(|e| idle(&e.record.id))
            .map(|e| e.record.name.clone())
            .next()
    }

    pub(super) fn check_jobs(&self, t: &tandem_coordinator::engine::Fleet) -> Result<(), String> {
        for j in &self.jobs {
            let Some(rec) = t.jobs.get(&j.id) else {
                return Err(format!("acknowledged job {} is lost: no record", j.id));
            };
            let alive = self.ledger.alive_copy(&j.id);
            match rec.state {
                JobState::Running => {
                    let p = rec
                        .current
                        .as_ref()
                        .ok_or(format!("job {} is running nowhere", j.id))?;
                    let want = (self.by_node[&p.node], p.fencing_token);
                    let removed = self.agents[want.0].removed;
                    if alive != Some(want) && !removed {
                        return Err(format!(
                            "job {} is recorded running as copy {} on node {}, but the copy alive is {alive:?}",
                            j.id, want.1, want.0
                        ));
                    }
                }
                JobState::Pending => {
                    if rec.state_reason.is_empty() {
                        return Err(format!("job {} is pending without a reason", j.id));
                    }
                    // Each node has room for one job: in a pool cluster, a ready node of the
                    // cluster that runs nothing should have taken it; in `ha_pairs`, a pair of
                    // two such nodes.
                    if let Some(idle) = self.idle_node(t) {
                        return Err(format!(
                            "job {} is stranded in Pending ({}) while node {idle} of its cluster is ready and runs nothing",
                            j.id, rec.state_reason
                        ));
                    }
                    if let Some(a) = alive {
                        return Err(format!("job {} is pending while copy {a:?} runs", j.id));
                    }
                }
                JobState::Stopped => {
                    if !self.ledger.was_stopped(&j.id) {
                        return Err(format!("job {} is stopped but nobody stopped it", j.id));
                    }
                }
                JobState::Completed | JobState::Failed => {
                    if !self.ledger.natural_exits.contains_key(&j.id) {
                        return Err(format!(
                            "job {} ended {:?} ({}) without any copy ending by itself",
                            j.id, rec.state, rec.state_reason
                        ));
                    }
                }
                s => {
                    return Err(format!(
                        "job {} is stranded in {s:?} ({}) after the fleet settled",
                        j.id, rec.state_reason
                    ))
                }
            }
            if rec.state.is_terminal() {
                if let Some(a) = alive {
                    return Err(format!(
                        "job {} ended ({:?}) but copy {a:?} still runs",
                        j.id, rec.state
                    ));
                }
            }
        }
        Ok(())
    }
}
