//! The engine's runtime: one task owns the engine and carries out what it decides.
//!
//! The [`Engine`] decides and does no I/O. Everything else in the coordinator (the QUIC
//! sessions, the admin endpoint, the detector's tick, joins) reaches it through an
//! [`EngineHandle`]: a call is queued to the engine task, which runs the calls one after
//! another, in the order they arrived, and hands each answer back. So every decision sees
//! the state the one before it left, and nothing decides beside it: "check and act under the
//! same state" holds for whatever one call does.
//!
//! What a decision produces is carried out from here, never inside the engine:
//! - a persist goes to the store's group commit (`store::group_commit`), whose flusher thread
//!   makes it durable; no fsync runs in the engine task or on an async worker;
//! - a send is queued to the session's outbox, stamped with the store's newest ticket, and
//!   the session task writes it once that ticket is durable (`crate::outbox`): connections
//!   live in the session tasks (`crate::server`), never in the engine's tables;
//! - a heartbeat's ack over datagrams is handed to the connection by the engine task itself,
//!   right after the decision (a datagram is queued, nothing waits): a beat costs one hop;
//! - a reply is the call's answer; the caller waits for its ticket before it answers
//!   (`admin::durable_replies`, a Welcome after its registration);
//! - waiting for a node (an on-demand ping, a log tail) happens here, outside the engine:
//!   the engine records what is awaited and forgets it when the wait ends.
//!
//! The queue is bounded ([`QUEUE`]): past it, a caller waits for room (backpressure);
//! nothing is dropped. A decision that panics is logged and its caller fails with it; the
//! engine goes on with the next call, as it did when the engine was a lock.
//!
//! The simulation (`tests/sim`) is a runtime of its own: it calls the engine directly, on its
//! simulated clock, and carries out the same commands over its simulated network.

use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::store::StateStore;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_common::ids::NodeId;
use tokio::sync::{mpsc, oneshot};

/// How many calls may wait for the engine before callers wait for room.
pub const QUEUE: usize = 16_384;
/// How many queued calls the engine task takes at a time.
const BATCH: usize = 256;
/// How long a call in the beat lane may wait for the engine task ([`EngineHandle::queue_beat`]).
pub const BEAT_LANE: Duration = Duration::from_millis(5);

type Call = Box<dyn FnOnce(&Engine) + Send>;

/// The way to the engine task; cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    calls: mpsc::Sender<Call>,
    /// The beat lane: calls that wake nobody, taken at least every [`BEAT_LANE`].
    beats: Arc<std::sync::Mutex<Vec<Call>>>,
    store: Arc<dyn StateStore>,
    /// The coordinator's counters (not fleet state: shared with the admin endpoint).
    pub metrics: Arc<Metrics>,
    /// What each node's jobs use, as last reported: an observation the engine records and
    /// never decides on, read by the admin endpoint without a call.
    pub usage: Arc<crate::usage::UsageBoard>,
}

