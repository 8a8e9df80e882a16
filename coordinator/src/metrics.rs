//! Counters and histograms for `/metrics`, in the Prometheus text format.
//!
//! Lock-free atomics on the hot paths (heartbeats); histograms carry no per-node labels, so the
//! series count does not grow with the fleet.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tandem_common::hardware::{GpuInfo, HealthState};

/// A fixed-bucket histogram of seconds.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// A histogram with the given upper bounds (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| s <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count());
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {}", self.count());
    }
}

const RTT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
const DETECT_BUCKETS: &[f64] = &[0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0];

/// Every metric the coordinator exports.
pub struct Metrics {
    /// Heartbeats received and acked.
    pub heartbeats_received: AtomicU64,
    /// Heartbeats refused (unknown, stale session, down).
    pub heartbeats_refused: AtomicU64,
    /// Datagrams or frames that did not decode.
    pub bad_messages: AtomicU64,
    /// Times a node's control messages were held back by its rate limit.
    pub agent_messages_throttled: AtomicU64,
    /// Certificate renewals refused because the node asked too often.
    pub renewals_throttled: AtomicU64,
    /// Finished jobs deleted by retention.
    pub retention_jobs_deleted: AtomicU64,
    /// Used-up or expired tokens deleted by retention.
    pub retention_tokens_deleted: AtomicU64,
    /// Finished operations deleted by retention.
    pub retention_operations_deleted: AtomicU64,
    /// Connections refused at registration or join.
    pub registrations_refused: AtomicU64,
    /// Nodes that joined.
    pub joins: AtomicU64,
    /// Node certificates renewed over a live connection.
    pub certificate_renewals: AtomicU64,
    /// QUIC connections held now, from the first packet (handshakes included) to the close.
    pub quic_connections: AtomicU64,
    /// Admin connections held now.
    pub admin_connections: AtomicU64,
    /// Admin connections refused over a connection limit.
    pub admin_connections_refused: AtomicU64,
    /// Nodes declared down.
    pub nodes_declared_down: AtomicU64,
    /// Engine calls whose decision panicked (each logged; the engine went on).
    pub engine_panics: AtomicU64,
    /// Heartbeat round trip as the agents measure it.
    pub heartbeat_rtt: Histogram,
    /// Time from a node's last beat to its being declared down.
    pub detection: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            heartbeats_received: AtomicU64::new(0),
            heartbeats_refused: AtomicU64::new(0),
            bad_messages: AtomicU64::new(0),
            agent_messages_throttled: AtomicU64::new(0),
            renewals_throttled: AtomicU64::new(0),
            retention_jobs_deleted: AtomicU64::new(0),
            retention_tokens_deleted: AtomicU64::new(0),
            retention_operations_deleted: AtomicU64::new(0),
            registrations_refused: AtomicU64::new(0),
            joins: AtomicU64::new(0),
            certificate_renewals: AtomicU64::new(0),
            quic_connections: AtomicU64::new(0),
            admin_connections: AtomicU64::new(0),
            admin_connections_refused: AtomicU64::new(0),
            nodes_declared_down: AtomicU64::new(0),
            engine_panics: AtomicU64::new(0),
            heartbeat_rtt: Histogram::new(RTT_BUCKETS),
            detection: Histogram::new(DETECT_BUCKETS),
        }
    }
}

