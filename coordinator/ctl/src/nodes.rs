//! `tandemctl nodes`, `recycle`, `tokens` (create, list, revoke) and `events`.

use super::client::{enc, Client};
use super::show::{ago, gib, kv, labels, s, short, table};
use super::{emit, CtlError, NodesCmd, Output};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::Duration;

fn node_id(c: &Client, given: &str) -> Result<String, CtlError> {
    c.resolve("/v1/nodes", "nodes", given)
}

fn beat(v: &Value) -> String {
    v.as_u64()
        .map(|m| format!("{m} ms ago"))
        .unwrap_or_else(|| "-".into())
}

/// `nodes ...`.
pub fn nodes(c: &Client, out: Output, cmd: NodesCmd) -> Result<(), CtlError> {
    let node_path = |given: &str| -> Result<String, CtlError> {
        Ok(format!("/v1/nodes/{}", enc(&node_id(c, given)?)))
    };
    match cmd {
        NodesCmd::List => {
            let v = c.get("/v1/nodes")?;
            if out == Output::Json {
                emit(out, &v, |_| {});
                return Ok(());
            }
            let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
            // Cluster names for the table (ids are all a node carries).
            let mut names: HashMap<String, String> = HashMap::new();
            if nodes.iter().any(|n| n["cluster"].is_string()) {
                if let Ok(cl) = c.get("/v1/clusters") {
                    for x in cl["clusters"].as_array().into_iter().flatten() {
                        names.insert(s(&x["id"]), s(&x["name"]));
                    }
                }
            }
            let mut t = table(&[
                "ID",
                "NAME",
                "CLUSTER",
                "STATE",
                "SINCE",
                "LAST BEAT",
                "ADDRESS",
                "CPUS",
                "MEMORY",
                "GPUS",
                "AGE",
            ]);
            for n in &nodes {
                let cluster = n["cluster"]
                    .as_str()
                    .map(|id| {
                        names
                            .get(id)
                            .cloned()
                            .unwrap_or_else(|| short(&n["cluster"]))
                    })
                    .unwrap_or_else(|| "-".into());
                let mut state = s(&n["state"]);
                if n["protected"] == true {
                    state.push_str(" (protected)");
                }
                t.add_row(vec![
                    short(&n["id"]),
                    s(&n["name"]),
                    cluster,
                    state,
                    ago(&n["state_since_ms"]),
                    beat(&n["last_heartbeat_age_ms"]),
                    s(&n["address"]),
                    s(&n["hardware"]["cpu"]["logical_cores"]),
                    gib(&n["hardware"]["memory"]["total_bytes"]),
                    n["hardware"]["gpus"]
                        .as_array()
                        .map_or_else(|| "0".into(), |g| g.len().to_string()),
                    ago(&n["created_at"]),
                ]);
            }
            println!("{t}");
        }
        NodesCmd::Show { node } => {
            let v = c.get(&node_path(&node)?)?;
            emit(out, &v, print_node);
        }
        NodesCmd::Check { node } => {
            let v = c.call("POST", &format!("{}/check", node_path(&node)?), None)?;
            emit(out, &v, |v| {
                if v["alive"] == true {
                    println!(
                        "Node {node} ({}) is alive: round trip {} ms",
                        s(&v["node"]),
                        s(&v["rtt_ms"])
                    );
                }
            });
            if v["alive"] != true {
                return Err(CtlError::NotAlive {
                    node,
                    reason: s(&v["reason"]),
                });
            }
        }
        NodesCmd::Drain { node } => {
            let v = c.call("POST", &format!("{}/drain", node_path(&node)?), None)?;
            emit(out, &v, |v| {
                println!(
                    "Node {} is draining: it takes no new work (state {})",
                    s(&v["name"]),
                    s(&v["state"])
                )
            });
        }
        NodesCmd::Undrain { node } => {
            let v = c.call("POST", &format!("{}/undrain", node_path(&node)?), None)?;
            emit(out, &v, |v| {
                println!(
                    "Node {} is no longer draining (state {})",
                    s(&v["name"]),
                    s(&v["state"])
                )
            });
        }
        NodesCmd::Move { node, cluster } => {
            let to = super::clusters::cluster_id(c, &cluster)?;
            let v = c.call(
                "POST",
                &format!("{}/move", node_path(&node)?),
                Some(json!({ "cluster": to })),
            )?;
            emit(out, &v, |v| {
                println!(
                    "Node {} is now in cluster {cluster}; its jobs move away, each old copy stopped first",
                    s(&v["name"]),
                )
            });
        }
        NodesCmd::Remove { node } => {
            let v = c.call("DELETE", &node_path(&node)?, None)?;
            emit(out, &v, |v| {
                println!(
                    "Node {} ({}) removed; certificate serial {} revoked",
                    s(&v["name"]),
                    s(&v["removed"]),
                    s(&v["revoked_cert_serial"])
                )
            });
        }
        NodesCmd::Label {
            node,
            labels: set,
            remove,
        } => {
            if set.is_empty() && remove.is_empty() {
                return Err(CtlError::Usage(
                    "nothing to change: give key=value labels or --remove KEY".into(),
                ));
            }
            let mut l = Map::new();
            for k in remove {
                l.insert(k, Value::Null);
            }
            for (k, v) in set {
                l.insert(k, json!(v));
            }
            let v = c.call("PATCH", &node_path(&node)?, Some(json!({"labels": l})))?;
            emit(out, &v, |v| {
                println!("Node {} labels: {}", s(&v["name"]), labels(&v["labels"]))
            });
        }
        NodesCmd::Protect { node, off } => {
            let v = c.call(
                "PATCH",
                &node_path(&node)?,
                Some(json!({"protected": !off})),
            )?;
            emit(out, &v, |v| {
                if v["protected"] == true {
                    println!(
                        "Node {} is protected: it cannot be removed until `nodes protect --off`",
                        s(&v["name"])
                    )
                } else {
                    println!("Node {} is not protected", s(&v["name"]))
                }
            });
        }
    }
    Ok(())
}

