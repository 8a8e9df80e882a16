//! Limits on clusters and their nodes, from the coordinator's configuration.

/// Limits from the coordinator's configuration.
#[derive(Clone, Copy, Debug)]
pub struct Quotas {
    /// Clusters per coordinator.
    pub max_clusters: usize,
    /// Nodes per cluster.
    pub max_nodes_per_cluster: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_clusters: 50,
            max_nodes_per_cluster: 100,
        }
    }
}
