//! The change stream, `GET /v1/changes`: server-sent events for verifiers, sidecars and agents
//! (`tessera_core::change_api`). A subscriber resumes from the version it holds
//! (`Last-Event-ID`, as an `EventSource` sends it, or `?since=`) and gets the batches after it,
//! or a whole snapshot when this server no longer holds them; then every change as it is
//! published, and a heartbeat when there is none.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::Stream;
use serde::Deserialize;
use tessera_core::change_api::{Heartbeat, HEARTBEAT_SECS};
use tokio::sync::broadcast;

use crate::app::changes::{self, Encoded, Resume};
use crate::app::App;
use crate::error::ApiError;
use crate::extract::Subscriber;

pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new().route("/v1/changes", get(subscribe))
}

#[derive(Debug, Deserialize)]
struct ChangesQuery {
    since: Option<i64>,
}

async fn subscribe(
    State(app): State<Arc<App>>,
    Subscriber(who): Subscriber,
    headers: HeaderMap,
    Query(q): Query<ChangesQuery>,
) -> Result<Response, ApiError> {
    let since = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest("`Last-Event-ID` must be a state version".into())
                })?,
        ),
        None => q.since,
    };
    // Subscribe before reading the ring, so that no batch falls between the two.
    let live = app.change_log.subscribe();
    let snap = app.snapshot();
    let mut first = VecDeque::new();
    // The version the subscriber will hold once `first` is sent. A batch is published just
    // after its snapshot is swapped in, so the ring may not have the newest one yet: it then
    // arrives live, above `last`.
    let last = match since {
        // Ahead of this server (another one committed what this one has not loaded yet): the
        // subscriber keeps what it holds and gets the batches past it.
        Some(v) if v > snap.version => v,
        Some(v) => match app.change_log.resume(v, snap.version) {
            Resume::Batches(batches) => {
                first.extend(batches.iter().map(|b| batch_event(b)));
                batches.last().map_or(v, |b| b.version)
            }
            Resume::Snapshot => {
                let (e, version) = snapshot_event(&app);
                first.push_back(e);
                version
            }
        },
        None => {
            let (e, version) = snapshot_event(&app);
            first.push_back(e);
            version
        }
    };
    tracing::debug!(subscriber = %who, since = ?since, "change stream opened");
    let state = Subscription {
        app: app.clone(),
        first,
        live,
        last,
        heartbeat: tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(HEARTBEAT_SECS),
            Duration::from_secs(HEARTBEAT_SECS),
        ),
        _gauge: Connected::new(app),
    };
    Ok(Sse::new(events(state)).into_response())
}

/// A connected subscriber, counted while its stream lives.
struct Connected(Arc<App>);

impl Connected {
    fn new(app: Arc<App>) -> Self {
        app.metrics.change_subscribers.inc();
        Self(app)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.metrics.change_subscribers.dec();
    }
}

struct Subscription {
    app: Arc<App>,
    first: VecDeque<Event>,
    live: broadcast::Receiver<Arc<Encoded>>,
    /// The version the subscriber holds: batches up to it are not sent again.
    last: i64,
    heartbeat: tokio::time::Interval,
    _gauge: Connected,
}

fn events(state: Subscription) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(state, |mut st| async move {
        if let Some(e) = st.first.pop_front() {
            return Some((Ok(e), st));
        }
        loop {
            tokio::select! {
                r = st.live.recv() => match r {
                    Ok(b) if b.version <= st.last => continue,
                    Ok(b) => {
                        st.last = b.version;
                        return Some((Ok(batch_event(&b)), st));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        st.app.metrics.change_lagged.inc();
                        let (e, version) = snapshot_event(&st.app);
                        st.last = version;
                        return Some((Ok(e), st));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = st.heartbeat.tick() => {
                    let h = Heartbeat { version: st.last, at_ms: tessera_core::now_unix_ms() };
                    let e = Event::default().event("heartbeat").data(serde_json::to_string(&h).unwrap_or_default());
                    return Some((Ok(e), st));
                }
            }
        }
    })
}

fn batch_event(b: &Encoded) -> Event {
    Event::default()
        .event("change")
        .id(b.version.to_string())
        .data(&b.json)
}

/// The whole state now, and its version.
fn snapshot_event(app: &App) -> (Event, i64) {
    let snap = app.snapshot();
    let state = changes::revocation_state(&snap, tessera_core::now_unix());
    let e = Event::default()
        .event("snapshot")
        .id(state.version.to_string())
        .data(serde_json::to_string(&state).unwrap_or_default());
    (e, state.version)
}
