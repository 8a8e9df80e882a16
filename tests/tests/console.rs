//! End to end: the web console at `/ui`, driven by a real headless Chromium against
//! `tandem-coordinator dev` (3 real agents). Each test saves screenshots under
//! `target/console-screenshots/` and prints their paths. Without Chromium and not root, the
//! browser tests skip and say why; as root (CI) they install it first.

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tandem_tests::browser::Browser;
use tandem_tests::dev::{start_dev_with, Dev};
use tandem_tests::*;

const LONG: Duration = Duration::from_secs(30);

/// Dev mode with 3 agents (each reporting the two-GPU fixture), off the async workers.
async fn dev(tmp: &std::path::Path) -> Result<Dev> {
    let tmp = tmp.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let fixture = tandem_tests::fleet::l4_fixture();
        let fixture = fixture.to_str().context("utf-8 path")?;
        start_dev_with(
            &bin("tandem-coordinator"),
            &tmp,
            3,
            None,
            &["--gpu-fixture", fixture],
        )
    })
    .await?
}

/// Runs blocking API calls off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

async fn log_in(b: &Browser, dev: &Dev) -> Result<()> {
    b.client.goto(&format!("{}/ui", dev.api.base)).await?;
    b.type_into("#token", &dev.api.token).await?;
    b.click("#login").await?;
    b.wait_text("#nodes-ready", LONG, |t| t == "3").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_login_overview_cluster_node_and_tokens_pages_and_refusals() -> Result<()> {
    let Some(b) = Browser::start().await? else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let dev = dev(tmp.path()).await?;

    // A wrong token: refused with the API's code, nothing stored, still the login form.
    b.client.goto(&format!("{}/ui", dev.api.base)).await?;
    b.type_into("#token", "not-the-token").await?;
    b.click("#login").await?;
    let err = b.wait_text("#login-error", LONG, |t| !t.is_empty()).await?;
    ensure!(err.starts_with("unauthenticated:"), "the refusal: {err}");
    ensure!(
        b.stored_token().await?.is_none(),
        "a wrong token is not kept"
    );
    b.wait_text("#login", LONG, |t| t == "Log in").await?;
    b.screenshot("login-wrong-token").await?;

    // The right one: the overview shows 3 ready nodes and the dev cluster, and the token is
    // in sessionStorage, not in the URL.
    log_in(&b, &dev).await?;
    ensure!(b.stored_token().await?.as_deref() == Some(dev.api.token.as_str()));
    let url = b.client.current_url().await?;
    ensure!(
        !url.as_str().contains(&dev.api.token),
        "token in the URL: {url}"
    );
    b.wait_text("#cluster-table", LONG, |t| {
        t.contains("dev") && t.contains("running")
    })
    .await?;
    b.screenshot("overview-3-ready").await?;

    // A refused action: deleting a protected cluster shows the API's code and message next
    // to the button, and the cluster stays.
    let api = dev.api.clone();
    blocking(move || {
        api.post(
            "/v1/clusters",
            &json!({"name": "guarded", "mode": "pool", "deletion_protection": true}),
        )
    })
    .await?;
    b.client
        .goto(&format!("{}/ui#/cluster/guarded", dev.api.base))
        .await?;
    b.wait_text("#cluster-protection", LONG, |t| t == "on")
        .await?;
    b.click("#delete-cluster").await?;
    let refusal = b
        .wait_text("#delete-cluster-result", LONG, |t| !t.is_empty())
        .await?;
    ensure!(
        refusal.starts_with("failed_precondition:") && refusal.contains("deletion protection"),
        "the refusal beside the button: {refusal}"
    );
    b.screenshot("cluster-delete-refused").await?;
    let api = dev.api.clone();
    blocking(move || api.get("/v1/clusters/guarded")).await?;

    // A node's page: hardware, a heartbeat check with its round trip, and a move refused by
    // the target cluster's minimums, shown beside the button.
    let api = dev.api.clone();
    blocking(move || {
        api.post(
            "/v1/clusters",
            &json!({"name": "huge", "mode": "pool",
                    "min_node": {"cores": 1_000_000, "memory_bytes": 0}}),
        )
    })
    .await?;
    b.client
        .goto(&format!("{}/ui#/cluster/dev", dev.api.base))
        .await?;
    b.wait_text("#cluster-node-table", LONG, |t| {
        t.matches("ready").count() == 3
    })
    .await?;
    b.screenshot("cluster-dev").await?;
    b.click("#cluster-node-table a").await?;
    b.wait_text("#node-info", LONG, |t| t.contains("logical cores"))
        .await?;
    b.click("#check-node").await?;
    let rtt = b
        .wait_text("#check-node-result", LONG, |t| !t.is_empty())
        .await?;
    ensure!(rtt.starts_with("alive, round trip"), "the check: {rtt}");
    let gpus = b
        .wait_text("#gpu-table", LONG, |t| t.contains("GPU-"))
        .await?;
    ensure!(
        gpus.contains("L4") && gpus.contains("healthy"),
        "the GPU table: {gpus}"
    );
    b.client
        .find(fantoccini::Locator::Css(
            "#move-cluster option:nth-child(3)",
        ))
        .await?
        .click()
        .await?;
    b.click("#move-node").await?;
    let refused = b
        .wait_text("#move-node-result", LONG, |t| !t.is_empty())
        .await?;
    ensure!(
        refused.starts_with("failed_precondition:") && refused.contains("needs at least"),
        "the move's refusal: {refused}"
    );
    b.screenshot("node-check-and-refused-move").await?;

    // Join tokens: one made here is listed active (the secret shown once), then revoked.
    b.click("nav a[href='#/tokens']").await?;
    b.wait_text("#token-cluster", LONG, |t| t.contains("dev"))
        .await?;
    b.click("#create-token").await?;
    let made = b
        .wait_text("#token-made", LONG, |t| t.starts_with("tdm1."))
        .await?;
    let id = made.split('.').nth(1).context("token id")?.to_string();
    b.wait_text("#token-table", LONG, |t| t.contains(&id))
        .await?;
    b.click(&format!("#revoke-{id}")).await?;
    let api = dev.api.clone();
    let revoked = id.clone();
    blocking(move || {
        wait_for(LONG, "the token revoked", || {
            let v = api.get("/v1/join-tokens").ok()?;
            v["tokens"]
                .as_array()?
                .iter()
                .any(|t| t["id"] == revoked.as_str() && t["state"] == "revoked")
                .then_some(())
        })
    })
    .await?;
    b.wait_text("#token-table", LONG, |t| {
        t.lines().any(|l| l.contains(&id) && l.contains("revoked"))
    })
    .await?;
    b.screenshot("tokens-revoked").await?;
    b.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_runs_a_job_and_shows_its_failover_on_the_job_page_and_live_in_events() -> Result<()>
{
    let Some(b) = Browser::start().await? else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let dev = dev(tmp.path()).await?;
    let api = dev.api.clone();
    // No node is declared down during the restart grace.
    blocking(move || {
        wait_for(LONG, "the restart grace to end", || {
            let h = api.get("/healthz").ok()?;
            (h["restart_grace_remaining_ms"].as_u64() == Some(0)).then_some(())
        })
    })
    .await?;
    log_in(&b, &dev).await?;

    // Run a job from the form: it lands on its page, running.
    b.click("nav a[href='#/jobs']").await?;
    b.type_into("#run-name", "web").await?;
    b.type_into("#run-command", "while sleep 0.2; do date; done")
        .await?;
    b.wait_text("#run-cluster", LONG, |t| t.contains("dev"))
        .await?;
    b.click("#run-submit").await?;
    b.wait_text("#job-info .state", LONG, |t| t == "running")
        .await?;
    b.wait_text("#log", LONG, |t| !t.trim().is_empty()).await?;
    b.screenshot("job-running").await?;
    let node = b
        .wait_text("#job-node", LONG, |t| t.starts_with("dev-agent-"))
        .await?;

    // A second browser watches the events page, live, from before the failure.
    let Some(e) = Browser::start().await? else {
        return Ok(());
    };
    log_in(&e, &dev).await?;
    e.click("nav a[href='#/events']").await?;
    e.wait_text("#stream-status", LONG, |t| t == "live").await?;

    // kill -9 the agent running it.
    let pid: i32 = std::fs::read_to_string(dev.dir.join("agents").join(&node).join("agent.pid"))?
        .trim()
        .parse()?;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let api = dev.api.clone();
    let down_node = node.clone();
    let declared = blocking(move || {
        wait_for(LONG, "the node declared down", || {
            (api.state(&down_node).as_deref() == Some("down")).then(Instant::now)
        })
    })
    .await?;
    let left = || Duration::from_secs(3).saturating_sub(declared.elapsed());

    // Within 3 s of the node being declared down, the job page shows the failover (the old
    // placement ended `node down`, the job runs on another node) and the events page shows
    // the node down and the job placed elsewhere, without a reload.
    let rows = b
        .wait_text("#placement-table", left(), |t| {
            t.contains("node down") && t.contains("current")
        })
        .await
        .with_context(|| format!("{:?} after the node was declared down", declared.elapsed()))?;
    b.wait_text("#job-info .state", left(), |t| t == "running")
        .await?;
    let on_page = declared.elapsed();
    let now_on = b.wait_text("#job-node", LONG, |t| !t.is_empty()).await?;
    ensure!(now_on != node, "still on {node}:\n{rows}");
    println!("job page showed the failover {on_page:?} after the node was declared down");
    let events = e
        .wait_text("#event-table", left(), |t| {
            t.contains(&format!("node {node} is down")) && t.contains(&format!("{node} is down; "))
        })
        .await
        .with_context(|| format!("{:?} after the node was declared down", declared.elapsed()))?;
    println!(
        "events page showed the failover {:?} after the node was declared down",
        declared.elapsed()
    );
    ensure!(events.contains("now runs on"), "events: {events}");
    b.screenshot("job-failover").await?;
    e.screenshot("events-failover").await?;

    // New events keep arriving live; the kind filter keeps only node_state events.
    let api = dev.api.clone();
    let other = now_on.clone();
    let asked = Instant::now();
    blocking(move || api.post(&format!("/v1/nodes/{other}/drain"), &json!({}))).await?;
    e.wait_text("#event-table", Duration::from_secs(3), |t| {
        t.contains(&format!("node {now_on} is draining"))
    })
    .await?;
    println!(
        "a new event was on the events page {:?} after it happened",
        asked.elapsed()
    );
    e.type_into("#filter-kind", "node_state").await?;
    let filtered = e
        .wait_text("#event-table", LONG, |t| !t.contains("draining"))
        .await?;
    ensure!(
        filtered.contains("is down") && !filtered.contains("now runs on"),
        "filtered: {filtered}"
    );
    e.screenshot("events-filtered-by-kind").await?;
    // The overview lists the failover with how long it took.
    b.click("nav a[href='#/']").await?;
    let f = b
        .wait_text("#failover-table", LONG, |t| {
            t.contains("web") && t.contains(" ms")
        })
        .await?;
    ensure!(f.contains(&node) && f.contains(&now_on), "failovers: {f}");
    b.screenshot("overview-failover").await?;
    e.close().await?;
    b.close().await?;
    Ok(())
}

/// Every `/v1` route, with a method it answers.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/join-tokens"),
    ("POST", "/v1/join-tokens"),
    ("DELETE", "/v1/join-tokens/x"),
    ("GET", "/v1/nodes"),
    ("GET", "/v1/nodes/dev-agent-1"),
    ("PATCH", "/v1/nodes/dev-agent-1"),
    ("DELETE", "/v1/nodes/dev-agent-1"),
    ("POST", "/v1/nodes/dev-agent-1/check"),
    ("POST", "/v1/nodes/dev-agent-1/drain"),
    ("POST", "/v1/nodes/dev-agent-1/undrain"),
    ("POST", "/v1/nodes/dev-agent-1/move"),
    ("POST", "/v1/recycle"),
    ("GET", "/v1/clusters"),
    ("POST", "/v1/clusters"),
    ("GET", "/v1/clusters/dev"),
    ("PATCH", "/v1/clusters/dev"),
    ("DELETE", "/v1/clusters/dev"),
    ("GET", "/v1/operations/x"),
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/x"),
    ("DELETE", "/v1/jobs/x"),
    ("GET", "/v1/jobs/x/logs"),
    ("POST", "/v1/clusters/dev/failover"),
    ("GET", "/v1/clusters/dev/pairs"),
    ("POST", "/v1/clusters/dev/pairs"),
    ("DELETE", "/v1/clusters/dev/pairs/x"),
    ("GET", "/v1/events"),
    ("GET", "/v1/overview"),
    ("GET", "/v1/events/stream"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_under_ui_or_v1_gives_data_without_the_token() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = dev(tmp.path()).await?;
    let api = dev.api.clone();
    blocking(move || {
        for (method, path) in ROUTES {
            for token in [None, Some("wrong")] {
                let (s, v) = api.request(method, path, token, Some(b"{}"))?;
                ensure!(
                    s == 401 && v["error"]["code"] == "unauthenticated",
                    "{method} {path} with {token:?}: {s} {v}"
                );
            }
        }
        // The console's files hold no data: no token, no node name, no cluster id.
        let cluster = api.get("/v1/clusters/dev")?;
        for path in [
            "/ui",
            "/ui/",
            "/ui/index.html",
            "/ui/app.js",
            "/ui/style.css",
        ] {
            let (s, v) = api.request("GET", path, None, None)?;
            let text = v.as_str().context("text")?;
            ensure!(s == 200, "{path}: {s}");
            for secret in [
                api.token.as_str(),
                "dev-agent-1",
                cluster["id"].as_str().unwrap_or("-"),
            ] {
                ensure!(!text.contains(secret), "{path} holds {secret}");
            }
        }
        let (s, v) = api.request("GET", "/ui/../v1/nodes", None, None)?;
        ensure!(s == 401 || s == 404, "a path out of /ui: {s} {v}");
        Ok(())
    })
    .await?;

    // A browser without the token sees the login form and no data.
    let Some(b) = Browser::start().await? else {
        return Ok(());
    };
    for page in ["#/", "#/node/dev-agent-1", "#/cluster/dev", "#/events"] {
        b.client.goto(&format!("{}/ui{page}", dev.api.base)).await?;
        b.wait_text("#login", LONG, |t| t == "Log in").await?;
        let body = b.wait_text("body", LONG, |_| true).await?;
        ensure!(!body.contains("dev-agent"), "{page} shows data: {body}");
    }
    b.screenshot("no-token-login").await?;
    let v: Value = b
        .client
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)",
            vec![],
        )
        .await?;
    let loaded: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str())
        .collect();
    ensure!(
        loaded.iter().all(|u| u.contains("/ui/")),
        "only console files were loaded: {loaded:?}"
    );
    b.close().await?;
    Ok(())
}