impl EngineHandle {
    /// Moves `engine` into its task (on the current Tokio runtime). The task ends once every
    /// handle is gone; its join handle resolves after the engine (and its store) is dropped.
    pub fn spawn(engine: Engine) -> (Self, tokio::task::JoinHandle<()>) {
        let (calls, mut rx) = mpsc::channel::<Call>(QUEUE);
        let beats: Arc<std::sync::Mutex<Vec<Call>>> = Default::default();
        let lane = beats.clone();
        let handle = Self {
            calls,
            beats,
            store: engine.store().clone(),
            metrics: engine.metrics.clone(),
            usage: engine.usage.clone(),
        };
        let metrics = engine.metrics.clone();
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let mut every = tokio::time::interval(BEAT_LANE);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => if n == 0 { break },
                    _ = every.tick() => {}
                }
                let full = batch.len() == BATCH;
                let beats = std::mem::take(&mut *lane.lock().unwrap_or_else(|p| p.into_inner()));
                for call in beats.into_iter().chain(batch.drain(..)) {
                    if std::panic::catch_unwind(AssertUnwindSafe(|| call(&engine))).is_err() {
                        metrics
                            .engine_panics
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!(
                            "a decision panicked; its caller fails, the engine goes on"
                        );
                    }
                }
                // Others share the workers: a full batch (more are likely waiting) gives them a
                // turn. Not after every batch: at 10,000 beats a second most batches are one
                // call, and a yield each would cost a second poll of this task per beat.
                if full {
                    tokio::task::yield_now().await;
                }
            }
        });
        (handle, task)
    }

    /// Runs `f` in the engine task, after every call queued before it, and returns its answer.
    ///
    /// # Panics
    /// If `f` panicked (the panic is logged where it happened), or the engine task is gone
    /// (the coordinator is stopping).
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = oneshot::channel();
        let call: Call = Box::new(move |e| {
            let _ = tx.send(f(e));
        });
        if self.calls.send(call).await.is_err() {
            panic!("the engine task is gone: the coordinator is stopping");
        }
        rx.await
            .expect("the engine's decision panicked (see the log above)")
    }

    /// The cluster `id_or_name`, if there is one.
    pub async fn cluster(&self, id_or_name: &str) -> Option<crate::model::ClusterRecord> {
        let key = id_or_name.to_string();
        self.call(move |e| e.cluster(&key)).await
    }

    /// The id of the node `id_or_name`, if there is one.
    pub async fn node_id(&self, id_or_name: &str) -> Option<NodeId> {
        let key = id_or_name.to_string();
        self.call(move |e| e.find(&key).map(|n| n.record.id)).await
    }

    /// Queues `f` to the beat lane: it runs within [`BEAT_LANE`], without waking the engine
    /// task for it. At 10,000 beats a second, a wake of the engine task and of a worker thread
    /// per beat cost more than the decision; the lane takes the beats of every session
    /// together. A lane call runs in order with the other lane calls of its caller, but may
    /// run before or after a call queued through [`EngineHandle::call`] around it: only for
    /// what does not care (a beat: its session is checked when it runs, and its time is
    /// that of its arrival). Past [`QUEUE`] lane calls waiting, the caller waits for room in
    /// the queue instead: nothing is dropped.
    pub async fn queue_beat(&self, f: impl FnOnce(&Engine) + Send + 'static) {
        let call: Call = Box::new(f);
        let call = {
            let mut lane = self.beats.lock().unwrap_or_else(|p| p.into_inner());
            if lane.len() < QUEUE {
                lane.push(call);
                return;
            }
            call
        };
        let _ = self.calls.send(call).await;
    }

    /// Calls queued now and not yet taken by the engine task (`tandem_engine_calls_queued`).
    pub fn queued(&self) -> usize {
        QUEUE - self.calls.capacity() + self.beats.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// The store, for waiting on tickets and for reads of records the engine does not keep
    /// (tokens, events, operations). Its writes go through the engine's decisions, except the
    /// admin endpoint's own records (tokens).
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// The on-demand heartbeat check: pings the node over its live connection now and waits
    /// at most `timeout` for the answer. `Ok(round trip)` or `Err(why not alive)`.
    pub async fn check(&self, node: NodeId, timeout: Duration) -> Result<Duration, String> {
        let (nonce, rx) = self.call(move |e| e.begin_check(&node)).await?;
        let _forget = self.when_dropped(move |e| e.end_check(nonce));
        let start = Instant::now();
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(start.elapsed()),
            Ok(Err(_)) => Err("the node's connection closed".to_string()),
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        }
    }

    /// Asks the node running `job` for the end of its logs: `(stdout, stderr)` or why not.
    pub async fn job_logs(
        &self,
        job: crate::jobs::model::JobRecord,
        lines: u32,
    ) -> Result<(Vec<String>, Vec<String>), String> {
        use tandem_common::proto::AgentMsg;
        let (request, rx) = self.call(move |e| e.begin_job_logs(&job, lines)).await?;
        let _forget = self.when_dropped(move |e| e.end_job_logs(request));
        match tokio::time::timeout(Duration::from_secs(3), rx).await {
            Ok(Ok(AgentMsg::Logs {
                stdout,
                stderr,
                error: None,
                ..
            })) => Ok((stdout, stderr)),
            Ok(Ok(AgentMsg::Logs { error: Some(e), .. })) => Err(e),
            Ok(_) => Err("the node's connection closed".to_string()),
            Err(_) => Err("the node did not answer within 3 s".to_string()),
        }
    }

    /// Runs `f` in the engine task (through the beat lane, so it needs no `await`) when the
    /// returned guard is dropped: when the wait it guards ends, and also when its caller is
    /// dropped mid-wait (an HTTP client that hangs up drops its handler's future). Before, the
    /// engine forgot a wait only after it ended, so each abandoned check or log tail left its
    /// waiter in the engine's tables for good.
    fn when_dropped(&self, f: impl FnOnce(&Engine) + Send + 'static) -> WhenDropped {
        WhenDropped {
            beats: self.beats.clone(),
            call: Some(Box::new(f)),
        }
    }
}

/// See [`EngineHandle::when_dropped`].
struct WhenDropped {
    beats: Arc<std::sync::Mutex<Vec<Call>>>,
    call: Option<Call>,
}