fn print_node(n: &Value) {
    let h = &n["hardware"];
    let taints = n["taints"]
        .as_array()
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.iter()
                .map(|x| format!("{}={}:{}", s(&x["key"]), s(&x["value"]), s(&x["effect"])))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|| "-".into());
    kv(&[
        ("Name", s(&n["name"])),
        ("ID", s(&n["id"])),
        (
            "State",
            format!("{} ({})", s(&n["state"]), s(&n["state_reason"])),
        ),
        (
            "Since",
            format!("{} ({})", s(&n["state_since"]), ago(&n["state_since_ms"])),
        ),
        ("Last heartbeat", beat(&n["last_heartbeat_age_ms"])),
        ("Connected", s(&n["connected"])),
        ("Cluster", s(&n["cluster"])),
        ("Model", s(&n["model"])),
        ("Labels", labels(&n["labels"])),
        ("Taints", taints),
        ("Protected", s(&n["protected"])),
        ("Draining", s(&n["draining"])),
        ("Address", s(&n["address"])),
        ("Agent version", s(&n["agent_version"])),
        (
            "Containment",
            match n["containment_note"].as_str() {
                Some(note) if !note.is_empty() => format!("{} ({note})", s(&n["containment"])),
                _ => s(&n["containment"]),
            },
        ),
        (
            "Jobs on disk",
            format!(
                "{} ({} finished jobs' dirs removed by retention)",
                super::jobs::bytes(&n["jobs_disk_bytes"]),
                s(&n["jobs_retired"])
            ),
        ),
        (
            "Joined",
            format!("{} ({})", s(&n["created_at"]), ago(&n["created_at"])),
        ),
        ("Certificate until", s(&n["cert_not_after"])),
        ("Host name", s(&h["hostname"])),
        (
            "OS",
            format!(
                "{} {} (kernel {})",
                s(&h["os"]["name"]),
                s(&h["os"]["version"]),
                s(&h["os"]["kernel"])
            ),
        ),
        (
            "CPU",
            format!(
                "{} ({} logical, {} physical cores)",
                s(&h["cpu"]["brand"]),
                s(&h["cpu"]["logical_cores"]),
                s(&h["cpu"]["physical_cores"])
            ),
        ),
        (
            "Memory",
            format!(
                "{} total, {} available",
                gib(&h["memory"]["total_bytes"]),
                gib(&h["memory"]["available_bytes"])
            ),
        ),
    ]);
    let gpus = h["gpus"].as_array().cloned().unwrap_or_default();
    if gpus.is_empty() {
        let nvml = &h["nvml"];
        println!(
            "{:<18} none ({})",
            "GPUs",
            nvml["reason"].as_str().unwrap_or("no NVIDIA GPU")
        );
        return;
    }
    println!("GPUs:");
    let mut t = table(&[
        "INDEX", "NAME", "UUID", "MEMORY", "UTIL", "TEMP", "POWER", "HEALTH",
    ]);
    let unit =
        |v: &Value, f: &dyn Fn(u64) -> String| v.as_u64().map(f).unwrap_or_else(|| "-".into());
    for g in gpus {
        t.add_row(vec![
            s(&g["index"]),
            s(&g["name"]),
            s(&g["uuid"]),
            gib(&g["memory"]["total_bytes"]),
            unit(&g["utilization_gpu_percent"], &|u| format!("{u}%")),
            unit(&g["temperature_c"], &|u| format!("{u} C")),
            unit(&g["power_draw_mw"], &|u| {
                format!("{:.0} W", u as f64 / 1000.0)
            }),
            format!(
                "{}{}",
                s(&g["health"]["state"]),
                g["health"]["reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        ]);
    }
    println!("{t}");
}

/// `recycle --down-for D`.
pub fn recycle(c: &Client, out: Output, down_for: Duration) -> Result<(), CtlError> {
    let secs = down_for.as_secs();
    let v = c.call("POST", "/v1/recycle", Some(json!({"down_for_s": secs})))?;
    emit(out, &v, |v| {
        let removed = v["removed"].as_array().cloned().unwrap_or_default();
        let skipped = v["skipped"].as_array().cloned().unwrap_or_default();
        if removed.is_empty() {
            println!("No node has been down for {secs} s or more: nothing removed");
        } else {
            println!(
                "Removed {} node(s) down for {secs} s or more:",
                removed.len()
            );
            let mut t = table(&["ID", "NAME"]);
            for n in &removed {
                t.add_row(vec![short(&n["id"]), s(&n["name"])]);
            }
            println!("{t}");
        }
        if !skipped.is_empty() {
            println!("Kept:");
            let mut t = table(&["NAME", "REASON"]);
            for n in &skipped {
                t.add_row(vec![s(&n["name"]), s(&n["reason"])]);
            }
            println!("{t}");
        }
    });
    Ok(())
}

/// `tokens create`.
pub fn create_token(
    c: &Client,
    out: Output,
    ttl_s: u64,
    uses: u32,
    cluster: Option<String>,
) -> Result<(), CtlError> {
    let mut body = json!({"ttl_s": ttl_s, "uses": uses});
    if let Some(cl) = &cluster {
        body["cluster"] = json!(cl);
    }
    let v = c.call("POST", "/v1/join-tokens", Some(body))?;
    emit(out, &v, |v| {
        println!("token:      {}", s(&v["token"]));
        println!("uses:       {}", s(&v["uses"]));
        println!("expires at: {}", s(&v["expires_at"]));
        if let Some(cl) = &cluster {
            println!("cluster:    {cl}");
        }
    });
    Ok(())
}

/// `tokens list`: id, state, uses, cluster, expiry (never a secret).
pub fn list_tokens(c: &Client, out: Output) -> Result<(), CtlError> {
    let v = c.get("/v1/join-tokens")?;
    emit(out, &v, |v| {
        let mut t = table(&["ID", "STATE", "USES", "CLUSTER", "EXPIRES AT", "REVOKED AT"]);
        for k in v["tokens"].as_array().into_iter().flatten() {
            t.add_row(vec![
                s(&k["id"]),
                s(&k["state"]),
                format!("{}/{}", s(&k["uses"]), s(&k["uses_allowed"])),
                s(&k["cluster"]),
                s(&k["expires_at"]),
                s(&k["revoked_at"]),
            ]);
        }
        println!("{t}");
    });
    Ok(())
}

/// `tokens revoke ID`: from now on the token admits nobody.
pub fn revoke_token(c: &Client, out: Output, id: &str) -> Result<(), CtlError> {
    let v = c.call("DELETE", &format!("/v1/join-tokens/{}", enc(id)), None)?;
    emit(out, &v, |v| {
        println!(
            "token {} revoked ({} of {} uses spent)",
            s(&v["id"]),
            s(&v["uses"]),
            s(&v["uses_allowed"])
        );
    });
    Ok(())
}

/// `events`.
pub fn events(c: &Client, out: Output, node: Option<String>, limit: usize) -> Result<(), CtlError> {
    let mut path = format!("/v1/events?limit={limit}");
    if let Some(n) = node {
        path.push_str(&format!("&node={}", enc(&n)));
    }
    let v = c.get(&path)?;
    emit(out, &v, |v| {
        let mut t = table(&["SEQ", "TIME", "KIND", "NODE", "MESSAGE"]);
        for e in v["events"].as_array().into_iter().flatten() {
            t.add_row(vec![
                s(&e["seq"]),
                s(&e["time"]),
                s(&e["kind"]),
                s(&e["node"]),
                s(&e["message"]),
            ]);
        }
        println!("{t}");
    });
    Ok(())
}
