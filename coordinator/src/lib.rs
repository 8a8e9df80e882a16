//! The Tandem coordinator: the fleet's membership, its failure detector, and the admin API.
//!
//! # Layout
//! - `config`: `coordinator.toml`, checked into a typed `Config`.
//! - `init`: `tandem-coordinator init`: the CA, the admin token, the config file.
//! - `store`: the durable state behind the `StateStore` trait (sled).
//! - `model`: the records kept (nodes, tokens, events).
//! - `clock`: where the decision layer reads time and chance (simulated in `tests/sim`).
//! - `cluster`: the pure decisions for clusters and pairs (validation, capacity, pairing).
//! - `jobs`: the pure decisions for jobs (spec rules, placement, fencing tokens, failover planner).
//! - `detector`: the failure detector, a plain struct driven by `now` (the fencing argument).
//! - `engine`: the one owner of fleet state (nodes, clusters, pairs, jobs, timers): decides
//!   on every input, applies each batch to the store, and queues what it sends to outboxes
//!   that send only once the batch is durable.
//! - `runtime`: the engine's task: every call reaches the engine through its queue, one at
//!   a time, and what the engine decides is carried out from there.
//! - `limits`: failed-join, refusal-log and per-session message limits against floods.
//! - `retention`: which finished jobs, spent tokens and finished operations are deleted.
//! - `join`: join tokens and CSRs traded for node certificates.
//! - `join_check`: `CheckJoin`, the dry run of a join behind `tandem-agent check` (records
//!   nothing).
//! - `outbox`: the queue of commands to one session (bounded, never drops silently).
//! - `server`: the QUIC endpoint, one task per connection.
//! - `admin`: the HTTP/JSON admin endpoint and `/metrics`.
//! - `metrics`: counters and histograms.
//! - `usage`: what each node's jobs use, as last reported (in memory only).
//! - `dev`: `tandem-coordinator dev`, a coordinator and a few agents on loopback.

pub mod admin;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod detector;
pub mod dev;
pub mod engine;
pub mod init;
pub mod jobs;
pub mod join;
pub mod join_check;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod outbox;
pub mod retention;
pub mod runtime;
pub mod server;
pub mod store;
pub mod usage;

use crate::config::Config;
use crate::detector::{DetectorConfig, FailureDetector};
use crate::engine::Engine;
use crate::runtime::EngineHandle;
use crate::store::{SledStore, StateStore};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_common::pki::CertificateAuthority;
use tandem_common::wire::CloseCode;

/// Why the coordinator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The store could not be opened or written.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The CA or TLS setup failed.
    #[error("pki: {0}")]
    Pki(String),
    /// A socket could not be bound or served.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Dev mode found no `tandem-agent` binary to run its agents with.
    #[error("dev mode runs its agents with the tandem-agent binary, and there is none beside this one ({beside}) nor on PATH: build both with `cargo build --release --bins`, then run ./target/release/tandem-coordinator dev")]
    AgentBinaryMissing {
        /// Where it looked first.
        beside: String,
    },
    /// Dev mode could not set up its fleet (its `dev` cluster).
    #[error("dev mode: {0}")]
    Dev(String),
    /// `init` found an existing installation.
    #[error("{0} already holds a coordinator; refusing to overwrite it")]
    AlreadyInitialised(String),
}

/// How often the failure detector is run.
const TICK: Duration = Duration::from_millis(20);
/// How often finished records past their retention are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often freed heap is returned to the system.
const MALLOC_TRIM_EVERY: Duration = Duration::from_secs(30);

/// A coordinator that is serving.
pub struct Running {
    /// Where the admin endpoint listens.
    pub admin_addr: SocketAddr,
    /// Where the QUIC endpoint listens.
    pub quic_addr: SocketAddr,
    /// The way to the engine task (for in-process use, e.g. dev mode).
    pub engine: EngineHandle,
    /// The CA.
    pub ca: Arc<CertificateAuthority>,
    endpoint: quinn::Endpoint,
    engine_task: tokio::task::JoinHandle<()>,
    admin_stop: tokio::sync::oneshot::Sender<()>,
    admin_task: tokio::task::JoinHandle<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    restart_hold: config::RestartHold,
    heartbeat: Duration,
}