impl Drop for WhenDropped {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            // Past the lane's bound too: a forget is tiny, and dropping it would leak again.
            self.beats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(call);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn engine() -> Engine {
        Engine::for_tests().0
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_from_many_tasks_never_overlap_and_each_is_answered() {
        let (h, task) = EngineHandle::spawn(engine());
        let inside = Arc::new(AtomicBool::new(false));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let mut callers = Vec::new();
        for i in 0..64u64 {
            let (h, inside, overlaps) = (h.clone(), inside.clone(), overlaps.clone());
            callers.push(tokio::spawn(async move {
                let mut sum = 0;
                for k in 0..50u64 {
                    let (inside, overlaps) = (inside.clone(), overlaps.clone());
                    sum += h
                        .call(move |_| {
                            if inside.swap(true, Ordering::SeqCst) {
                                overlaps.fetch_add(1, Ordering::SeqCst);
                            }
                            std::hint::spin_loop();
                            inside.store(false, Ordering::SeqCst);
                            i * 1000 + k
                        })
                        .await;
                }
                assert_eq!(sum, (0..50).map(|k| i * 1000 + k).sum::<u64>());
            }));
        }
        for c in callers {
            c.await.expect("every caller got its own answers");
        }
        assert_eq!(
            overlaps.load(Ordering::SeqCst),
            0,
            "two decisions ran at once"
        );
        drop(h);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends once every handle is gone")
            .expect("ended cleanly");
    }

    #[tokio::test]
    async fn a_beat_lane_call_runs_within_its_bound_with_nothing_else_queued() {
        let (h, _task) = EngineHandle::spawn(engine());
        let (tx, rx) = oneshot::channel();
        let queued = Instant::now();
        h.queue_beat(move |_| {
            let _ = tx.send(Instant::now());
        })
        .await;
        let ran = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("a lane call runs without another call to wake the engine")
            .expect("ran");
        // The bound plus scheduling slack on a busy test machine.
        assert!(
            ran - queued < BEAT_LANE + Duration::from_millis(500),
            "{:?}",
            ran - queued
        );
    }

    #[tokio::test]
    async fn a_decision_that_panics_fails_its_caller_and_the_engine_goes_on() {
        let (h, _task) = EngineHandle::spawn(engine());
        let h2 = h.clone();
        let failed =
            tokio::spawn(async move { h2.call(|_| -> u32 { panic!("a bad decision") }).await })
                .await;
        assert!(failed.is_err(), "the caller of a panicking decision fails");
        assert_eq!(
            h.call(|e| e.node_count()).await,
            0,
            "later calls are served"
        );
        assert_eq!(
            h.metrics
                .engine_panics
                .load(std::sync::atomic::Ordering::Relaxed),
            1,
            "counted"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_makes_callers_wait_and_drops_nothing() {
        let (h, _task) = EngineHandle::spawn(engine());
        // Hold the engine so that the queue fills past its bound.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let held = {
            let h = h.clone();
            tokio::spawn(async move {
                h.call(move |_| {
                    let _ = go_rx.recv_timeout(Duration::from_secs(20));
                })
                .await
            })
        };
        let ran = Arc::new(AtomicUsize::new(0));
        let n = QUEUE + 100;
        let mut callers = Vec::with_capacity(n);
        for _ in 0..n {
            let (h, ran) = (h.clone(), ran.clone());
            callers.push(tokio::spawn(async move {
                h.call(move |_| ran.fetch_add(1, Ordering::Relaxed)).await
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.calls.capacity() > 0 {
            assert!(
                Instant::now() < deadline,
                "the queue fills while the engine is held"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        go_tx.send(()).unwrap();
        held.await.unwrap();
        for c in callers {
            c.await.expect("answered");
        }
        assert_eq!(
            ran.load(Ordering::Relaxed),
            n,
            "every call ran, none was dropped"
        );
    }

    /// An HTTP client that hangs up mid-check drops the handler's future; what the wait
    /// registered in the engine is forgotten all the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_dropped_midway_is_forgotten_by_the_engine() {
        let (h, _task) = EngineHandle::spawn(engine());
        let forgot = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (h, forgot) = (h.clone(), forgot.clone());
            tokio::spawn(async move {
                let _forget = h.when_dropped(move |_| forgot.store(true, Ordering::SeqCst));
                std::future::pending::<()>().await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!forgot.load(Ordering::SeqCst), "not while the wait goes on");
        waiter.abort();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !forgot.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "the engine never forgot the wait"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
