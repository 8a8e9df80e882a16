//! The promise, checked at every step of a run.
//!
//! The world tells the [`Ledger`] what happened to job copies (a process began, a process
//! ended and why) and what the coordinator declared; the ledger keeps only what the promise
//! needs and refuses the first step that breaks it.

use std::collections::{BTreeMap, BTreeSet};

/// A broken promise, with the seed that replays it.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The run's seed: `tandem-sim --seed N` replays it.
    pub seed: u64,
    /// Simulated milliseconds into the run.
    pub at_ms: u64,
    /// What broke.
    pub what: String,
    /// The last steps of the run, oldest first.
    pub trace: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} at {} ms: {} (replay: cargo run -p tandem-sim --release -- --seed {} --trace)",
            self.seed, self.at_ms, self.what, self.seed
        )?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// What the promise remembers.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Alive copies by job: (node, token).
    alive: BTreeMap<String, Vec<(usize, u64)>>,
    /// The highest token a copy of each job began with.
    last_token: BTreeMap<String, u64>,
    /// `never` jobs whose copy ran to its own end, and when the coordinator was told (ns).
    ran_to_end: BTreeSet<String>,
    end_told_at: BTreeMap<String, u64>,
    /// When a stop of each job was acknowledged to the operator (ns).
    stopped_at: BTreeMap<String, u64>,
    /// Jobs with at least one copy that ended by itself (exit code), by job.
    pub natural_exits: BTreeMap<String, u32>,
    /// Copies begun, in all.
    pub copies_started: u64,
    /// Each job's name: one name never has two copies at once either, whichever jobs they
    /// belong to (a job stopped and submitted again under its name is a new job).
    names: BTreeMap<String, String>,
    /// Copies of a job begun while an earlier job of its name was stopped.
    pub reused_names: u64,
    /// The GPUs held by alive copies: (node, GPU UUID) → (job, token).
    gpus_held: BTreeMap<(usize, String), (String, u64)>,
}

impl Ledger {
    /// A copy's process began on `node` with `token` and `gpus`; its start was sent at
    /// `sent_ns`.
    pub fn began(
        &mut self,
        job: &str,
        node: usize,
        token: u64,
        sent_ns: u64,
        gpus: &[String],
    ) -> Result<(), String> {
        self.copies_started += 1;
        for g in gpus {
            if let Some((other, t)) = self.gpus_held.get(&(node, g.clone())) {
                return Err(format!(
                    "GPU {g} of node {node} held twice: job {job} token {token} began with it while job {other} token {t} is alive with it"
                ));
            }
        }
        if let Some(other) = self.alive.get(job).and_then(|v| v.first()) {
            return Err(format!(
                "two copies of job {job}: token {token} began on node {node} while token {} is alive on node {}",
                other.1, other.0
            ));
        }
        if let Some(name) = self.names.get(job) {
            for (other, copies) in &self.alive {
                if other == job || copies.is_empty() || self.names.get(other) != Some(name) {
                    continue;
                }
                return Err(format!(
                    "two copies of job name `{name}`: job {job} token {token} began on node {node} while job {other} token {} is alive on node {}",
                    copies[0].1, copies[0].0
                ));
            }
            if self
                .names
                .iter()
                .any(|(other, n)| n == name && other != job && self.stopped_at.contains_key(other))
            {
                self.reused_names += 1;
            }
        }
        if let Some(last) = self.last_token.get(job) {
            if token <= *last {
                return Err(format!(
                    "fencing token of job {job} did not grow: {token} began after {last}"
                ));
            }
        }
        if let Some(at) = self.end_told_at.get(job) {
            if sent_ns > *at {
                return Err(format!(
                    "restart-never job {job} began again (token {token} on node {node}, start sent at {} ms) after the coordinator was told at {} ms that it ran to its end",
                    sent_ns / 1_000_000,
                    at / 1_000_000
                ));
            }
        }
        if let Some(at) = self.stopped_at.get(job) {
            if sent_ns > *at {
                return Err(format!(
                    "job {job} began again (token {token} on node {node}, start sent at {} ms) after its stop was acknowledged at {} ms",
                    sent_ns / 1_000_000,
                    at / 1_000_000
                ));
            }
        }
        self.last_token.insert(job.to_string(), token);
        for g in gpus {
            self.gpus_held
                .insert((node, g.clone()), (job.to_string(), token));
        }
        self.alive
            .entry(job.to_string())
            .or_default()
            .push((node, token));
        Ok(())
    }

