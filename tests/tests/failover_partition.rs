//! End to end: the network between a job's node and the coordinator is cut — both ways, only
//! agent -> coordinator, only coordinator -> agent — through a UDP relay that drops datagrams
//! (no root needed). The node's lease runs out, its shim fences the job, the coordinator moves
//! it; no two copies ever write at once. After the cut heals the old node registers again,
//! becomes ready, and never brings the old copy back.

use anyhow::{Context, Result};
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

/// A network namespace joined to the root namespace by a veth pair with link-local addresses
/// of its own (169.254.x.y/30, from this process's id); removed on drop.
struct NetNs {
    name: String,
    veth: String,
    /// The root side's address (the coordinator's).
    root_ip: String,
    /// The namespace side's address (the agent's).
    ns_ip: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl NetNs {
    /// Sets one up, or says why it cannot.
    fn new() -> Result<NetNs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        let pid = std::process::id();
        // A /30 in 169.254.0.0/16 by pid, away from 169.254.169.x (cloud metadata).
        let mut block = pid % 16384;
        if (block * 4) >> 8 == 169 {
            block += 64;
        }
        let base = block * 4;
        let addr = |k: u32| format!("169.254.{}.{}", (base + k) >> 8, (base + k) & 255);
        let ns = NetNs {
            name: format!("tandem-test-{pid}"),
            veth: format!("tt{pid}a"),
            root_ip: addr(1),
            ns_ip: addr(2),
        };
        ip(&["netns", "add", &ns.name]).map_err(|e| format!("`ip netns` unavailable: {e}"))?;
        let peer = format!("tt{pid}b");
        let setup = || -> Result<()> {
            ip(&[
                "link", "add", &ns.veth, "type", "veth", "peer", "name", &peer,
            ])?;
            ip(&["link", "set", &peer, "netns", &ns.name])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/30", ns.root_ip),
                "dev",
                &ns.veth,
            ])?;
            ip(&["link", "set", &ns.veth, "up"])?;
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{}/30", ns.ns_ip),
                "dev",
                &peer,
            ])?;
            ip(&["-n", &ns.name, "link", "set", &peer, "up"])?;
            ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
            Ok(())
        };
        setup().map_err(|e| format!("cannot set up a veth pair: {e}"))?;
        Ok(ns)
    }

    /// Cuts (or heals) the link, both ways, from the root side.
    fn cut(&self, on: bool) -> Result<()> {
        ip(&["link", "set", &self.veth, if on { "down" } else { "up" }])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.veth]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A real partition: the job's agent runs in a network namespace, the coordinator listens on
/// the root side of a veth pair, and the link is taken down. Needs root and `ip netns`;
/// skipped (with the reason printed) otherwise.
#[test]
fn a_real_partition_between_network_namespaces_moves_the_job_without_overlap() -> Result<()> {
    let ns = match NetNs::new() {
        Ok(ns) => ns,
        Err(why) => {
            println!("skipped: no network namespace partition test: {why}");
            return Ok(());
        }
    };
    let mut f = Fleet::with_quic("netns", "pool", Some(&format!("{}:0", ns.root_ip)))?;
    // The namespaced agent first, so that the job lands there.
    let dir = f.state_dir("netns-a");
    std::fs::create_dir_all(&dir)?;
    let agent = tandem_tests::bin("tandem-agent");
    let args = [
        "netns",
        "exec",
        &ns.name,
        agent.to_str().context("utf-8")?,
        "run",
        "--state-dir",
        dir.to_str().context("utf-8")?,
        "--coordinator",
        &f.coord.quic,
        "--name",
        "netns-a",
        "--bind-addr",
        &ns.ns_ip,
        "--token",
        &f.token,
        // The writer job writes to the test's dir, which only root can reach.
        "--job-user",
        "root",
    ];
    // `ip netns exec` execs the agent in place: the process is the agent.
    let p = tandem_tests::Proc::spawn(std::path::Path::new("ip"), &args, &dir.join("agent-0.log"))?;
    f.agents.insert("netns-a".into(), p);
    f.wait_ready("netns-a")?;
    let w = f.submit_writer("netns-writer", 0, json!({}))?;
    let first = f.wait_running(&w)?;
    let (old_node, old_token) = f.placement(&first)?;
    check(old_node == "netns-a", || format!("placed on {old_node}"))?;
    f.start_agents(&["netns-b"], &[])?;
    f.coord.wait_restart_grace()?;

    ns.cut(true)?;
    let (moved, took) = f.wait_new_copy(&w, old_token, FAILOVER_BOUND)?;
    println!(
        "netns partition: new copy writing {} ms after the cut",
        took.as_millis()
    );
    let (new_node, new_token) = f.placement(&moved)?;
    check(new_node == "netns-b", || format!("moved to {new_node}"))?;
    handover(&w.out, old_token, new_token, "netns partition")?;
    let why = f.wait_copy_ended(&old_node, &w.id, old_token)?;
    check(why == "fenced", || format!("old copy ended: {why}"))?;

    ns.cut(false)?;
    let healed_ns = now_ns();
    f.wait_ready(&old_node)?;
    println!(
        "netns partition: {old_node} ready again {} ms after healing",
        (now_ns() - healed_ns) / 1_000_000
    );
    holds_for(Duration::from_millis(1500), || {
        let cs = copies(&w.out)?;
        let toks: Vec<u64> = cs.iter().map(|c| c.token).collect();
        check(toks == vec![old_token, new_token], || {
            format!("copies: {cs:?}")
        })
    })?;
    check(copies(&w.out)?[0].last < healed_ns, || {
        "the old copy wrote after healing".into()
    })?;
    Ok(())
}
