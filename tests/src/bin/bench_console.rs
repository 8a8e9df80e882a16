//! Times the web console's overview in a real headless Chromium (see `tests/bench_console.sh`,
//! which starts a coordinator and a swarm first).
//!
//! `bench_console --endpoint http://HOST:PORT --token-file F --nodes N [--runs R]` logs in
//! (the token put in sessionStorage, as the login form does), then R times loads `/ui#/` afresh
//! and measures, in the page, the time from the start of the navigation until the overview
//! shows N nodes (the node counts, the cluster table and the first page of nodes are drawn).
//! Prints one JSON object: every run's milliseconds, the median and the worst.

use anyhow::{bail, Context, Result};
use clap::Parser;
use tandem_tests::browser::Browser;

#[derive(Parser)]
struct Args {
    /// The admin endpoint.
    #[arg(long)]
    endpoint: String,
    /// The admin token's file.
    #[arg(long)]
    token_file: std::path::PathBuf,
    /// Nodes the overview must show.
    #[arg(long)]
    nodes: u64,
    /// Page loads to time.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// Resolves with the milliseconds since navigation start once the overview is drawn with
/// `arguments[0]` nodes in all (`null` after 30 s).
const RENDERED: &str = r#"
const want = arguments[0], done = arguments[arguments.length - 1], t0 = Date.now();
(function poll() {
  const total = Object.values(document.querySelectorAll('#nodes .count'))
    .reduce((s, e) => s + Number(e.textContent), 0);
  const drawn = document.querySelector('#cluster-table') && document.querySelector('#node-table');
  if (total === want && drawn) return done(performance.now());
  if (Date.now() - t0 > 30000) return done(null);
  setTimeout(poll, 2);
})();
"#;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let a = Args::parse();
    let token = std::fs::read_to_string(&a.token_file)?.trim().to_string();
    let Some(b) = Browser::start().await? else {
        bail!("no browser here");
    };
    b.client.goto(&format!("{}/ui", a.endpoint)).await?;
    b.client
        .execute(
            "sessionStorage.setItem('tandem.admin_token', arguments[0])",
            vec![serde_json::json!(token)],
        )
        .await?;
    let mut ms = Vec::new();
    for i in 0..a.runs {
        // A fresh document each time: a different query string, the same page.
        b.client
            .goto(&format!("{}/ui?run={i}#/", a.endpoint))
            .await?;
        let v = b
            .client
            .execute_async(RENDERED, vec![serde_json::json!(a.nodes)])
            .await?;
        let t = v.as_f64().context("the overview never showed all nodes")?;
        ms.push(t);
    }
    b.screenshot(&format!("bench-overview-{}", a.nodes)).await?;
    b.close().await?;
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "nodes": a.nodes,
            "overview_rendered_ms": ms,
            "p50_ms": sorted[sorted.len() / 2],
            "max_ms": sorted[sorted.len() - 1],
        })
    );
    Ok(())
}
