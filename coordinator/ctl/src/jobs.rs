//! `tandemctl jobs` and the names tables print for the ids a job carries.

use super::client::{enc, Client};
use super::show::{ago, kv, labels, s, short, table};
use super::{emit, CtlError, JobsCmd, Output, RunJob};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

fn job_id(c: &Client, given: &str) -> Result<String, CtlError> {
    c.resolve("/v1/jobs", "jobs", given)
}

/// The body of `POST /v1/jobs` for `jobs run`.
pub fn run_body(a: &RunJob) -> Value {
    let mut body = json!({
        "name": a.name,
        "cluster": a.cluster,
        "command": a.command,
        "env": a.env.iter().cloned().collect::<BTreeMap<_, _>>(),
        "resources": {"cpu_millis": a.cpu, "memory_bytes": a.memory, "gpus": a.gpus},
        "restart": a.restart.as_str(),
        "constraints": {"labels": a.labels.iter().cloned().collect::<BTreeMap<_, _>>()},
    });
    if let Some(w) = &a.workdir {
        body["workdir"] = json!(w);
    }
    if let Some(u) = &a.user {
        body["user"] = json!(u);
    }
    if let Some(g) = &a.group {
        body["group"] = json!(g);
    }
    if let Some(m) = a.max_restarts {
        body["max_restarts"] = json!(m);
    }
    body
}

/// Id -> name of the nodes and clusters, for tables (best effort: ids where a call fails).
struct Names(HashMap<String, String>);

impl Names {
    fn load(c: &Client, nodes: bool, clusters: bool) -> Names {
        let mut m = HashMap::new();
        let mut add = |path: &str, key: &str| {
            if let Ok(v) = c.get(path) {
                for x in v[key].as_array().into_iter().flatten() {
                    m.insert(s(&x["id"]), s(&x["name"]));
                }
            }
        };
        if nodes {
            add("/v1/nodes", "nodes");
        }
        if clusters {
            add("/v1/clusters", "clusters");
        }
        Names(m)
    }

    /// The name of the object `id` names, else its short id (`-` for null).
    fn of(&self, id: &Value) -> String {
        id.as_str()
            .and_then(|i| self.0.get(i).cloned())
            .unwrap_or_else(|| short(id))
    }

    /// `name (short id)`, or the short id alone.
    fn long(&self, id: &Value) -> String {
        match id.as_str().and_then(|i| self.0.get(i)) {
            Some(n) => format!("{n} ({})", short(id)),
            None => short(id),
        }
    }
}

/// A Unix-ms time as RFC 3339, or `-`.
fn time(v: &Value) -> String {
    v.as_u64()
        .map(tandem_common::time::rfc3339)
        .unwrap_or_else(|| "-".into())
}

/// Bytes in the largest binary unit that keeps them whole-ish: `256 MiB`, `1.5 GiB`.
/// A job's usage as the API reports it (`usage`): CPU seconds, memory now and at peak, and how
/// its node contains it.
pub fn usage(u: &Value) -> String {
    if u.is_null() {
        return "- (not reported: the job does not run, or its node is older than protocol 6)"
            .into();
    }
    let cpu = u["cpu_seconds"]
        .as_f64()
        .map_or("-".to_string(), |c| format!("{c:.2}"));
    format!(
        "{cpu} CPU s, {} memory now, {} at peak ({}, {} s ago)",
        bytes(&u["memory_bytes"]),
        bytes(&u["memory_peak_bytes"]),
        s(&u["containment"]),
        u["age_ms"]
            .as_u64()
            .map_or("-".into(), |a| (a / 1000).to_string())
    )
}

pub fn bytes(v: &Value) -> String {
    let Some(b) = v.as_u64() else {
        return "-".into();
    };
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (u, size) in UNITS {
        if b >= size {
            let x = b as f64 / size as f64;
            return if x.fract() == 0.0 {
                format!("{x:.0} {u}")
            } else {
                format!("{x:.1} {u}")
            };
        }
    }
    format!("{b} B")
}

