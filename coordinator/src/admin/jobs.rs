//! Admin routes for jobs: submit, list, show, stop, logs, and the operator's failover override.

use super::{ApiError, ApiJson, ApiQuery, Code, Shared};
use crate::jobs::model::{new_job_id, JobRecord, JobSpec};
use crate::jobs::planner::Event;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// A job object: the record plus its current node and token at the top level.
pub fn view(j: &JobRecord) -> Value {
    let mut v = json!(j);
    v["name"] = json!(j.spec.name);
    v["cluster"] = json!(j.spec.cluster);
    v["state"] = json!(j.state.as_str());
    v["node"] = json!(j.current.as_ref().map(|p| p.node.clone()));
    v["fencing_token"] = json!(j.current.as_ref().map(|p| p.fencing_token));
    v["gpus"] = json!(j
        .current
        .as_ref()
        .map(|p| p.gpus.clone())
        .unwrap_or_default());
    // A stopped job's last copy whose end is not known yet (null: none).
    v["stopping"] = json!(j.stopping());
    v
}

async fn find(s: &super::AdminState, id: &str) -> Result<JobRecord, ApiError> {
    let key = id.to_string();
    s.engine
        .call(move |e| {
            let t = e.lock();
            t.jobs
                .get(&key)
                .or_else(|| {
                    // By name: the live job of that name first, else the newest.
                    let mut named: Vec<_> =
                        t.jobs.values().filter(|j| j.spec.name == key).collect();
                    named.sort_by_key(|j| (!j.state.is_terminal(), j.created_ms));
                    named.pop()
                })
                .cloned()
        })
        .await
        .ok_or_else(|| ApiError::new(Code::NotFound, format!("no job with id or name `{id}`")))
}

pub(super) async fn submit(
    State(s): Shared,
    ApiJson(mut spec): ApiJson<JobSpec>,
) -> Result<impl IntoResponse, ApiError> {
    let cluster = s.engine.cluster(&spec.cluster).await.ok_or_else(|| {
        ApiError::new(
            Code::InvalidArgument,
            format!("cluster: no cluster with id or name `{}`", spec.cluster),
        )
    })?;
    spec.cluster = cluster.id.clone();
    crate::jobs::validate::validate_spec(&spec)
        .map_err(|e| ApiError::new(Code::InvalidArgument, e.to_string()))?;
    let job = JobRecord::new(
        new_job_id(rand::random()),
        spec,
        tandem_common::time::unix_ms(),
    );
    let id = job.id.clone();
    s.engine
        .call(move |e| e.submit_job(job))
        .await
        .map_err(|e| match e {
            crate::engine::SubmitError::NameTaken { .. }
            | crate::engine::SubmitError::NameStopping { .. } => {
                ApiError::new(Code::AlreadyExists, e.to_string())
            }
            crate::engine::SubmitError::Store(e) => e.into(),
        })?;
    let job = find(&s, &id).await?;
    Ok((StatusCode::CREATED, Json(json!({ "job": view(&job) }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JobQuery {
    cluster: Option<String>,
    state: Option<String>,
    node: Option<String>,
}

pub(super) async fn list(
    State(s): Shared,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> Result<Json<Value>, ApiError> {
    const STATES: [&str; 7] = [
        "pending",
        "starting",
        "running",
        "migrating",
        "failed",
        "stopped",
        "completed",
    ];
    if let Some(st) = q.state.as_deref().filter(|st| !STATES.contains(st)) {
        return Err(ApiError::new(
            Code::InvalidArgument,
            format!("state: `{st}` is not one of {}", STATES.join(", ")),
        ));
    }
    let cluster = match &q.cluster {
        Some(c) => Some(s.engine.cluster(c).await.map(|c| c.id).ok_or_else(|| {
            ApiError::new(
                Code::NotFound,
                format!("cluster: no cluster with id or name `{c}`"),
            )
        })?),
        None => None,
    };
    let node = match &q.node {
        Some(n) => Some(s.engine.node_id(n).await.map(|id| id.0).ok_or_else(|| {
            ApiError::new(
                Code::NotFound,
                format!("node: no node with id or name `{n}`"),
            )
        })?),
        None => None,
    };
    let mut jobs: Vec<JobRecord> = s
        .engine
        .call(|e| e.lock().jobs.values().cloned().collect())
        .await;
    jobs.sort_by_key(|j| j.created_ms);
    let jobs: Vec<Value> = jobs
        .iter()
        .filter(|j| cluster.as_ref().is_none_or(|c| j.spec.cluster == *c))
        .filter(|j| q.state.as_ref().is_none_or(|st| j.state.as_str() == st))
        .filter(|j| {
            node.as_ref()
                .is_none_or(|n| j.current.as_ref().is_some_and(|p| p.node.0 == *n))
        })
        .map(view)
        .collect();
    Ok(Json(json!({ "jobs": jobs })))
}

pub(super) async fn get(State(s): Shared, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let j = find(&s, &id).await?;
    let mut v = view(&j);
    v["usage"] = usage(&s.engine.usage, &j, std::time::Instant::now());
    Ok(Json(v))
}

/// The current copy's usage as its node last reported it (protocol 6, every ~10 s), or `null`:
/// no copy runs, or its node has not reported it (yet, or an agent older than protocol 6).
pub fn usage(board: &crate::usage::UsageBoard, j: &JobRecord, now: std::time::Instant) -> Value {
    let Some(p) = &j.current else {
        return Value::Null;
    };
    let Some(c) = board.copy(&p.node, &j.id, p.fencing_token, now) else {
        return Value::Null;
    };
    json!({
        "node": p.node,
        "fencing_token": p.fencing_token,
        "containment": c.containment,
        "cpu_seconds": c.usage.cpu_usec.map(|u| u as f64 / 1e6),
        "memory_bytes": c.usage.memory_bytes,
        "memory_peak_bytes": c.usage.memory_peak_bytes,
        "age_ms": c.age.as_millis() as u64,
    })
}

pub(super) async fn stop(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = find(&s, &id).await?;
    let stopped = job.id.clone();
    s.engine
        .call(move |e| e.job_event(Event::StopRequested { job: stopped }))
        .await?;
    Ok(Json(view(&find(&s, &job.id).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogQuery {
    tail: Option<u32>,
}

pub(super) async fn logs(
    State(s): Shared,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Json<Value>, ApiError> {
    let job = find(&s, &id).await?;
    let (stdout, stderr) = s
        .engine
        .job_logs(job.clone(), q.tail.unwrap_or(100).clamp(1, 10_000))
        .await
        .map_err(|e| {
            ApiError::new(
                Code::FailedPrecondition,
                format!("logs of job {}: {e}", job.spec.name),
            )
        })?;
    Ok(Json(
        json!({ "job": job.id, "stdout": stdout, "stderr": stderr }),
    ))
}

pub(super) async fn force_failover(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = s.engine.cluster(&id).await.ok_or_else(|| {
        ApiError::new(Code::NotFound, format!("no cluster with id or name `{id}`"))
    })?;
    let cid = c.id.clone();
    s.engine.call(move |e| e.force_failover(&cid)).await?;
    Ok(Json(json!({ "cluster": c.id, "failover": "forced" })))
}
