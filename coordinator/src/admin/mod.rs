//! The admin endpoint: HTTP/JSON over axum, bearer-token auth, one error envelope.
//!
//! Every route but `/healthz`, `/metrics` and the console's files under `/ui` (which hold no
//! data: the console reads everything through `/v1` with the token) needs
//! `Authorization: Bearer <token>`, compared in constant time. Bodies are capped, JSON that does not parse or has unknown fields is refused
//! with `invalid_argument` and the parser's reason, and unknown routes answer `not_found` in the
//! same envelope.
//!
//! Handlers decide through the engine task ([`crate::runtime`]), whose decisions apply their
//! batches to the store without waiting for the disk; [`durable_replies`] holds every answer
//! back until every batch applied before it is durable. What takes long to render (a page of
//! node objects, `/metrics`) is read in the engine task and rendered outside it. So an acknowledged change survives a crash, nothing waits for a flush under
//! the lock or blocks an async worker, and a read never shows a state a crash could undo.

mod error;
mod fleet;
pub mod https;
mod jobs;
mod overview;
pub mod serve;
mod stream;
mod tokens;
mod ui;
mod views;

pub use error::{ApiError, Code};

use crate::runtime::EngineHandle;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;
use tandem_common::pki::CertificateAuthority;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// How long a request's body may take to arrive once its head has (64 KiB at 64 kbit/s):
/// a client that trickles one, or never sends it, does not hold a connection for ever.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the handlers share.
pub struct AdminState {
    /// The way to the engine.
    pub engine: EngineHandle,
    /// The CA (its pin goes into join tokens).
    pub ca: Arc<CertificateAuthority>,
    /// The bearer token.
    pub admin_token: String,
    /// The joins' lock (`Joiner::lock`): a revocation holds it, so no join in flight writes
    /// back a token it read before.
    pub join_lock: Arc<tokio::sync::Mutex<crate::limits::FailedJoins>>,
}

pub(crate) type Shared = State<Arc<AdminState>>;

/// The router.
pub fn router(state: Arc<AdminState>) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/join-tokens",
            post(tokens::create_token).get(tokens::list_tokens),
        )
        .route(
            "/v1/join-tokens/{id}",
            axum::routing::delete(tokens::revoke_token),
        )
        .route("/v1/nodes", get(list_nodes))
        .route(
            "/v1/nodes/{id}",
            get(get_node)
                .patch(fleet::patch_node)
                .delete(fleet::remove_node),
        )
        .route("/v1/nodes/{id}/check", post(fleet::check_node))
        .route("/v1/nodes/{id}/drain", post(fleet::drain))
        .route("/v1/nodes/{id}/undrain", post(fleet::undrain))
        .route("/v1/nodes/{id}/move", post(fleet::move_node))
        .route("/v1/recycle", post(fleet::recycle))
        .route(
            "/v1/clusters",
            post(fleet::create_cluster).get(fleet::list_clusters),
        )
        .route(
            "/v1/clusters/{id}",
            get(fleet::get_cluster)
                .patch(fleet::patch_cluster)
                .delete(fleet::delete_cluster),
        )
        .route("/v1/operations/{id}", get(fleet::get_operation))
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get).delete(jobs::stop))
        .route("/v1/jobs/{id}/logs", get(jobs::logs))
        .route("/v1/clusters/{id}/failover", post(jobs::force_failover))
        .route(
            "/v1/clusters/{id}/pairs",
            get(fleet::list_pairs).post(fleet::create_pair),
        )
        .route(
            "/v1/clusters/{id}/pairs/{pair}",
            axum::routing::delete(fleet::delete_pair),
        )
        .route("/v1/overview", get(overview::overview))
        .route("/v1/events", get(list_events))
        .route("/v1/events/stream", get(stream::stream_events))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            durable_replies,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        // The console's files: no data in them, so no token (see `ui`).
        .route("/ui", get(ui::index))
        .route("/ui/", get(ui::index))
        .route("/ui/{*path}", get(ui::asset))
        .merge(v1)
        .fallback(|| async { ApiError::new(Code::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError {
                code: Code::InvalidArgument,
                message: "method not allowed on this route".into(),
                status: Some(StatusCode::METHOD_NOT_ALLOWED),
            }
        })
        .layer(middleware::from_fn(read_body_first))
        .with_state(state)
}

