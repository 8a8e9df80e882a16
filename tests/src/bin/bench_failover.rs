//! Benchmark: how long a job is gone when its node dies, and proof that it never ran twice.
//!
//! Starts the real coordinator and agents on loopback (a `pool` cluster of 3 nodes, or an
//! `ha_pairs` cluster of 2 nodes with the two-GPU fixture so that they pair), submits a job
//! that appends `"<node> <token> <unix ns>"` to a file every 10 ms, and then, round after
//! round, takes the job's node away:
//! - `crash`: `kill -9` of the node's agent (its per-job supervisor must fence the job);
//! - `hang`: `kill -STOP` of the agent (`kill -CONT` once the job runs elsewhere).
//!
//! Each round measures, from the moment of the kill:
//! - **detection**: until the coordinator declared the node `down` (its own `state_since_ms`),
//!   and until this program saw it, polling the API every 5 ms;
//! - **failover**: until the first line written by the new copy (the job running again);
//! - **gap**: from the old copy's last line to the new copy's first line.
//!
//! and checks that the lines of each fencing token form an interval that ends before the next
//! token's begins (two copies at once would interleave): any overlap is a **violation**, printed
//! with the lines' times. The killed agent is then started again (same state dir, no token) or
//! continued, and the next round waits until it is ready and the job runs steadily.
//!
//! `--traffic-s N` (default 10) also measures one idle node's heartbeat traffic: an extra agent
//! outside the cluster talks to the coordinator through a UDP relay that counts datagrams and
//! bytes each way for N seconds.
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/bench_failover [--runs 20] [--kind crash|hang|all] [--mode pool|ha_pairs]
//!                               [--fast] [--fence-kill-ms N] [--traffic-s 10] [--ignore-term]
//!                               [--containment auto|process-group]
//! ```
//! `--containment process-group` starts the agents without cgroups: beside a run with them, it
//! tells how much of a start the cgroup moves take on this host.
//! `--ignore-term` makes the job ignore SIGTERM, so that a fenced copy lives until the SIGKILL
//! after the fence kill timeout: the overlap check then covers the longest an old copy lives.
//! `--fast` writes `heartbeat_ms = 50` and `lease_ms = 250` into coordinator.toml before
//! `serve`; `--fence-kill-ms` sets `fence_kill_timeout_ms` (default 250), which the coordinator
//! adds to the lease before it may declare a node down. Prints JSON: median, p90 and max.

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tandem_tests::*;

const LONG: Duration = Duration::from_secs(60);
/// How often the API and the job's file are polled during a failover.
const POLL: Duration = Duration::from_millis(5);
/// IPv4 + UDP headers, added to each relayed datagram for the bytes on the wire.
const IP_UDP_HEADER: u64 = 28;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Crash,
    Hang,
    /// The network between the node and the coordinator cut both ways (through a relay).
    Cut,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Crash => "crash",
            Kind::Hang => "hang",
            Kind::Cut => "cut",
        }
    }
}

struct Opts {
    runs: usize,
    kinds: Vec<Kind>,
    ha_pairs: bool,
    fast: bool,
    fence_kill_ms: Option<u64>,
    traffic_s: u64,
    ignore_term: bool,
    /// The agents' `--containment` (their default, `auto`, when not given).
    containment: Option<String>,
}

fn usage() -> String {
    "usage: bench_failover [--runs N] [--kind crash|hang|all] [--mode pool|ha_pairs] [--fast] \
     [--fence-kill-ms N] [--traffic-s N] [--ignore-term] [--containment auto|process-group]"
        .into()
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        runs: 20,
        kinds: vec![Kind::Crash, Kind::Hang, Kind::Cut],
        ha_pairs: false,
        fast: false,
        fence_kill_ms: None,
        traffic_s: 10,
        ignore_term: false,
        containment: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{a} needs a value; {}", usage()))
        };
        match a.as_str() {
            "--runs" => o.runs = value()?.parse().context("--runs")?,
            "--kind" => {
                o.kinds = match value()?.as_str() {
                    "crash" => vec![Kind::Crash],
                    "hang" => vec![Kind::Hang],
                    "cut" => vec![Kind::Cut],
                    "all" => vec![Kind::Crash, Kind::Hang, Kind::Cut],
                    k => bail!("--kind {k}: {}", usage()),
                }
            }
            "--mode" => {
                o.ha_pairs = match value()?.as_str() {
                    "pool" => false,
                    "ha_pairs" => true,
                    m => bail!("--mode {m}: {}", usage()),
                }
            }
            "--fast" => o.fast = true,
            "--ignore-term" => o.ignore_term = true,
            "--fence-kill-ms" => {
                o.fence_kill_ms = Some(value()?.parse().context("--fence-kill-ms")?)
            }
            "--containment" => o.containment = Some(value()?),
            "--traffic-s" => o.traffic_s = value()?.parse().context("--traffic-s")?,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}; {}", usage()),
        }
    }
    ensure!(o.runs > 0, "--runs must be at least 1");
    Ok(o)
}

