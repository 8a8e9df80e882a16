//! Reports from agents and users: a node registering with what it holds, a job that started
//! or exited, a stop. Each report about a token that is not the job's current one is about an
//! old copy: it is ignored, or the copy is killed; it never changes the job.

use super::work::Work;
use super::{restart_backoff_ms, Reported};
use crate::jobs::decision::Decision;
use crate::jobs::fencing::{is_current, next_token};
use crate::jobs::model::{Exit, JobRecord, JobState, RestartPolicy};
use std::collections::BTreeSet;
use tandem_common::ids::NodeId;

/// `NodeUp`: kill what the node holds that is not current; confirm what is; place again what it
/// should hold and does not.
pub(super) fn on_up(w: &mut Work, node: &NodeId, running: &[Reported], placed_since: &[Reported]) {
    let name = w.name(node);
    let mut reported: Vec<&Reported> = running.iter().collect();
    reported.sort_by(|a, b| (&a.job, a.fencing_token).cmp(&(&b.job, b.fencing_token)));
    let mut confirmed = BTreeSet::new();
    for r in reported {
        match w.job(&r.job) {
            Some(j) if j.node() == Some(node) && is_current(&j, r.fencing_token) => {
                confirmed.insert(j.id.clone());
                if j.state != JobState::Running {
                    w.push(Decision::Started {
                        job: j.id,
                        fencing_token: r.fencing_token,
                    });
                }
            }
            j => w.push(Decision::KillStale {
                node: node.clone(),
                job: r.job.clone(),
                fencing_token: r.fencing_token,
                reason: stale(w, j.as_ref(), &r.job, &name, r.fencing_token),
            }),
        }
    }
    for job in w.on_node(node) {
        if confirmed.contains(&job.id) {
            continue;
        }
        // Placed here after the report was made: its start may be on its way.
        if job.current.as_ref().is_some_and(|p| {
            placed_since
                .iter()
                .any(|r| r.job == job.id && r.fencing_token == p.fencing_token)
        }) {
            continue;
        }
        // Its start is withheld until an older copy elsewhere has ended (a move): the node
        // was never sent it, so not holding it is no loss.
        if job.current.as_ref().is_some_and(|p| p.after.is_some()) {
            continue;
        }
        let d = match w.choose(&job, Some(node)) {
            Ok(to) => Decision::Replace {
                job: job.id.clone(),
                from: node.clone(),
                reason: format!(
                    "{name} registered without {} (its copy was fenced or never started); it now \
                     runs on {}",
                    job.id,
                    w.describe(&to)
                ),
                fencing_token: next_token(&job),
                to,
                end_reason: "lost by the node".into(),
            },
            Err(e) => Decision::Pending {
                job: job.id.clone(),
                end_reason: Some("lost by the node".into()),
                reason: format!("{name} registered without it and it fits nowhere: {e}"),
            },
        };
        w.push(d);
    }
}

/// Why a report about `token` of `id` on `node` is about an old copy.
fn stale(w: &Work, job: Option<&JobRecord>, id: &str, node: &str, token: u64) -> String {
    match job.and_then(|j| j.current.as_ref()) {
        None if job.is_none() => format!("{node} holds job {id}, which does not exist"),
        None => format!("{node} holds {id} with token {token}, but the job has no placement"),
        Some(p) => format!(
            "{node} holds {id} with token {token}; the current copy has token {} on {}",
            p.fencing_token,
            w.name(&p.node)
        ),
    }
}

pub(super) fn job_started(w: &mut Work, id: &str, node: &NodeId, token: u64) -> BTreeSet<String> {
    let job = w.job(id);
    match &job {
        Some(j) if j.node() == Some(node) && is_current(j, token) => {
            if j.state != JobState::Running {
                w.push(Decision::Started {
                    job: id.to_string(),
                    fencing_token: token,
                });
            }
        }
        _ => {
            let reason = stale(w, job.as_ref(), id, &w.name(node), token);
            w.push(Decision::KillStale {
                node: node.clone(),
                job: id.to_string(),
                fencing_token: token,
                reason,
            });
        }
    }
    job.map(|j| j.spec.cluster).into_iter().collect()
}

/// The job a report about copy `token` on `node` is about, with its cluster, when that copy is
/// the job's current one. Otherwise the report (`what`, e.g. `exit (exited 0)`) is about an old
/// copy or an unknown job: it is ignored with the reason, and `Err` carries the clusters to
/// reconcile.
fn current_copy(
    w: &mut Work,
    id: &str,
    node: &NodeId,
    token: u64,
    what: &str,
) -> Result<(JobRecord, BTreeSet<String>), BTreeSet<String>> {
    let Some(job) = w.job(id) else {
        w.push(Decision::Ignore {
            job: Some(id.to_string()),
            reason: format!("{what} of job {id}, which does not exist"),
        });
        return Err(BTreeSet::new());
    };
    let clusters = BTreeSet::from([job.spec.cluster.clone()]);
    if job.node() != Some(node) || !is_current(&job, token) {
        let reason = format!(
            "ignored {what}: {}",
            stale(w, Some(&job), id, &w.name(node), token)
        );
        w.push(Decision::Ignore {
            job: Some(id.to_string()),
            reason,
        });
        return Err(clusters);
    }
    Ok((job, clusters))
}