/// Reads the whole request body (up to [`MAX_BODY`]) before anything answers.
///
/// Why: a refusal (a missing token, an unknown route) or a handler that takes no body would
/// otherwise answer while the body is still on the wire. hyper then closes the connection
/// without `Connection: close`, and a keep-alive client's next request on it meets a dead
/// peer. A body over the limit is refused at once, and one that takes longer than
/// [`BODY_READ_TIMEOUT`] with 408; both with `Connection: close`, since the rest is never read.
async fn read_body_first(req: Request, next: Next) -> Response {
    use axum::body::{Body, HttpBody};
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return body_refused(too_large());
    }
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, MAX_BODY));
    let Ok(read) = read.await else {
        return body_refused(ApiError {
            code: Code::InvalidArgument,
            message: format!(
                "request body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
            status: Some(StatusCode::REQUEST_TIMEOUT),
        });
    };
    match read {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => {
            let over = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            body_refused(if over {
                too_large()
            } else {
                ApiError::new(Code::InvalidArgument, "request body could not be read")
            })
        }
    }
}

/// The refusal of a body over [`MAX_BODY`].
fn too_large() -> ApiError {
    ApiError {
        code: Code::InvalidArgument,
        message: format!("request body is over the {MAX_BODY}-byte limit"),
        status: Some(StatusCode::PAYLOAD_TOO_LARGE),
    }
}

/// A refusal after which the connection closes (the body's rest was not read).
fn body_refused(e: ApiError) -> Response {
    let mut r = e.into_response();
    r.headers_mut().insert(
        header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    r
}

/// Answers only once every batch the store had applied when the handler finished is durable
/// (the handler's own, and any it read: see `outbox` for why the newest ticket is the one).
async fn durable_replies(State(s): Shared, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let store = s.engine.store();
    store.durable(store.last_ticket()).await;
    response
}

async fn auth(State(s): Shared, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if bool::from(t.as_bytes().ct_eq(s.admin_token.as_bytes())) => next.run(req).await,
        Some(_) => {
            ApiError::new(Code::Unauthenticated, "the bearer token is wrong").into_response()
        }
        None => ApiError::new(
            Code::Unauthenticated,
            "missing `Authorization: Bearer <admin token>` header",
        )
        .into_response(),
    }
}

/// `Query` that answers in our envelope when the query string is refused.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(ApiError::new(
                Code::InvalidArgument,
                format!("query refused: {}", e.body_text()),
            )),
        }
    }
}

/// `Json` that answers in our envelope when the body is refused.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) => {
                // axum answers 422 for well-formed JSON of the wrong shape (an unknown field, a
                // wrong type) and 415 for a missing content type; our contract says
                // `invalid_argument` is 400. An oversized body never gets here:
                // `read_body_first` refused it with its own status (413).
                Err(ApiError::new(
                    Code::InvalidArgument,
                    format!("request body refused: {}", rej.body_text()),
                ))
            }
        }
    }
}

/// Liveness, and how long the restart grace (a planned restart's hold included) still holds
/// failover back.
async fn healthz(State(s): Shared) -> Json<serde_json::Value> {
    let (left, hold) = s
        .engine
        .call(|e| {
            let now = Instant::now();
            (
                e.restart_grace_left(now),
                e.restart_hold_left(now).unwrap_or_default(),
            )
        })
        .await;
    Json(serde_json::json!({
        "status": "ok",
        "restart_grace_remaining_ms": left.as_millis() as u64,
        "restart_hold_remaining_ms": hold.as_millis() as u64,
    }))
}

/// Fleets with more GPUs than this get no per-GPU series from the coordinator: a scrape would
/// carry hundreds of thousands of lines. Per-node exporters (NVIDIA DCGM) scale with the fleet.
pub const MAX_GPU_SERIES: usize = 4096;