/// `key = value` in a TOML text: the line replaced, or appended.
fn set_toml(text: &str, key: &str, value: u64) -> String {
    let mut found = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            let k = l.split('=').next().unwrap_or_default().trim();
            if k == key {
                found = true;
                format!("{key} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        out.push(format!("{key} = {value}"));
    }
    out.join("\n") + "\n"
}

/// A TOML integer field's value.
fn toml_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// What one fencing token's copy wrote: on which node, first and last line, how many.
#[derive(Clone, Debug)]
struct Span {
    node: String,
    first: u128,
    last: u128,
    lines: u64,
}

/// The job's output file, read incrementally.
struct Output {
    path: PathBuf,
    offset: u64,
    partial: String,
    spans: BTreeMap<u64, Span>,
}

impl Output {
    fn new(path: PathBuf) -> Output {
        Output {
            path,
            offset: 0,
            partial: String::new(),
            spans: BTreeMap::new(),
        }
    }

    /// Reads what was appended since the last call.
    fn poll(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = String::new();
        let Ok(n) = f.read_to_string(&mut buf) else {
            return;
        };
        self.offset += n as u64;
        self.partial.push_str(&buf);
        let Some(end) = self.partial.rfind('\n') else {
            return;
        };
        let complete: String = self.partial.drain(..=end).collect();
        for l in complete.lines() {
            let mut it = l.split_whitespace();
            let (Some(node), Some(token), Some(ns)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let (Ok(token), Ok(ns)) = (token.parse::<u64>(), ns.parse::<u128>()) else {
                continue;
            };
            let s = self.spans.entry(token).or_insert(Span {
                node: node.to_string(),
                first: ns,
                last: ns,
                lines: 0,
            });
            s.first = s.first.min(ns);
            s.last = s.last.max(ns);
            s.lines += 1;
        }
    }

    /// Pairs of tokens whose copies overlapped in time (each token's lines must end before
    /// the next token's begin).
    fn overlaps(&self) -> Vec<String> {
        let spans: Vec<_> = self.spans.iter().collect();
        let mut bad = Vec::new();
        for (i, (ta, a)) in spans.iter().enumerate() {
            for (tb, b) in &spans[i + 1..] {
                if a.last >= b.first {
                    bad.push(format!(
                        "token {ta} on {} wrote until {} ns, token {tb} on {} from {} ns \
                         ({:.1} ms of overlap)",
                        a.node,
                        a.last,
                        b.node,
                        b.first,
                        (a.last - b.first) as f64 / 1e6
                    ));
                }
            }
        }
        bad
    }
}

/// Counts of the traffic a relay passed each way.
#[derive(Default)]
struct Counters {
    up_pkts: AtomicU64,
    up_bytes: AtomicU64,
    down_pkts: AtomicU64,
    down_bytes: AtomicU64,
}

/// A UDP relay for one client: what comes from the coordinator goes to the last client seen,
/// the rest to the coordinator. Counts both ways.
struct Relay {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(coordinator: SocketAddr) -> Result<Relay> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let addr = sock.local_addr()?;
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st) = (counters.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut client: Option<SocketAddr> = None;
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if from == coordinator {
                    if let Some(to) = client {
                        let _ = sock.send_to(&buf[..n], to);
                        c.down_pkts.fetch_add(1, Ordering::Relaxed);
                        c.down_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                } else {
                    client = Some(from);
                    let _ = sock.send_to(&buf[..n], coordinator);
                    c.up_pkts.fetch_add(1, Ordering::Relaxed);
                    c.up_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        Ok(Relay {
            addr,
            counters,
            stop,
            thread: Some(thread),
        })
    }

    fn snapshot(&self) -> [u64; 4] {
        let c = &self.counters;
        [
            c.up_pkts.load(Ordering::Relaxed),
            c.up_bytes.load(Ordering::Relaxed),
            c.down_pkts.load(Ordering::Relaxed),
            c.down_bytes.load(Ordering::Relaxed),
        ]
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The payload sizes of a heartbeat and its ack as the codec encodes them (typical values).
fn datagram_sizes() -> Result<(usize, usize)> {
    use tandem_common::proto::{AgentDatagram, CoordDatagram, Heartbeat, LoadSummary};
    let beat = AgentDatagram::Heartbeat(Heartbeat {
        seq: 100_000,
        last_rtt_us: 350,
        load: LoadSummary {
            cpu_centi_percent: 1234,
            memory_available_mib: 20_000,
            jobs_running: 3,
        },
    });
    let ack = CoordDatagram::HeartbeatAck {
        seq: 100_000,
        lease_ms: 1000,
    };
    Ok((
        tandem_common::codec::encode(&beat)?.len(),
        tandem_common::codec::encode(&ack)?.len(),
    ))
}

/// One idle node's traffic through a counting relay, over `secs` seconds.
fn traffic(coord: &Coordinator, dir: &Path, secs: u64, heartbeat_ms: u64) -> Result<Value> {
    let relay = Relay::start(coord.quic.parse().context("QUIC address")?)?;
    let token = coord.api.token(1)?;
    let name = "bench-traffic";
    let mut agent = start_agent(
        &relay.addr.to_string(),
        &dir.join(name),
        Some(&token),
        name,
        &[],
    )?;
    wait_for(LONG, "the relayed agent ready", || {
        (coord.api.state(name).as_deref() == Some("ready")).then_some(())
    })?;
    // Past registration and the first hardware report.
    std::thread::sleep(Duration::from_secs(2));
    let a = relay.snapshot();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let b = relay.snapshot();
    let el = t0.elapsed().as_secs_f64();
    agent.kill9();
    drop(relay);
    // Out of the way before the rounds: gone down, then removed.
    wait_for(LONG, "the relayed agent's node down", || {
        (coord.api.state(name).as_deref() == Some("down")).then_some(())
    })?;
    let _ = coord.api.send("DELETE", &format!("/v1/nodes/{name}"), None);
    let d = |i: usize| (b[i] - a[i]) as f64 / el;
    let (beat, ack) = datagram_sizes()?;
    let beats_per_s = 1000.0 / heartbeat_ms as f64;
    Ok(json!({
        "seconds": (el * 10.0).round() / 10.0,
        "up": {"datagrams_per_s": r1(d(0)), "udp_payload_bytes_per_s": r1(d(1)),
               "ip_bytes_per_s": r1(d(1) + d(0) * IP_UDP_HEADER as f64)},
        "down": {"datagrams_per_s": r1(d(2)), "udp_payload_bytes_per_s": r1(d(3)),
                 "ip_bytes_per_s": r1(d(3) + d(2) * IP_UDP_HEADER as f64)},
        "codec_payload_bytes": {"heartbeat": beat, "ack": ack},
        "beats_per_s": beats_per_s,
        "ip_bytes_per_beat_and_ack": r1((d(1) + d(3) + (d(0) + d(2)) * IP_UDP_HEADER as f64) / beats_per_s),
    }))
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Median, p90 and max (nearest rank) of `v`, rounded to 0.1.
fn stats(v: &[f64]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| r1(s[((s.len() as f64 - 1.0) * p).round() as usize]);
    json!({"median": at(0.5), "p90": at(0.9), "max": at(1.0), "min": at(0.0)})
}

/// The bench's fleet: the coordinator, the agents by name and what they were started with.
struct Bench {
    coord: Coordinator,
    dir: PathBuf,
    names: Vec<String>,
    agents: BTreeMap<String, Proc>,
    /// Each agent reaches the coordinator through a relay of its own, so its link can be cut.
    relays: BTreeMap<String, tandem_tests::relay::Relay>,
    extra: Vec<String>,
    ha_pairs: bool,
    job: String,
    out: Output,
}

impl Bench {
    fn api(&self) -> &Api {
        &self.coord.api
    }

    fn start_agent(&mut self, name: &str, token: Option<&str>) -> Result<()> {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        if !self.relays.contains_key(name) {
            self.relays.insert(
                name.to_string(),
                tandem_tests::relay::Relay::start(&self.coord.quic)?,
            );
        }
        let via = self.relays[name].addr();
        let p = start_agent(&via, &self.dir.join(name), token, name, &extra)?;
        self.agents.insert(name.to_string(), p);
        Ok(())
    }

    fn ready(&self, name: &str) -> bool {
        self.api().state(name).as_deref() == Some("ready")
    }

    fn node_name(&self, id: &str) -> Result<String> {
        Ok(self.api().node(id).context("node")?["name"]
            .as_str()
            .context("name")?
            .to_string())
    }

    /// Waits until every node is ready, the job runs and its current copy writes, and (in
    /// `ha_pairs`) the pair is healthy again. Returns the job's node name and token.
    fn settle(&mut self) -> Result<(String, u64)> {
        let names = self.names.clone();
        wait_for(LONG, "every node ready", || {
            names.iter().all(|n| self.ready(n)).then_some(())
        })?;
        if self.ha_pairs {
            wait_for(LONG, "the pair healthy", || {
                let v = self.api().get("/v1/clusters/bench/pairs").ok()?;
                let p = v["pairs"].as_array()?;
                (p.len() == 1 && p[0]["state"] == "healthy").then_some(())
            })?;
        }
        let job = self.job.clone();
        let api = self.api().clone();
        let (node, token) = wait_for(LONG, "the job running", || {
            let j = api.get(&format!("/v1/jobs/{job}")).ok()?;
            (j["state"] == "running").then_some(())?;
            Some((
                j["node"].as_str()?.to_string(),
                j["fencing_token"].as_u64()?,
            ))
        })?;
        let name = self.node_name(&node)?;
        // Its copy has written a few lines, the last one recent.
        wait_for(LONG, "the job's current copy writing", || {
            self.out.poll();
            let s = self.out.spans.get(&token)?;
            (s.lines >= 5 && unix_ns().saturating_sub(s.last) < 200_000_000).then_some(())
        })?;
        Ok((name, token))
    }
}

/// What one round measured.
struct Round {
    detect_ms: f64,
    detect_seen_ms: f64,
    failover_ms: f64,
    gap_ms: f64,
    violations: Vec<String>,
}

fn round(b: &mut Bench, kind: Kind, i: usize) -> Result<Round> {
    let (name, old_token) = b.settle()?;
    // Land the kill at a varying phase of the beat interval.
    std::thread::sleep(Duration::from_millis(300 + (i as u64 * 37) % 200));
    let kill_ns = unix_ns();
    let t0 = Instant::now();
    {
        let agent = b.agents.get_mut(&name).context("agent")?;
        match kind {
            Kind::Crash => agent.kill9(),
            Kind::Hang => agent.signal(libc::SIGSTOP),
            Kind::Cut => b.relays.get(&name).context("relay")?.cut(true),
        }
    }
    let api = b.api().clone();
    let mut down: Option<(f64, u64)> = None;
    let mut first_new: Option<(u64, u128)> = None;
    let deadline = t0 + LONG;
    while down.is_none() || first_new.is_none() {
        ensure!(
            Instant::now() < deadline,
            "round {i} ({}): no failover within {LONG:?} (down: {down:?}, new copy: {first_new:?})",
            kind.as_str()
        );
        if down.is_none() {
            if let Some(n) = api.node(&name) {
                if n["state"] == "down" {
                    let since = n["state_since_ms"].as_u64().context("state_since_ms")?;
                    down = Some((t0.elapsed().as_secs_f64() * 1000.0, since));
                }
            }
        }
        if first_new.is_none() {
            b.out.poll();
            first_new = b
                .out
                .spans
                .range(old_token + 1..)
                .next()
                .map(|(t, s)| (*t, s.first));
        }
        std::thread::sleep(POLL);
    }
    let (detect_seen_ms, since_ms) = down.context("down")?;
    let (new_token, new_first) = first_new.context("new copy")?;
    // Let the new copy run a little, then bring the old node back.
    std::thread::sleep(Duration::from_millis(300));
    match kind {
        Kind::Crash => b.start_agent(&name, None)?,
        Kind::Hang => b.agents.get(&name).context("agent")?.signal(libc::SIGCONT),
        Kind::Cut => b.relays.get(&name).context("relay")?.cut(false),
    }
    let (_, token_now) = b.settle()?;
    // A copy of the old node that came back to life would write now: look again.
    std::thread::sleep(Duration::from_millis(200));
    b.out.poll();
    let old = b
        .out
        .spans
        .get(&old_token)
        .context("old copy's lines")?
        .clone();
    let new = b
        .out
        .spans
        .get(&new_token)
        .context("new copy's lines")?
        .clone();
    let mut violations = b
        .out
        .overlaps()
        .into_iter()
        .filter(|v| {
            v.contains(&format!("token {old_token} ")) || v.contains(&format!("token {new_token} "))
        })
        .collect::<Vec<_>>();
    if token_now != new_token {
        eprintln!("  note: the job moved again after the node came back (token {new_token} -> {token_now})");
    }
    if new.node == name {
        violations.push(format!(
            "the new copy (token {new_token}) ran on the dead node {name}"
        ));
    }
    let r = Round {
        detect_ms: since_ms as f64 - kill_ns as f64 / 1e6,
        detect_seen_ms,
        failover_ms: (new_first as f64 - kill_ns as f64) / 1e6,
        gap_ms: (new.first as f64 - old.last as f64) / 1e6,
        violations,
    };
    eprintln!(
        "{} {i:>2}: {name} (token {old_token}) -> {} (token {new_token}): down after {:.0} ms \
         (seen {:.0} ms), running again after {:.0} ms, gap {:.0} ms{}",
        kind.as_str(),
        new.node,
        r.detect_ms,
        r.detect_seen_ms,
        r.failover_ms,
        r.gap_ms,
        if r.violations.is_empty() {
            String::new()
        } else {
            format!(", VIOLATIONS: {:?}", r.violations)
        }
    );
    Ok(r)
}

fn main() -> Result<()> {
    let o = opts()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let (fast, fence_kill_ms) = (o.fast, o.fence_kill_ms);
    let coord = Coordinator::start_with(&dir.join("coord"), None, |t| {
        let mut t = t.to_string();
        if fast {
            t = set_toml(&t, "heartbeat_ms", 50);
            t = set_toml(&t, "lease_ms", 250);
        }
        if let Some(ms) = fence_kill_ms {
            t = set_toml(&t, "fence_kill_timeout_ms", ms);
        }
        t
    })?;
    let toml = std::fs::read_to_string(dir.join("coord/coordinator.toml"))?;
    let field = |k: &str| toml_value(&toml, k).with_context(|| format!("{k} in coordinator.toml"));
    let (hb, lease, kill) = (
        field("heartbeat_ms")?,
        field("lease_ms")?,
        field("fence_kill_timeout_ms")?,
    );
    // The coordinator's formula (config.rs): fence_grace = kill timeout + lease/20 + 50 ms.
    let grace = kill + lease / 20 + 50;
    let mode = if o.ha_pairs { "ha_pairs" } else { "pool" };
    eprintln!(
        "heartbeat {hb} ms, lease {lease} ms, fence kill timeout {kill} ms (fence grace {grace} ms), \
         {mode}, {} runs of {:?}",
        o.runs, o.kinds
    );
    coord
        .api
        .post("/v1/clusters", &json!({"name": "bench", "mode": mode}))?;
    let traffic = if o.traffic_s > 0 {
        coord.wait_restart_grace()?;
        let t = traffic(&coord, &dir, o.traffic_s, hb)?;
        eprintln!("traffic of one idle node: {t}");
        t
    } else {
        Value::Null
    };
    let n_nodes = if o.ha_pairs { 2 } else { 3 };
    let names: Vec<String> = ["bench-a", "bench-b", "bench-c"][..n_nodes]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut extra = if o.ha_pairs {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gpus-2x-l4.json");
        vec!["--gpu-fixture".to_string(), f.display().to_string()]
    } else {
        Vec::new()
    };
    if let Some(c) = &o.containment {
        extra.extend(["--containment".to_string(), c.clone()]);
    }
    let token = coord.api.post(
        "/v1/join-tokens",
        &json!({"ttl_s": 600, "uses": n_nodes, "cluster": "bench"}),
    )?["token"]
        .as_str()
        .context("token")?
        .to_string();
    let out_path = dir.join("out.txt");
    let mut b = Bench {
        coord,
        dir: dir.clone(),
        names: names.clone(),
        agents: BTreeMap::new(),
        relays: BTreeMap::new(),
        extra,
        ha_pairs: o.ha_pairs,
        job: String::new(),
        out: Output::new(out_path.clone()),
    };
    for n in &names {
        b.start_agent(n, Some(&token))?;
    }
    wait_for(LONG, "every node ready", || {
        names.iter().all(|n| b.ready(n)).then_some(())
    })?;
    b.coord.wait_restart_grace()?;
    // With --ignore-term the writer ignores SIGTERM: a fenced copy lives until the SIGKILL
    // that follows after the fence kill timeout, the latest an old copy can live.
    let trap = if o.ignore_term { "trap '' TERM; " } else { "" };
    let script = format!(
        "{trap}while true; do echo \"$TANDEM_NODE_NAME $TANDEM_FENCING_TOKEN $(date +%s%N)\" >> {}; sleep 0.01; done",
        out_path.display()
    );
    let job = b.api().post(
        "/v1/jobs",
        &json!({"name": "bench-writer", "cluster": "bench", "command": ["/bin/sh", "-c", script],
                "resources": {"cpu_millis": 100, "memory_bytes": 67108864, "gpus": 0},
                "restart": "always", "max_restarts": 10000}),
    )?;
    b.job = job["job"]["id"].as_str().context("job id")?.to_string();

    let mut results = serde_json::Map::new();
    let mut total_violations = 0;
    for &kind in &o.kinds {
        let mut rounds = Vec::new();
        for i in 0..o.runs {
            rounds.push(round(&mut b, kind, i)?);
        }
        let col = |f: fn(&Round) -> f64| rounds.iter().map(f).collect::<Vec<_>>();
        let violations: Vec<String> = rounds.iter().flat_map(|r| r.violations.clone()).collect();
        total_violations += violations.len();
        results.insert(
            kind.as_str().into(),
            json!({
                "runs": rounds.len(),
                "detection_ms": stats(&col(|r| r.detect_ms)),
                "detection_seen_by_polling_ms": stats(&col(|r| r.detect_seen_ms)),
                "failover_ms": stats(&col(|r| r.failover_ms)),
                "gap_last_old_line_to_first_new_line_ms": stats(&col(|r| r.gap_ms)),
                "violations": violations.len(),
                "violation_details": violations,
            }),
        );
    }
    // False positives: nodes declared down that were not killed, and job restarts (the
    // writer never exits: a restart means its copy was fenced or died under a live node).
    let events = b.api().events()?;
    let downs: usize = names
        .iter()
        .map(|n| {
            let down = format!("node {n} is down");
            events
                .iter()
                .filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with(&down)))
                .count()
        })
        .sum();
    let kills = o.runs * o.kinds.len();
    let j = b.api().get(&format!("/v1/jobs/{}", b.job))?;
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for h in j["history"].as_array().into_iter().flatten() {
        *reasons
            .entry(h["end_reason"].as_str().unwrap_or("-").to_string())
            .or_default() += 1;
    }
    // Stop the job (its copy ends with the run), then check the whole file: every token's
    // lines end before the next token's begin.
    b.api()
        .send("DELETE", &format!("/v1/jobs/{}", b.job), None)?;
    let api = b.api().clone();
    let job = b.job.clone();
    wait_for(LONG, "the job stopped", || {
        let j = api.get(&format!("/v1/jobs/{job}")).ok()?;
        (j["state"] == "stopped").then_some(())
    })?;
    b.out.poll();
    let all = b.out.overlaps();
    let s = json!({
        "settings": {"mode": mode, "nodes": n_nodes, "heartbeat_ms": hb, "lease_ms": lease,
                     "fence_kill_timeout_ms": kill, "fence_grace_ms": grace,
                     "down_after_silence_ms": lease + grace,
                     "writer_ignores_sigterm": o.ignore_term},
        "results": results,
        "tokens": b.out.spans.len(),
        "false_positives": {"nodes_killed": kills, "node_downs_recorded": downs,
                            "downs_of_nodes_not_killed": downs.saturating_sub(kills),
                            "job_restarts": j["restarts"], "placement_end_reasons": reasons},
        "overlaps_in_whole_file": all,
        "heartbeat_traffic_one_idle_node": traffic,
    });
    println!("{}", serde_json::to_string_pretty(&s)?);
    if total_violations > 0 || !all.is_empty() {
        bail!("two copies of the job ran at once: {total_violations} violations, {all:?}");
    }
    Ok(())
}
