//! A cluster's capacity: total and free cores, memory, GPUs and CU (console 000).
//!
//! # What counts
//! - Only **live** nodes (`Ready` or `Suspect`, see [`super::is_live`]): a down node's cores
//!   cannot run anything, so showing them as capacity would promise room that is not there.
//! - **Totals** come from each node's last hardware report: `cpu.logical_cores`,
//!   `memory.total_bytes`, `gpus.len()`.
//! - **Free** is an allocation view: total minus what the cluster's work holds on the node
//!   ([`Held`]), never below zero. It is not the operating system's idea of free memory, which
//!   moves with everything else running on the machine. A GPU whose health is `unhealthy`
//!   (NVML: needs a reset or service) is never free; a `warning` one still is.
//! - **CU**: 1 CU = 1 core + 4 GiB. Per node `cu = min(cores, memory / 4 GiB)` in whole units
//!   (rounded down), summed over nodes; free CU likewise from the node's free cores (whole
//!   cores) and free memory. Summing per node matters: 64 cores on one node and 256 GiB on
//!   another make no CU at all.
//!
//! `cores_free` is fractional (held CPU is counted in millicores), the other fields are whole.

use crate::model::NodeRecord;
use serde::Serialize;
use tandem_common::hardware::HealthState;
use tandem_common::ids::NodeId;

/// One GiB.
pub const GIB: u64 = 1 << 30;
/// The memory in one CU.
pub const CU_MEMORY_BYTES: u64 = 4 * GIB;

/// What work holds on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// CPU, in thousandths of a core.
    pub cpu_millis: u64,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// The UUIDs of the GPUs held (UUIDs, not a count, so that a held GPU that has since turned
    /// unhealthy is not taken off the free count twice).
    pub gpu_uuids: Vec<String>,
}

/// A cluster's capacity, as shown in its details.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Capacity {
    /// Logical cores of the live nodes.
    pub cores_total: u64,
    /// Cores not held, in cores with millicore precision.
    pub cores_free: f64,
    /// Memory of the live nodes, bytes.
    pub memory_total_bytes: u64,
    /// Memory not held, bytes.
    pub memory_free_bytes: u64,
    /// GPUs of the live nodes.
    pub gpus_total: u64,
    /// GPUs neither held nor unhealthy.
    pub gpus_free: u64,
    /// Compute units (1 core + 4 GiB), summed per node.
    pub cu_total: u64,
    /// Compute units free, summed per node.
    pub cu_free: u64,
}

/// CU of one node: `min(cores, memory / 4 GiB)`, whole units.
pub fn node_cu(cores: u64, memory_bytes: u64) -> u64 {
    cores.min(memory_bytes / CU_MEMORY_BYTES)
}

/// The capacity of `nodes` (pass the nodes of one cluster; the ones that are not live are
/// skipped) given what `held` says is held on each (jobs do not exist yet: `|_| Held::default()`,
/// or [`capacity_idle`]).
pub fn capacity<'a>(
    nodes: impl IntoIterator<Item = &'a NodeRecord>,
    held: impl Fn(&NodeId) -> Held,
) -> Capacity {
    let mut c = Capacity::default();
    let mut free_millis: u64 = 0;
    for node in nodes.into_iter().filter(|n| super::is_live(n.state)) {
        let h = held(&node.id);
        let hw = &node.hardware;
        let cores = u64::from(hw.cpu.logical_cores);
        let memory = hw.memory.total_bytes;
        let node_free_millis = (cores * 1000).saturating_sub(h.cpu_millis);
        let node_free_memory = memory.saturating_sub(h.memory_bytes);
        let gpus_free = hw
            .gpus
            .iter()
            .filter(|g| g.health.state != HealthState::Unhealthy)
            .filter(|g| !h.gpu_uuids.contains(&g.uuid))
            .count() as u64;

        c.cores_total += cores;
        free_millis += node_free_millis;
        c.memory_total_bytes += memory;
        c.memory_free_bytes += node_free_memory;
        c.gpus_total += hw.gpus.len() as u64;
        c.gpus_free += gpus_free;
        c.cu_total += node_cu(cores, memory);
        c.cu_free += node_cu(node_free_millis / 1000, node_free_memory);
    }
    c.cores_free = free_millis as f64 / 1000.0;
    c
}

