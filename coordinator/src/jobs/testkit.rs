//! Builders shared by the jobs tests.

use super::model::{JobRecord, JobSpec, Placement, Resources};
use super::placement::NodeView;
use crate::cluster::capacity::GIB;
use crate::model::{ClusterMode, ClusterRecord, PairRecord, PairState};
use std::collections::BTreeMap;
use tandem_common::ids::NodeId;

/// The cluster most tests use.
pub const C: &str = "c-000000000001";

pub fn id(n: u8) -> NodeId {
    NodeId(format!("n-{n:016x}"))
}

/// A live, undrained node `node-<n>` of `cluster` with GPUs `GPU-<n>-<i>`.
pub fn node(n: u8, cluster: &str, cores: u32, memory_gib: u64, gpus: usize) -> NodeView {
    NodeView {
        id: id(n),
        name: format!("node-{n}"),
        cluster: Some(cluster.to_string()),
        live: true,
        suspect: false,
        draining: false,
        labels: BTreeMap::new(),
        taints: vec![],
        cores,
        memory_bytes: memory_gib * GIB,
        gpus: (0..gpus).map(|i| format!("GPU-{n}-{i}")).collect(),
        named_users: true,
    }
}

pub fn cluster(id: &str, mode: ClusterMode) -> ClusterRecord {
    ClusterRecord {
        id: id.into(),
        name: format!("{id}-name"),
        alias: String::new(),
        description: String::new(),
        mode,
        labels: BTreeMap::new(),
        deletion_protection: false,
        min_node: None,
        failback: false,
        model: None,
        created_ms: 0,
    }
}

pub fn spec(cpu_millis: u64, memory_bytes: u64, gpus: u32) -> JobSpec {
    JobSpec {
        name: "job".into(),
        cluster: C.into(),
        command: vec!["/bin/true".into()],
        env: BTreeMap::new(),
        workdir: None,
        resources: Resources {
            cpu_millis,
            memory_bytes,
            gpus,
        },
        restart: Default::default(),
        max_restarts: 5,
        constraints: Default::default(),
        tolerations: vec![],
        user: None,
        group: None,
    }
}

/// Job `j-<k>`, pending.
pub fn job(k: u32, spec: JobSpec) -> JobRecord {
    let mut spec = spec;
    spec.name = format!("job-{k}");
    JobRecord::new(format!("j-{k:012x}"), spec, 0)
}

/// Job `j-<k>` running on node `n` with `token` and `gpus`.
pub fn running(k: u32, spec: JobSpec, n: u8, token: u64, gpus: &[&str]) -> JobRecord {
    let mut j = job(k, spec);
    j.current = Some(Placement {
        started_ms: Some(0),
        ..Placement::new(id(n), token, gpus.iter().map(|g| g.to_string()).collect())
    });
    j.last_fencing_token = token;
    j.state = super::model::JobState::Running;
    j.state_reason = "running".into();
    j
}

pub fn pair(pid: &str, cluster: &str, primary: u8, standby: u8) -> PairRecord {
    PairRecord {
        id: pid.into(),
        cluster: cluster.into(),
        primary: id(primary),
        standby: id(standby),
        state: PairState::Healthy,
        reason: String::new(),
        created_ms: 0,
        since_ms: 0,
    }
}
