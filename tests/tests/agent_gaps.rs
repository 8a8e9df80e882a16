//! End to end, with the real binaries: the smaller gaps of issue 13 — a second agent on the
//! same state dir, and log replies past the frame limit.

use anyhow::{Context, Result};
use serde_json::json;
use std::time::Duration;
use tandem_tests::fleet::*;
use tandem_tests::{start_agent, wait_for};

/// A second agent started on the state dir of a running one is refused at once, with an
/// error that says so and a non-zero exit; the first one stays ready and its job keeps its
/// single copy.
///
/// On the code before the fix: `timed out after 10s waiting for the second agent to exit`:
/// it ran beside the first, on the same identity and job dirs.
#[test]
fn a_second_agent_on_the_same_state_dir_is_refused() -> Result<()> {
    let mut f = Fleet::new("twice", "pool")?;
    f.start_agents(&["twice-a"], &[])?;
    let w = f.submit_writer("twice-writer", 0, json!({}))?;
    let j = f.wait_running(&w)?;
    let (_, token) = f.placement(&j)?;
    let mut second = start_agent(&f.coord.quic, &f.state_dir("twice-a"), None, "twice-a", &[])?;
    let status = wait_for(Duration::from_secs(10), "the second agent to exit", || {
        second.exited()
    })
    .with_context(|| second.log_text())?;
    let log = second.log_text();
    println!("second agent: {status}: {}", log.trim());
    check(!status.success(), || format!("it exited {status}"))?;
    check(log.contains("already runs with state dir"), || log.clone())?;
    // The first is unharmed: still ready, the same copy writing on.
    holds_for(Duration::from_millis(1500), || {
        check(f.api().state("twice-a").as_deref() == Some("ready"), || {
            "the first agent is no longer ready".into()
        })?;
        check(
            f.job(&w.id)?["fencing_token"].as_u64() == Some(token),
            || "the job moved".into(),
        )
    })?;
    let cs = copies(&w.out)?;
    check(cs.len() == 1, || format!("{cs:?}"))?;
    Ok(())
}