impl Metrics {
    /// Renders everything; `nodes_by_state` comes from the membership table, `gpus` are
    /// `(node name, GPU)` pairs (one series per GPU: bounded by the fleet's GPU count).
    pub fn render(
        &self,
        nodes_by_state: &[(&str, usize)],
        connected: usize,
        gpus: &[(String, GpuInfo)],
    ) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP tandem_nodes Nodes by membership state.\n# TYPE tandem_nodes gauge"
        );
        for (state, n) in nodes_by_state {
            let _ = writeln!(out, "tandem_nodes{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP tandem_nodes_connected Nodes with a live connection.\n# TYPE tandem_nodes_connected gauge\ntandem_nodes_connected {connected}");
        let _ = writeln!(out, "# HELP tandem_quic_connections QUIC connections held, handshakes in progress included.\n# TYPE tandem_quic_connections gauge\ntandem_quic_connections {}", self.quic_connections.load(Relaxed));
        let _ = writeln!(out, "# HELP tandem_admin_connections Admin HTTP connections held.\n# TYPE tandem_admin_connections gauge\ntandem_admin_connections {}", self.admin_connections.load(Relaxed));
        let counters = [
            (
                "tandem_heartbeats_received_total",
                "Heartbeats received and acknowledged.",
                &self.heartbeats_received,
            ),
            (
                "tandem_heartbeats_refused_total",
                "Heartbeats not acknowledged (unknown node, old session, or down).",
                &self.heartbeats_refused,
            ),
            (
                "tandem_bad_messages_total",
                "Datagrams or frames that did not decode.",
                &self.bad_messages,
            ),
            (
                "tandem_agent_messages_throttled_total",
                "Times a node's control messages were held back by its rate limit (its stream is read again when the limit allows).",
                &self.agent_messages_throttled,
            ),
            (
                "tandem_renewals_throttled_total",
                "Certificate renewals refused because the node asked again too soon.",
                &self.renewals_throttled,
            ),
            (
                "tandem_retention_jobs_deleted_total",
                "Finished jobs deleted after finished_job_retention_s.",
                &self.retention_jobs_deleted,
            ),
            (
                "tandem_retention_tokens_deleted_total",
                "Used-up or expired join tokens deleted after token_retention_s.",
                &self.retention_tokens_deleted,
            ),
            (
                "tandem_retention_operations_deleted_total",
                "Finished operations deleted after operation_retention_s.",
                &self.retention_operations_deleted,
            ),
            (
                "tandem_registrations_refused_total",
                "Connections refused at join or registration.",
                &self.registrations_refused,
            ),
            (
                "tandem_joins_total",
                "Nodes that joined with a token.",
                &self.joins,
            ),
            (
                "tandem_certificate_renewals_total",
                "Node certificates renewed over a live connection.",
                &self.certificate_renewals,
            ),
            (
                "tandem_admin_connections_refused_total",
                "Admin connections refused over admin_max_connections or admin_max_connections_per_client.",
                &self.admin_connections_refused,
            ),
            (
                "tandem_nodes_declared_down_total",
                "Nodes declared down by the failure detector.",
                &self.nodes_declared_down,
            ),
            (
                "tandem_engine_panics_total",
                "Engine calls whose decision panicked (logged; the engine went on with the next).",
                &self.engine_panics,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        self.heartbeat_rtt.render(
            &mut out,
            "tandem_heartbeat_rtt_seconds",
            "Heartbeat round trip measured by agents.",
        );
        self.detection.render(
            &mut out,
            "tandem_detection_seconds",
            "Time from a node's last heartbeat to its being declared down.",
        );
        render_gpus(&mut out, gpus);
        out
    }
}

/// Escapes a label value for the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_gpus(out: &mut String, gpus: &[(String, GpuInfo)]) {
    type Get = fn(&GpuInfo) -> Option<f64>;
    let gauges: [(&str, &str, Get); 5] = [
        ("tandem_gpu_utilization_percent", "GPU utilisation.", |g| {
            g.utilization_gpu_percent.map(f64::from)
        }),
        ("tandem_gpu_memory_used_bytes", "GPU memory in use.", |g| {
            g.memory.used_bytes.map(|b| b as f64)
        }),
        ("tandem_gpu_temperature_celsius", "GPU temperature.", |g| {
            g.temperature_c.map(f64::from)
        }),
        ("tandem_gpu_power_watts", "GPU power draw.", |g| {
            g.power_draw_mw.map(|mw| f64::from(mw) / 1000.0)
        }),
        (
            "tandem_gpu_healthy",
            "1 if the GPU is healthy, 0.5 on a warning, 0 if unhealthy.",
            |g| {
                Some(match g.health.state {
                    HealthState::Healthy => 1.0,
                    HealthState::Warning => 0.5,
                    HealthState::Unhealthy => 0.0,
                })
            },
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (node, g) in gpus {
            if let Some(v) = get(g) {
                let _ = writeln!(
                    out,
                    "{name}{{node=\"{}\",uuid=\"{}\"}} {v}",
                    label(node),
                    label(&g.uuid)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.heartbeat_rtt.observe(Duration::from_micros(300));
        m.heartbeat_rtt.observe(Duration::from_millis(3));
        m.heartbeat_rtt.observe(Duration::from_secs(9));
        let text = m.render(&[("ready", 2)], 2, &[]);
        assert!(
            text.contains("tandem_heartbeat_rtt_seconds_bucket{le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(text.contains("tandem_heartbeat_rtt_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("tandem_heartbeat_rtt_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("tandem_nodes{state=\"ready\"} 2"));
    }
}
