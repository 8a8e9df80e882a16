//! HTTPS for the admin endpoint (`admin_tls = true`).
//!
//! The bearer token must not cross a network in clear text, so an operator who exposes the
//! admin endpoint beyond loopback turns this on. The certificate comes from the coordinator's
//! own CA (re-issued at every start, like the QUIC one), so `tandemctl --ca-file
//! DATA_DIR/ca.pem` verifies it without any public PKI.
//!
//! TLS handshakes run on tasks of their own, never in the accept loop: a client that opens a
//! TCP connection and then says nothing must not stall everyone else. Handshakes are bounded in
//! number and in time, and failures are logged within a budget, with the peer and the reason.
//! A connection is admitted ([`super::serve::Admission`]) before its handshake: one client
//! holds at most its share of the handshake slots too, and a connection over a limit is closed
//! before it costs a handshake.

use super::serve::{Admission, Admitted};
use crate::limits::LogBudget;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at most; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

/// A listener that yields connections whose TLS handshake is complete.
pub struct HttpsListener {
    rx: mpsc::Receiver<(Admitted<TlsStream<TcpStream>>, SocketAddr)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl HttpsListener {
    /// Wraps a bound TCP listener; connections are admitted by `admission`.
    pub fn new(
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        admission: Admission,
    ) -> std::io::Result<HttpsListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(tls);
        let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let budget = Arc::new(Mutex::new(LogBudget::new(5.0, 20.0)));
        let accept_task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "admin endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Over a limit: closed before it costs a handshake (the refusal is logged).
                let Ok(slot) = admission.admit(peer) else {
                    continue;
                };
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let budget = budget.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let why =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let _ = tx.send((Admitted::new(stream, slot), peer)).await;
                                return;
                            }
                            Ok(Err(e)) => format!("TLS handshake failed: {e}"),
                            Err(_) => {
                                format!("no TLS handshake within {} s", HANDSHAKE_TIMEOUT.as_secs())
                            }
                        };
                    let allowed = budget
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .allow(Instant::now());
                    if let Some(suppressed) = allowed {
                        tracing::warn!(%peer, suppressed_since_last = suppressed, "admin endpoint refused a connection: {why}");
                    }
                });
            }
        });
        Ok(HttpsListener {
            rx,
            local,
            accept_task,
        })
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = Admitted<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task ended (only when the runtime shuts down): never yield again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
