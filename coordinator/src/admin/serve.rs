//! Serving the admin router: each connection on a task of its own, with deadlines and limits.
//!
//! # Why not axum's `serve`
//! It sets no timer, so a half-sent request head held its connection for ever. Here hyper serves
//! each connection with a Tokio timer and [`HEAD_READ_TIMEOUT`] on request heads (the body's
//! own deadline is [`super::BODY_READ_TIMEOUT`]), and hyper-util's graceful shutdown lets each
//! connection finish the request in flight.
//!
//! # Connection limits
//! Every connection costs the coordinator a file descriptor and a task, and the token is
//! checked per request, once the connection is already held. Without a cap, one client
//! (authenticated or not) could open connections until the coordinator ran out of descriptors;
//! then the store, the certificate files and every other client would fail with it. So, like
//! Nomad's `http_max_conns_per_client`, one client address holds at most
//! [`ConnectionLimits::per_client`] connections, and all clients together at most
//! [`ConnectionLimits::total`]. A connection over either limit is answered `429
//! resource_exhausted` with the reason, and closed. Those answers are bounded as well: at most
//! [`REFUSALS_IN_FLIGHT`] at once, each with a short head deadline ([`REFUSAL_HEAD_TIMEOUT`]);
//! beyond that, a connection over the limit is closed at once. Refusals are counted on
//! `/metrics` and logged within a budget, with the peer and the reason.
//!
//! Over HTTPS the limits are checked before the TLS handshake ([`super::https`]), so one
//! client cannot hold every handshake slot by opening connections that never say hello; a
//! connection over a limit there is closed before its handshake (no 429: there is no TLS
//! session to send it on), and the slot it was given travels with the stream ([`Admitted`]).

use super::{ApiError, Code};
use crate::limits::LogBudget;
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a request's head may take to arrive on an admin connection (and an idle
/// keep-alive connection may wait for its next one): a client that trickles a head, or opens
/// connections and sends nothing, does not hold them for ever. hyper's own default, and
/// longer than clients keep an idle connection to reuse (ureq: 15 s), so a client does not
/// send its next request into a connection the server is closing.
pub const HEAD_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection over a limit may take to send its request head before it is closed
/// without its 429.
pub const REFUSAL_HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections over a limit that are being answered at once; more are closed unanswered.
pub const REFUSALS_IN_FLIGHT: usize = 64;

/// How many admin connections are held at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// By every client together.
    pub total: usize,
    /// By one client address.
    pub per_client: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            total: 1024,
            per_client: 100,
        }
    }
}

/// The connections held now, in all and by client address.
#[derive(Default)]
struct Held {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// The books of held connections, with the limits they are held to.
struct Books {
    limits: ConnectionLimits,
    held: Mutex<Held>,
    metrics: Arc<Metrics>,
}

/// One held connection: released when it is dropped (its connection's end).
pub struct Slot {
    books: Arc<Books>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut h = self.books.lock();
        h.total -= 1;
        if let Some(n) = h.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                h.by_client.remove(&self.client);
            }
        }
        self.books
            .metrics
            .admin_connections
            .store(h.total as u64, Ordering::Relaxed);
    }
}

impl Books {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection from `client`, or why there is none. Checked and taken under
    /// one lock, so two connections cannot both take the last slot.
    fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Slot, String> {
        let mut h = self.lock();
        let mine = h.by_client.get(&client).copied().unwrap_or(0);
        if mine >= self.limits.per_client {
            return Err(format!(
                "this client ({client}) already holds {mine} admin connections, the most one client may hold (admin_max_connections_per_client); reuse one, or close some"
            ));
        }
        if h.total >= self.limits.total {
            return Err(format!(
                "the admin endpoint already holds {} connections, its limit (admin_max_connections); try again later",
                h.total
            ));
        }
        h.total += 1;
        *h.by_client.entry(client).or_default() += 1;
        self.metrics
            .admin_connections
            .store(h.total as u64, Ordering::Relaxed);
        Ok(Slot {
            books: self.clone(),
            client,
        })
    }
}

/// Who may hold admin connections: the books of held connections and their limits, shared by
/// the accept loop and, over HTTPS, the TLS listener.
#[derive(Clone)]
pub struct Admission {
    books: Arc<Books>,
    budget: Arc<Mutex<LogBudget>>,
}

