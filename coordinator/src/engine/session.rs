//! A registered session's messages, as the engine takes them: one front door shared by the
//! QUIC server and the deterministic simulation, so the simulation drives the same dispatch
//! the coordinator runs. What needs the runtime (waiting for a ticket before the session ends,
//! signing a certificate with the CA) comes back as a [`Handled`] for it to carry out.

use super::core::Engine;
use crate::store::Ticket;
use tandem_common::ids::NodeId;
use tandem_common::proto::AgentMsg;

/// What the session's runtime still has to do with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// Decided: whatever answers it was queued to the session's outbox.
    Done,
    /// The agent left on purpose: end the session once the ticket (if any) is durable.
    Left {
        /// Durable once this is: the node is recorded as left.
        ticket: Option<Ticket>,
        /// The agent's reason.
        reason: String,
    },
    /// An agent's planned restart asks for a hand-over (see `handover`): the runtime waits
    /// until the node's hold is durable, then asks [`Engine::grant_handover`] for the lease
    /// and answers.
    Handover {
        /// The agent's request number.
        request: u64,
        /// Durable once this is: the node's hold; `Err`: refused, with why.
        hold: Result<Ticket, String>,
    },
    /// A certificate renewal: the runtime holds the CA, signs the CSR and answers.
    Renew {
        /// The agent's certificate signing request.
        csr_pem: String,
    },
    /// Refused: a registered session may not send this (a second Hello).
    Refused(&'static str),
}

impl Engine {
    /// Takes one control-stream message from `node`'s live session `session`.
    pub fn on_agent_msg(&self, node: &NodeId, session: u64, msg: AgentMsg) -> Handled {
        match msg {
            AgentMsg::Goodbye { reason } => {
                let ticket = match self.left(node, session, &reason) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!(%node, error = %e, "could not record that the node left");
                        None
                    }
                };
                Handled::Left { ticket, reason }
            }
            AgentMsg::HardwareUpdate(delta) => {
                if let Err(e) = self.hardware_update(node, *delta) {
                    tracing::error!(%node, error = %e, "could not record a hardware update");
                }
                Handled::Done
            }
            AgentMsg::Pong { nonce } => {
                self.pong(nonce);
                Handled::Done
            }
            AgentMsg::JobStarted {
                job_id,
                fencing_token,
            } => {
                if let Err(e) = self.job_started(node, job_id, fencing_token) {
                    tracing::error!(%node, error = %e, "could not record a job start");
                }
                Handled::Done
            }
            AgentMsg::JobExited(r) => {
                tracing::info!(%node, job = %r.job_id, token = r.fencing_token, code = ?r.code, signal = ?r.signal, cause = r.cause.as_str(), reason = %r.reason, "job copy ended");
                self.exits_reported(node, std::slice::from_ref(&r));
                Handled::Done
            }
            m @ AgentMsg::Logs { .. } => {
                self.logs_arrived(m);
                Handled::Done
            }
            AgentMsg::JobsHeld { jobs, exited, .. } => {
                self.jobs_held(node, &jobs, &exited);
                Handled::Done
            }
            AgentMsg::RenewCertificate { csr_pem } => Handled::Renew { csr_pem },
            AgentMsg::Usage(u) => {
                self.usage.record(node, *u, self.clock.now());
                Handled::Done
            }
            AgentMsg::Readopted { jobs } => {
                self.readopted(node, &jobs);
                Handled::Done
            }
            AgentMsg::RequestHandover { request, hold_ms } => {
                let hold = std::time::Duration::from_millis(hold_ms.into());
                let hold = self.begin_node_hold(node, session, hold, self.clock.now());
                Handled::Handover { request, hold }
            }
            AgentMsg::Hello(_) | AgentMsg::CheckJoin(_) => {
                self.metrics
                    .bad_messages
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Handled::Refused("a second Hello (or a join check) on a registered connection")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemStore, StateStore};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    fn engine() -> (Engine, Arc<MemStore>) {
        Engine::for_tests()
    }

    #[test]
    fn a_second_hello_is_refused_and_counted() {
        let (e, _) = engine();
        let node = NodeId::random();
        let hello = AgentMsg::Hello(Box::new(tandem_common::proto::Hello {
            protocol_version: tandem_common::proto::PROTOCOL_VERSION,
            agent_version: "test".into(),
            name: "a".into(),
            node_id: Some(node.clone()),
            join: None,
            datagrams: true,
            jobs: Vec::new(),
            exited: Vec::new(),
            hardware: Default::default(),
        }));
        assert!(matches!(
            e.on_agent_msg(&node, 1, hello),
            Handled::Refused(_)
        ));
        assert_eq!(e.metrics.bad_messages.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_goodbye_from_a_session_that_is_not_live_records_nothing() {
        let (e, store) = engine();
        let node = NodeId::random();
        let bye = AgentMsg::Goodbye {
            reason: "shutting down".into(),
        };
        assert_eq!(
            e.on_agent_msg(&node, 7, bye),
            Handled::Left {
                ticket: None,
                reason: "shutting down".into()
            }
        );
        assert_eq!(store.last_ticket(), 0, "nothing was applied to the store");
    }

    #[test]
    fn reports_about_jobs_the_node_does_not_hold_write_nothing_that_must_be_flushed() {
        let (e, store) = engine();
        let node = NodeId::random();
        let start = AgentMsg::JobStarted {
            job_id: "j-unknown".into(),
            fencing_token: 9,
        };
        assert_eq!(e.on_agent_msg(&node, 1, start), Handled::Done);
        assert_eq!(store.pending(), 0);
    }
}