pub(super) fn job_exited(
    w: &mut Work,
    id: &str,
    node: &NodeId,
    token: u64,
    exit: Exit,
    by_the_job: bool,
) -> BTreeSet<String> {
    if by_the_job {
        if let Some(clusters) = ended_while_moving(w, id, node, token, exit) {
            return clusters;
        }
    }
    let (job, clusters) = match current_copy(w, id, node, token, &format!("exit ({exit})")) {
        Ok(found) => found,
        Err(clusters) => return clusters,
    };
    let end_reason = exit.to_string();
    let spec = &job.spec;
    let wants = wants_restart(spec.restart, exit);
    let policy = policy_name(spec.restart);
    if wants && job.restarts < spec.max_restarts {
        let attempt = job.restarts + 1;
        let d = match w.choose(&job, Some(node)) {
            Ok(to) => Decision::Restart {
                job: id.to_string(),
                from: node.clone(),
                reason: format!(
                    "{end_reason}; restart {attempt} of {} (restart: {policy}) on {}",
                    spec.max_restarts,
                    w.describe(&to)
                ),
                fencing_token: next_token(&job),
                to,
                attempt,
                backoff_ms: restart_backoff_ms(attempt),
                end_reason,
            },
            Err(e) => Decision::Pending {
                job: id.to_string(),
                reason: format!("{end_reason}; to be restarted but it fits nowhere: {e}"),
                end_reason: Some(end_reason),
            },
        };
        w.push(d);
    } else {
        w.push(ended(&job, exit, wants, String::new()));
    }
    clusters
}

/// The copy that ended is not the job's current one, but the old copy a move still waits
/// for (the job was drained, moved or its node removed, and the copy ended by itself before
/// the stop reached it). The job ran to its end there: if its policy does not start it
/// again, it ends now (`Some`), and the move's withheld start never goes out. Without this the
/// move's start was released by that very exit, and a `restart: never` job that had run to
/// its end ran a second time (found by the simulation, seed 107385). If the policy restarts
/// it, the move's new copy is that restart (`None`: the report is stale, the move goes on).
fn ended_while_moving(
    w: &mut Work,
    id: &str,
    node: &NodeId,
    token: u64,
    exit: Exit,
) -> Option<BTreeSet<String>> {
    let job = w.job(id).filter(|j| !j.state.is_terminal())?;
    let waits = job
        .current
        .as_ref()
        .and_then(|p| p.after.as_ref())
        .or(job.waits_for.as_ref())?;
    if waits.node != *node || waits.fencing_token != token {
        return None;
    }
    if wants_restart(job.spec.restart, exit) && job.restarts < job.spec.max_restarts {
        return None;
    }
    let wants = wants_restart(job.spec.restart, exit);
    let on = format!(" on {} while it moved", w.name(node));
    w.push(ended(&job, exit, wants, on));
    Some(BTreeSet::from([job.spec.cluster.clone()]))
}

/// Whether `policy` starts a job again after `exit`.
fn wants_restart(policy: RestartPolicy, exit: Exit) -> bool {
    match policy {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => !exit.success(),
        RestartPolicy::Always => true,
    }
}

fn policy_name(policy: RestartPolicy) -> &'static str {
    match policy {
        RestartPolicy::Never => "never",
        RestartPolicy::OnFailure => "on_failure",
        RestartPolicy::Always => "always",
    }
}

/// The job ends with `exit` and is not started again: completed on a success, else failed
/// (`wants`: its policy would have restarted it, but its restarts are spent). `where_` says
/// where it ended when that is not its current placement.
fn ended(job: &JobRecord, exit: Exit, wants: bool, where_: String) -> Decision {
    let end_reason = exit.to_string();
    let policy = policy_name(job.spec.restart);
    if exit.success() {
        Decision::Completed {
            job: job.id.clone(),
            reason: format!("{end_reason}{where_} (restart: {policy})"),
            end_reason,
        }
    } else {
        let reason = if wants {
            format!(
                "{end_reason}{where_}; gave up after {} restarts (max_restarts {})",
                job.restarts, job.spec.max_restarts
            )
        } else {
            format!("{end_reason}{where_} (restart: {policy})")
        };
        Decision::Failed {
            job: job.id.clone(),
            end_reason,
            reason,
        }
    }
}

pub(super) fn stop(w: &mut Work, id: &str) -> BTreeSet<String> {
    match w.job(id) {
        None => w.push(Decision::Ignore {
            job: Some(id.to_string()),
            reason: format!("stop of job {id}, which does not exist"),
        }),
        Some(j) if j.state.is_terminal() => w.push(Decision::Ignore {
            job: Some(id.to_string()),
            reason: format!("{id} is already {}", j.state),
        }),
        Some(j) => w.push(Decision::Stop {
            job: id.to_string(),
            node: j.node().cloned(),
            fencing_token: j.fencing_token(),
            reason: format!("{id} stopped by user"),
        }),
    }
    // Stopping frees room: the cluster's pending jobs may fit now.
    w.job(id).map(|j| j.spec.cluster).into_iter().collect()
}

/// `CopyLost`: the current copy is gone without the job ending; it is placed again (on the
/// same node or another one, with a new token). Any other copy's loss changes nothing.
pub(super) fn copy_lost(
    w: &mut Work,
    id: &str,
    node: &NodeId,
    token: u64,
    how: &str,
) -> BTreeSet<String> {
    let (job, clusters) = match current_copy(w, id, node, token, &format!("lost copy ({how})")) {
        Ok(found) => found,
        Err(clusters) => return clusters,
    };
    let name = w.name(node);
    let d = match w.choose(&job, Some(node)) {
        Ok(to) => Decision::Replace {
            job: id.to_string(),
            from: node.clone(),
            reason: format!(
                "its copy on {name} was {how}; it now runs on {}",
                w.describe(&to)
            ),
            fencing_token: next_token(&job),
            to,
            end_reason: how.to_string(),
        },
        Err(e) => Decision::Pending {
            job: id.to_string(),
            end_reason: Some(how.to_string()),
            reason: format!("its copy on {name} was {how} and it fits nowhere: {e}"),
        },
    };
    w.push(d);
    clusters
}
