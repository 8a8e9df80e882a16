//! `GET /v1/events/stream?after=SEQ`: events as they are recorded, as server-sent events.
//!
//! Each message is `event: events` with a JSON array of event objects (as `GET /v1/events`
//! gives them), oldest first, after `after` (default: the newest event now). It needs the
//! admin token like every `/v1` route; a browser reads it with `fetch` and a stream reader,
//! since `EventSource` cannot send an `Authorization` header. The stream reads the store's
//! event log every [`POLL`], a read of what is already durable: a new event reaches the
//! console within that of being recorded, and a stream costs nothing under the fleet lock.

use super::{views, ApiError, ApiQuery, Shared};
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::Stream;
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;

/// How often the store's event log is read for new events.
pub const POLL: Duration = Duration::from_millis(100);
/// Most events in one message.
const BATCH: usize = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamQuery {
    after: Option<u64>,
}

pub(super) async fn stream_events(
    State(s): Shared,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let store = s.engine.store();
    let after = match q.after {
        Some(a) => a,
        None => store.recent_events(1)?.last().map_or(0, |e| e.seq),
    };
    let stream = futures_util::stream::unfold((s, after), |(s, mut after)| async move {
        loop {
            let events = match s.engine.store().events_after(after, BATCH) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "reading events for a stream");
                    return None;
                }
            };
            if let Some(last) = events.last() {
                after = last.seq;
                let data: Vec<_> = events.iter().map(views::event).collect();
                let msg = SseEvent::default()
                    .event("events")
                    .data(serde_json::Value::from(data).to_string());
                return Some((Ok(msg), (s, after)));
            }
            tokio::time::sleep(POLL).await;
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))))
}