/// Thousandths of a core as people write them: `0.1`, `2`, `1.25`.
pub fn cpu(v: &Value) -> String {
    v.as_u64()
        .map(|m| {
            let s = format!("{}.{:03}", m / 1000, m % 1000);
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        })
        .unwrap_or_else(|| "-".into())
}

/// A command line as a shell would take it back: arguments quoted where needed.
pub fn shell_words(args: &Value) -> String {
    args.as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let a = a.as_str().unwrap_or_default();
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
            if plain {
                a.to_string()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `jobs ...`.
pub fn jobs(c: &Client, out: Output, cmd: JobsCmd) -> Result<(), CtlError> {
    match cmd {
        JobsCmd::Run(a) => {
            let v = c.call("POST", "/v1/jobs", Some(run_body(&a)))?;
            emit(out, &v, |v| {
                let j = &v["job"];
                let names = Names::load(c, j["node"].is_string(), false);
                let mut line = format!(
                    "Job {} submitted: {} ({}",
                    s(&j["name"]),
                    s(&j["id"]),
                    s(&j["state"])
                );
                if j["node"].is_string() {
                    line.push_str(&format!(" on {}", names.of(&j["node"])));
                }
                if j["state"] == "pending" {
                    line.push_str(&format!(": {}", s(&j["state_reason"])));
                }
                println!("{line})");
            });
        }
        JobsCmd::List {
            cluster,
            state,
            node,
        } => {
            let mut params = Vec::new();
            if let Some(cl) = cluster {
                params.push(format!("cluster={}", enc(&cl)));
            }
            if let Some(st) = state {
                params.push(format!("state={}", st.as_str()));
            }
            if let Some(n) = node {
                params.push(format!("node={}", enc(&n)));
            }
            let mut path = "/v1/jobs".to_string();
            if !params.is_empty() {
                path = format!("{path}?{}", params.join("&"));
            }
            let v = c.get(&path)?;
            if out == Output::Json {
                emit(out, &v, |_| {});
                return Ok(());
            }
            let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
            if jobs.is_empty() {
                println!("No jobs");
                return Ok(());
            }
            let names = Names::load(c, jobs.iter().any(|j| j["node"].is_string()), true);
            let mut t = table(&[
                "ID",
                "NAME",
                "CLUSTER",
                "STATE",
                "NODE",
                "TOKEN",
                "RESTARTS",
                "SUBMITTED",
            ]);
            for j in &jobs {
                t.add_row(vec![
                    s(&j["id"]),
                    s(&j["name"]),
                    names.of(&j["cluster"]),
                    s(&j["state"]),
                    names.of(&j["node"]),
                    s(&j["fencing_token"]),
                    s(&j["restarts"]),
                    ago(&j["created_ms"]),
                ]);
            }
            println!("{t}");
        }
        JobsCmd::Show { job } => {
            let id = job_id(c, &job)?;
            let v = c.get(&format!("/v1/jobs/{}", enc(&id)))?;
            emit(out, &v, |v| print_job(&Names::load(c, true, true), v));
        }
        JobsCmd::Stop {
            job,
            detach,
            wait_s,
        } => {
            let id = job_id(c, &job)?;
            let path = format!("/v1/jobs/{}", enc(&id));
            let mut v = c.call("DELETE", &path, None)?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_s);
            // Ended (stopped now, or completed or failed before), and its last copy's end
            // known (`stopping` null): the name is free.
            let done = |v: &Value| {
                ["stopped", "completed", "failed"].contains(&v["state"].as_str().unwrap_or(""))
                    && v["stopping"].is_null()
            };
            while !detach && !done(&v) {
                if std::time::Instant::now() >= deadline {
                    return Err(CtlError::StillStopping {
                        job,
                        detail: format!(
                            "its copy on node {} (token {}) had not ended after {wait_s} s;                              it ends by its lease if its node is cut off",
                            s(&v["stopping"]["node"]),
                            s(&v["stopping"]["fencing_token"])
                        ),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                v = c.get(&path)?;
            }
            emit(out, &v, |v| {
                if done(v) {
                    println!("Job {} ({}) {}", s(&v["name"]), s(&v["id"]), s(&v["state"]))
                } else {
                    println!(
                        "Job {} ({}) stop requested: {}",
                        s(&v["name"]),
                        s(&v["id"]),
                        if v["stopping"].is_null() {
                            s(&v["state"])
                        } else {
                            "stopping (its copy has not ended yet)".to_string()
                        }
                    )
                }
            });
        }
        JobsCmd::Node { job } => {
            let id = job_id(c, &job)?;
            let v = c.get(&format!("/v1/jobs/{}", enc(&id)))?;
            if v["node"].is_null() {
                return Err(CtlError::NotPlaced {
                    job,
                    state: format!("{} ({})", s(&v["state"]), s(&v["state_reason"])),
                });
            }
            emit(
                out,
                &json!({"node": v["node"], "name": Names::load(c, true, false).of(&v["node"])}),
                |n| println!("{}", s(&n["name"])),
            );
        }
        JobsCmd::Logs { job, tail } => {
            let id = job_id(c, &job)?;
            let v = c.get(&format!("/v1/jobs/{}/logs?tail={tail}", enc(&id)))?;
            emit(out, &v, |v| {
                for l in v["stdout"].as_array().into_iter().flatten() {
                    println!("{}", l.as_str().unwrap_or_default());
                }
                for l in v["stderr"].as_array().into_iter().flatten() {
                    eprintln!("{}", l.as_str().unwrap_or_default());
                }
            });
        }
    }
    Ok(())
}

fn print_job(names: &Names, j: &Value) {
    let spec = &j["spec"];
    let res = &spec["resources"];
    let gpus = j["gpus"]
        .as_array()
        .filter(|g| !g.is_empty())
        .map(|g| g.iter().map(s).collect::<Vec<_>>().join(","))
        .unwrap_or_else(|| "-".into());
    let env = spec["env"]
        .as_object()
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "-".into());
    let reason = j["state_reason"]
        .as_str()
        .filter(|r| !r.is_empty() && Some(*r) != j["state"].as_str());
    kv(&[
        ("Name", s(&j["name"])),
        ("ID", s(&j["id"])),
        ("Cluster", names.long(&j["cluster"])),
        (
            "State",
            match reason {
                Some(r) => format!("{} ({r})", s(&j["state"])),
                None => s(&j["state"]),
            },
        ),
        ("Node", names.long(&j["node"])),
        ("Fencing token", s(&j["fencing_token"])),
        (
            "Restarts",
            format!(
                "{} of {} ({})",
                s(&j["restarts"]),
                s(&spec["max_restarts"]),
                s(&spec["restart"])
            ),
        ),
        ("GPUs", gpus),
        ("Command", shell_words(&spec["command"])),
        (
            "Resources",
            format!(
                "{} CPU, {} memory, {} GPUs",
                cpu(&res["cpu_millis"]),
                bytes(&res["memory_bytes"]),
                s(&res["gpus"])
            ),
        ),
        ("Environment", env),
        ("Workdir", s(&spec["workdir"])),
        ("User", s(&spec["user"])),
        ("Group", s(&spec["group"])),
        ("Usage", usage(&j["usage"])),
        ("Constraints", labels(&spec["constraints"]["labels"])),
        (
            "Submitted",
            format!("{} ({})", time(&j["created_ms"]), ago(&j["created_ms"])),
        ),
    ]);
    // Placements, newest first: the current one, then the ended ones.
    let mut rows: Vec<&Value> = Vec::new();
    if j["current"].is_object() {
        rows.push(&j["current"]);
    }
    let history = j["history"].as_array().cloned().unwrap_or_default();
    rows.extend(history.iter().rev());
    println!("\nPlacements");
    if rows.is_empty() {
        println!("none");
        return;
    }
    let mut t = table(&["NODE", "TOKEN", "STARTED", "ENDED", "WHY"]);
    for p in rows {
        t.add_row(vec![
            names.of(&p["node"]),
            s(&p["fencing_token"]),
            time(&p["started_ms"]),
            time(&p["ended_ms"]),
            s(&p["end_reason"]),
        ]);
    }
    println!("{t}");
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Cmd, JobState, JobsCmd, Restart};
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tandemctl").chain(args.iter().copied()))
    }

    fn run_args(args: &[&str]) -> RunJob {
        match parse(args).unwrap().cmd {
            Cmd::Jobs(JobsCmd::Run(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn run_takes_everything_after_the_double_dash() {
        let a = run_args(&[
            "jobs",
            "run",
            "--name",
            "web",
            "--cluster",
            "edge",
            "--cpu",
            "0.5",
            "--memory",
            "1GiB",
            "--gpus",
            "2",
            "--restart",
            "always",
            "--max-restarts",
            "9",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--label",
            "zone=a",
            "--workdir",
            "/srv",
            "--user",
            "svc",
            "--group",
            "video",
            "--",
            "/bin/sh",
            "-c",
            "echo hi --name x",
        ]);
        assert_eq!(a.name, "web");
        assert_eq!(a.cluster, "edge");
        assert_eq!(a.cpu, 500);
        assert_eq!(a.memory, 1 << 30);
        assert_eq!(a.gpus, 2);
        assert_eq!(a.restart, Restart::Always);
        assert_eq!(a.max_restarts, Some(9));
        assert_eq!(a.command, ["/bin/sh", "-c", "echo hi --name x"]);
        let body = run_body(&a);
        assert_eq!(
            body,
            json!({
                "name": "web", "cluster": "edge", "command": ["/bin/sh", "-c", "echo hi --name x"],
                "env": {"A": "1", "B": "x=y"},
                "resources": {"cpu_millis": 500, "memory_bytes": 1u64 << 30, "gpus": 2},
                "restart": "always", "max_restarts": 9,
                "constraints": {"labels": {"zone": "a"}}, "workdir": "/srv",
                "user": "svc", "group": "video",
            })
        );
    }

    #[test]
    fn run_defaults() {
        let a = run_args(&[
            "jobs",
            "run",
            "--name",
            "w",
            "--cluster",
            "c",
            "--",
            "sleep",
            "9",
        ]);
        assert_eq!(a.cpu, 100);
        assert_eq!(a.memory, 256 << 20);
        assert_eq!(a.gpus, 0);
        assert_eq!(a.restart, Restart::OnFailure);
        let body = run_body(&a);
        assert_eq!(body["restart"], "on_failure");
        assert!(body.get("max_restarts").is_none(), "the API's default");
        assert!(body.get("workdir").is_none());
        assert!(body.get("user").is_none() && body.get("group").is_none());
        assert_eq!(body["env"], json!({}));
        // Global options may come before the command.
        let cli = parse(&[
            "-o",
            "json",
            "jobs",
            "run",
            "--name",
            "w",
            "--cluster",
            "c",
            "--cpu",
            "250m",
            "--",
            "x",
        ])
        .unwrap();
        assert_eq!(cli.global.output, Output::Json);
    }

    #[test]
    fn run_refuses_bad_input() {
        let base = ["jobs", "run", "--name", "w", "--cluster", "c"];
        let bad = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            parse(&args).is_err()
        };
        assert!(bad(&[]), "a command is required");
        assert!(bad(&["--"]), "a command is required");
        assert!(bad(&["sleep", "1"]), "the command comes after --");
        assert!(bad(&["--cpu", "lots", "--", "x"]));
        assert!(bad(&["--cpu", "0", "--", "x"]));
        assert!(bad(&["--memory", "12XB", "--", "x"]));
        assert!(bad(&["--gpus", "-1", "--", "x"]));
        assert!(bad(&["--restart", "sometimes", "--", "x"]));
        assert!(bad(&["--env", "NOVALUE", "--", "x"]));
        assert!(bad(&["--label", "k", "--", "x"]));
        assert!(bad(&["--max-restarts", "many", "--", "x"]));
        assert!(
            parse(&["jobs", "run", "--cluster", "c", "--", "x"]).is_err(),
            "name"
        );
        assert!(
            parse(&["jobs", "run", "--name", "n", "--", "x"]).is_err(),
            "cluster"
        );
        assert!(!bad(&["--restart", "on-failure", "--", "x"]));
        assert!(!bad(&["--restart", "never", "--", "x"]));
    }

    #[test]
    fn list_show_stop_logs_and_failover() {
        match parse(&[
            "jobs",
            "list",
            "--cluster",
            "c",
            "--state",
            "running",
            "--node",
            "n",
        ])
        .unwrap()
        .cmd
        {
            Cmd::Jobs(JobsCmd::List {
                cluster,
                state,
                node,
            }) => {
                assert_eq!(cluster.as_deref(), Some("c"));
                assert_eq!(state.map(|s| s.as_str()), Some("running"));
                assert_eq!(node.as_deref(), Some("n"));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["jobs", "list", "--state", "asleep"]).is_err());
        // What `--state` accepts is what is sent as `?state=`: the API's seven names.
        use clap::ValueEnum;
        let names: Vec<String> = JobState::value_variants()
            .iter()
            .map(|st| {
                let typed = st.to_possible_value().unwrap().get_name().to_string();
                assert_eq!(typed, st.as_str());
                typed
            })
            .collect();
        assert_eq!(
            names,
            [
                "pending",
                "starting",
                "running",
                "migrating",
                "failed",
                "stopped",
                "completed"
            ]
        );
        assert!(parse(&["jobs", "list"]).is_ok());
        assert!(matches!(
            parse(&["jobs", "show", "j-0123"]).unwrap().cmd,
            Cmd::Jobs(JobsCmd::Show { job }) if job == "j-0123"
        ));
        assert!(parse(&["jobs", "show"]).is_err());
        assert!(matches!(
            parse(&["jobs", "stop", "web"]).unwrap().cmd,
            Cmd::Jobs(JobsCmd::Stop { job, detach: false, wait_s: 120 }) if job == "web"
        ));
        assert!(matches!(
            parse(&["jobs", "logs", "web"]).unwrap().cmd,
            Cmd::Jobs(JobsCmd::Logs { tail: 100, .. })
        ));
        assert!(matches!(
            parse(&["jobs", "logs", "web", "--tail", "7"]).unwrap().cmd,
            Cmd::Jobs(JobsCmd::Logs { tail: 7, .. })
        ));
        assert!(parse(&["jobs", "logs", "web", "--tail", "0"]).is_err());
        assert!(parse(&["jobs", "logs", "web", "--tail", "x"]).is_err());
        assert!(matches!(
            parse(&["clusters", "failover", "edge"]).unwrap().cmd,
            Cmd::Clusters(super::super::ClustersCmd::Failover { cluster }) if cluster == "edge"
        ));
        assert!(parse(&["clusters", "failover"]).is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(cpu(&json!(100)), "0.1");
        assert_eq!(cpu(&json!(2000)), "2");
        assert_eq!(cpu(&json!(1250)), "1.25");
        assert_eq!(bytes(&json!(256u64 << 20)), "256 MiB");
        assert_eq!(bytes(&json!(3u64 << 29)), "1.5 GiB");
        assert_eq!(bytes(&json!(100)), "100 B");
        assert_eq!(
            shell_words(&json!(["/bin/sh", "-c", "echo 'hi'; sleep 30"])),
            r#"/bin/sh -c 'echo '\''hi'\''; sleep 30'"#
        );
        assert_eq!(shell_words(&json!(["sleep", ""])), "sleep ''");
    }
}
