//! `tandem-agent check`: would this node join (or reconnect) if it started now?
//!
//! An installer finds a wrong, expired or used-up token, or a firewall that drops UDP, here
//! and not in the agent's log after it started retrying. Six steps, in order, each `ok` or the
//! reason it failed; a failed step skips the ones after it:
//!
//! 1. `resolve`: the coordinator's address resolves;
//! 2. `reach`: a QUIC handshake gets an answer within the deadline (UDP reaches the port);
//! 3. `ca`: the coordinator's CA matches the token's pin (or, with an identity, the CA the
//!    node joined);
//! 4. `token`: the token is known, its secret right, not expired, revoked or used up (or, with
//!    an identity, the certificate is still accepted);
//! 5. `cluster`: the cluster the token names exists;
//! 6. `admission`: this node (its name and its own hardware report, from the real probe)
//!    meets the cluster's minimums and, for `ha_pairs`, the same-model rule.
//!
//! Steps 4-6 are the coordinator's verdicts on a `CheckJoin` (protocol 3), which runs the
//! code a join runs and records nothing, so the check spends no token use and cannot disagree
//! with a real join. The token's secret is sent only after step 3 passed, as for a join.
//!
//! Exit codes ([`Report::exit_code`]): 0 when every step passed, `10 + step` for the first
//! failed step (11-16), 2 for bad input (a malformed token, an unreadable file, nothing to
//! check with).

use crate::config::{ConfigError, RawConfig};
use crate::identity::Identity;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_common::proto::*;
use tandem_common::tls;
use tandem_common::token::JoinToken;

/// The default deadline of the handshake (step 2) and of the coordinator's answer.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(3);

/// Exit code for bad input (nothing was checked).
pub const EXIT_BAD_INPUT: u8 = 2;

/// Why the check could not even start: bad input, never a failed step.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The config file or a flag is wrong (a malformed token, an unreadable token file).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Neither a token nor an identity in the state dir.
    #[error("nothing to check with: pass --token or --token-file, or --state-dir of a node that has joined")]
    NothingToCheck,
    /// The GPU fixture does not load.
    #[error("{0}")]
    Fixture(String),
    /// The identity in the state dir cannot be read.
    #[error("reading the identity in {dir}: {source}")]
    Identity {
        /// The state dir.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One step's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// Passed: what was found.
    Ok(String),
    /// Failed: why.
    Failed(String),
    /// Not judged: why.
    Skipped(String),
}

/// One step.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// 1-6.
    pub step: u8,
    /// `resolve`, `reach`, `ca`, `token`, `cluster`, `admission`.
    pub name: &'static str,
    /// What came of it.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The whole check.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `token` or `identity`: what was checked.
    pub mode: &'static str,
    /// The coordinator as given.
    pub coordinator: String,
    /// Every step, in order.
    pub steps: Vec<Step>,
}

const NAMES: [&str; 6] = ["resolve", "reach", "ca", "token", "cluster", "admission"];

impl Report {
    fn new(mode: &'static str, coordinator: String) -> Self {
        Report {
            mode,
            coordinator,
            steps: Vec::new(),
        }
    }

    fn push(&mut self, outcome: Outcome) {
        let n = self.steps.len();
        self.steps.push(Step {
            step: n as u8 + 1,
            name: NAMES[n],
            outcome,
        });
    }

    /// Marks every step not judged yet as skipped, because of step `after`.
    fn skip_rest(&mut self) {
        let failed = self.steps.len();
        while self.steps.len() < NAMES.len() {
            self.push(Outcome::Skipped(format!("step {failed} failed")));
        }
    }

    /// The first failed step, if any.
    pub fn failed_step(&self) -> Option<u8> {
        self.steps
            .iter()
            .find(|s| matches!(s.outcome, Outcome::Failed(_)))
            .map(|s| s.step)
    }

    /// 0, or 10 + the first failed step.
    pub fn exit_code(&self) -> u8 {
        self.failed_step().map_or(0, |s| 10 + s)
    }

    /// For people: one line per step.
    pub fn render_table(&self) -> String {
        let mut out = format!("checking {} ({})\n", self.coordinator, self.mode);
        for s in &self.steps {
            let (word, detail) = match &s.outcome {
                Outcome::Ok(d) => ("ok", d),
                Outcome::Failed(d) => ("FAILED", d),
                Outcome::Skipped(d) => ("skipped", d),
            };
            out.push_str(&format!(
                "{} {:<10} {:<7} {}\n",
                s.step, s.name, word, detail
            ));
        }
        out
    }

