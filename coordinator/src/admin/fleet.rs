//! Admin routes for clusters, pairs and node administration (check, drain, move, remove,
//! recycle).

use super::{views, ApiError, ApiJson, ApiQuery, Code, Shared};
use crate::engine::{ClusterPatch, NewCluster, NodePatch, OpError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        let code = match &e {
            OpError::Invalid(_) => Code::InvalidArgument,
            OpError::NotFound(_) => Code::NotFound,
            OpError::AlreadyExists(_) => Code::AlreadyExists,
            OpError::FailedPrecondition(_) => Code::FailedPrecondition,
            OpError::Quota(_) => Code::QuotaExceeded,
            OpError::Store(_) => Code::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

/// How long the on-demand heartbeat check waits for the node.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn create_cluster(
    State(s): Shared,
    ApiJson(req): ApiJson<NewCluster>,
) -> Result<impl IntoResponse, ApiError> {
    let (c, op) = s.membership.create_cluster(req, s.membership.quotas)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"cluster": views::cluster(&s.membership, &c), "operation_id": op})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterQuery {
    q: Option<String>,
    label: Option<String>,
    created_after: Option<String>,
    created_before: Option<String>,
}

fn time_param(field: &str, v: &Option<String>) -> Result<Option<u64>, ApiError> {
    v.as_deref()
        .map(|t| {
            tandem_common::time::parse_rfc3339(t).ok_or_else(|| {
                ApiError::new(
                    Code::InvalidArgument,
                    format!("{field}: `{t}` is not an RFC 3339 time"),
                )
            })
        })
        .transpose()
}

pub(super) async fn list_clusters(
    State(s): Shared,
    ApiQuery(q): ApiQuery<ClusterQuery>,
) -> Result<Json<Value>, ApiError> {
    let after = time_param("created_after", &q.created_after)?;
    let before = time_param("created_before", &q.created_before)?;
    let label = match &q.label {
        Some(l) => Some(
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    ApiError::new(
                        Code::InvalidArgument,
                        format!("label: `{l}` is not key=value"),
                    )
                })?,
        ),
        None => None,
    };
    let needle = q.q.as_deref().map(str::to_lowercase);
    let clusters: Vec<Value> = s
        .membership
        .clusters()
        .into_iter()
        .filter(|c| {
            needle.as_ref().is_none_or(|n| {
                c.name.to_lowercase().contains(n) || c.alias.to_lowercase().contains(n)
            }) && label
                .as_ref()
                .is_none_or(|(k, v)| c.labels.get(k) == Some(v))
                && after.is_none_or(|a| c.created_ms >= a)
                && before.is_none_or(|b| c.created_ms < b)
        })
        .map(|c| views::cluster(&s.membership, &c))
        .collect();
    Ok(Json(json!({ "clusters": clusters })))
}

pub(super) async fn get_cluster(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = s.membership.cluster(&id).ok_or_else(|| {
        ApiError::new(Code::NotFound, format!("no cluster with id or name `{id}`"))
    })?;
    Ok(Json(views::cluster(&s.membership, &c)))
}

pub(super) async fn patch_cluster(
    State(s): Shared,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<ClusterPatch>,
) -> Result<Json<Value>, ApiError> {
    let c = s.membership.patch_cluster(&id, p)?;
    Ok(Json(views::cluster(&s.membership, &c)))
}

pub(super) async fn delete_cluster(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = s.membership.delete_cluster(&id)?;
    Ok(Json(json!({"deleted": c.id, "name": c.name})))
}

pub(super) async fn get_operation(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let op = s
        .membership
        .operation(&id)?
        .ok_or_else(|| ApiError::new(Code::NotFound, format!("no operation `{id}`")))?;
    Ok(Json(json!(op)))
}

/// The node object of `id` as it is now.
fn node_json(
    s: &super::AdminState,
    id: &tandem_common::ids::NodeId,
) -> Result<Json<Value>, ApiError> {
    let e = s
        .membership
        .find(id.as_str())
        .ok_or_else(|| ApiError::new(Code::NotFound, format!("node {id} was removed meanwhile")))?;
    Ok(Json(views::node(&s.membership, &e, Instant::now())))
}

pub(super) async fn patch_node(
    State(s): Shared,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<NodePatch>,
) -> Result<Json<Value>, ApiError> {
    let rec = s.membership.patch_node(&id, p)?;
    node_json(&s, &rec.id)
}

pub(super) async fn drain(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // Draining moves the node's jobs away (old copy stopped first): `Engine::set_draining`.
    let rec = s.membership.set_draining(&id, true)?;
    node_json(&s, &rec.id)
}

pub(super) async fn undrain(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rec = s.membership.set_draining(&id, false)?;
    node_json(&s, &rec.id)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MoveRequest {
    /// The cluster to move to (id or name).
    cluster: String,
}

/// Moves a node to another cluster under the rules of a join there; its jobs move away as a
/// drain moves them (`Engine::move_node`).
pub(super) async fn move_node(
    State(s): Shared,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<MoveRequest>,
) -> Result<Json<Value>, ApiError> {
    let rec = s.membership.move_node(&id, &r.cluster)?;
    node_json(&s, &rec.id)
}

pub(super) async fn remove_node(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rec = s.membership.remove_node(&id, "removed by an operator")?;
    Ok(Json(
        json!({"removed": rec.id, "name": rec.name, "revoked_cert_serial": rec.cert_serial}),
    ))
}

pub(super) async fn check_node(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = s
        .membership
        .find(&id)
        .ok_or_else(|| ApiError::new(Code::NotFound, format!("no node with id or name `{id}`")))?;
    Ok(Json(
        match s.membership.check(&e.record.id, CHECK_TIMEOUT).await {
            Ok(rtt) => {
                json!({"node": e.record.id, "alive": true, "rtt_ms": (rtt.as_secs_f64() * 1e6).round() / 1e3})
            }
            Err(reason) => json!({"node": e.record.id, "alive": false, "reason": reason}),
        },
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecycleRequest {
    down_for_s: u64,
}

pub(super) async fn recycle(
    State(s): Shared,
    ApiJson(r): ApiJson<RecycleRequest>,
) -> Result<Json<Value>, ApiError> {
    let (removed, skipped) = s.membership.recycle(r.down_for_s.saturating_mul(1000))?;
    Ok(Json(json!({
        "removed": removed.iter().map(|n| json!({"id": n.id, "name": n.name})).collect::<Vec<_>>(),
        "skipped": skipped.iter().map(|(n, why)| json!({"name": n, "reason": why})).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewPair {
    primary: String,
    standby: String,
}

pub(super) async fn list_pairs(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = s.membership.cluster(&id).ok_or_else(|| {
        ApiError::new(Code::NotFound, format!("no cluster with id or name `{id}`"))
    })?;
    let v = views::cluster(&s.membership, &c);
    Ok(Json(json!({"pairs": v["pairs"]})))
}

pub(super) async fn create_pair(
    State(s): Shared,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<NewPair>,
) -> Result<impl IntoResponse, ApiError> {
    let pair = s.membership.create_pair(&id, &p.primary, &p.standby)?;
    let name =
        |n: &tandem_common::ids::NodeId| s.membership.find(n.as_str()).map(|e| e.record.name);
    Ok((
        StatusCode::CREATED,
        Json(json!({"pair": views::pair(&pair, name(&pair.primary), name(&pair.standby))})),
    ))
}

pub(super) async fn delete_pair(
    State(s): Shared,
    Path((id, pair)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let p = s.membership.delete_pair(&id, &pair)?;
    Ok(Json(json!({"deleted": p.id})))
}