/// The capacity of `nodes` with nothing held.
pub fn capacity_idle<'a>(nodes: impl IntoIterator<Item = &'a NodeRecord>) -> Capacity {
    capacity(nodes, |_| Held::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeState;
    use std::collections::HashMap;
    use tandem_common::hardware::{GpuHealth, GpuInfo, HardwareReport};

    fn node(n: u8, state: NodeState, cores: u32, memory_gib: u64, gpus: usize) -> NodeRecord {
        let mut hardware = HardwareReport::default();
        hardware.cpu.logical_cores = cores;
        hardware.memory.total_bytes = memory_gib * GIB;
        // The OS's view of free memory must not matter.
        hardware.memory.available_bytes = 1;
        hardware.gpus = (0..gpus)
            .map(|i| GpuInfo {
                index: i as u32,
                uuid: format!("GPU-{n}-{i}"),
                ..Default::default()
            })
            .collect();
        // Through JSON, so that fields added to the record later (with defaults) need no edit.
        serde_json::from_value(serde_json::json!({
            "id": format!("n-{n:016x}"),
            "name": format!("node-{n}"),
            "state": state,
            "state_reason": "",
            "state_since_ms": 0,
            "address": "",
            "agent_version": "",
            "cert_serial": 0,
            "cert_not_after_unix": 0,
            "created_ms": 0,
            "joined_with_token": "",
            "hardware": hardware,
        }))
        .unwrap()
    }

    #[test]
    fn one_cu_is_one_core_and_four_gib_per_node() {
        assert_eq!(node_cu(8, 64 * GIB), 8);
        assert_eq!(node_cu(8, 16 * GIB), 4);
        assert_eq!(node_cu(8, 4 * GIB - 1), 0);
        assert_eq!(node_cu(0, 64 * GIB), 0);
        assert_eq!(node_cu(3, 14 * GIB), 3);
        assert_eq!(
            node_cu(4, 14 * GIB),
            3,
            "rounded down: 14 GiB is 3.5 CU of memory"
        );
    }

    #[test]
    fn an_idle_cluster_is_all_free() {
        let nodes = [
            node(1, NodeState::Ready, 8, 32, 2),
            node(2, NodeState::Suspect, 16, 32, 0),
        ];
        let c = capacity_idle(&nodes);
        assert_eq!(
            c,
            Capacity {
                cores_total: 24,
                cores_free: 24.0,
                memory_total_bytes: 64 * GIB,
                memory_free_bytes: 64 * GIB,
                gpus_total: 2,
                gpus_free: 2,
                cu_total: 8 + 8,
                cu_free: 16,
            }
        );
    }

    #[test]
    fn cu_is_summed_per_node_not_from_the_totals() {
        // 64 cores with no memory to speak of, and memory with one core.
        let nodes = [
            node(1, NodeState::Ready, 64, 2, 0),
            node(2, NodeState::Ready, 1, 256, 0),
        ];
        let c = capacity_idle(&nodes);
        assert_eq!(c.cores_total, 65);
        assert_eq!(c.memory_total_bytes, 258 * GIB);
        assert_eq!(c.cu_total, 1, "min(65, 64) would be wrong");
    }

    #[test]
    fn only_live_nodes_count() {
        let nodes = [
            node(1, NodeState::Ready, 4, 16, 1),
            node(2, NodeState::Suspect, 4, 16, 1),
            node(3, NodeState::Down, 4, 16, 1),
            node(4, NodeState::Left, 4, 16, 1),
            node(5, NodeState::Joining, 4, 16, 1),
        ];
        let c = capacity_idle(&nodes);
        assert_eq!(c.cores_total, 8);
        assert_eq!(c.gpus_total, 2);
        assert_eq!(c.cu_total, 8);
        assert_eq!(capacity_idle(&[]), Capacity::default());
    }

    #[test]
    fn held_work_is_taken_off_free_per_node() {
        let nodes = [
            node(1, NodeState::Ready, 8, 32, 2),
            node(2, NodeState::Ready, 8, 32, 0),
        ];
        let held: HashMap<NodeId, Held> = [(
            nodes[0].id.clone(),
            Held {
                cpu_millis: 2500,
                memory_bytes: 10 * GIB,
                gpu_uuids: vec!["GPU-1-0".into()],
            },
        )]
        .into();
        let c = capacity(&nodes, |id| held.get(id).cloned().unwrap_or_default());
        assert_eq!(c.cores_total, 16);
        assert_eq!(c.cores_free, 13.5);
        assert_eq!(c.memory_free_bytes, 54 * GIB);
        assert_eq!(c.gpus_total, 2);
        assert_eq!(c.gpus_free, 1);
        assert_eq!(c.cu_total, 16);
        // Node 1: 5 whole free cores, 22 GiB = 5 CU of memory: 5. Node 2: 8.
        assert_eq!(c.cu_free, 5 + 8);
    }

    #[test]
    fn overcommitted_nodes_show_zero_free_not_a_wrap() {
        let nodes = [node(1, NodeState::Ready, 2, 4, 0)];
        let c = capacity(&nodes, |_| Held {
            cpu_millis: 5000,
            memory_bytes: 8 * GIB,
            gpu_uuids: vec![],
        });
        assert_eq!(c.cores_free, 0.0);
        assert_eq!(c.memory_free_bytes, 0);
        assert_eq!(c.cu_free, 0);
    }

    #[test]
    fn unhealthy_gpus_are_never_free_and_not_counted_twice_when_held() {
        let mut n = node(1, NodeState::Ready, 8, 32, 3);
        n.hardware.gpus[0].health = GpuHealth::new(HealthState::Unhealthy, "xid 79");
        n.hardware.gpus[1].health = GpuHealth::new(HealthState::Warning, "xid 13");
        let nodes = [n];
        let c = capacity_idle(&nodes);
        assert_eq!((c.gpus_total, c.gpus_free), (3, 2));
        // A job still holds the GPU that turned unhealthy: one healthy and one warning left.
        let c = capacity(&nodes, |_| Held {
            gpu_uuids: vec!["GPU-1-0".into()],
            ..Default::default()
        });
        assert_eq!((c.gpus_total, c.gpus_free), (3, 2));
    }

    #[test]
    fn serialises_with_the_api_field_names() {
        let v = serde_json::to_value(capacity_idle(&[node(1, NodeState::Ready, 2, 8, 1)])).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "cores_total": 2, "cores_free": 2.0,
                "memory_total_bytes": 8 * GIB, "memory_free_bytes": 8 * GIB,
                "gpus_total": 1, "gpus_free": 1, "cu_total": 2, "cu_free": 2
            })
        );
    }
}
