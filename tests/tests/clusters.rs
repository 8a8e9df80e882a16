//! End to end: clusters, pairs and node administration through the admin API and `tandemctl`,
//! with the real binaries. Agents get GPU fixtures, so that "the same model" and "another
//! model" are real hardware reports.

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tandem_tests::*;

const LONG: Duration = Duration::from_secs(30);
const L4: &str = "gpus-2x-l4.json";
const H100: &str = "gpus-8x-h100.json";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Percent-encodes a path segment (cluster names may be CJK).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Starts an agent with a GPU fixture.
fn agent(
    coord: &Coordinator,
    dir: &Path,
    token: Option<&str>,
    name: &str,
    gpus: &str,
) -> Result<Proc> {
    let f = fixture(gpus);
    start_agent(
        &coord.quic,
        &dir.join(name),
        token,
        name,
        &["--gpu-fixture", f.to_str().context("utf-8")?],
    )
}

fn wait_ready(api: &Api, name: &str) -> Result<Value> {
    wait_for(LONG, &format!("{name} ready"), || {
        api.node(name).filter(|n| n["state"] == "ready")
    })
}

fn cluster(api: &Api, name: &str) -> Result<Value> {
    api.get(&format!("/v1/clusters/{}", enc(name)))
}

/// Creates a cluster through the API and checks the answer and its operation.
fn create(api: &Api, body: Value) -> Result<Value> {
    let (status, v) = api.send("POST", "/v1/clusters", Some(&body))?;
    ensure!(status == 201, "create {body}: {status} {v}");
    let op = v["operation_id"]
        .as_str()
        .context("operation_id")?
        .to_string();
    ensure!(op.starts_with("op-"), "{v}");
    let done = wait_for(LONG, "the create operation to finish", || {
        let o = api.get(&format!("/v1/operations/{op}")).ok()?;
        (o["state"] != "pending").then_some(o)
    })?;
    ensure!(done["state"] == "done", "{done}");
    ensure!(done["target"] == v["cluster"]["id"], "{done} vs {v}");
    Ok(v["cluster"].clone())
}

/// A join token for `uses` nodes of `cluster`.
fn cluster_token(api: &Api, cluster: &str, uses: u32) -> Result<String> {
    let v = api.post(
        "/v1/join-tokens",
        &json!({"ttl_s": 600, "uses": uses, "cluster": cluster}),
    )?;
    Ok(v["token"].as_str().context("token")?.to_string())
}

/// Asserts an error envelope: status, code, and words in the message.
fn refused(r: (u16, Value), status: u16, code: &str, words: &[&str]) -> Result<()> {
    let (s, v) = r;
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    ensure!(
        s == status && v["error"]["code"] == code,
        "expected {status} {code}, got {s} {v}"
    );
    for w in words {
        ensure!(msg.contains(w), "the message does not say `{w}`: {msg}");
    }
    Ok(())
}

/// An ha_pairs cluster with two ready agents of the same (L4 fixture) model and their pair.
struct PairFixture {
    coord: Coordinator,
    agents: Vec<Proc>,
    dir: PathBuf,
    token: String,
    pair: Value,
}

fn pair_fixture(
    tmp: &Path,
    cluster_name: &str,
    names: [&str; 2],
    uses: u32,
) -> Result<PairFixture> {
    let coord = Coordinator::start(&tmp.join("coord"), None)?;
    let api = coord.api.clone();
    create(&api, json!({"name": cluster_name, "mode": "ha_pairs"}))?;
    let token = cluster_token(&api, cluster_name, uses)?;
    let mut agents = Vec::new();
    // One after the other: the first node fixes the cluster's model.
    for n in names {
        agents.push(agent(&coord, tmp, Some(&token), n, L4)?);
        wait_ready(&api, n)?;
    }
    let pair = wait_for(LONG, "a healthy pair", || {
        let c = cluster(&api, cluster_name).ok()?;
        let pairs = c["pairs"].as_array()?;
        (pairs.len() == 1 && pairs[0]["state"] == "healthy").then(|| pairs[0].clone())
    })?;
    Ok(PairFixture {
        coord,
        agents,
        dir: tmp.to_path_buf(),
        token,
        pair,
    })
}

