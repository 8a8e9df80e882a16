//! End to end: the disruption guard. When most of a cluster's nodes go down at once, the
//! coordinator is the likelier one to be cut off: failover is held (an event says why, no job
//! moves) until the nodes return or an operator forces it.

use anyhow::Result;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tandem_tests::fleet::*;
use tandem_tests::wait_for;

#[test]
fn most_of_a_cluster_down_at_once_holds_failover_until_forced() -> Result<()> {
    let mut f = Fleet::new("guard", "pool")?;
    let names = ["guard-a", "guard-b", "guard-c"];
    f.start_agents(&names, &[])?;
    let mut writers = Vec::new();
    for k in 0..3 {
        let w = f.submit_writer(&format!("guard-writer-{k}"), 0, json!({}))?;
        writers.push(w);
    }
    let mut on: BTreeMap<String, Vec<(Writer, u64)>> = BTreeMap::new();
    for w in &writers {
        let j = f.wait_running(w)?;
        let (node, token) = f.placement(&j)?;
        on.entry(node).or_default().push((w.clone(), token));
    }
    println!(
        "guard: jobs per node: {:?}",
        on.iter().map(|(n, v)| (n, v.len())).collect::<Vec<_>>()
    );
    // Two victims, holding as many jobs as possible; the third node survives.
    let mut by_load: Vec<&str> = names.to_vec();
    by_load.sort_by_key(|n| std::cmp::Reverse(on.get(*n).map_or(0, Vec::len)));
    let (victims, survivor) = ([by_load[0], by_load[1]], by_load[2]);
    let stranded: Vec<(Writer, u64)> = victims
        .iter()
        .flat_map(|v| on.get(*v).cloned().unwrap_or_default())
        .collect();
    check(!stranded.is_empty(), || "no job on the victims".into())?;
    f.coord.wait_restart_grace()?;

    let t0 = Instant::now();
    for v in victims {
        f.agent(v)?.kill9();
    }
    // Both are declared down, and failover is held with a reason.
    for v in victims {
        wait_for(LONG, &format!("{v} down"), || {
            (f.api().state(v).as_deref() == Some("down")).then_some(())
        })?;
    }
    let held = wait_for(LONG, "a failover_guard event", || {
        f.events("failover_guard").ok()?.into_iter().next()
    })?;
    println!(
        "guard: {} ms after the kills: {}",
        t0.elapsed().as_millis(),
        held["message"]
    );
    check(
        held["message"]
            .as_str()
            .is_some_and(|m| m.contains("paused") && m.contains("cut off")),
        || format!("{held}"),
    )?;
    // Nothing moves while held.
    holds_for(Duration::from_millis(1500), || {
        for (w, token) in &stranded {
            let j = f.job(&w.id)?;
            check(j["fencing_token"].as_u64() == Some(*token), || {
                format!("a job moved while failover was held: {j}")
            })?;
            let cs = copies(&w.out)?;
            check(cs.len() == 1, || format!("{cs:?}"))?;
        }
        Ok(())
    })?;

    // The operator forces it: every stranded job runs on the survivor.
    let forced_at = Instant::now();
    f.api()
        .post(&format!("/v1/clusters/{}/failover", f.cluster), &json!({}))?;
    for (w, token) in &stranded {
        let (j, _) = f.wait_new_copy(w, *token, FAILOVER_BOUND)?;
        let (node, new_token) = f.placement(&j)?;
        check(node == survivor, || format!("{} went to {node}", w.id))?;
        handover(&w.out, *token, new_token, "guard (forced)")?;
    }
    println!(
        "guard: {} stranded jobs running on {survivor} {} ms after the forced failover",
        stranded.len(),
        forced_at.elapsed().as_millis()
    );
    let guard_events = f.events("failover_guard")?;
    check(
        guard_events.iter().any(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("forced by an operator"))
        }),
        || format!("{guard_events:?}"),
    )?;
    Ok(())
}
