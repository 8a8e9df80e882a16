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
use std::time::Duration;

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
    let (c, op) = s
        .engine
        .call(move |e| {
            e.create_cluster(req, e.quotas)
                .map(|(c, op)| (views::cluster_facts(e, c), op))
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"cluster": views::cluster(&c), "operation_id": op})),
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
    let clusters: Vec<views::ClusterFacts> = s
        .engine
        .call(move |e| {
            e.clusters()
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
                .map(|c| views::cluster_facts(e, c))
                .collect()
        })
        .await;
    let clusters: Vec<Value> = clusters.iter().map(views::cluster).collect();
    Ok(Json(json!({ "clusters": clusters })))
}

pub(super) async fn get_cluster(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(cluster_json(&s, id).await?))
}

pub(super) async fn patch_cluster(
    State(s): Shared,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<ClusterPatch>,
) -> Result<Json<Value>, ApiError> {
    let c = s
        .engine
        .call(move |e| e.patch_cluster(&id, p).map(|c| views::cluster_facts(e, c)))
        .await?;
    Ok(Json(views::cluster(&c)))
}

pub(super) async fn delete_cluster(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = s.engine.call(move |e| e.delete_cluster(&id)).await?;
    Ok(Json(json!({"deleted": c.id, "name": c.name})))
}

pub(super) async fn get_operation(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let op = s
        .engine
        .store()
        .operation(&id)?
        .ok_or_else(|| ApiError::new(Code::NotFound, format!("no operation `{id}`")))?;
    Ok(Json(json!(op)))
}

/// The cluster object of `id` (id or name) as it is now.
async fn cluster_json(s: &super::AdminState, id: String) -> Result<Value, ApiError> {
    s.engine
        .call(move |e| e.cluster(&id).map(|c| views::cluster_facts(e, c)).ok_or(id))
        .await
        .map(|f| views::cluster(&f))
        .map_err(|id| ApiError::new(Code::NotFound, format!("no cluster with id or name `{id}`")))
}

/// The node object of `id` as it is now.
async fn node_json(
    s: &super::AdminState,
    id: tandem_common::ids::NodeId,
) -> Result<Json<Value>, ApiError> {
    let v = super::node_object(s, id.as_str())
        .await
        .ok_or_else(|| ApiError::new(Code::NotFound, format!("node {id} was removed meanwhile")))?;
    Ok(Json(v))
}

pub(super) async fn patch_node(
    State(s): Shared,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<NodePatch>,
) -> Result<Json<Value>, ApiError> {
    let rec = s.engine.call(move |e| e.patch_node(&id, p)).await?;
    node_json(&s, rec.id).await
}

pub(super) async fn drain(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // Draining moves the node's jobs away (old copy stopped first): `Engine::set_draining`.
    let rec = s.engine.call(move |e| e.set_draining(&id, true)).await?;
    node_json(&s, rec.id).await
}

pub(super) async fn undrain(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rec = s.engine.call(move |e| e.set_draining(&id, false)).await?;
    node_json(&s, rec.id).await
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
    let rec = s.engine.call(move |e| e.move_node(&id, &r.cluster)).await?;
    node_json(&s, rec.id).await
}

pub(super) async fn remove_node(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rec = s
        .engine
        .call(move |e| e.remove_node(&id, "removed by an operator"))
        .await?;
    Ok(Json(
        json!({"removed": rec.id, "name": rec.name, "revoked_cert_serial": rec.cert_serial}),
    ))
}

pub(super) async fn check_node(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let node =
        s.engine.node_id(&id).await.ok_or_else(|| {
            ApiError::new(Code::NotFound, format!("no node with id or name `{id}`"))
        })?;
    Ok(Json(
        match s.engine.check(node.clone(), CHECK_TIMEOUT).await {
            Ok(rtt) => {
                json!({"node": node, "alive": true, "rtt_ms": (rtt.as_secs_f64() * 1e6).round() / 1e3})
            }
            Err(reason) => json!({"node": node, "alive": false, "reason": reason}),
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
    let down_for_ms = r.down_for_s.saturating_mul(1000);
    let (removed, skipped) = s.engine.call(move |e| e.recycle(down_for_ms)).await?;
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
    let v = cluster_json(&s, id).await?;
    Ok(Json(json!({"pairs": v["pairs"]})))
}

pub(super) async fn create_pair(
    State(s): Shared,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<NewPair>,
) -> Result<impl IntoResponse, ApiError> {
    let pair = s
        .engine
        .call(move |e| {
            e.create_pair(&id, &p.primary, &p.standby).map(|pair| {
                let name =
                    |n: &tandem_common::ids::NodeId| e.find(n.as_str()).map(|e| e.record.name);
                views::pair(&pair, name(&pair.primary), name(&pair.standby))
            })
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "pair": pair }))))
}

pub(super) async fn delete_pair(
    State(s): Shared,
    Path((id, pair)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let p = s.engine.call(move |e| e.delete_pair(&id, &pair)).await?;
    Ok(Json(json!({"deleted": p.id})))
}
