//! `tandem-sim`: runs the deterministic simulation over many seeds, or replays one.
//!
//! `tandem-sim --seeds 100000` is the long soak; `tandem-sim --seed N --trace` replays seed N
//! step by step.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Deterministic simulation of a Tandem fleet")]
struct Args {
    /// Replay this one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// How many seeds to run.
    #[arg(long, default_value_t = 10_000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Print every step of a replayed seed.
    #[arg(long)]
    trace: bool,
    /// Deliberate bug: no fence grace.
    #[arg(long)]
    no_fence_grace: bool,
    /// Deliberate bug: the store acknowledges flushes it did not do.
    #[arg(long)]
    lying_flush: bool,
    /// Deliberate bug: commands and answers leave before their batches are durable.
    #[arg(long)]
    send_before_durable: bool,
    /// Deliberate bug: a restarted coordinator ignores its planned stop's hold.
    #[arg(long)]
    forget_restart_hold: bool,
    /// Deliberate bug: a planned agent stop's hand-over lease outlives the node's hold.
    #[arg(long)]
    handover_lease_past_hold: bool,
    /// Deliberate bug: a coordinator restarted with new fence parameters forgets the old ones.
    #[arg(long)]
    forget_old_fence_params: bool,
    /// How far host clocks may drift, in millionths (default 20000: 2%).
    #[arg(long)]
    max_drift_ppm: Option<i64>,
}

fn main() {
    let a = Args::parse();
    // `RUST_LOG=tandem_coordinator=debug` shows the coordinator's own log lines of a replay.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .without_time()
            .try_init();
    }
    let knobs = tandem_sim::Knobs {
        no_fence_grace: a.no_fence_grace,
        lying_flush: a.lying_flush,
        send_before_durable: a.send_before_durable,
        forget_restart_hold: a.forget_restart_hold,
        handover_lease_past_hold: a.handover_lease_past_hold,
        max_drift_ppm: a.max_drift_ppm,
        forget_old_fence_params: a.forget_old_fence_params,
    };
    if let Some(seed) = a.seed {
        match tandem_sim::run(seed, knobs, a.trace) {
            Ok(r) => {
                for line in &r.trace {
                    println!("  {line}");
                }
                println!(
                    "seed {seed}: ok ({} events, {} agents, {} jobs, {} copies, {} faults, {} coordinator crashes, {} ms)",
                    r.events, r.agents, r.jobs, r.copies_started, r.faults, r.coordinator_crashes, r.sim_ms
                );
            }
            Err(v) => {
                eprintln!("{v}");
                std::process::exit(1);
            }
        }
        return;
    }
    let started = std::time::Instant::now();
    let (mut events, mut copies, mut failed) = (0u64, 0u64, 0u64);
    let (mut readopted, mut handovers, mut fence_changes, mut moves) = (0u64, 0u64, 0u64, 0u64);
    let (mut reused, mut taints) = (0u64, 0u64);
    for seed in a.from..a.from + a.seeds {
        match tandem_sim::run(seed, knobs, false) {
            Ok(r) => {
                events += r.events;
                copies += r.copies_started;
                readopted += r.readopted;
                handovers += r.agent_handovers;
                fence_changes += r.fence_changes;
                moves += r.node_moves;
                reused += r.reused_names;
                taints += r.taint_edits;
            }
            Err(v) => {
                failed += 1;
                eprintln!("{v}");
            }
        }
    }
    println!(
        "{} seeds from {} in {:.1} s: {failed} failed, {events} events, {copies} job copies, {handovers} agent hand-overs, {readopted} copies re-adopted after an agent restart, {fence_changes} restarts with new fence parameters, {moves} nodes moved between clusters, {reused} copies of jobs submitted again under a stopped job's name, {taints} taint edits",
        a.seeds,
        a.from,
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
