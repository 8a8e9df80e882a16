//! `tandemctl clusters`, `pairs` and `operations`.

use super::client::{enc, Client};
use super::show::{ago, free_total, gib, kv, labels, pairs_table, s, short, table};
use super::{emit, ClustersCmd, CreateCluster, CtlError, EditCluster, Output, PairsCmd};
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

/// How long `clusters create` waits for its operation.
const OPERATION_WAIT: Duration = Duration::from_secs(30);

pub(crate) fn cluster_id(c: &Client, given: &str) -> Result<String, CtlError> {
    c.resolve("/v1/clusters", "clusters", given)
}

/// `clusters ...`.
pub fn clusters(c: &Client, out: Output, cmd: ClustersCmd) -> Result<(), CtlError> {
    match cmd {
        ClustersCmd::List {
            query,
            label,
            created_after,
            created_before,
        } => {
            let mut params = Vec::new();
            if let Some(q) = query {
                params.push(format!("q={}", enc(&q)));
            }
            if let Some((k, v)) = label {
                params.push(format!("label={}", enc(&format!("{k}={v}"))));
            }
            if let Some(t) = created_after {
                params.push(format!("created_after={}", enc(&t)));
            }
            if let Some(t) = created_before {
                params.push(format!("created_before={}", enc(&t)));
            }
            let mut path = "/v1/clusters".to_string();
            if !params.is_empty() {
                path = format!("{path}?{}", params.join("&"));
            }
            let v = c.get(&path)?;
            emit(out, &v, |v| {
                let mut t = table(&[
                    "NAME",
                    "ID",
                    "MODE",
                    "STATUS",
                    "NODES",
                    "PAIRS",
                    "CU FREE/TOTAL",
                    "AGE",
                ]);
                for cl in v["clusters"].as_array().into_iter().flatten() {
                    let count = |k: &str| cl[k].as_array().map_or(0, Vec::len).to_string();
                    t.add_row(vec![
                        s(&cl["name"]),
                        short(&cl["id"]),
                        s(&cl["mode"]),
                        s(&cl["status"]),
                        count("nodes"),
                        count("pairs"),
                        free_total(&cl["capacity"], "cu_free", "cu_total"),
                        ago(&cl["created_ms"]),
                    ]);
                }
                println!("{t}");
            });
        }
        ClustersCmd::Show { cluster } => {
            let id = cluster_id(c, &cluster)?;
            let v = c.get(&format!("/v1/clusters/{}", enc(&id)))?;
            emit(out, &v, print_cluster);
        }
        ClustersCmd::Create(a) => create(c, out, a)?,
        ClustersCmd::Edit(a) => edit(c, out, a)?,
        ClustersCmd::Delete { cluster } => {
            let id = cluster_id(c, &cluster)?;
            let v = c.call("DELETE", &format!("/v1/clusters/{}", enc(&id)), None)?;
            emit(out, &v, |v| {
                println!("Cluster {} deleted ({})", s(&v["name"]), s(&v["deleted"]))
            });
        }
        ClustersCmd::Failover { cluster } => {
            let id = cluster_id(c, &cluster)?;
            let v = c.call("POST", &format!("/v1/clusters/{}/failover", enc(&id)), None)?;
            emit(out, &v, |v| {
                println!(
                    "Failover forced in cluster {cluster} ({}): the jobs of its down nodes are \
                     placed again; see `tandemctl jobs list --cluster {cluster}`",
                    s(&v["cluster"])
                )
            });
        }
    }
    Ok(())
}