    /// For scripts: the steps, the first failed one and the exit code.
    pub fn render_json(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["ok"] = self.failed_step().is_none().into();
        v["failed_step"] = self.failed_step().into();
        v["exit_code"] = self.exit_code().into();
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }
}

fn verdict(v: Verdict) -> Outcome {
    match v {
        Verdict::Ok(s) => Outcome::Ok(s),
        Verdict::Failed(s) => Outcome::Failed(s),
        Verdict::Skipped(s) => Outcome::Skipped(s),
    }
}

/// What to check with.
enum Credential {
    Token(JoinToken),
    Identity(Box<Identity>),
}

/// Runs the check. `Err` only for bad input; every failed step is in the report.
pub async fn run(raw: RawConfig, deadline: Duration) -> Result<Report, CheckError> {
    let token_text = match (&raw.token, &raw.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let credential = match token_text {
        Some(t) => Credential::Token(
            t.parse::<JoinToken>()
                .map_err(|e| raw.origin.invalid("token", e.to_string()))?,
        ),
        None => {
            let dir = raw.state_dir.clone().ok_or(CheckError::NothingToCheck)?;
            match Identity::load(&dir) {
                Ok(Some(id)) => Credential::Identity(Box::new(id)),
                Ok(None) => return Err(CheckError::NothingToCheck),
                Err(source) => return Err(CheckError::Identity { dir, source }),
            }
        }
    };
    let coordinator = raw.coordinator.clone().ok_or_else(|| {
        raw.origin
            .invalid("coordinator", "is required (--coordinator HOST:PORT)")
    })?;
    if let Some(path) = &raw.gpu_fixture {
        crate::probe::fixture::load(path).map_err(|e| CheckError::Fixture(e.to_string()))?;
    }
    let mode = match credential {
        Credential::Token(_) => "token",
        Credential::Identity(_) => "identity",
    };
    let mut report = Report::new(mode, coordinator.clone());

    // 1. resolve
    let addr = match tokio::time::timeout(deadline, tokio::net::lookup_host(&coordinator)).await {
        Ok(Ok(mut addrs)) => addrs.next(),
        Ok(Err(e)) => {
            report.push(Outcome::Failed(format!(
                "`{coordinator}` does not resolve: {e}"
            )));
            report.skip_rest();
            return Ok(report);
        }
        Err(_) => {
            report.push(Outcome::Failed(format!(
                "`{coordinator}` did not resolve within {} ms",
                deadline.as_millis()
            )));
            report.skip_rest();
            return Ok(report);
        }
    };
    let Some(addr) = addr else {
        report.push(Outcome::Failed(format!(
            "`{coordinator}` resolves to no address"
        )));
        report.skip_rest();
        return Ok(report);
    };
    report.push(Outcome::Ok(format!("{coordinator} is {addr}")));

    let outcome = reach_and_ask(&raw, &credential, addr, deadline).await;
    for o in outcome {
        report.push(o);
        if matches!(
            report.steps.last().map(|s| &s.outcome),
            Some(Outcome::Failed(_))
        ) {
            break;
        }
    }
    report.skip_rest();
    Ok(report)
}

/// Steps 2-6.
async fn reach_and_ask(
    raw: &RawConfig,
    credential: &Credential,
    addr: SocketAddr,
    deadline: Duration,
) -> Vec<Outcome> {
    let bind = raw.bind_addr.unwrap_or(if addr.is_ipv6() {
        IpAddr::from([0u16; 8])
    } else {
        IpAddr::from([0u8; 4])
    });
    let endpoint = match quinn::Endpoint::client(SocketAddr::new(bind, 0)) {
        Ok(e) => e,
        Err(e) => {
            return vec![Outcome::Failed(format!(
                "cannot bind a UDP socket on {bind}: {e}"
            ))]
        }
    };
    let client = match credential {
        Credential::Token(t) => tls::join_client_config(t.ca_pin),
        Credential::Identity(id) => tls::node_client_config(&id.ca_pem, &id.cert_pem, &id.key_pem),
    };
    let mut client = match client {
        Ok(c) => c,
        Err(e) => return vec![Outcome::Failed(format!("cannot set up TLS: {e}"))],
    };
    client.transport_config(Arc::new(tandem_common::transport::transport_config()));
    let started = Instant::now();
    let connecting = match endpoint.connect_with(client, addr, tls::SERVER_NAME) {
        Ok(c) => c,
        Err(e) => return vec![Outcome::Failed(format!("cannot connect to {addr}: {e}"))],
    };
    let mut out = Vec::new();
    let conn = match tokio::time::timeout(deadline, connecting).await {
        Err(_) => {
            out.push(Outcome::Failed(format!(
                "no QUIC answer from {addr} within {} ms: nothing listens on that UDP port, or a firewall drops UDP",
                deadline.as_millis()
            )));
            return out;
        }
        Ok(Err(e)) => {
            out.push(Outcome::Ok(format!("{addr} answered over UDP")));
            let ca = match credential {
                Credential::Token(t) if tls::is_pin_mismatch(&e) => format!(
                    "the coordinator's CA does not match the token's pin {}: this token is for another coordinator",
                    t.ca_pin
                ),
                _ if is_revoked(&e) => {
                    out.push(Outcome::Ok("the coordinator's CA is the node's".into()));
                    out.push(Outcome::Failed("the coordinator refused this node's certificate as revoked: the node was removed; delete the state dir and join again with a new token".into()));
                    return out;
                }
                Credential::Identity(_) => format!(
                    "the TLS handshake failed (is this the coordinator the node joined?): {e}"
                ),
                Credential::Token(_) => format!("the TLS handshake failed: {e}"),
            };
            out.push(Outcome::Failed(ca));
            return out;
        }
        Ok(Ok(c)) => c,
    };
    out.push(Outcome::Ok(format!(
        "QUIC handshake with {addr} in {} ms",
        started.elapsed().as_millis()
    )));
    out.push(Outcome::Ok(match credential {
        Credential::Token(t) => {
            format!("the coordinator's CA matches the token's pin {}", t.ca_pin)
        }
        Credential::Identity(_) => {
            "the coordinator's certificate is signed by the CA the node joined".into()
        }
    }));
    let ask = AgentMsg::CheckJoin(Box::new(CheckJoin {
        protocol_version: PROTOCOL_VERSION,
        name: match credential {
            Credential::Identity(id) => id.name.clone(),
            Credential::Token(_) => raw
                .name
                .clone()
                .unwrap_or_else(|| sysinfo::System::host_name().unwrap_or_else(|_| "node".into())),
        },
        token: match credential {
            Credential::Token(t) => Some(CheckToken {
                token_id: t.id.clone(),
                token_secret: t.secret.clone(),
            }),
            Credential::Identity(_) => None,
        },
        hardware: crate::probe::Prober::new(crate::probe::ProbeOptions {
            gpu_fixture: raw.gpu_fixture.clone(),
            ..Default::default()
        })
        .report()
        .await,
    }));
    let answer = match conn.open_bi().await {
        Ok((mut send, mut recv)) => tokio::time::timeout(
            deadline.max(Duration::from_secs(5)),
            tandem_common::transport::exchange_hello(&conn, &mut send, &mut recv, &ask),
        )
        .await
        .unwrap_or_else(|_| Err("the coordinator did not answer the check in time".into())),
        Err(e) => Err(format!("cannot open a stream: {e}")),
    };
    conn.close(0u32.into(), b"check done");
    endpoint.close(0u32.into(), b"check done");
    match answer {
        Ok(CoordMsg::JoinCheck(jc)) => {
            out.push(verdict(jc.token));
            out.push(verdict(jc.cluster));
            out.push(verdict(jc.admission));
        }
        Ok(CoordMsg::Reject(r)) if r.reason.contains("not a Hello") => {
            out.push(Outcome::Failed(format!(
                "the coordinator is too old to answer checks (protocol {}+ needed): {}",
                CHECK_PROTOCOL_VERSION, r.reason
            )))
        }
        Ok(CoordMsg::Reject(r)) => out.push(Outcome::Failed(r.reason)),
        Ok(other) => out.push(Outcome::Failed(format!("unexpected answer: {other:?}"))),
        Err(e) => out.push(Outcome::Failed(e)),
    }
    out
}

fn is_revoked(e: &quinn::ConnectionError) -> bool {
    let revoked = tandem_common::wire::TlsAlert::CertificateRevoked.transport_code();
    match e {
        quinn::ConnectionError::TransportError(t) => t.code == revoked,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code == revoked,
        _ => false,
    }
}