impl Admission {
    /// Nothing held yet, under `limits`; gauges and refusals go to `metrics`.
    pub fn new(limits: ConnectionLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            books: Arc::new(Books {
                limits,
                held: Mutex::new(Held::default()),
                metrics,
            }),
            budget: Arc::new(Mutex::new(LogBudget::new(1.0, 10.0))),
        }
    }

    /// A slot for a connection from `peer`, or the refusal, counted and logged (within a
    /// budget).
    pub fn admit(&self, peer: SocketAddr) -> Result<Slot, String> {
        self.books.admit(peer.ip()).inspect_err(|why| {
            self.books
                .metrics
                .admin_connections_refused
                .fetch_add(1, Ordering::Relaxed);
            let allowed = self
                .budget
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .allow(Instant::now());
            if let Some(suppressed) = allowed {
                tracing::warn!(%peer, suppressed_since_last = suppressed, "admin endpoint refused a connection: {why}");
            }
        })
    }
}

/// A stream admitted before it reached the accept loop (over HTTPS, before its handshake),
/// holding its slot until it is dropped.
pub struct Admitted<Io> {
    io: Io,
    _slot: Slot,
}

impl<Io> Admitted<Io> {
    /// `io`, holding `slot`.
    pub fn new(io: Io, slot: Slot) -> Self {
        Self { io, _slot: slot }
    }
}

impl<Io: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Admitted<Io> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Admitted<Io> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Where a connection is admitted.
pub enum Admit {
    /// In the accept loop; a connection over a limit is answered 429 (plain HTTP).
    AtAccept(Admission),
    /// Before the listener yields it (HTTPS: before the handshake); the slot is in the stream.
    ByListener,
}

/// Serves the admin router on `listener` (plain TCP or HTTPS) until `stopped` resolves, then
/// lets each connection finish its request in flight.
pub async fn serve<L>(
    mut listener: L,
    router: axum::Router,
    admit: Admit,
    stopped: impl Future<Output = ()> + Send + 'static,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_READ_TIMEOUT);
    let mut refuse = hyper::server::conn::http1::Builder::new();
    refuse
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_HEAD_TIMEOUT)
        .keep_alive(false);
    let refusals = Arc::new(tokio::sync::Semaphore::new(REFUSALS_IN_FLIGHT));
    tokio::pin!(stopped);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stopped => break,
        };
        let slot = match &admit {
            Admit::ByListener => None,
            Admit::AtAccept(admission) => match admission.admit(peer) {
                Ok(slot) => Some(slot),
                Err(why) => {
                    // Answered if an answer is affordable, else closed at once (dropped).
                    if let Ok(permit) = refusals.clone().try_acquire_owned() {
                        let service = hyper::service::service_fn(move |_req| {
                            let answer = ApiError::new(Code::ResourceExhausted, why.clone());
                            std::future::ready(Ok::<_, std::convert::Infallible>(
                                answer.unlogged_response(),
                            ))
                        });
                        let conn = refuse.serve_connection(TokioIo::new(io), service);
                        tokio::spawn(async move {
                            let _permit = permit;
                            let _ = conn.await;
                        });
                    }
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        // No upgrades: the API has no WebSocket (its event stream is server-sent events).
        let conn = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            let _slot = slot;
            // A connection's end (a closed peer, a head that came too late) is its own.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn books(total: usize, per_client: usize) -> Arc<Books> {
        Arc::new(Books {
            limits: ConnectionLimits { total, per_client },
            held: Mutex::new(Held::default()),
            metrics: Arc::new(Metrics::default()),
        })
    }

    #[test]
    fn a_client_over_its_share_or_everyone_over_the_total_is_refused_until_a_slot_frees() {
        let b = books(3, 2);
        let (a, c) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = b.admit(a).unwrap();
        let _a2 = b.admit(a).unwrap();
        let why = b.admit(a).err().unwrap();
        assert!(
            why.contains("already holds 2") && why.contains("per_client"),
            "{why}"
        );
        let _c1 = b.admit(c).unwrap();
        let why = b.admit(c).err().unwrap();
        assert!(
            why.contains("holds 3 connections") && why.contains("admin_max_connections"),
            "{why}"
        );
        assert_eq!(b.metrics.admin_connections.load(Ordering::Relaxed), 3);
        drop(a1);
        assert_eq!(b.metrics.admin_connections.load(Ordering::Relaxed), 2);
        let _c2 = b.admit(c).unwrap();
        assert!(b.admit(a).is_err(), "the total is reached again");
    }

    #[test]
    fn released_slots_leave_no_trace() {
        let b = books(10, 10);
        let ip: IpAddr = "::1".parse().unwrap();
        let slots: Vec<_> = (0..10).map(|_| b.admit(ip).unwrap()).collect();
        drop(slots);
        let h = b.lock();
        assert_eq!(h.total, 0);
        assert!(h.by_client.is_empty());
    }
}