use tandem_tests::{tandemctl as ctl, tandemctl_ok as ctl_ok};

fn ctl_json(api: &Api, args: &[&str]) -> Result<Value> {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let text = ctl_ok(api, &a)?;
    serde_json::from_str(&text).with_context(|| format!("not JSON:\n{text}"))
}

/// The table row that mentions `needle`.
fn row<'a>(table: &'a str, needle: &str) -> Result<&'a str> {
    table
        .lines()
        .find(|l| l.contains(needle))
        .with_context(|| format!("no row with {needle}:\n{table}"))
}

/// The JSON without the fields that change with time alone.
fn steady(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "last_heartbeat_age_ms" | "usage_percent"))
                .map(|(k, v)| (k.clone(), steady(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(steady).collect()),
        other => other.clone(),
    }
}

/// `tandemctl ARGS -o json` equals `GET path` (each read twice at most, in case a state change
/// fell between the two reads).
fn same_as_api(api: &Api, args: &[&str], path: &str) -> Result<Value> {
    let mut last = String::new();
    for _ in 0..3 {
        let from_ctl = steady(&ctl_json(api, args)?);
        let from_api = steady(&api.get(path)?);
        if from_ctl == from_api {
            return Ok(from_api);
        }
        last = format!("tandemctl {args:?}:\n{from_ctl}\nGET {path}:\n{from_api}");
    }
    bail!("tandemctl and the API disagree: {last}")
}

