//! `tandem-swarm`: a load generator that runs many simulated agents from one process over the
//! real protocol.
//!
//! Every simulated agent runs the agent's own code where the agent's logic is (the
//! `tandem_agent::link::handshake` steps and `tandem_agent::lease::Lease`): it makes its own key
//! and CSR, joins with the token over a connection that pins the coordinator's CA
//! (`handshake::join`), registers with the certificate it got (`handshake::register`, the
//! agent's `Hello` with a hardware report: a GPU fixture plus host facts, with small per-node
//! variations), sorts refusals into retry and final as the agent does, then beats on QUIC
//! datagrams and holds its lease in the agent's `Lease`: each acknowledged beat extends it to
//! *send time* + `lease_ms`. It answers `Ping`, refuses `StartJob`, re-registers with the
//! agent's `Backoff` when its connection is lost (or after the agent's silence limit), and says
//! `Goodbye` at the end. What is its own is the session loop (it runs no jobs), the join key
//! kept in memory instead of the state dir, and the statistics.
//!
//! Light by construction: a few UDP sockets (`--endpoints`, each one quinn endpoint with large
//! socket buffers) carry every connection; an agent is one task with a few hundred bytes of
//! state of its own; round trips go into one shared log-scale histogram of atomics.
//!
//! Phases: agents are launched at `--ramp-per-s`, at most `--max-concurrent-joins` of them in a
//! join or registration handshake at once. Once every agent has registered or given up, the
//! steady phase lasts `--duration-s`. Then every agent says `Goodbye` (unless `--no-goodbye`)
//! and one JSON summary is printed on stdout. Progress lines and first occurrences of failure
//! reasons go to stderr. Ctrl-C (or SIGTERM) ends the run early, with the summary.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! tandemctl tokens create --uses 5000 --ttl-s 3600      # prints the token
//! target/release/tandem-swarm --coordinator 127.0.0.1:7443 --token-file swarm.token \
//!     --agents 5000 --duration-s 60 --watch-pid "$(pgrep -f 'tandem-coordinator serve')"
//! ```

// The summary is one large `json!` object.
#![recursion_limit = "256"]

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tandem_agent::lease::{AckOutcome, Lease};
use tandem_agent::link::handshake::{self, Backoff, Failure, Registered};
use tandem_common::codec::{self, CodecError, DEFAULT_MAX_FRAME};
use tandem_common::hardware::*;
use tandem_common::ids::NodeId;
use tandem_common::pki::NodeKey;
use tandem_common::proto::*;
use tandem_common::tls;
use tandem_common::token::JoinToken;
use tandem_common::wire::CloseCode;
use tokio::sync::{watch, Semaphore};

/// Distinct reasons kept per table in the summary; the rest are counted together.
const MAX_REASONS: usize = 50;
/// The GPU fixture used unless `--gpu-fixture` or `--no-gpus` is given.
const DEFAULT_FIXTURE: &str = include_str!("../../fixtures/gpus-8x-h100.json");

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tandem-swarm",
    about = "Load generator: N simulated Tandem agents over the real protocol (QUIC, mutual TLS, \
             join with CSR, Hello, datagram heartbeats); prints a JSON summary on stdout"
)]
struct Args {
    /// The coordinator's QUIC address, HOST:PORT.
    #[arg(long)]
    coordinator: String,
    /// A join token with at least --agents uses left (`tandemctl tokens create --uses N`).
    #[arg(long, env = "TANDEM_SWARM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the join token.
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// How many agents.
    #[arg(long, default_value_t = 100)]
    agents: u32,
    /// Beat this often (default: what the coordinator's `Welcome` says).
    #[arg(long)]
    heartbeat_ms: Option<u32>,
    /// How long the steady phase lasts, counted from when every agent has registered (or given
    /// up).
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    /// Seconds between the end of the ramp and the start of the steady phase, so that the
    /// steady figures do not include the coordinator draining the join storm (its totals still
    /// count everything).
    #[arg(long, default_value_t = 0)]
    settle_s: u64,
    /// Agents launched per second.
    #[arg(long, default_value_t = 500.0)]
    ramp_per_s: f64,
    /// Join and registration handshakes in flight at most.
    #[arg(long, default_value_t = 64)]
    max_concurrent_joins: usize,
    /// UDP sockets (one quinn endpoint each) the connections are spread over
    /// [default: min(4, agents)].
    #[arg(long)]
    endpoints: Option<usize>,
    /// The local IP to send from [default: unspecified, of the coordinator's family].
    #[arg(long)]
    bind_addr: Option<IpAddr>,
    /// Receive and send buffer of each socket, bytes (forced past net.core.[rw]mem_max when
    /// running with CAP_NET_ADMIN).
    #[arg(long, default_value_t = 16 << 20)]
    socket_buffer_bytes: usize,
    /// An agent that has not registered this long after its launch gives up (a failed join).
    #[arg(long, default_value_t = 120)]
    join_timeout_s: u64,
    /// End without `Goodbye`: connections are just closed, and the nodes go down on their own.
    #[arg(long)]
    no_goodbye: bool,
    /// How long an agent waits for the coordinator to close its connection after `Goodbye`.
    #[arg(long, default_value_t = 10)]
    goodbye_timeout_s: u64,
    /// Run id in node names, `swarm-<run>-<i>` (1-16 lowercase letters or digits) [default:
    /// random].
    #[arg(long)]
    run_id: Option<String>,
    /// GPU fixture (a JSON list of GPUs, as `--gpu-fixture` of the agent takes) [default: the
    /// repository's tests/fixtures/gpus-8x-h100.json, built in].
    #[arg(long, conflicts_with = "no_gpus")]
    gpu_fixture: Option<PathBuf>,
    /// Report no GPUs.
    #[arg(long)]
    no_gpus: bool,
    /// Every this many seconds each agent sends a `HardwareUpdate` (GPU temperatures move by
    /// 6 °C, past the delta's noise rule) [default: 0, never].
    #[arg(long, default_value_t = 0)]
    hardware_update_s: u64,
    /// Every this many seconds each agent sends a usage report (protocol 6) of 5 running
    /// copies, as an agent does every 10 s by default [default: 0, never].
    #[arg(long, default_value_t = 0)]
    usage_s: u64,
    /// A progress line on stderr this often (0: none).
    #[arg(long, default_value_t = 5)]
    progress_s: u64,
    /// Also sample this process's CPU and memory (e.g. the coordinator's pid) for the summary.
    #[arg(long)]
    watch_pid: Option<i32>,
}

// ---------------------------------------------------------------------------------------------
// Shared statistics.