    /// A copy's process ended; `natural` when it exited by itself (not killed).
    pub fn ended(&mut self, job: &str, node: usize, token: u64, natural: bool, never: bool) {
        self.gpus_held
            .retain(|(n, _), (j, t)| !(*n == node && j == job && *t == token));
        if let Some(v) = self.alive.get_mut(job) {
            v.retain(|c| *c != (node, token));
            if v.is_empty() {
                self.alive.remove(job);
            }
        }
        if natural {
            *self.natural_exits.entry(job.to_string()).or_default() += 1;
            if never {
                self.ran_to_end.insert(job.to_string());
            }
        }
    }

    /// The coordinator received the report that a copy of `job` ran to its end (from then
    /// on a `never` job must not be started again; before, its node may be declared down and
    /// the job failed over without anyone knowing it had ended, as in any scheduler).
    pub fn end_told(&mut self, job: &str, now_ns: u64) {
        if self.ran_to_end.contains(job) {
            self.end_told_at.entry(job.to_string()).or_insert(now_ns);
        }
    }

    /// The operator was told that `job` is being stopped.
    pub fn stop_acknowledged(&mut self, job: &str, now_ns: u64) {
        self.stopped_at.entry(job.to_string()).or_insert(now_ns);
    }

    /// `job` was submitted under `name`.
    pub fn named(&mut self, job: &str, name: &str) {
        self.names.insert(job.to_string(), name.to_string());
    }

    /// Whether a stop of `job` was acknowledged.
    pub fn was_stopped(&self, job: &str) -> bool {
        self.stopped_at.contains_key(job)
    }

    /// The coordinator declared `node` down: no copy may be alive there.
    pub fn declared_down(&self, node: usize) -> Result<(), String> {
        for (job, copies) in &self.alive {
            if let Some((_, token)) = copies.iter().find(|(n, _)| *n == node) {
                return Err(format!(
                    "node {node} was declared down while copy {token} of job {job} is still alive there"
                ));
            }
        }
        Ok(())
    }

    /// The copy of `job` alive now, if any.
    pub fn alive_copy(&self, job: &str) -> Option<(usize, u64)> {
        self.alive.get(job).and_then(|v| v.first().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_alive_copy_is_refused() {
        let mut l = Ledger::default();
        l.began("j", 0, 1, 0, &[]).unwrap();
        assert!(l
            .began("j", 1, 2, 0, &[])
            .unwrap_err()
            .contains("two copies"));
        l.ended("j", 0, 1, false, false);
        l.began("j", 1, 2, 0, &[]).unwrap();
    }

    #[test]
    fn tokens_grow_never_jobs_end_and_stops_hold() {
        let mut l = Ledger::default();
        l.began("j", 0, 5, 0, &[]).unwrap();
        l.ended("j", 0, 5, false, true);
        assert!(l
            .began("j", 0, 5, 0, &[])
            .unwrap_err()
            .contains("did not grow"));
        l.began("j", 0, 6, 0, &[]).unwrap();
        l.ended("j", 0, 6, true, true);
        l.began("j", 0, 7, 0, &[]).unwrap();
        l.ended("j", 0, 7, false, true);
        l.end_told("j", 10);
        assert!(l
            .began("j", 0, 8, 11, &[])
            .unwrap_err()
            .contains("ran to its end"));
        l.began("k", 0, 1, 0, &[]).unwrap();
        l.named("a", "web");
        l.named("b", "web");
        l.began("a", 0, 1, 0, &[]).unwrap();
        assert!(l
            .began("b", 3, 1, 0, &[])
            .unwrap_err()
            .contains("job name `web`"));
        l.ended("a", 0, 1, false, false);
        l.began("b", 3, 1, 0, &[]).unwrap();
        l.stop_acknowledged("k", 10);
        l.ended("k", 0, 1, false, false);
        l.began("k", 0, 2, 5, &[]).unwrap();
        l.ended("k", 0, 2, false, false);
        assert!(l
            .began("k", 0, 3, 11, &[])
            .unwrap_err()
            .contains("after its stop"));
        l.began("m", 2, 1, 0, &[]).unwrap();
        assert!(l.declared_down(2).is_err());
        assert!(l.declared_down(1).is_ok());
    }

    #[test]
    fn a_gpu_is_held_by_one_alive_copy_at_a_time() {
        let mut l = Ledger::default();
        let g = |s: &str| vec![s.to_string()];
        l.began("a", 0, 1, 0, &g("GPU-0")).unwrap();
        // Another node's GPU of the same name is another GPU.
        l.began("b", 1, 1, 0, &g("GPU-0")).unwrap();
        let e = l.began("c", 0, 1, 0, &g("GPU-0")).unwrap_err();
        assert!(
            e.contains("GPU GPU-0 of node 0 held twice") && e.contains("job a"),
            "{e}"
        );
        l.ended("a", 0, 1, false, false);
        l.began("c", 0, 1, 0, &g("GPU-0")).unwrap();
    }
}