#[test]
fn clusters_are_created_validated_edited_and_deleted() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let coord = Coordinator::start(&tmp.path().join("coord"), None)?;
    let api = &coord.api;

    let c = create(
        api,
        json!({
            "name": "edge-a", "alias": "Edge A", "description": "first", "mode": "ha_pairs",
            "labels": {"env": "prod"}, "min_node": {"cores": 1, "memory_bytes": 1 << 20}
        }),
    )?;
    ensure!(
        c["status"] == "uninitialized" && c["mode"] == "ha_pairs" && c["id"].is_string(),
        "{c}"
    );
    let id = c["id"].as_str().context("id")?;
    ensure!(cluster(api, id)?["name"] == "edge-a");

    // Names: `a_b`, 64 characters and empty are refused, naming the field; 63 and CJK are fine.
    let long = "x".repeat(64);
    for bad in ["a_b", long.as_str(), ""] {
        let r = api.send(
            "POST",
            "/v1/clusters",
            Some(&json!({"name": bad, "mode": "pool"})),
        )?;
        refused(r, 400, "invalid_argument", &["name"]).with_context(|| format!("name {bad:?}"))?;
    }
    create(api, json!({"name": "y".repeat(63), "mode": "pool"}))?;
    let cjk = create(api, json!({"name": "边缘-集群-1", "mode": "ha_pairs"}))?;
    ensure!(cjk["name"] == "边缘-集群-1", "{cjk}");
    ensure!(cluster(api, "边缘-集群-1")?["id"] == cjk["id"]);

    // Duplicates, labels.
    let r = api.send(
        "POST",
        "/v1/clusters",
        Some(&json!({"name": "edge-a", "mode": "pool"})),
    )?;
    refused(r, 409, "already_exists", &["edge-a"])?;
    let labels = |n: usize| -> Value {
        (0..n)
            .map(|i| (format!("k{i}"), json!("v")))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let r = api.send(
        "POST",
        "/v1/clusters",
        Some(&json!({"name": "many", "mode": "pool", "labels": labels(21)})),
    )?;
    refused(r, 400, "invalid_argument", &["labels", "20"])?;
    create(
        api,
        json!({"name": "twenty", "mode": "pool", "labels": labels(20)}),
    )?;
    for key in ["tandem.io/role", "https://x"] {
        let r = api.send(
            "POST",
            "/v1/clusters",
            Some(&json!({"name": "reserved", "mode": "pool", "labels": {key: "v"}})),
        )?;
        refused(r, 400, "invalid_argument", &["labels"]).with_context(|| format!("key {key}"))?;
    }

    // Filters.
    let found = api.get("/v1/clusters?q=edge")?;
    ensure!(
        found["clusters"].as_array().map(Vec::len) == Some(1),
        "{found}"
    );
    let found = api.get("/v1/clusters?label=env%3Dprod")?;
    ensure!(found["clusters"][0]["name"] == "edge-a", "{found}");

    // Deletion protection, then delete.
    let p = api.send(
        "PATCH",
        &format!("/v1/clusters/{id}"),
        Some(&json!({"deletion_protection": true})),
    )?;
    ensure!(p.0 == 200 && p.1["deletion_protection"] == true, "{p:?}");
    refused(
        api.send("DELETE", &format!("/v1/clusters/{id}"), None)?,
        409,
        "failed_precondition",
        &["deletion protection"],
    )?;
    api.send(
        "PATCH",
        "/v1/clusters/edge-a",
        Some(&json!({"deletion_protection": false})),
    )?;
    let (s, v) = api.send("DELETE", "/v1/clusters/edge-a", None)?;
    ensure!(s == 200 && v["deleted"] == id, "{s} {v}");
    refused(
        api.send("GET", "/v1/clusters/edge-a", None)?,
        404,
        "not_found",
        &["edge-a"],
    )?;

    // tandemctl: the same data as the API.
    same_as_api(api, &["clusters", "list"], "/v1/clusters")?;
    same_as_api(
        api,
        &["clusters", "show", "边缘-集群-1"],
        &format!("/v1/clusters/{}", enc("边缘-集群-1")),
    )?;
    let table = ctl_ok(api, &["clusters", "list"])?;
    let r = row(&table, "边缘-集群-1")?;
    ensure!(r.contains("ha_pairs") && r.contains("uninitialized"), "{r}");
    ensure!(
        table.contains("NAME") && table.contains("STATUS"),
        "{table}"
    );

    let made = ctl_ok(
        api,
        &[
            "clusters",
            "create",
            "--name",
            "ctl-made",
            "--mode",
            "pool",
            "--alias",
            "Made",
            "--label",
            "a=b",
            "--label",
            "a=c",
            "--min-cores",
            "2",
            "--min-memory",
            "4GiB",
            "--deletion-protection",
            "--failback",
        ],
    )?;
    ensure!(made.contains("ctl-made") && made.contains("done"), "{made}");
    let m = cluster(api, "ctl-made")?;
    ensure!(
        m["labels"] == json!({"a": "c"})
            && m["min_node"] == json!({"cores": 2, "memory_bytes": 4u64 << 30})
            && m["deletion_protection"] == true
            && m["failback"] == true
            && m["alias"] == "Made",
        "{m}"
    );
    let o = ctl(api, &["clusters", "delete", "ctl-made"])?;
    ensure!(
        !o.ok && o.stderr.contains("error: failed_precondition:"),
        "{}",
        o.stderr
    );
    let edited = ctl_json(
        api,
        &[
            "clusters",
            "edit",
            "ctl-made",
            "--deletion-protection=false",
            "--remove-label",
            "a",
            "--label",
            "zone=b",
            "--min-cores",
            "4",
        ],
    )?;
    ensure!(
        edited["labels"] == json!({"zone": "b"})
            && edited["deletion_protection"] == false
            && edited["min_node"] == json!({"cores": 4, "memory_bytes": 4u64 << 30}),
        "{edited}"
    );
    let deleted = ctl_ok(api, &["clusters", "delete", "ctl-made"])?;
    ensure!(deleted.contains("ctl-made"), "{deleted}");
    ensure!(api.send("GET", "/v1/clusters/ctl-made", None)?.0 == 404);

    let o = ctl(
        api,
        &["clusters", "create", "--name", "a_b", "--mode", "pool"],
    )?;
    ensure!(
        !o.ok && o.stderr.contains("error: invalid_argument:") && o.stderr.contains("name"),
        "{}",
        o.stderr
    );
    // A join token for a cluster, by name; an unknown cluster is refused.
    let tok = ctl_json(
        api,
        &[
            "tokens",
            "create",
            "--cluster",
            "边缘-集群-1",
            "--uses",
            "2",
        ],
    )?;
    ensure!(
        tok["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("tdm1."))
            && tok["uses"] == 2,
        "{tok}"
    );
    let o = ctl(api, &["tokens", "create", "--cluster", "nope"])?;
    ensure!(
        !o.ok && o.stderr.contains("error: not_found:") && o.stderr.contains("nope"),
        "{}",
        o.stderr
    );
    let created = ctl_json(
        api,
        &["clusters", "create", "--name", "opcheck", "--mode", "pool"],
    )?;
    let op = created["operation_id"].as_str().context("operation_id")?;
    let shown = ctl_ok(api, &["operations", "show", op])?;
    ensure!(
        shown.contains("done") && shown.contains("create_cluster"),
        "{shown}"
    );
    Ok(())
}

#[test]
fn same_model_agents_pair_and_another_model_is_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let f = pair_fixture(tmp.path(), "pairs-a", ["pa-1", "pa-2"], 3)?;
    let api = &f.coord.api;
    let ids: Vec<String> = ["pa-1", "pa-2"]
        .iter()
        .map(|n| {
            Ok(api.node(n).context("node")?["id"]
                .as_str()
                .context("id")?
                .to_string())
        })
        .collect::<Result<_>>()?;
    ensure!(
        f.pair["primary"] == ids[0].as_str() && f.pair["standby"] == ids[1].as_str(),
        "the older node is the primary: {}",
        f.pair
    );
    let c = wait_for(LONG, "the cluster running", || {
        cluster(api, "pairs-a")
            .ok()
            .filter(|c| c["status"] == "running")
    })?;
    let cap = &c["capacity"];
    ensure!(
        cap["gpus_total"] == 4
            && cap["cores_total"].as_u64() > Some(0)
            && cap["memory_total_bytes"].as_u64() > Some(0)
            && cap["cu_total"].as_u64() > Some(0),
        "{cap}"
    );
    ensure!(c["nodes"].as_array().map(Vec::len) == Some(2), "{c}");

    // Another model is refused at join: the agent stops, saying both models.
    let mut other = agent(&f.coord, &f.dir, Some(&f.token), "pa-3", H100)?;
    let status = wait_for(LONG, "the H100 agent to stop", || other.exited())?;
    let log = other.log_text();
    ensure!(!status.success(), "exit {status}\n{log}");
    ensure!(
        log.contains("2x NVIDIA L4") && log.contains("8x NVIDIA H100"),
        "the refusal names both models:\n{log}"
    );
    ensure!(api.node("pa-3").is_none() && api.nodes()?.len() == 2);

    // A cluster with nodes cannot be deleted; with protection on, the refusal says so.
    refused(
        api.send("DELETE", "/v1/clusters/pairs-a", None)?,
        409,
        "failed_precondition",
        &["node"],
    )?;
    api.send(
        "PATCH",
        "/v1/clusters/pairs-a",
        Some(&json!({"deletion_protection": true})),
    )?;
    refused(
        api.send("DELETE", "/v1/clusters/pairs-a", None)?,
        409,
        "failed_precondition",
        &["deletion protection"],
    )?;

    // The heartbeat check answers with a round trip.
    let (s, v) = api.send("POST", "/v1/nodes/pa-1/check", None)?;
    ensure!(
        s == 200 && v["alive"] == true && v["rtt_ms"].is_number(),
        "{s} {v}"
    );

    // tandemctl prints the same data as the API.
    let cid = c["id"].as_str().context("id")?;
    same_as_api(
        api,
        &["clusters", "show", "pairs-a"],
        &format!("/v1/clusters/{cid}"),
    )?;
    same_as_api(api, &["clusters", "list"], "/v1/clusters")?;
    same_as_api(
        api,
        &["pairs", "list", "--cluster", "pairs-a"],
        "/v1/clusters/pairs-a/pairs",
    )?;
    let table = ctl_ok(api, &["clusters", "list"])?;
    let r = row(&table, "pairs-a")?;
    let cu = format!("{}/{}", cap["cu_free"], cap["cu_total"]);
    ensure!(
        r.contains("running") && r.contains("ha_pairs") && r.contains(&cu),
        "row {r} (CU {cu})"
    );
    let pairs = ctl_ok(api, &["pairs", "list", "--cluster", "pairs-a"])?;
    let pid = f.pair["id"].as_str().context("pair id")?;
    let r = row(&pairs, &pid[..10])?;
    ensure!(
        r.contains("pa-1") && r.contains("pa-2") && r.contains("healthy"),
        "{pairs}"
    );
    let shown = ctl_ok(api, &["clusters", "show", "pairs-a"])?;
    ensure!(
        shown.contains("running") && shown.contains("pa-1") && shown.contains("2x NVIDIA L4"),
        "{shown}"
    );
    let check = ctl_ok(api, &["nodes", "check", "pa-2"])?;
    ensure!(check.contains("alive") && check.contains(" ms"), "{check}");
    let check = ctl_json(api, &["nodes", "check", &ids[1]])?;
    ensure!(
        check["alive"] == true && check["rtt_ms"].is_number(),
        "{check}"
    );
    // A short id, as the tables print it, works too.
    let short = &ids[0][..10];
    let shown = ctl_json(api, &["nodes", "show", short])?;
    ensure!(shown["name"] == "pa-1", "{shown}");

    // By hand: unpair, then pair the other way round.
    let deleted = ctl_ok(
        api,
        &["pairs", "delete", "--cluster", "pairs-a", &pid[..10]],
    )?;
    ensure!(deleted.contains(pid), "{deleted}");
    ensure!(cluster(api, "pairs-a")?["pairs"] == json!([]));
    let made = ctl_json(
        api,
        &[
            "pairs",
            "create",
            "--cluster",
            "pairs-a",
            "--primary",
            "pa-2",
            "--standby",
            "pa-1",
        ],
    )?;
    ensure!(
        made["pair"]["primary"] == ids[1].as_str() && made["pair"]["state"] == "healthy",
        "{made}"
    );
    drop(f.agents);
    Ok(())
}