/// Microseconds since the swarm started.
fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// A log-scale histogram in atomics: exact below 32, then 16 buckets per power of two (at most
/// ~3 % off). Values are microseconds.
struct Hist {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    max: AtomicU64,
}

impl Hist {
    fn new() -> Hist {
        Hist {
            buckets: (0..16 + 60 * 16).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    fn index(v: u64) -> usize {
        if v < 16 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize;
        16 + (e - 4) * 16 + ((v >> (e - 4)) & 15) as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        if i < 16 {
            return i as u64;
        }
        let (e, m) = ((i - 16) / 16 + 4, ((i - 16) % 16) as u64);
        let width = 1u64 << (e - 4);
        ((16 + m) << (e - 4)) + width / 2
    }

    fn record(&self, v: u64) {
        self.buckets[Self::index(v)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.max.fetch_max(v, Relaxed);
    }

    fn quantile(&self, q: f64) -> Option<u64> {
        let n = self.count.load(Relaxed);
        if n == 0 {
            return None;
        }
        let target = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Relaxed);
            if seen >= target {
                return Some(Self::value(i).min(self.max.load(Relaxed)));
            }
        }
        Some(self.max.load(Relaxed))
    }

    /// `{count, p50, p90, p99, max}` in milliseconds.
    fn summary_ms(&self) -> Value {
        let ms = |v: Option<u64>| v.map(|us| (us as f64 / 1000.0 * 1000.0).round() / 1000.0);
        json!({
            "count": self.count.load(Relaxed),
            "p50": ms(self.quantile(0.50)),
            "p90": ms(self.quantile(0.90)),
            "p99": ms(self.quantile(0.99)),
            "max": ms((self.count.load(Relaxed) > 0).then(|| self.max.load(Relaxed))),
        })
    }
}

/// Reasons with counts, grouped after [`normalise`]; the first of each kind is logged.
#[derive(Default)]
struct Reasons(Mutex<BTreeMap<String, u64>>);

impl Reasons {
    fn add(&self, table: &str, reason: &str, name: &str) {
        let key = normalise(reason, name);
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&key) {
            *n += 1;
            return;
        }
        if m.len() >= MAX_REASONS {
            *m.entry("(other reasons)".into()).or_default() += 1;
            return;
        }
        eprintln!("tandem-swarm: {table}: {key}");
        m.insert(key, 1);
    }