fn create(c: &Client, out: Output, a: CreateCluster) -> Result<(), CtlError> {
    let mut body = json!({
        "name": a.name,
        "alias": a.alias,
        "description": a.description,
        "mode": a.mode.as_str(),
        "labels": a.labels.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "deletion_protection": a.deletion_protection,
        "failback": a.failback,
    });
    if a.min_cores.is_some() || a.min_memory.is_some() {
        body["min_node"] = json!({
            "cores": a.min_cores.unwrap_or(0),
            "memory_bytes": a.min_memory.unwrap_or(0),
        });
    }
    let v = c.call("POST", "/v1/clusters", Some(body))?;
    let op = v["operation_id"].as_str().unwrap_or_default().to_string();
    let done = wait_operation(c, &op)?;
    emit(out, &v, |v| {
        let cl = &v["cluster"];
        println!(
            "Cluster {} created: {} ({}, {}); operation {} {}",
            s(&cl["name"]),
            s(&cl["id"]),
            s(&cl["mode"]),
            s(&cl["status"]),
            op,
            s(&done["state"])
        );
    });
    Ok(())
}

/// Polls an operation until it is no longer pending; a failed one is an error.
fn wait_operation(c: &Client, id: &str) -> Result<Value, CtlError> {
    let deadline = Instant::now() + OPERATION_WAIT;
    loop {
        let op = c.get(&format!("/v1/operations/{}", enc(id)))?;
        match op["state"].as_str() {
            Some("pending") if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Some("pending") => {
                return Err(CtlError::Operation {
                    id: id.into(),
                    error: format!("still pending after {} s", OPERATION_WAIT.as_secs()),
                })
            }
            Some("failed") => {
                return Err(CtlError::Operation {
                    id: id.into(),
                    error: s(&op["error"]),
                })
            }
            _ => return Ok(op),
        }
    }
}

fn edit(c: &Client, out: Output, a: EditCluster) -> Result<(), CtlError> {
    let id = cluster_id(c, &a.cluster)?;
    let path = format!("/v1/clusters/{}", enc(&id));
    let mut patch = Map::new();
    if let Some(x) = a.alias {
        patch.insert("alias".into(), json!(x));
    }
    if let Some(x) = a.description {
        patch.insert("description".into(), json!(x));
    }
    if !a.labels.is_empty() || !a.remove_labels.is_empty() {
        let mut l = Map::new();
        for k in a.remove_labels {
            l.insert(k, Value::Null);
        }
        for (k, v) in a.labels {
            l.insert(k, json!(v));
        }
        patch.insert("labels".into(), Value::Object(l));
    }
    if let Some(x) = a.deletion_protection {
        patch.insert("deletion_protection".into(), json!(x));
    }
    if let Some(x) = a.failback {
        patch.insert("failback".into(), json!(x));
    }
    if a.clear_min_node {
        patch.insert("min_node".into(), Value::Null);
    } else if a.min_cores.is_some() || a.min_memory.is_some() {
        // The API sets the minimums as a whole: keep the one not given.
        let current = c.get(&path)?;
        let cur = &current["min_node"];
        patch.insert(
            "min_node".into(),
            json!({
                "cores": a.min_cores.map(u64::from).or(cur["cores"].as_u64()).unwrap_or(0),
                "memory_bytes": a.min_memory.or(cur["memory_bytes"].as_u64()).unwrap_or(0),
            }),
        );
    }
    if patch.is_empty() {
        return Err(CtlError::Usage(
            "nothing to change: give --alias, --description, --label, --remove-label, \
             --deletion-protection, --min-cores, --min-memory, --clear-min-node or --failback"
                .into(),
        ));
    }
    let v = c.call("PATCH", &path, Some(Value::Object(patch)))?;
    emit(out, &v, print_cluster);
    Ok(())
}