#[test]
fn a_dead_primary_is_replaced_by_its_standby_and_comes_back_as_standby() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut f = pair_fixture(tmp.path(), "ha-f", ["hf-1", "hf-2"], 2)?;
    let api = f.coord.api.clone();
    let pid = f.pair["id"].as_str().context("pair id")?.to_string();
    let primary = f.pair["primary"].as_str().context("primary")?.to_string();
    let standby = f.pair["standby"].as_str().context("standby")?.to_string();
    ensure!(api.node("hf-1").context("hf-1")?["id"] == primary.as_str());

    f.agents[0].kill9();
    wait_for(LONG, "hf-1 down", || {
        (api.state("hf-1").as_deref() == Some("down")).then_some(())
    })?;
    let c = wait_for(LONG, "the standby promoted", || {
        let c = cluster(&api, "ha-f").ok()?;
        let p = &c["pairs"][0];
        (p["state"] == "failed_over" && p["primary"] == standby.as_str()).then_some(c)
    })?;
    let p = &c["pairs"][0];
    ensure!(
        p["id"] == pid.as_str() && p["standby"] == primary.as_str(),
        "{p}"
    );
    ensure!(c["status"] == "degraded", "{c}");
    let ev = api
        .events()?
        .into_iter()
        .find(|e| {
            e["kind"] == "pair"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("promoted"))
        })
        .context("a pair event for the promotion")?;
    let msg = ev["message"].as_str().unwrap_or_default();
    ensure!(msg.contains("hf-2") && msg.contains("down"), "{msg}");

    // The check of the dead node says why it is not alive; tandemctl exits non-zero.
    let (s, v) = api.send("POST", "/v1/nodes/hf-1/check", None)?;
    ensure!(
        s == 200 && v["alive"] == false && v["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{s} {v}"
    );
    let o = ctl(&api, &["nodes", "check", "hf-1"])?;
    ensure!(!o.ok && o.stderr.contains("not_alive"), "{}", o.stderr);

    // The old primary comes back (same state dir, no token): it is the standby now.
    f.agents[0] = agent(&f.coord, &f.dir, None, "hf-1", L4)?;
    wait_ready(&api, "hf-1")?;
    let c = wait_for(LONG, "the pair healthy again", || {
        cluster(&api, "ha-f")
            .ok()
            .filter(|c| c["pairs"][0]["state"] == "healthy" && c["status"] == "running")
    })?;
    let p = &c["pairs"][0];
    ensure!(
        p["id"] == pid.as_str()
            && p["primary"] == standby.as_str()
            && p["standby"] == primary.as_str(),
        "no failback by default: {p}"
    );
    let pairs = ctl_ok(&api, &["pairs", "list", "--cluster", "ha-f"])?;
    let r = row(&pairs, "healthy")?;
    let (p2, p1) = (r.find("hf-2"), r.find("hf-1"));
    ensure!(
        p2.is_some() && p1.is_some() && p2 < p1,
        "hf-2 is listed as the primary: {r}"
    );
    Ok(())
}

