//! End to end: the network between a job's node and the coordinator is cut — both ways, only
//! agent -> coordinator, only coordinator -> agent — through a UDP relay that drops datagrams
//! (no root needed). The node's lease runs out, its shim fences the job, the coordinator moves
//! it; no two copies ever write at once. After the cut heals the old node registers again,
//! becomes ready, and never brings the old copy back.

use anyhow::Result;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use tandem_tests::fleet::*;
use tandem_tests::relay::Relay;

#[derive(Clone, Copy, Debug)]
enum Cut {
    Both,
    AgentToCoordinator,
    CoordinatorToAgent,
}

fn partition(prefix: &str, cut: Cut) -> Result<()> {
    let mut f = Fleet::new(prefix, "pool")?;
    let names = [format!("{prefix}-a"), format!("{prefix}-b")];
    // Each agent behind a relay of its own, so one node can be cut off alone.
    let mut relays = HashMap::new();
    for n in &names {
        let r = Relay::start(&f.coord.quic)?;
        f.start_agent(n, Some(&r.addr()), &[])?;
        relays.insert(n.clone(), r);
    }
    for n in &names {
        f.wait_ready(n)?;
    }
    let w = f.submit_writer(&format!("{prefix}-writer"), 0, json!({}))?;
    let first = f.wait_running(&w)?;
    let (old_node, old_token) = f.placement(&first)?;
    f.coord.wait_restart_grace()?;

    let relay = &relays[&old_node];
    match cut {
        Cut::Both => relay.cut(true),
        Cut::AgentToCoordinator => relay.drop_up(true),
        Cut::CoordinatorToAgent => relay.drop_down(true),
    }
    let what = format!("partition ({cut:?})");
    let (moved, took) = f.wait_new_copy(&w, old_token, FAILOVER_BOUND)?;
    println!(
        "{what}: new copy writing {} ms after the cut",
        took.as_millis()
    );
    let (new_node, new_token) = f.placement(&moved)?;
    check(new_node != old_node, || format!("still on {new_node}"))?;
    handover(&w.out, old_token, new_token, &what)?;
    let why = f.wait_copy_ended(&old_node, &w.id, old_token)?;
    check(why == "fenced", || format!("old copy ended: {why}"))?;

    // Heal: the old node comes back ready and the old copy never runs again.
    relay.cut(false);
    let healed_ns = now_ns();
    f.wait_ready(&old_node)?;
    println!(
        "{what}: {old_node} ready again {} ms after healing",
        (now_ns() - healed_ns) / 1_000_000
    );
    holds_for(Duration::from_millis(1500), || {
        let cs = copies(&w.out)?;
        let toks: Vec<u64> = cs.iter().map(|c| c.token).collect();
        check(toks == vec![old_token, new_token], || {
            format!("copies: {cs:?}")
        })?;
        let j = f.job(&w.id)?;
        check(
            j["state"] == "running" && j["fencing_token"].as_u64() == Some(new_token),
            || format!("the job changed after the old node returned: {j}"),
        )
    })?;
    let cs = copies(&w.out)?;
    check(cs[0].last < healed_ns, || {
        format!("the old copy wrote after healing: {cs:?}")
    })?;
    check(cs[1].last + 1_000_000_000 > now_ns(), || {
        format!("the new copy stopped writing: {cs:?}")
    })?;
    Ok(())
}

#[test]
fn a_cut_in_both_directions_moves_the_job_without_overlap() -> Result<()> {
    partition("cut2", Cut::Both)
}

#[test]
fn a_cut_from_agent_to_coordinator_moves_the_job_without_overlap() -> Result<()> {
    partition("cutup", Cut::AgentToCoordinator)
}

#[test]
fn a_cut_from_coordinator_to_agent_moves_the_job_without_overlap() -> Result<()> {
    partition("cutdown", Cut::CoordinatorToAgent)
}