/// Starts serving: opens the store, loads the CA, binds both endpoints.
pub async fn start(cfg: Config) -> Result<Running, CoordinatorError> {
    let now = Instant::now();
    let store: Arc<dyn StateStore> = Arc::new(SledStore::open(&cfg.data_dir.join("state"))?);
    let ca = Arc::new(
        CertificateAuthority::load(&cfg.data_dir)
            .map_err(|e| CoordinatorError::Pki(e.to_string()))?,
    );
    let metrics = Arc::new(metrics::Metrics::default());
    // The fence parameters agents may hold: the stored ones (what earlier runs gave out) and
    // the configured ones. Until no agent may hold the old ones, the larger of each is the
    // record, and remembered nodes are judged by it (the detector's "Fence parameters").
    let configured = model::FenceParams {
        lease_ms: cfg.lease.as_millis() as u64,
        fence_kill_timeout_ms: cfg.fence_kill_timeout.as_millis() as u64,
    };
    // A longer kill timeout also moves the holds of earlier runs (see the function).
    let in_force = engine::fence_params_at_start(&*store, configured)?;
    if in_force != configured {
        tracing::warn!(
            old_lease_ms = in_force.lease_ms,
            old_fence_kill_timeout_ms = in_force.fence_kill_timeout_ms,
            lease_ms = configured.lease_ms,
            fence_kill_timeout_ms = configured.fence_kill_timeout_ms,
            "the fence parameters changed: nodes that may hold the old ones are judged by the larger values until they registered with the new ones"
        );
    }
    let detector = FailureDetector::new(
        DetectorConfig {
            heartbeat: cfg.heartbeat,
            lease: cfg.lease,
            fence_grace: cfg.fence_grace,
            suspect_after_missed: cfg.suspect_after_missed,
            restart_grace: cfg.restart_grace,
        },
        now,
    )
    .with_legacy(in_force.lease() + in_force.fence_grace());
    let engine = Engine::load(store.clone(), detector, metrics, now)?
        .with_quotas(cfg.quotas)
        .with_retention(cfg.retention)
        .with_max_handover(cfg.max_handover)
        .with_fence_update((in_force != configured).then_some(configured));
    // Finish what a previous run decided but may not have carried out (e.g. a failover cut
    // short by a crash): the records are durable, the planner re-derives the commands.
    engine.reconcile_jobs()?;
    // A planned restart's hold from the run before: nobody is declared down before it ends.
    engine.honour_restart_hold(now)?;
    // And the agent hand-overs: those nodes are not declared down before theirs end.
    engine.honour_node_holds(now)?;
    // Revocation is checked at the TLS handshake, outside the engine: the engine keeps the
    // set of member serials it reads.
    let serial_check = engine.serial_check();
    let node_count = engine.node_count();
    // From here on the engine belongs to its task: everything reaches it through the handle.
    let (engine, engine_task) = EngineHandle::spawn(engine);

    // A fresh server certificate at every start; agents trust the CA, not this certificate.
    let (serial, ticket) = store.reserve_serial()?;
    store.durable(ticket).await;
    let ips: Vec<_> = [cfg.quic_addr.ip()]
        .into_iter()
        .filter(|ip| !ip.is_unspecified())
        .collect();
    let (cert_pem, key_pem) = ca
        .issue_server_cert(serial, &ips)
        .map_err(|e| CoordinatorError::Pki(e.to_string()))?;
    let mut server_cfg =
        tandem_common::tls::server_config(ca.cert_der(), &cert_pem, &key_pem, serial_check)
            .map_err(|e| CoordinatorError::Pki(e.to_string()))?;
    server_cfg.transport_config(Arc::new(tandem_common::transport::transport_config()));
    let socket = server::udp_socket(cfg.quic_addr, cfg.udp_buffer_bytes).map_err(|source| {
        CoordinatorError::Io {
            what: format!("binding QUIC {}", cfg.quic_addr),
            source,
        }
    })?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_cfg),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| CoordinatorError::Io {
        what: format!("starting QUIC on {}", cfg.quic_addr),
        source,
    })?;
    let quic_addr = endpoint
        .local_addr()
        .map_err(|source| CoordinatorError::Io {
            what: "reading the QUIC address".into(),
            source,
        })?;

    let join_lock: Arc<tokio::sync::Mutex<limits::FailedJoins>> = Default::default();
    let srv = Arc::new(server::Server {
        engine: engine.clone(),
        joiner: join::Joiner {
            ca: ca.clone(),
            engine: engine.clone(),
            cert_validity: cfg.cert_validity,
            lease: cfg.lease,
            lock: join_lock.clone(),
        },
        heartbeat: cfg.heartbeat,
        max_frame: cfg.max_frame_bytes,
        fence_kill_timeout: cfg.fence_kill_timeout,
        log_budget: std::sync::Mutex::new(limits::LogBudget::new(20.0, 100.0)),
    });
    let mut tasks = vec![tokio::spawn(srv.serve(endpoint.clone()))];
    let m = engine.clone();
    tasks.push(tokio::spawn(async move {
        let mut iv = tokio::time::interval(TICK);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // The detector's loop is the coordinator's main loop: it feeds systemd's watchdog.
        let mut watchdog = tandem_common::notify::Watchdog::from_env();
        let mut trimmed = Instant::now();
        let mut swept: Option<Instant> = None;
        loop {
            iv.tick().await;
            watchdog.ping_if_due(Instant::now());
            m.call(|e| e.tick(Instant::now())).await;
            if swept.is_none_or(|s| s.elapsed() >= SWEEP_EVERY) {
                swept = Some(Instant::now());
                let swept = m.call(|e| e.sweep(tandem_common::time::unix_ms())).await;
                if let Err(err) = swept {
                    tracing::error!(%err, "retention sweep failed");
                }
            }
            if trimmed.elapsed() >= MALLOC_TRIM_EVERY {
                trimmed = Instant::now();
                // glibc keeps what a join storm freed in its per-thread arenas (hundreds of
                // MiB after 10,000 joins); hand it back to the system now and then.
                // SAFETY: malloc_trim has no preconditions.
                let took = tokio::task::spawn_blocking(|| {
                    let t = Instant::now();
                    unsafe { libc::malloc_trim(0) };
                    t.elapsed()
                })
                .await;
                tracing::debug!(took_ms = ?took.map(|d| d.as_millis()), "returned freed heap to the system");
            }
        }
    }));

    let listener = tokio::net::TcpListener::bind(cfg.admin_addr)
        .await
        .map_err(|source| CoordinatorError::Io {
            what: format!("binding admin {}", cfg.admin_addr),
            source,
        })?;
    let admin_addr = listener
        .local_addr()
        .map_err(|source| CoordinatorError::Io {
            what: "reading the admin address".into(),
            source,
        })?;
    let router = admin::router(Arc::new(admin::AdminState {
        engine: engine.clone(),
        ca: ca.clone(),
        admin_token: cfg.admin_token.clone(),
        join_lock,
    }));
    let (admin_stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async move {
        let _ = stop_rx.await;
    };
    let admission = admin::serve::Admission::new(cfg.admin_connections, engine.metrics.clone());
    let admin_task = if cfg.admin_tls {
        let (serial, ticket) = store.reserve_serial()?;
        store.durable(ticket).await;
        let mut ips = cfg.admin_tls_ips.clone();
        if !admin_addr.ip().is_unspecified() {
            ips.push(admin_addr.ip());
        }
        let (cert_pem, key_pem) = ca
            .issue_server_cert_for(serial, &ips, &cfg.admin_tls_dns)
            .map_err(|e| CoordinatorError::Pki(e.to_string()))?;
        let tls = tandem_common::tls::https_server_config(ca.cert_der(), &cert_pem, &key_pem)
            .map_err(|e| CoordinatorError::Pki(e.to_string()))?;
        let listener =
            admin::https::HttpsListener::new(listener, tls, admission).map_err(|source| {
                CoordinatorError::Io {
                    what: "starting the admin HTTPS listener".into(),
                    source,
                }
            })?;
        tokio::spawn(admin::serve::serve(
            listener,
            router,
            admin::serve::Admit::ByListener,
            stopped,
        ))
    } else {
        tokio::spawn(admin::serve::serve(
            listener,
            router,
            admin::serve::Admit::AtAccept(admission),
            stopped,
        ))
    };

    // Tell tools where we listen (tests bind port 0 and read this).
    let endpoints = serde_json::json!({
        "pid": std::process::id(),
        "admin": admin_addr.to_string(),
        "admin_url": format!("{}://{admin_addr}", if cfg.admin_tls { "https" } else { "http" }),
        "quic": quic_addr.to_string(),
    });
    let tmp = cfg.data_dir.join("endpoints.json.tmp");
    if std::fs::write(&tmp, endpoints.to_string())
        .and_then(|_| std::fs::rename(&tmp, cfg.data_dir.join("endpoints.json")))
        .is_err()
    {
        tracing::warn!("could not write endpoints.json");
    }
    tracing::info!(admin = %admin_addr, quic = %quic_addr, nodes = node_count, "coordinator serving");
    tandem_common::notify::ready(&format!(
        "serving: admin {admin_addr}, QUIC {quic_addr}, {node_count} nodes"
    ));
    Ok(Running {
        admin_addr,
        quic_addr,
        engine,
        engine_task,
        ca,
        endpoint,
        admin_stop,
        admin_task,
        tasks,
        restart_hold: cfg.restart_hold,
        heartbeat: cfg.heartbeat,
    })
}

