//! `tandem-agent inventory`: this node's hardware report, printed without a coordinator.
//!
//! A table for people (the default) or the report itself as JSON (`-o json`, the same shape the
//! admin API shows under a node's `hardware`).

use std::fmt::Write;
use tandem_common::hardware::{GpuInfo, HardwareReport};

const GIB: f64 = (1u64 << 30) as f64;

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB)
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Left-aligned columns separated by two spaces.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (cell, w) in cells.zip(&widths) {
            let _ = write!(text, "{cell:<w$}  ");
        }
        let _ = writeln!(out, "  {}", text.trim_end());
    };
    line(out, &mut header.iter().copied());
    for row in rows {
        line(out, &mut row.iter().map(String::as_str));
    }
}

fn gpu_row(g: &GpuInfo) -> Vec<String> {
    let mem = match (g.memory.used_bytes, g.memory.total_bytes) {
        (Some(u), Some(t)) => format!("{} / {}", gib(u), gib(t)),
        (None, Some(t)) => format!("? / {}", gib(t)),
        _ => "-".into(),
    };
    let power = match (g.power_draw_mw, g.power_limit_mw) {
        (Some(d), Some(l)) => format!("{:.0} / {:.0} W", d as f64 / 1000.0, l as f64 / 1000.0),
        (Some(d), None) => format!("{:.0} W", d as f64 / 1000.0),
        _ => "-".into(),
    };
    let state = format!("{:?}", g.health.state).to_lowercase();
    let health = match &g.health.reason {
        Some(r) => format!("{state}: {r}"),
        None => state,
    };
    vec![
        g.index.to_string(),
        opt(&g.name),
        g.uuid.clone(),
        mem,
        g.utilization_gpu_percent
            .map_or("-".into(), |u| format!("{u} %")),
        g.temperature_c.map_or("-".into(), |t| format!("{t} C")),
        power,
        health,
    ]
}

/// The human-readable summary.
pub fn render_table(r: &HardwareReport) -> String {
    let mut out = String::new();
    let os = [&r.os.name, &r.os.version]
        .iter()
        .filter_map(|v| v.as_deref())
        .collect::<Vec<_>>();
    let _ = writeln!(out, "Host      {}", r.hostname);
    let _ = writeln!(out, "Model     {}", r.model());
    let _ = writeln!(
        out,
        "OS        {} (kernel {}, {}), up {} s, load {:.2} {:.2} {:.2}",
        os.join(" "),
        opt(&r.os.kernel),
        r.os.arch,
        r.os.uptime_s,
        r.os.load_avg.one,
        r.os.load_avg.five,
        r.os.load_avg.fifteen
    );
    let _ = writeln!(
        out,
        "CPU       {} ({}), {} logical / {} physical cores, {} MHz, {:.1} % used",
        r.cpu.brand,
        r.cpu.vendor,
        r.cpu.logical_cores,
        opt(&r.cpu.physical_cores),
        r.cpu.frequency_mhz,
        r.cpu.usage_percent
    );
    let _ = writeln!(
        out,
        "Memory    {} total, {} available, {} used; swap {} / {}",
        gib(r.memory.total_bytes),
        gib(r.memory.available_bytes),
        gib(r.memory.used_bytes),
        gib(r.memory.swap_used_bytes),
        gib(r.memory.swap_total_bytes)
    );
    let _ = writeln!(
        out,
        "DMI       {} (serial {})",
        opt(&r.dmi.product_name),
        opt(&r.dmi.serial)
    );
    let _ = writeln!(out, "\nDisks");
    let rows: Vec<_> = r
        .disks
        .iter()
        .map(|d| {
            vec![
                d.mount_point.clone(),
                d.name.clone(),
                d.file_system.clone(),
                format!("{:?}", d.kind).to_lowercase(),
                gib(d.total_bytes),
                gib(d.available_bytes),
                if d.read_only {
                    "ro".into()
                } else {
                    "rw".into()
                },
            ]
        })
        .collect();
    table(
        &mut out,
        &["MOUNT", "DEVICE", "FS", "KIND", "SIZE", "AVAILABLE", "MODE"],
        &rows,
    );
    let _ = writeln!(out, "\nNetwork");
    let rows: Vec<_> = r
        .network
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.mac.clone(),
                n.addresses.join(" "),
                n.mtu.to_string(),
                n.link_speed_mbps
                    .map_or("-".into(), |s| format!("{s} Mb/s")),
            ]
        })
        .collect();
    table(
        &mut out,
        &["NAME", "MAC", "ADDRESSES", "MTU", "SPEED"],
        &rows,
    );
    let n = &r.nvml;
    let _ = writeln!(
        out,
        "\nGPUs      NVML {} (available: {}); driver {}, NVML {}, CUDA {}{}",
        format!("{:?}", n.status).to_lowercase(),
        n.available,
        opt(&n.driver_version),
        opt(&n.nvml_version),
        opt(&n.cuda_driver_version),
        n.reason
            .as_ref()
            .map_or(String::new(), |r| format!("\n          {r}"))
    );
    if !r.gpus.is_empty() {
        let rows: Vec<_> = r.gpus.iter().map(gpu_row).collect();
        let header = [
            "#", "NAME", "UUID", "MEMORY", "UTIL", "TEMP", "POWER", "HEALTH",
        ];
        table(&mut out, &header, &rows);
    }
    out
}

/// The report as pretty JSON.
pub fn render_json(r: &HardwareReport) -> String {
    // Serialising plain data structs cannot fail.
    serde_json::to_string_pretty(r).expect("a hardware report serialises to JSON")
}

/// The report's JSON with a `containment` object (`mode`, `note`) added: how this host would
/// contain jobs. Not part of the report the coordinator gets.
pub fn with_containment(json: &str, mode: &str, note: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(mut o)) => {
            o.insert(
                "containment".into(),
                serde_json::json!({"mode": mode, "note": note}),
            );
            serde_json::to_string_pretty(&o).unwrap_or_else(|_| json.to_string())
        }
        _ => json.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_common::hardware::{GpuHealth, HealthState};

    #[test]
    fn table_shows_gpus_and_health() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/gpus-2x-l4.json"
        );
        let mut r = HardwareReport {
            hostname: "edge-1".into(),
            gpus: crate::probe::fixture::load(std::path::Path::new(path)).unwrap(),
            ..Default::default()
        };
        r.gpus[1].health = GpuHealth::new(HealthState::Unhealthy, "XID 79");
        let t = render_table(&r);
        assert!(t.contains("Host      edge-1"), "{t}");
        assert!(t.contains("NVIDIA L4"), "{t}");
        assert!(t.contains("unhealthy: XID 79"), "{t}");
        assert!(t.contains("2x NVIDIA L4"), "{t}");
        let back: HardwareReport = serde_json::from_str(&render_json(&r)).unwrap();
        assert_eq!(back, r);
    }
}
