//! Taints an operator sets and takes off during the storm.
//!
//! A `no_schedule` taint steers new placements away from a node; taking it off must let a job
//! that waited for that node be placed at once (the edit tells the planner, under its lock),
//! not when some later event happens to look at the cluster. The draws have a stream of their
//! own ([`World::taint_rng`]), so a seed without taint edits takes the course it took before
//! they were simulated. When the storm ends every taint is taken off again (retried until a
//! coordinator takes it), so the final check's "an idle node should have taken it" holds; a
//! node still tainted (an edit lost to a crash before it was durable, then retried) is not
//! idle.

use super::{Ev, World};
use crate::clock::ms;
use rand::Rng;
use tandem_coordinator::engine::NodePatch;
use tandem_coordinator::model::{Taint, TaintEffect};

impl World {
    /// Puts a `no_schedule` taint on a present node, or takes it off.
    pub(super) fn taint(&mut self) -> Result<(), String> {
        let Some(h) = &self.coord else {
            return Ok(());
        };
        let m = h.m.clone();
        let present: Vec<usize> = (0..self.agents.len())
            .filter(|&i| !self.agents[i].removed)
            .collect();
        if present.is_empty() {
            return Ok(());
        }
        let i = present[self.taint_rng.random_range(0..present.len())];
        let name = format!("sim-{i}");
        let tainted = m.read(|t| {
            t.nodes
                .values()
                .any(|e| e.record.name == name && !e.record.taints.is_empty())
        });
        let taints = if tainted {
            Vec::new()
        } else {
            vec![Taint {
                key: "sim".into(),
                value: "maintenance".into(),
                effect: TaintEffect::NoSchedule,
            }]
        };
        self.note(|| {
            format!(
                "ADMIN {} node {i}",
                if tainted { "untaint" } else { "taint" }
            )
        });
        self.report.taint_edits += 1;
        self.patch_taints(name, taints)
    }

    /// After the storm: every taint off, checked again each second until none is left.
    pub(super) fn untaint_all(&mut self) -> Result<(), String> {
        let now = self.clock.ns();
        let tainted: Vec<String> = match &self.coord {
            Some(h) => h.m.read(|t| {
                let mut v: Vec<String> = t
                    .nodes
                    .values()
                    .filter(|e| !e.record.taints.is_empty())
                    .map(|e| e.record.name.clone())
                    .collect();
                v.sort();
                v
            }),
            None => {
                self.at(now + ms(1_000), Ev::Untaint);
                return Ok(());
            }
        };
        if tainted.is_empty() {
            return Ok(());
        }
        for name in tainted {
            self.note(|| format!("ADMIN untaint {name} (the storm is over)"));
            self.patch_taints(name, Vec::new())?;
        }
        self.at(now + ms(1_000), Ev::Untaint);
        Ok(())
    }

    fn patch_taints(&mut self, name: String, taints: Vec<Taint>) -> Result<(), String> {
        self.coord_io(|h, _| {
            let patch = NodePatch {
                taints: Some(taints),
                ..Default::default()
            };
            let _ = h.m.patch_node(&name, patch);
            h.answer();
        })
    }
}
