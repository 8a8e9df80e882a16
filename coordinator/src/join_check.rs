//! `CheckJoin`: would this join be admitted? Answered without joining.
//!
//! `tandem-agent check` asks before an installer relies on a token, so that a wrong, expired,
//! revoked or used-up token, a cluster that is gone or a node under the cluster's minimums is
//! found at install time and not in the agent's log after it started retrying. The verdicts
//! must never disagree with a real join, so each step calls the very code a join runs:
//! [`Joiner::verify_token`] and `TokenRecord::usable` for the token, the engine's cluster look-up
//! and `Engine::admit_to_cluster` for the admission, `check_node_name` and the name look-up for
//! the name. It records nothing (no store write: no use is counted, no node is made, no serial
//! reserved), and a failed token check counts as a failed join of the source address in
//! [`crate::limits::FailedJoins`], so checking cannot be used to guess tokens faster than
//! joining.
//!
//! With a client certificate and no token, it judges the certificate instead, by the rule
//! `register` applies (a member whose current or previous serial it is).

use crate::engine::MembershipError;
use crate::join::{check_node_name, Joiner};
use std::net::SocketAddr;
use tandem_common::ids::NodeId;
use tandem_common::proto::{CheckJoin, JoinCheck, RejectCode, Verdict};

fn reason(e: MembershipError) -> String {
    match e {
        MembershipError::Refused { reason, .. } => reason,
        other => format!("the coordinator could not read its store: {other}"),
    }
}

fn skipped(why: &str) -> Verdict {
    Verdict::Skipped(why.into())
}

impl Joiner {
    /// Judges `req` from `peer`; `cert` is the node id and serial of the client certificate
    /// the connection presented, if any.
    pub async fn check(
        &self,
        req: &CheckJoin,
        cert: Option<(NodeId, u64)>,
        peer: SocketAddr,
    ) -> JoinCheck {
        let Some(tok) = &req.token else {
            return self.check_certificate(cert).await;
        };
        let mut failures = self.lock.lock().await;
        let now = std::time::Instant::now();
        if let Err(wait) = failures.check(peer.ip(), now) {
            return JoinCheck {
                token: Verdict::Failed(format!(
                    "too many failed joins from {}; try again in {} s",
                    peer.ip(),
                    wait.as_secs().max(1)
                )),
                cluster: skipped("the token was not judged"),
                admission: skipped("the token was not judged"),
            };
        }
        let rec = match self.verify_token(&tok.token_id, &tok.token_secret) {
            Ok(r) => r,
            Err(e) => {
                if matches!(
                    e,
                    MembershipError::Refused {
                        code: RejectCode::BadToken,
                        ..
                    }
                ) {
                    failures.failed(peer.ip(), now);
                }
                return JoinCheck {
                    token: Verdict::Failed(reason(e)),
                    cluster: skipped("the token step failed"),
                    admission: skipped("the token step failed"),
                };
            }
        };
        let now_ms = tandem_common::time::unix_ms();
        if let Err(r) = rec.usable(now_ms) {
            // A join refuses it as a bad token, which counts as a failure: so does a check.
            failures.failed(peer.ip(), now);
            return JoinCheck {
                token: Verdict::Failed(r.into()),
                cluster: skipped("the token step failed"),
                admission: skipped("the token step failed"),
            };
        }
        drop(failures);
        let token = Verdict::Ok(format!(
            "token {}: {} of {} uses left, expires in {} s",
            rec.id,
            rec.uses_allowed - rec.uses,
            rec.uses_allowed,
            rec.expires_ms.saturating_sub(now_ms) / 1000
        ));
        let cluster = match &rec.cluster {
            None => Verdict::Ok("the token names no cluster; the node joins none".into()),
            Some(cid) => match self.engine.cluster(cid).await {
                Some(c) => {
                    let mode = match c.mode {
                        crate::model::ClusterMode::HaPairs => "ha_pairs",
                        crate::model::ClusterMode::Pool => "pool",
                    };
                    Verdict::Ok(format!("cluster {} ({}, {mode})", c.name, c.id))
                }
                None => Verdict::Failed(format!(
                    "the join token names cluster {cid}, which no longer exists"
                )),
            },
        };
        if !cluster.is_ok() {
            return JoinCheck {
                token,
                cluster,
                admission: skipped("the cluster step failed"),
            };
        }
        JoinCheck {
            token,
            cluster,
            admission: self.check_admission(req, rec.cluster.clone()).await,
        }
    }

    /// The name rules and the cluster's rules, as `join_locked` applies them.
    async fn check_admission(&self, req: &CheckJoin, cluster: Option<String>) -> Verdict {
        if let Err(r) = check_node_name(&req.name) {
            return Verdict::Failed(r);
        }
        if let Some(other) = self.node_named(&req.name).await {
            return Verdict::Failed(format!(
                "node name `{}` is already used by node {}; remove that node first or choose another --name",
                req.name, other.id
            ));
        }
        let hw = &req.hardware;
        let what = format!(
            "node {} ({} cores, {} MiB, model `{}`)",
            req.name,
            hw.cpu.logical_cores,
            hw.memory.total_bytes >> 20,
            hw.model()
        );
        match cluster {
            None => Verdict::Ok(format!("{what} may join")),
            Some(cid) => match self.admit_to_cluster(cid, &req.name, hw).await {
                Ok(c) => Verdict::Ok(format!("{what} meets the rules of cluster {}", c.name)),
                Err(e) => Verdict::Failed(reason(e)),
            },
        }
    }

    async fn check_certificate(&self, cert: Option<(NodeId, u64)>) -> JoinCheck {
        let not_a_join = || skipped("the node has its identity; it does not join again");
        let Some((node, serial)) = cert else {
            return JoinCheck {
                token: Verdict::Failed(
                    "no join token and no client certificate: nothing to check".into(),
                ),
                cluster: skipped("nothing to check"),
                admission: skipped("nothing to check"),
            };
        };
        let token = match self
            .engine
            .call({
                let node = node.clone();
                move |e| e.certificate_accepted(&node, serial)
            })
            .await
        {
            Ok(name) => Verdict::Ok(format!(
                "the certificate (serial {serial}) is accepted: node {name} ({node})"
            )),
            Err(r) => Verdict::Failed(r),
        };
        JoinCheck {
            token,
            cluster: not_a_join(),
            admission: not_a_join(),
        }
    }
}