    fn json(&self) -> Value {
        json!(*self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn total(&self) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }
}

/// Makes reasons of different agents comparable: the agent's name becomes `<name>`, node ids
/// `n-<id>`, and runs of digits `#`.
fn normalise(reason: &str, name: &str) -> String {
    let s = if name.is_empty() {
        reason.to_string()
    } else {
        reason.replace(name, "<name>")
    };
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"n-")
            && b.len() >= i + 18
            && b[i + 2..i + 18]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        {
            out.push_str("n-<id>");
            i += 18;
        } else if b[i].is_ascii_digit() {
            out.push('#');
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        } else {
            let c = s[i..].chars().next().unwrap_or('?');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[derive(Default)]
struct Counters {
    launched: AtomicU64,
    joined: AtomicU64,
    registered: AtomicU64,
    live: AtomicU64,
    failed: AtomicU64,
    join_retries: AtomicU64,
    disconnects: AtomicU64,
    reconnects: AtomicU64,
    reconnect_retries: AtomicU64,
    lost: AtomicU64,
    declared_down: AtomicU64,
    heartbeats_sent: AtomicU64,
    acks_received: AtomicU64,
    acks_ignored: AtomicU64,
    lease_expiries: AtomicU64,
    leases_revoked: AtomicU64,
    pings: AtomicU64,
    jobs_refused: AtomicU64,
    hardware_updates: AtomicU64,
    usage_reports: AtomicU64,
    goodbyes_sent: AtomicU64,
    goodbyes_confirmed: AtomicU64,
    /// When the latest agent got its certificate / registered the first time (µs since start).
    last_joined_us: AtomicU64,
    last_registered_us: AtomicU64,
    /// The longest loop lag since the last progress line, µs.
    lag_window_max_us: AtomicU64,
}

struct Stats {
    c: Counters,
    rtt: Hist,
    /// Round trips of the steady phase only.
    rtt_steady: Hist,
    /// Set when the steady phase begins.
    steady: std::sync::atomic::AtomicBool,
    join_latency: Hist,
    /// How late the swarm's own 100 ms ticker fires: its scheduling stalls, which delay every
    /// simulated agent at once (a fleet-wide hiccup no real fleet has).
    loop_lag: Hist,
    failed: Reasons,
    retries: Reasons,
    disconnects: Reasons,
    reconnect_failures: Reasons,
    lost: Reasons,
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Relaxed);
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

// ---------------------------------------------------------------------------------------------
// The hardware fixture.

/// splitmix64: a cheap deterministic hash for per-node variations.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const GIB: u64 = 1 << 30;

/// Builds each node's report from the fixture's GPUs and a made-up host, varied by node index.
struct Hardware {
    gpus: Vec<GpuInfo>,
    source: Option<String>,
}

impl Hardware {
    fn load(args: &Args) -> Result<Hardware> {
        if args.no_gpus {
            return Ok(Hardware {
                gpus: Vec::new(),
                source: None,
            });
        }
        let (text, source) = match &args.gpu_fixture {
            Some(p) => (
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
                p.display().to_string(),
            ),
            None => (
                DEFAULT_FIXTURE.to_string(),
                "tests/fixtures/gpus-8x-h100.json (built in)".to_string(),
            ),
        };
        let mut gpus: Vec<GpuInfo> =
            serde_json::from_str(&text).with_context(|| format!("parsing {source}"))?;
        // As the agent's fixture loader does: health is the file's, merged with the readings'.
        for g in &mut gpus {
            let implied = g.readings_health();
            g.health.merge(implied);
        }
        Ok(Hardware {
            gpus,
            source: Some(source),
        })
    }

    fn memory_total(i: u32) -> u64 {
        // 2 TiB of DIMMs: MemTotal a few GiB below, varying a little (same memory class).
        2 * 1024 * GIB - 9 * GIB - mix(i.into(), 1) % (4 * GIB)
    }

    /// The node's GPUs; `phase` moves temperatures past the delta's noise rule.
    fn gpus(&self, i: u32, phase: u32) -> Vec<GpuInfo> {
        self.gpus
            .iter()
            .map(|g| {
                let mut g = g.clone();
                let h = mix(i.into(), 100 + u64::from(g.index));
                let tail = (u64::from(i) << 8) | u64::from(g.index & 0xff);
                g.uuid = match g.uuid.len() {
                    n if n > 12 => format!("{}{:012x}", &g.uuid[..n - 12], tail),
                    _ => format!("GPU-swarm-{i}-{}", g.index),
                };
                g.serial = Some(format!("SWRM{i:08}{}", g.index));
                g.temperature_c = Some(30 + (h % 8) as u32 + 6 * (phase % 2));
                g.power_draw_mw = g.power_draw_mw.map(|p| p + (h >> 8) as u32 % 20_000);
                g
            })
            .collect()
    }

    fn report(&self, i: u32, name: &str) -> HardwareReport {
        let h = mix(i.into(), 0);
        let total = Self::memory_total(i);
        let available = total / 100 * (60 + h % 35);
        let uptime_s = 3600 + h % 2_000_000;
        let boot = tandem_common::time::unix_ms() / 1000 - uptime_s;
        let mac = format!(
            "02:5a:{:02x}:{:02x}:{:02x}:{:02x}",
            (i >> 24) & 0xff,
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        );
        HardwareReport {
            hostname: name.to_string(),
            os: OsInfo {
                name: Some("Ubuntu".into()),
                version: Some("24.04".into()),
                kernel: Some("6.8.0-1024-nvidia".into()),
                arch: "x86_64".into(),
                uptime_s,
                boot_time_unix: boot,
                load_avg: LoadAvg {
                    one: (h % 800) as f64 / 100.0,
                    five: (h % 700) as f64 / 100.0,
                    fifteen: (h % 600) as f64 / 100.0,
                },
            },
            cpu: CpuInfo {
                brand: "AMD EPYC 9654 96-Core Processor".into(),
                vendor: "AuthenticAMD".into(),
                logical_cores: 192,
                physical_cores: Some(96),
                frequency_mhz: 2400 + (h >> 16) % 1300,
                usage_percent: ((h >> 24) % 4000) as f32 / 100.0,
            },
            memory: MemoryInfo {
                total_bytes: total,
                available_bytes: available,
                used_bytes: total - available,
                swap_total_bytes: 0,
                swap_used_bytes: 0,
            },
            disks: vec![
                DiskInfo {
                    name: "/dev/nvme0n1p2".into(),
                    mount_point: "/".into(),
                    file_system: "ext4".into(),
                    kind: DiskKind::Ssd,
                    total_bytes: 1_888 * GIB,
                    available_bytes: (1_000 + (h >> 32) % 800) * GIB,
                    read_only: false,
                },
                DiskInfo {
                    name: "/dev/md0".into(),
                    mount_point: "/scratch".into(),
                    file_system: "xfs".into(),
                    kind: DiskKind::Ssd,
                    total_bytes: 28_000 * GIB,
                    available_bytes: (5_000 + (h >> 40) % 20_000) * GIB,
                    read_only: false,
                },
            ],
            network: vec![NetworkInterface {
                name: "eth0".into(),
                mac,
                addresses: vec![format!(
                    "10.{}.{}.{}/8",
                    (i >> 16) & 0xff,
                    (i >> 8) & 0xff,
                    i & 0xff
                )],
                mtu: 9000,
                link_speed_mbps: Some(100_000),
                rx_bytes: h % (1 << 40),
                tx_bytes: (h >> 3) % (1 << 40),
            }],
            dmi: DmiInfo {
                product_name: Some("PowerEdge XE9680".into()),
                serial: Some(format!("SWRM{i:08}")),
            },
            gpus: self.gpus(i, 0),
            nvml: match &self.source {
                Some(src) => NvmlInfo {
                    available: true,
                    status: NvmlStatus::Fixture,
                    reason: Some(format!("GPU readings from fixture {src} (tandem-swarm)")),
                    ..Default::default()
                },
                None => NvmlInfo {
                    available: false,
                    status: NvmlStatus::Unavailable,
                    reason: Some("tandem-swarm --no-gpus".into()),
                    ..Default::default()
                },
            },
        }
    }

    fn load_summary(i: u32, seq: u64) -> LoadSummary {
        let h = mix(i.into(), seq / 16);
        LoadSummary {
            cpu_centi_percent: (h % 4000) as u16,
            memory_available_mib: ((Self::memory_total(i) / 100 * (60 + h % 35)) >> 20) as u32,
            jobs_running: 0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One agent.

/// What the swarm shares with every agent.
struct Ctx {
    args: Args,
    addr: SocketAddr,
    token: JoinToken,
    run: String,
    endpoints: Vec<quinn::Endpoint>,
    join_client: quinn::ClientConfig,
    transport: Arc<quinn::TransportConfig>,
    joins: Semaphore,
    stop: watch::Receiver<bool>,
    stats: Stats,
    hardware: Hardware,
    /// The heartbeat and lease the coordinator announced (first `Welcome` seen), ms.
    welcome_heartbeat_ms: AtomicU64,
    welcome_lease_ms: AtomicU64,
}

struct Agent {
    i: u32,
    name: String,
    endpoint: quinn::Endpoint,
    node_id: Option<NodeId>,
    /// The node's client configuration, once joined.
    client: Option<quinn::ClientConfig>,
    /// Grows across sessions, as in the agent.
    seq: u64,
    /// The agent's lease.
    lease: Lease,
    /// Whether the lease was held at the last check (to count each expiry once).
    lease_held: bool,
    hw_phase: u32,
    /// The key every try of the join asks with, until one is answered (as the agent keeps
    /// `join.key`): a retry after a lost answer gets the same node back.
    join_key: Option<String>,
}

impl Agent {
    /// Counts a lease that ran out since the last check.
    fn check_lease(&mut self, ctx: &Ctx) {
        let held = self.lease.is_held(Instant::now());
        if self.lease_held && !held {
            inc(&ctx.stats.c.lease_expiries);
        }
        self.lease_held = held;
    }

    /// Gives the lease up (not an expiry): acks of beats sent so far never count again.
    fn revoke_lease(&mut self) {
        self.lease.revoke();
        self.lease_held = false;
    }
}

/// Why an attempt failed.
enum Fail {
    /// Back off and try again.
    Retry(String),
    /// Retrying cannot help.
    Final(String),
}

/// How a session ended.
enum End {
    Stopped,
    Lost(String),
    Final(String),
}

/// A failed step of the agent's handshake, as the swarm counts it.
fn fail(f: Failure) -> Fail {
    match f {
        Failure::Retry(why) => Fail::Retry(why),
        Failure::Revoked => {
            Fail::Final("the coordinator refused this node's certificate as revoked".into())
        }
        Failure::Refused { code, reason } => Fail::Final(format!("refused ({code:?}): {reason}")),
    }
}

/// Trades the token and a CSR for a certificate (the agent's `handshake::join`), with the join
/// key kept in memory for every retry, as the agent keeps `join.key`.
async fn join(ctx: &Ctx, a: &mut Agent) -> Result<(), Fail> {
    let key_pem = match a.join_key.take() {
        Some(k) => k,
        None => NodeKey::generate()
            .map_err(|e| Fail::Final(format!("key: {e}")))?
            .key_pem(),
    };
    let key = NodeKey::from_pem(&key_pem).map_err(|e| Fail::Final(format!("key: {e}")))?;
    a.join_key = Some(key_pem);
    let csr_pem = key
        .csr_pem(&a.name)
        .map_err(|e| Fail::Final(format!("CSR: {e}")))?;
    let joined = handshake::join(
        &a.endpoint,
        ctx.join_client.clone(),
        ctx.addr,
        &ctx.args.coordinator,
        &ctx.token,
        &a.name,
        csr_pem,
        ctx.hardware.report(a.i, &a.name),
    )
    .await
    .map_err(fail)?;
    let mut client = tls::node_client_config(&joined.ca_pem, &joined.cert_pem, &key.key_pem())
        .map_err(|e| Fail::Final(format!("node TLS configuration: {e}")))?;
    client.transport_config(ctx.transport.clone());
    a.node_id = Some(joined.node_id);
    a.name = joined.name;
    a.join_key = None;
    a.client = Some(client);
    inc(&ctx.stats.c.joined);
    ctx.stats.c.last_joined_us.fetch_max(now_us(), Relaxed);
    Ok(())
}

/// Connects with the node's certificate and says the agent's `Hello` (`handshake::register`).
async fn register(ctx: &Ctx, a: &Agent) -> Result<Registered, Fail> {
    let (Some(client), Some(node_id)) = (a.client.clone(), a.node_id.as_ref()) else {
        return Err(Fail::Final("no certificate".into()));
    };
    let r = handshake::register(
        &a.endpoint,
        client,
        ctx.addr,
        &ctx.args.coordinator,
        |conn| {
            let datagrams = conn.max_datagram_size().is_some();
            let hardware = ctx.hardware.report(a.i, &a.name);
            handshake::register_hello(
                &a.name,
                node_id,
                datagrams,
                Vec::new(),
                Vec::new(),
                hardware,
            )
        },
    )
    .await
    .map_err(fail)?;
    if !r.datagrams {
        // The agent would beat on a uni stream; the swarm only simulates datagrams.
        r.conn.close(0u32.into(), b"no datagrams");
        return Err(Fail::Final(
            "the path has no QUIC datagram support (tandem-swarm beats on datagrams only)".into(),
        ));
    }
    Ok(r)
}

/// Reads one control message, owning the stream so the future can live across `select!` loops
/// without ever being dropped half-way through a frame.
async fn next_msg(
    mut recv: quinn::RecvStream,
) -> (quinn::RecvStream, Result<Option<CoordMsg>, CodecError>) {
    let r = codec::read_msg::<CoordMsg, _>(&mut recv, DEFAULT_MAX_FRAME).await;
    (recv, r)
}

fn closed(ctx: &Ctx, a: &mut Agent, e: &quinn::ConnectionError) -> String {
    if let quinn::ConnectionError::ApplicationClosed(c) = e {
        if c.error_code == CloseCode::DeclaredDown.code().into() {
            inc(&ctx.stats.c.declared_down);
        }
    }
    if handshake::voids_lease(e) {
        // Declared down, or removed: the lease is void (as in the agent).
        a.revoke_lease();
        inc(&ctx.stats.c.leases_revoked);
    }
    format!("connection closed: {e}")
}

/// Beats, acks, control messages, until the connection is lost or the run stops.
async fn session(ctx: &Ctx, a: &mut Agent, s: Registered, stop: &mut watch::Receiver<bool>) -> End {
    let Registered {
        conn,
        mut send,
        recv,
        welcome,
        ..
    } = s;
    let heartbeat = Duration::from_millis(
        ctx.args
            .heartbeat_ms
            .unwrap_or(welcome.heartbeat_ms)
            .max(10)
            .into(),
    );
    let lease_len = Duration::from_millis(welcome.lease_ms.into());
    // As the agent: this much silence means the connection is gone; register again.
    let give_up_after = handshake::silence_limit(heartbeat, lease_len);
    let mut iv = tokio::time::interval(heartbeat);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let hw_every = Duration::from_secs(ctx.args.hardware_update_s.max(1));
    let mut hw = tokio::time::interval_at(tokio::time::Instant::now() + hw_every, hw_every);
    let hw_on = ctx.args.hardware_update_s > 0;
    let usage_every = Duration::from_secs(ctx.args.usage_s.max(1));
    // Spread over the period, as real agents' are (they start at different times).
    let usage_first =
        Duration::from_millis((a.i as u64 * 7919) % (usage_every.as_millis() as u64).max(1));
    let mut usage =
        tokio::time::interval_at(tokio::time::Instant::now() + usage_first, usage_every);
    let usage_on = ctx.args.usage_s > 0;
    let mut last_ack = Instant::now();
    let mut reader = Box::pin(next_msg(recv));
    // Made once, not per turn of the loop: a fresh wait per beat registers and drops a
    // waiter every time.
    let stop_wait = stopped(stop);
    tokio::pin!(stop_wait);
    let end = loop {
        tokio::select! {
            _ = iv.tick() => {
                let now = Instant::now();
                a.check_lease(ctx);
                if now.duration_since(last_ack) > give_up_after {
                    break End::Lost("no heartbeat ack in time; registering again".into());
                }
                a.seq += 1;
                let beat = AgentDatagram::Heartbeat(Heartbeat {
                    seq: a.seq,
                    last_rtt_us: a.lease.last_rtt_us(),
                    load: Hardware::load_summary(a.i, a.seq),
                });
                let body = match codec::encode(&beat) {
                    Ok(b) => b,
                    Err(e) => break End::Final(format!("encoding a heartbeat: {e}")),
                };
                a.lease.on_beat_sent(a.seq, Instant::now());
                if let Err(e) = conn.send_datagram(body.into()) {
                    break End::Lost(format!("sending a heartbeat: {e}"));
                }
                inc(&ctx.stats.c.heartbeats_sent);
            }
            dg = conn.read_datagram() => match dg {
                Ok(body) => match codec::decode_datagram::<CoordDatagram>(&body) {
                    Ok(CoordDatagram::HeartbeatAck { seq, lease_ms }) => {
                        a.check_lease(ctx);
                        let out = a.lease.on_ack(seq, Duration::from_millis(lease_ms.into()), Instant::now());
                        a.check_lease(ctx);
                        match (out, a.lease.last_rtt()) {
                            (AckOutcome::Extended(_) | AckOutcome::Unchanged, Some(rtt)) => {
                                let rtt = rtt.as_micros() as u64;
                                last_ack = Instant::now();
                                inc(&ctx.stats.c.acks_received);
                                ctx.stats.rtt.record(rtt);
                                if ctx.stats.steady.load(Relaxed) {
                                    ctx.stats.rtt_steady.record(rtt);
                                }
                            }
                            _ => inc(&ctx.stats.c.acks_ignored),
                        }
                    }
                    Err(_) => inc(&ctx.stats.c.acks_ignored),
                },
                Err(e) => break End::Lost(closed(ctx, a, &e)),
            },
            (recv, msg) = &mut reader => {
                let reply = match msg {
                    Ok(Some(CoordMsg::Ping { nonce })) => {
                        inc(&ctx.stats.c.pings);
                        Some(AgentMsg::Pong { nonce })
                    }
                    Ok(Some(CoordMsg::StartJob(job) | CoordMsg::StartLimited { start: job, .. } | CoordMsg::StartAs { start: job, .. })) => {
                        inc(&ctx.stats.c.jobs_refused);
                        Some(AgentMsg::JobExited(JobExitReport {
                            job_id: job.job_id,
                            fencing_token: job.fencing_token,
                            code: None,
                            signal: None,
                            cause: ExitCause::Refused,
                            reason: "refused: swarm agents run no jobs".into(),
                        }))
                    }
                    Ok(Some(CoordMsg::TailLogs { request, .. })) => Some(AgentMsg::Logs {
                        request,
                        stdout: vec![],
                        stderr: vec![],
                        error: Some("swarm agents run no jobs".into()),
                    }),
                    Ok(Some(CoordMsg::Reject(r))) => {
                        a.revoke_lease();
                        inc(&ctx.stats.c.leases_revoked);
                        break End::Lost(format!("refused ({:?}): {}", r.code, r.reason));
                    }
                    Ok(Some(_)) => None,
                    Ok(None) | Err(_) => {
                        let why = match (&msg, conn.close_reason()) {
                            (_, Some(e)) => closed(ctx, a, &e),
                            (Ok(_), None) => "the coordinator closed the control stream".into(),
                            (Err(e), None) => format!("control stream: {e}"),
                        };
                        break End::Lost(why);
                    }
                };
                if let Some(m) = reply {
                    if let Err(e) = codec::write_msg(&mut send, &m, DEFAULT_MAX_FRAME).await {
                        break End::Lost(format!("writing on the control stream: {e}"));
                    }
                }
                reader = Box::pin(next_msg(recv));
            }
            _ = hw.tick(), if hw_on => {
                a.hw_phase += 1;
                let delta = HardwareDelta { gpus: Some(ctx.hardware.gpus(a.i, a.hw_phase)), ..Default::default() };
                let m = AgentMsg::HardwareUpdate(Box::new(delta));
                if let Err(e) = codec::write_msg(&mut send, &m, DEFAULT_MAX_FRAME).await {
                    break End::Lost(format!("sending a hardware update: {e}"));
                }
                inc(&ctx.stats.c.hardware_updates);
            }
            _ = usage.tick(), if usage_on => {
                let jobs = (0..5u64)
                    .map(|k| tandem_common::proto::JobUsage {
                        job_id: format!("j-{:08x}{k}", a.i),
                        fencing_token: 1,
                        cpu_usec: Some(a.seq * 1000 + k),
                        memory_bytes: Some(64 << 20),
                        memory_peak_bytes: Some(96 << 20),
                    })
                    .collect();
                let m = AgentMsg::Usage(Box::new(tandem_common::proto::NodeUsage {
                    containment: "cgroup-v2".into(),
                    containment_note: "job cgroups under /sys/fs/cgroup/system.slice/tandem-agent.service (tandem-swarm)".into(),
                    jobs_disk_bytes: 1 << 20,
                    jobs_retired: 0,
                    jobs,
                }));
                if let Err(e) = codec::write_msg(&mut send, &m, DEFAULT_MAX_FRAME).await {
                    break End::Lost(format!("sending a usage report: {e}"));
                }
                inc(&ctx.stats.c.usage_reports);
            }
            _ = &mut stop_wait => {
                // Leases that ran out before the end count; nothing after it does.
                a.check_lease(ctx);
                a.revoke_lease();
                if !ctx.args.no_goodbye {
                    let bye = AgentMsg::Goodbye { reason: "tandem-swarm run ended".into() };
                    if codec::write_msg(&mut send, &bye, DEFAULT_MAX_FRAME).await.is_ok() {
                        let _ = send.finish();
                        inc(&ctx.stats.c.goodbyes_sent);
                        // The coordinator drops the connection once it has recorded the goodbye.
                        let wait = Duration::from_secs(ctx.args.goodbye_timeout_s);
                        if tokio::time::timeout(wait, conn.closed()).await.is_ok() {
                            inc(&ctx.stats.c.goodbyes_confirmed);
                        }
                    }
                }
                conn.close(0u32.into(), b"tandem-swarm stopping");
                return End::Stopped;
            }
        }
    };
    conn.close(0u32.into(), b"session ended");
    end
}

/// Resolves once the run is told to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One agent, from launch to the end of the run.
async fn run_agent(ctx: Arc<Ctx>, i: u32) {
    let mut stop = ctx.stop.clone();
    let launched = Instant::now();
    let deadline = launched + Duration::from_secs(ctx.args.join_timeout_s);
    let mut a = Agent {
        i,
        name: format!("swarm-{}-{i}", ctx.run),
        endpoint: ctx.endpoints[i as usize % ctx.endpoints.len()].clone(),
        node_id: None,
        client: None,
        seq: 0,
        lease: Lease::new(),
        lease_held: false,
        hw_phase: 0,
        join_key: None,
    };
    let stats = &ctx.stats;
    let mut backoff = Backoff::new();
    let mut registered = false;
    let mut last_reason = String::from("none");
    loop {
        if *stop.borrow() {
            break;
        }
        if !registered && Instant::now() >= deadline {
            inc(&stats.c.failed);
            stats.failed.add(
                "failed join",
                &format!("gave up joining after the join timeout; last error: {last_reason}"),
                &a.name,
            );
            break;
        }
        let attempt = async {
            let _permit = ctx.joins.acquire().await;
            if a.client.is_none() {
                Box::pin(join(&ctx, &mut a)).await?;
            }
            Box::pin(register(&ctx, &a)).await
        };
        let r = tokio::select! {
            r = attempt => r,
            _ = stopped(&mut stop) => break,
        };
        match r {
            Ok(s) => {
                if registered {
                    inc(&stats.c.reconnects);
                } else {
                    registered = true;
                    inc(&stats.c.registered);
                    stats.c.last_registered_us.fetch_max(now_us(), Relaxed);
                    stats
                        .join_latency
                        .record(launched.elapsed().as_micros() as u64);
                    let _ = ctx.welcome_heartbeat_ms.compare_exchange(
                        0,
                        s.welcome.heartbeat_ms.into(),
                        Relaxed,
                        Relaxed,
                    );
                    let _ = ctx.welcome_lease_ms.compare_exchange(
                        0,
                        s.welcome.lease_ms.into(),
                        Relaxed,
                        Relaxed,
                    );
                }
                backoff.reset();
                inc(&stats.c.live);
                let end = session(&ctx, &mut a, s, &mut stop).await;
                stats.c.live.fetch_sub(1, Relaxed);
                match end {
                    End::Stopped => return,
                    End::Lost(why) => {
                        inc(&stats.c.disconnects);
                        stats.disconnects.add("disconnect", &why, &a.name);
                    }
                    End::Final(why) => {
                        inc(&stats.c.lost);
                        stats.lost.add("agent lost", &why, &a.name);
                        return;
                    }
                }
            }
            Err(Fail::Retry(why)) => {
                if registered {
                    inc(&stats.c.reconnect_retries);
                    stats
                        .reconnect_failures
                        .add("reconnect failed", &why, &a.name);
                } else {
                    inc(&stats.c.join_retries);
                    stats.retries.add("join retry", &why, &a.name);
                }
                last_reason = why;
            }
            Err(Fail::Final(why)) => {
                if registered {
                    inc(&stats.c.lost);
                    stats.lost.add("agent lost", &why, &a.name);
                } else {
                    inc(&stats.c.failed);
                    stats.failed.add("failed join", &why, &a.name);
                }
                return;
            }
        }
        let wait = backoff.next_wait();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped(&mut stop) => break,
        }
    }
    // Stopped outside a session: a lease that ran out before the end still counts.
    a.check_lease(&ctx);
}

// ---------------------------------------------------------------------------------------------
// Set-up, phases, summary.

/// One UDP socket with large buffers, as a quinn client endpoint. Returns the endpoint and the
/// buffer sizes the kernel reports.
fn endpoint(bind: SocketAddr, buffer: usize) -> Result<(quinn::Endpoint, usize, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if bind.is_ipv6() {
        let _ = sock.set_only_v6(false);
    }
    let _ = sock.set_recv_buffer_size(buffer);
    let _ = sock.set_send_buffer_size(buffer);
    // Past net.core.rmem_max / wmem_max where we may (CAP_NET_ADMIN).
    if sock.recv_buffer_size().unwrap_or(0) < buffer
        || sock.send_buffer_size().unwrap_or(0) < buffer
    {
        use std::os::fd::AsRawFd;
        let v = buffer.min(i32::MAX as usize) as libc::c_int;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
            // SAFETY: a plain setsockopt with a pointer to a c_int that outlives the call.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
    sock.bind(&bind.into())
        .with_context(|| format!("binding {bind}"))?;
    sock.set_nonblocking(true)?;
    let (rcv, snd) = (sock.recv_buffer_size()?, sock.send_buffer_size()?);
    let ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        sock.into(),
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok((ep, rcv, snd))
}

/// CPU seconds (user + system) and memory of a process, from /proc.
#[derive(Clone, Copy, Default)]
struct ProcSample {
    at: Option<Instant>,
    cpu_s: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
}

fn sample(pid: Option<i32>) -> Option<ProcSample> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_s = (rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?) / ticks;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Some(ProcSample {
        at: Some(Instant::now()),
        cpu_s,
        rss_mib: kib("VmRSS:") / 1024.0,
        peak_rss_mib: kib("VmHWM:") / 1024.0,
    })
}

/// Percent of one core between two samples.
fn cpu_pct(a: &Option<ProcSample>, b: &Option<ProcSample>) -> Option<f64> {
    let (a, b) = (a.as_ref()?, b.as_ref()?);
    let wall = b.at?.duration_since(a.at?).as_secs_f64();
    (wall > 0.0).then(|| ((b.cpu_s - a.cpu_s) / wall * 1000.0).round() / 10.0)
}

/// The 1-minute load average: other work on the machine skews every figure.
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn progress(ctx: &Ctx, t0: Instant, n: u32, watch: &mut (Option<ProcSample>, Option<ProcSample>)) {
    let c = &ctx.stats.c;
    let me = sample(None);
    let them = ctx.args.watch_pid.and_then(|p| sample(Some(p)));
    let mut line =
        format!(
        "[{:7.1}s] launched {}/{n} joined {} registered {} live {} failed {} retries {} disc {} \
         | beats {} acks {} rtt p50 {} p99 {} ms | lease expiries {} | swarm {:.0} MiB {}% cpu, \
         lag max {} ms",
        t0.elapsed().as_secs_f64(),
        get(&c.launched),
        get(&c.joined),
        get(&c.registered),
        get(&c.live),
        get(&c.failed),
        get(&c.join_retries),
        get(&c.disconnects),
        get(&c.heartbeats_sent),
        get(&c.acks_received),
        ctx.stats.rtt.quantile(0.5).map_or("-".into(), |v| format!("{:.2}", v as f64 / 1000.0)),
        ctx.stats.rtt.quantile(0.99).map_or("-".into(), |v| format!("{:.2}", v as f64 / 1000.0)),
        get(&c.lease_expiries),
        me.map_or(0.0, |s| s.rss_mib),
        cpu_pct(&watch.0, &me).map_or("-".into(), |v| v.to_string()),
        c.lag_window_max_us.swap(0, Relaxed) / 1000,
    );
    if let Some(pid) = ctx.args.watch_pid {
        line.push_str(&format!(
            " | pid {pid} {:.0} MiB {}% cpu",
            them.map_or(0.0, |s| s.rss_mib),
            cpu_pct(&watch.1, &them).map_or("-".into(), |v| v.to_string()),
        ));
    }
    eprintln!("{line}");
    *watch = (me, them);
}

/// Waits until `done` holds or `stop` is set, printing progress; returns whether `done` held.
async fn phase(
    ctx: &Ctx,
    t0: Instant,
    until: Option<Instant>,
    mut done: impl FnMut() -> bool,
    watch: &mut (Option<ProcSample>, Option<ProcSample>),
) -> bool {
    let mut stop = ctx.stop.clone();
    let every = Duration::from_secs(ctx.args.progress_s);
    let mut next = Instant::now() + every;
    loop {
        if done() {
            return true;
        }
        if *stop.borrow() || until.is_some_and(|u| Instant::now() >= u) {
            return false;
        }
        if ctx.args.progress_s > 0 && Instant::now() >= next {
            progress(ctx, t0, ctx.args.agents, watch);
            next += every;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stopped(&mut stop) => {}
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    now_us();
    if args.agents == 0 {
        bail!("--agents must be at least 1");
    }
    if !args.ramp_per_s.is_finite() || args.ramp_per_s <= 0.0 {
        bail!("--ramp-per-s must be positive");
    }
    if args.max_concurrent_joins == 0 {
        bail!("--max-concurrent-joins must be at least 1");
    }
    let token_text = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(p)) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        (None, None) => bail!("give the join token with --token or --token-file"),
    };
    let token: JoinToken = token_text
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("--token: {e}"))?;
    let addr = args
        .coordinator
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", args.coordinator))?
        .next()
        .with_context(|| format!("{} resolves to no address", args.coordinator))?;
    let run = match &args.run_id {
        Some(r) => {
            if r.is_empty()
                || r.len() > 16
                || !r
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                bail!("--run-id must be 1-16 lowercase letters or digits");
            }
            r.clone()
        }
        None => format!("{:06x}", rand::random::<u32>() & 0xff_ffff),
    };
    let bind_ip = args.bind_addr.unwrap_or(if addr.is_ipv6() {
        IpAddr::from([0u16; 8])
    } else {
        IpAddr::from([0u8; 4])
    });
    let k = args.endpoints.unwrap_or(4).clamp(1, args.agents as usize);
    let mut endpoints = Vec::new();
    let mut buffers = (usize::MAX, usize::MAX);
    for _ in 0..k {
        let (ep, rcv, snd) = endpoint(SocketAddr::new(bind_ip, 0), args.socket_buffer_bytes)?;
        buffers = (buffers.0.min(rcv), buffers.1.min(snd));
        endpoints.push(ep);
    }
    if buffers.0 < args.socket_buffer_bytes {
        eprintln!(
            "tandem-swarm: socket receive buffer is {} bytes, below the {} asked for \
             (raise net.core.rmem_max, or run with CAP_NET_ADMIN)",
            buffers.0, args.socket_buffer_bytes
        );
    }
    let transport = Arc::new(tandem_common::transport::transport_config());
    let mut join_client = tls::join_client_config(token.ca_pin)
        .map_err(|e| anyhow::anyhow!("join TLS configuration: {e}"))?;
    join_client.transport_config(transport.clone());
    let hardware = Hardware::load(&args)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let n = args.agents;
    let ctx = Arc::new(Ctx {
        addr,
        token,
        run: run.clone(),
        endpoints,
        join_client,
        transport,
        joins: Semaphore::new(args.max_concurrent_joins),
        stop: stop_rx,
        stats: Stats {
            c: Counters::default(),
            rtt: Hist::new(),
            rtt_steady: Hist::new(),
            steady: Default::default(),
            join_latency: Hist::new(),
            loop_lag: Hist::new(),
            failed: Reasons::default(),
            retries: Reasons::default(),
            disconnects: Reasons::default(),
            reconnect_failures: Reasons::default(),
            lost: Reasons::default(),
        },
        hardware,
        welcome_heartbeat_ms: AtomicU64::new(0),
        welcome_lease_ms: AtomicU64::new(0),
        args: args.clone(),
    });
    eprintln!(
        "tandem-swarm: run {run}: {n} agents against {addr} over {k} UDP sockets \
         (buffers rcv {} / snd {} bytes), ramp {}/s, {} joins at a time",
        buffers.0, buffers.1, args.ramp_per_s, args.max_concurrent_joins
    );

    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (stop_tx, interrupted) = (stop_tx.clone(), interrupted.clone());
        tokio::spawn(async move {
            tandem_agent::shutdown_signal().await;
            eprintln!("tandem-swarm: interrupted; stopping (again to quit at once)");
            interrupted.store(true, Relaxed);
            let _ = stop_tx.send(true);
            tandem_agent::shutdown_signal().await;
            std::process::exit(130);
        });
    }

    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let period = Duration::from_millis(100);
            let mut next = tokio::time::Instant::now() + period;
            loop {
                tokio::time::sleep_until(next).await;
                let late = tokio::time::Instant::now().saturating_duration_since(next);
                ctx.stats.loop_lag.record(late.as_micros() as u64);
                ctx.stats
                    .c
                    .lag_window_max_us
                    .fetch_max(late.as_micros() as u64, Relaxed);
                next = tokio::time::Instant::now() + period;
            }
        });
    }
    let load_at_start = loadavg();
    let t0 = Instant::now();
    let t0_us = now_us();
    let s0 = (sample(None), args.watch_pid.and_then(|p| sample(Some(p))));
    let mut watch = s0;
    let launcher = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut handles = Vec::with_capacity(n as usize);
            let mut stop = ctx.stop.clone();
            let start = Instant::now();
            let mut iv = tokio::time::interval(Duration::from_millis(10));
            let mut i = 0u32;
            while i < n {
                tokio::select! {
                    _ = iv.tick() => {}
                    _ = stopped(&mut stop) => break,
                }
                let due = ((start.elapsed().as_secs_f64() * ctx.args.ramp_per_s) as u64 + 1)
                    .min(u64::from(n)) as u32;
                while i < due {
                    handles.push(tokio::spawn(run_agent(ctx.clone(), i)));
                    inc(&ctx.stats.c.launched);
                    i += 1;
                }
            }
            handles
        })
    };

    // Ramp: until every agent has registered or given up.
    let c = &ctx.stats.c;
    let settled = phase(
        &ctx,
        t0,
        None,
        || get(&c.launched) == u64::from(n) && get(&c.registered) + get(&c.failed) >= u64::from(n),
        &mut watch,
    )
    .await;
    let ramp_s = t0.elapsed().as_secs_f64();
    if settled {
        eprintln!(
            "tandem-swarm: ramp done after {ramp_s:.1} s: {} registered, {} failed; settling {} s, then steady for {} s",
            get(&c.registered),
            get(&c.failed),
            args.settle_s,
            args.duration_s
        );
        if args.settle_s > 0 {
            let until = Instant::now() + Duration::from_secs(args.settle_s);
            phase(&ctx, t0, Some(until), || false, &mut watch).await;
        }
    }
    let s1 = (sample(None), args.watch_pid.and_then(|p| sample(Some(p))));
    // Steady.
    let t_steady = Instant::now();
    let steady_base = [
        get(&c.heartbeats_sent),
        get(&c.acks_received),
        get(&c.lease_expiries),
        get(&c.disconnects),
    ];
    ctx.stats.steady.store(true, Relaxed);
    if settled {
        phase(
            &ctx,
            t0,
            Some(t_steady + Duration::from_secs(args.duration_s)),
            || false,
            &mut watch,
        )
        .await;
    }
    let steady_s = t_steady.elapsed().as_secs_f64();
    let s2 = (sample(None), args.watch_pid.and_then(|p| sample(Some(p))));
    let steady = [
        get(&c.heartbeats_sent),
        get(&c.acks_received),
        get(&c.lease_expiries),
        get(&c.disconnects),
    ];
    let steady = [0, 1, 2, 3].map(|i| steady[i] - steady_base[i]);
    ctx.stats.steady.store(false, Relaxed);
    let live_at_end = get(&c.live);

    // Stop: goodbyes, then close the sockets.
    let t_stop = Instant::now();
    let _ = stop_tx.send(true);
    let handles = launcher.await.unwrap_or_default();
    let cap = Duration::from_secs(args.goodbye_timeout_s + 10);
    let all = async {
        for h in handles {
            let _ = h.await;
        }
    };
    let drained = tokio::time::timeout(cap, all).await.is_ok();
    let stop_s = t_stop.elapsed().as_secs_f64();
    for ep in &ctx.endpoints {
        ep.close(0u32.into(), b"tandem-swarm done");
    }
    for ep in &ctx.endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
    }
    let s3 = (sample(None), args.watch_pid.and_then(|p| sample(Some(p))));

    let reg = get(&c.registered);
    let secs = |us: u64| round3(us.saturating_sub(t0_us) as f64 / 1e6);
    let all_joined = (get(&c.joined) == u64::from(n)).then(|| secs(get(&c.last_joined_us)));
    let all_registered = (reg == u64::from(n)).then(|| secs(get(&c.last_registered_us)));
    let proc_json = |a: &Option<ProcSample>, b: &Option<ProcSample>, c: &Option<ProcSample>| {
        json!({
            "rss_mib": c.map(|s| round3(s.rss_mib)),
            "peak_rss_mib": c.map(|s| round3(s.peak_rss_mib)),
            "cpu_s": match (a, c) { (Some(a), Some(c)) => Some(round3(c.cpu_s - a.cpu_s)), _ => None },
            "ramp_cpu_pct": cpu_pct(a, b),
        })
    };
    let swarm = {
        let mut v = proc_json(&s0.0, &s1.0, &s3.0);
        v["steady_cpu_pct"] = json!(cpu_pct(&s1.0, &s2.0));
        v["rss_mib_at_steady_end"] = json!(s2.0.map(|s| round3(s.rss_mib)));
        v
    };
    let watched = args.watch_pid.map(|pid| {
        let mut v = proc_json(&s0.1, &s1.1, &s3.1);
        v["pid"] = json!(pid);
        v["steady_cpu_pct"] = json!(cpu_pct(&s1.1, &s2.1));
        v["rss_mib_at_steady_end"] = json!(s2.1.map(|s| round3(s.rss_mib)));
        v
    });
    let summary = json!({
        "run": run,
        "coordinator": addr.to_string(),
        "requested": n,
        "launched": get(&c.launched),
        "joined": get(&c.joined),
        "registered": reg,
        "live_at_end": live_at_end,
        "failed_joins": ctx.stats.failed.json(),
        "failed_joins_total": ctx.stats.failed.total(),
        "join_retries": get(&c.join_retries),
        "join_retry_reasons": ctx.stats.retries.json(),
        "join_latency_ms": ctx.stats.join_latency.summary_ms(),
        "time_to_all_joined_s": all_joined,
        "time_to_all_registered_s": all_registered,
        "disconnects": get(&c.disconnects),
        "disconnect_reasons": ctx.stats.disconnects.json(),
        "reconnects": get(&c.reconnects),
        "reconnect_retries": get(&c.reconnect_retries),
        "reconnect_failure_reasons": ctx.stats.reconnect_failures.json(),
        "agents_lost": get(&c.lost),
        "agents_lost_reasons": ctx.stats.lost.json(),
        "declared_down_seen": get(&c.declared_down),
        "heartbeats_sent": get(&c.heartbeats_sent),
        "acks_received": get(&c.acks_received),
        "acks_ignored": get(&c.acks_ignored),
        "steady_heartbeats_sent": steady[0],
        "steady_acks_received": steady[1],
        "steady_beats_per_s": (steady_s > 0.0).then(|| round3(steady[0] as f64 / steady_s)),
        "steady_lease_expiries": steady[2],
        "steady_disconnects": steady[3],
        "steady_ack_rtt_ms": ctx.stats.rtt_steady.summary_ms(),
        "ack_rtt_ms": ctx.stats.rtt.summary_ms(),
        "lease_expiries": get(&c.lease_expiries),
        "leases_revoked": get(&c.leases_revoked),
        "pings_answered": get(&c.pings),
        "jobs_refused": get(&c.jobs_refused),
        "hardware_updates_sent": get(&c.hardware_updates),
        "usage_reports_sent": get(&c.usage_reports),
        "goodbyes_sent": get(&c.goodbyes_sent),
        "goodbyes_confirmed": get(&c.goodbyes_confirmed),
        "heartbeat_ms": ctx.args.heartbeat_ms.map(u64::from).unwrap_or_else(|| get(&ctx.welcome_heartbeat_ms)),
        "lease_ms": get(&ctx.welcome_lease_ms),
        "endpoints": k,
        "socket_buffer_bytes": {"recv": buffers.0, "send": buffers.1},
        "ramp_s": round3(ramp_s),
        "settled": settled,
        "duration_s": round3(steady_s),
        "stop_s": round3(stop_s),
        "stopped_cleanly": drained,
        "interrupted": interrupted.load(Relaxed),
        "swarm_rss_mib": s2.0.map(|s| round3(s.rss_mib)),
        "swarm_loop_lag_ms": ctx.stats.loop_lag.summary_ms(),
        "load_avg_1m": {"start": load_at_start, "end": loadavg()},
        "swarm": swarm,
        "watched": watched,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