impl Running {
    /// Serves until `shutdown` resolves, then stops cleanly.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), CoordinatorError> {
        shutdown.await;
        tracing::info!("coordinator shutting down");
        tandem_common::notify::stopping();
        self.hold_for_the_restart().await;
        self.endpoint
            .close(CloseCode::Shutdown.into(), b"coordinator shutting down");
        let _ = self.admin_stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.admin_task).await;
        for t in self.tasks {
            t.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        // The engine task ends once the last handle (ours, the sessions') is gone.
        drop(self.engine);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.engine_task).await;
        Ok(())
    }
}

impl Running {
    /// A planned stop: records the restart hold (nobody is declared down before it ends) and,
    /// once that is durable, acks every beat with a lease that ends before it, until every
    /// live node has had one (or three beats have passed). The nodes' jobs then ride through
    /// until the next run honours the hold (see the detector's "hold").
    async fn hold_for_the_restart(&self) {
        let nodes = self.engine.call(|e| e.node_count()).await;
        let Some(hold) = self.restart_hold.for_fleet(nodes) else {
            return;
        };
        let ticket = match self
            .engine
            .call(move |e| e.begin_restart_hold(hold, Instant::now()))
            .await
        {
            Ok(t) => t,
            Err(err) => {
                tracing::error!(%err, "could not record the restart hold; stopping without it: jobs are fenced after their lease");
                return;
            }
        };
        self.engine.store().durable(ticket).await;
        self.engine.call(|e| e.grant_hold_leases()).await;
        let until = Instant::now() + self.heartbeat * 3 + Duration::from_millis(500);
        let (granted, alive) = loop {
            let (granted, alive) = self.engine.call(|e| e.hold_leases_granted()).await;
            if granted >= alive || Instant::now() >= until {
                break (granted, alive);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        tracing::info!(
            granted,
            alive,
            hold_ms = hold.as_millis() as u64,
            "leases until the end of the restart hold granted"
        );
    }
}

/// Makes glibc's allocator use one arena for all threads. Call it before any thread starts.
///
/// With one arena per thread that ever contended, a join storm left each async worker and
/// blocking thread with its own heap of freed connection and registration buffers: at 10,000
/// agents the coordinator peaked at 979 MiB resident during the joins and 764 MiB after; with
/// one arena 756 and 748, at the same CPU (47 % of a core for 10,000 beats/s), measured with
/// `MALLOC_ARENA_MAX=1 tests/bench_swarm.sh 10000 1000 45`. Not glibc: nothing to do.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Starts the coordinator and serves until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), CoordinatorError> {
    start(cfg).await?.run_until(shutdown).await
}

pub use tandem_common::signal::shutdown_signal;