#[test]
fn drain_protect_remove_and_recycle() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut f = pair_fixture(tmp.path(), "ops", ["op-1", "op-2"], 2)?;
    let api = f.coord.api.clone();

    // Drain and undrain.
    let out = ctl_ok(&api, &["nodes", "drain", "op-1"])?;
    ensure!(out.contains("draining"), "{out}");
    ensure!(api.state("op-1").as_deref() == Some("draining"));
    let c = cluster(&api, "ops")?;
    ensure!(
        c["capacity"]["cu_free"].as_u64() < c["capacity"]["cu_total"].as_u64(),
        "a draining node adds no free capacity: {}",
        c["capacity"]
    );
    ctl_ok(&api, &["nodes", "undrain", "op-1"])?;
    ensure!(api.state("op-1").as_deref() == Some("ready"));

    // Labels.
    let out = ctl_ok(&api, &["nodes", "label", "op-1", "zone=a", "rack=7"])?;
    ensure!(out.contains("zone=a"), "{out}");
    ctl_ok(&api, &["nodes", "label", "op-1", "--remove", "rack"])?;
    ensure!(api.node("op-1").context("op-1")?["labels"] == json!({"zone": "a"}));

    // A protected node cannot be removed until it is unprotected.
    ctl_ok(&api, &["nodes", "protect", "op-2"])?;
    refused(
        api.send("DELETE", "/v1/nodes/op-2", None)?,
        409,
        "failed_precondition",
        &["protected"],
    )?;
    let o = ctl(&api, &["nodes", "remove", "op-2"])?;
    ensure!(
        !o.ok && o.stderr.contains("failed_precondition"),
        "{}",
        o.stderr
    );
    ctl_ok(&api, &["nodes", "protect", "op-2", "--off"])?;
    let out = ctl_ok(&api, &["nodes", "remove", "op-2"])?;
    ensure!(out.contains("removed"), "{out}");
    ensure!(api.node("op-2").is_none(), "op-2 is gone");
    ensure!(
        cluster(&api, "ops")?["pairs"] == json!([]),
        "its pair is dissolved"
    );
    let ev = api.events()?;
    ensure!(
        ev.iter().any(|e| e["kind"] == "pair"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("dissolved") && m.contains("op-2"))),
        "a pair event says why the pair went: {ev:?}"
    );
    // Its agent is refused when it reconnects, and stops saying why.
    let status = wait_for(LONG, "the removed agent to stop", || f.agents[1].exited())?;
    let log = f.agents[1].log_text();
    ensure!(
        !status.success() && log.contains("removed"),
        "exit {status}\n{log}"
    );
    // ... at the TLS handshake: its certificate is revoked.
    ensure!(log.contains("revoked"), "refused as revoked: {log}");
    let clog = f.coord.proc.log_text();
    ensure!(
        clog.contains("handshake") && clog.contains("Revoked"),
        "the coordinator refused the certificate at the handshake:\n{clog}"
    );

    // Recycle: a node down for less than the threshold stays; with 0 it goes.
    f.agents[0].kill9();
    wait_for(LONG, "op-1 down", || {
        (api.state("op-1").as_deref() == Some("down")).then_some(())
    })?;
    let out = ctl_ok(&api, &["recycle", "--down-for", "1h"])?;
    ensure!(
        out.contains("nothing removed") && api.node("op-1").is_some(),
        "{out}"
    );
    let v = api.post("/v1/recycle", &json!({"down_for_s": 0}))?;
    ensure!(
        v["removed"].as_array().map(Vec::len) == Some(1) && v["removed"][0]["name"] == "op-1",
        "{v}"
    );
    ensure!(api.node("op-1").is_none() && api.nodes()?.is_empty());

    // The cluster is empty now: it can be deleted.
    let (s, v) = api.send("DELETE", "/v1/clusters/ops", None)?;
    ensure!(s == 200, "{s} {v}");
    Ok(())
}