fn print_cluster(v: &Value) {
    let min = &v["min_node"];
    let cap = &v["capacity"];
    kv(&[
        ("Name", s(&v["name"])),
        ("ID", s(&v["id"])),
        ("Alias", s(&v["alias"])),
        ("Description", s(&v["description"])),
        ("Mode", s(&v["mode"])),
        ("Status", s(&v["status"])),
        ("Labels", labels(&v["labels"])),
        ("Deletion protection", s(&v["deletion_protection"])),
        (
            "Node minimum",
            if min.is_object() {
                format!("{} cores, {}", s(&min["cores"]), gib(&min["memory_bytes"]))
            } else {
                "-".into()
            },
        ),
        ("Failback", s(&v["failback"])),
        ("Model", s(&v["model"])),
        (
            "Created",
            format!("{} ({})", s(&v["created_at"]), ago(&v["created_ms"])),
        ),
        (
            "Capacity (free/total)",
            format!(
                "{} CU, {} cores, {} GPUs, {} / {} memory",
                free_total(cap, "cu_free", "cu_total"),
                free_total(cap, "cores_free", "cores_total"),
                free_total(cap, "gpus_free", "gpus_total"),
                gib(&cap["memory_free_bytes"]),
                gib(&cap["memory_total_bytes"])
            ),
        ),
    ]);
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    println!("\nNodes");
    if nodes.is_empty() {
        println!("none");
    } else {
        let mut t = table(&["ID", "NAME", "STATE", "MODEL"]);
        for n in &nodes {
            t.add_row(vec![
                short(&n["id"]),
                s(&n["name"]),
                s(&n["state"]),
                s(&n["model"]),
            ]);
        }
        println!("{t}");
    }
    let pairs = v["pairs"].as_array().cloned().unwrap_or_default();
    println!("\nPairs");
    if pairs.is_empty() {
        println!("none");
    } else {
        println!("{}", pairs_table(&pairs));
    }
    let jobs = v["jobs"].as_array().map_or(0, Vec::len);
    println!(
        "\nJobs\n{}",
        if jobs == 0 {
            "none".into()
        } else {
            jobs.to_string()
        }
    );
}

/// `pairs ...`.
pub fn pairs(c: &Client, out: Output, cmd: PairsCmd) -> Result<(), CtlError> {
    match cmd {
        PairsCmd::List { cluster } => {
            let id = cluster_id(c, &cluster)?;
            let v = c.get(&format!("/v1/clusters/{}/pairs", enc(&id)))?;
            emit(out, &v, |v| {
                let pairs = v["pairs"].as_array().cloned().unwrap_or_default();
                if pairs.is_empty() {
                    println!("No pairs in cluster {cluster}");
                } else {
                    println!("{}", pairs_table(&pairs));
                }
            });
        }
        PairsCmd::Create {
            cluster,
            primary,
            standby,
        } => {
            let id = cluster_id(c, &cluster)?;
            let p = c.resolve("/v1/nodes", "nodes", &primary)?;
            let sb = c.resolve("/v1/nodes", "nodes", &standby)?;
            let v = c.call(
                "POST",
                &format!("/v1/clusters/{}/pairs", enc(&id)),
                Some(json!({"primary": p, "standby": sb})),
            )?;
            emit(out, &v, |v| {
                let p = &v["pair"];
                println!(
                    "Pair {} formed in cluster {cluster}: primary {primary}, standby {standby} ({})",
                    s(&p["id"]),
                    s(&p["state"])
                );
            });
        }
        PairsCmd::Delete { cluster, pair } => {
            let id = cluster_id(c, &cluster)?;
            let pairs_path = format!("/v1/clusters/{}/pairs", enc(&id));
            let pid = c.resolve(&pairs_path, "pairs", &pair)?;
            let v = c.call("DELETE", &format!("{pairs_path}/{}", enc(&pid)), None)?;
            emit(out, &v, |v| {
                println!("Pair {} dissolved in cluster {cluster}", s(&v["deleted"]))
            });
        }
    }
    Ok(())
}

/// `operations show ID`.
pub fn operation(c: &Client, out: Output, id: &str) -> Result<(), CtlError> {
    let v = c.get(&format!("/v1/operations/{}", enc(id)))?;
    emit(out, &v, |v| {
        let time = |k: &str| {
            v[k].as_u64()
                .map(|ms| format!("{} ({})", tandem_common::time::rfc3339(ms), ago(&v[k])))
                .unwrap_or_else(|| "-".into())
        };
        kv(&[
            ("ID", s(&v["id"])),
            ("Kind", s(&v["kind"])),
            ("Target", s(&v["target"])),
            ("State", s(&v["state"])),
            ("Error", s(&v["error"])),
            ("Created", time("created_ms")),
            ("Done", time("done_ms")),
        ]);
    });
    Ok(())
}