async fn metrics(State(s): Shared) -> Result<impl IntoResponse, ApiError> {
    let ((by_state, connected), gpus, hold) = s
        .engine
        .call(|e| {
            (
                e.counts(),
                e.gpus_for_metrics(MAX_GPU_SERIES),
                e.restart_hold_left(Instant::now()),
            )
        })
        .await;
    // Rendered off the async workers (they carry every agent's heartbeats) and outside the
    // engine task.
    let text = tokio::task::spawn_blocking(move || {
        let mut text =
            s.engine
                .metrics
                .render(&by_state, connected, gpus.as_deref().unwrap_or_default());
        if gpus.is_none() {
            text.push_str(&format!(
                "# per-GPU series left out: the fleet has more than {MAX_GPU_SERIES} GPUs\n"
            ));
        }
        s.engine.usage.render(&mut text);
        text.push_str(&format!(
            "# HELP tandem_engine_calls_queued Calls waiting for the engine task (a bound of {}; past it callers wait).\n# TYPE tandem_engine_calls_queued gauge\ntandem_engine_calls_queued {}\n",
            crate::runtime::QUEUE,
            s.engine.queued()
        ));
        text.push_str(&format!(
            "# HELP tandem_restart_hold_remaining_seconds Time left of a planned restart's hold: nobody is declared down before it ends.\n# TYPE tandem_restart_hold_remaining_seconds gauge\ntandem_restart_hold_remaining_seconds {:.3}\n",
            hold.unwrap_or_default().as_secs_f64()
        ));
        text
    })
    .await
    .map_err(|e| ApiError::new(Code::Internal, format!("rendering metrics failed: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeQuery {
    limit: Option<usize>,
    page_token: Option<String>,
}

/// Nodes by name. With `limit`, one page, and `next_page_token` (the hex of the last name)
/// when there are more: large fleets are read page by page.
async fn list_nodes(
    State(s): Shared,
    ApiQuery(q): ApiQuery<NodeQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let after = match &q.page_token {
        Some(t) => Some(
            hex::decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        Code::InvalidArgument,
                        "page_token: not a token this API gave out",
                    )
                })?,
        ),
        None => None,
    };
    if q.limit == Some(0) {
        return Err(ApiError::new(
            Code::InvalidArgument,
            "limit: must be at least 1",
        ));
    }
    let now = Instant::now();
    let limit = q.limit.unwrap_or(usize::MAX);
    let (page, more) = s
        .engine
        .call(move |e| {
            let (page, more) = e.page(after.as_deref(), limit);
            let page: Vec<_> = page
                .into_iter()
                .map(|n| views::node_facts(e, n, now))
                .collect();
            (page, more)
        })
        .await;
    // A page of full node objects (hardware reports of several KiB each) takes tens of
    // milliseconds to render: off the async workers, which carry every agent's heartbeats,
    // and outside the engine task.
    tokio::task::spawn_blocking(move || {
        let nodes: Vec<_> = page
            .iter()
            .map(|f| views::node(&s.engine.usage, f, now))
            .collect();
        let mut out = serde_json::json!({ "nodes": nodes });
        if more {
            if let Some((last, _)) = page.last() {
                out["next_page_token"] = serde_json::json!(hex::encode(&last.record.name));
            }
        }
        Json(out)
    })
    .await
    .map_err(|e| ApiError::new(Code::Internal, format!("listing nodes failed: {e}")))
}

async fn get_node(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let v = node_object(&s, &id)
        .await
        .ok_or_else(|| ApiError::new(Code::NotFound, format!("no node with id or name `{id}`")))?;
    Ok(Json(v))
}

/// The node object of `id_or_name` as it is now: its facts read in the engine task, its JSON
/// made outside it. `None`: no such node.
pub(super) async fn node_object(s: &AdminState, id_or_name: &str) -> Option<serde_json::Value> {
    let now = Instant::now();
    let key = id_or_name.to_string();
    let facts = s
        .engine
        .call(move |e| e.find(&key).map(|n| views::node_facts(e, n, now)))
        .await?;
    Some(views::node(&s.engine.usage, &facts, now))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    after: Option<u64>,
    limit: Option<usize>,
    node: Option<String>,
}

async fn list_events(
    State(s): Shared,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let store = s.engine.store();
    let mut events = match q.after {
        Some(after) => store.events_after(after, limit)?,
        None => store.recent_events(if q.node.is_some() { 10_000 } else { limit })?,
    };
    if let Some(n) = &q.node {
        let id = s.engine.node_id(n).await.map(|id| id.0);
        events.retain(|e| e.node.as_deref() == Some(n.as_str()) || (id.is_some() && e.node == id));
        let skip = events.len().saturating_sub(limit);
        events.drain(..skip);
    }
    let events: Vec<_> = events.iter().map(views::event).collect();
    Ok(Json(serde_json::json!({ "events": events })))
}
