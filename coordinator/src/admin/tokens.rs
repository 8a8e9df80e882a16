//! Join tokens on the admin API: create, list, revoke.
//!
//! A token is revoked, not deleted: the record stays (with `revoked_ms`) until retention
//! removes it, so a join with it is refused as revoked, and the event log and `GET` say when.
//! The revocation takes the joins' lock: a join that read the token before cannot write it
//! back unrevoked when it counts its use.

use super::{ApiError, ApiJson, Code, Shared};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use tandem_common::token::JoinToken;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenRequest {
    #[serde(default = "default_ttl")]
    ttl_s: u64,
    #[serde(default = "default_uses")]
    uses: u32,
    /// The cluster (id or name) joining nodes enter.
    #[serde(default)]
    cluster: Option<String>,
}

fn default_ttl() -> u64 {
    600
}
fn default_uses() -> u32 {
    1
}

pub(super) async fn create_token(
    State(s): Shared,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if !(1..=30 * 86_400).contains(&req.ttl_s) {
        return Err(ApiError::new(
            Code::InvalidArgument,
            "ttl_s must be between 1 and 2592000 (30 days)",
        ));
    }
    if !(1..=100_000).contains(&req.uses) {
        return Err(ApiError::new(
            Code::InvalidArgument,
            "uses must be between 1 and 100000",
        ));
    }
    let cluster = match &req.cluster {
        Some(c) => Some(
            s.engine
                .cluster(c)
                .await
                .ok_or_else(|| {
                    ApiError::new(
                        Code::NotFound,
                        format!("cluster: no cluster with id or name `{c}`"),
                    )
                })?
                .id,
        ),
        None => None,
    };
    let tok = JoinToken::generate(s.ca.pin());
    let now = tandem_common::time::unix_ms();
    let rec =
        crate::model::TokenRecord::issued(&tok, now, req.ttl_s * 1000, req.uses, cluster.clone());
    s.engine.store().apply(vec![
        crate::store::Change::PutToken(rec.clone()),
        crate::store::Change::Event(crate::model::NewEvent {
            kind: "token_created",
            node: None,
            message: format!(
                "join token {} created: {} uses, expires in {} s",
                rec.id, rec.uses_allowed, req.ttl_s
            ),
        }),
    ])?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "token": tok.to_string(),
            "id": rec.id,
            "uses": rec.uses_allowed,
            "expires_at": tandem_common::time::rfc3339(rec.expires_ms),
        })),
    ))
}

/// What the API shows of a token (never its secret or its hash).
fn view(t: &crate::model::TokenRecord, now_ms: u64) -> serde_json::Value {
    serde_json::json!({
        "id": t.id,
        "state": t.state(now_ms),
        "uses": t.uses,
        "uses_allowed": t.uses_allowed,
        "cluster": t.cluster,
        "created_at": tandem_common::time::rfc3339(t.created_ms),
        "expires_at": tandem_common::time::rfc3339(t.expires_ms),
        "revoked_at": t.revoked_ms.map(tandem_common::time::rfc3339),
    })
}

/// `GET /v1/join-tokens`: every token kept, oldest first.
pub(super) async fn list_tokens(State(s): Shared) -> Result<Json<serde_json::Value>, ApiError> {
    let now = tandem_common::time::unix_ms();
    let mut all = s.engine.store().tokens()?;
    all.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    let tokens: Vec<_> = all.iter().map(|t| view(t, now)).collect();
    Ok(Json(serde_json::json!({ "tokens": tokens })))
}

/// `DELETE /v1/join-tokens/{id}`: revokes the token (idempotent: a revoked one stays as it
/// was). `not_found` for an id the store does not hold.
pub(super) async fn revoke_token(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let now = tandem_common::time::unix_ms();
    let _joins = s.join_lock.lock().await;
    let store = s.engine.store();
    let Some(mut rec) = store.token(&id)? else {
        return Err(ApiError::new(
            Code::NotFound,
            format!("join token: no token with id `{id}`"),
        ));
    };
    if rec.revoked_ms.is_none() {
        rec.revoked_ms = Some(now);
        store.apply(vec![
            crate::store::Change::PutToken(rec.clone()),
            crate::store::Change::Event(crate::model::NewEvent {
                kind: "token_revoked",
                node: None,
                message: format!(
                    "join token {} revoked after {} of {} uses",
                    rec.id, rec.uses, rec.uses_allowed
                ),
            }),
        ])?;
    }
    Ok(Json(view(&rec, now)))
}
