//! `GET /events`: committed changes as server-sent events, so the console and
//! the dashboard need not poll.
//!
//! Each API process holds one listener on the database's change feed
//! (`OpsStore::listen`: LISTEN/NOTIFY in PostgreSQL, the event log in SQLite)
//! and fans what it hears out to its clients through a broadcast channel; a
//! client never costs a database connection. Events:
//!
//! * `ready` once the stream is live (load the lists after it, and nothing
//!   committed after that is missed);
//! * `runner` — a runner's observed or desired state or instance changed;
//! * `command` — a command was accepted or changed status (operators only, as
//!   `/describe-commands`);
//! * `resync` — changes may have been missed (the database connection was
//!   lost, or this client fell behind): read the lists again;
//! * `end` — the token expired or was revoked; the stream closes.
//!
//! Each `data` is the JSON object the database's trigger wrote.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures::Stream;
use geonex_shared::domain::Role;
use geonex_shared::error::FieldError;
use geonex_shared::metrics::EVENTS_CLIENTS;
use geonex_shared::store::Database;
use geonex_shared::store::ops::{ChangeEvent, Feed};
use serde_json::json;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::params::Params;
use crate::state::AppState;

/// Events a slow client may fall behind by before it is told to resync.
const BACKLOG: usize = 4096;
/// How often a stream checks that its token is still live.
const RECHECK: Duration = Duration::from_secs(30);
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
enum Fanned {
    Change(Arc<ChangeEvent>),
    Gap,
}

/// The process's one listener and its fan-out.
#[derive(Clone)]
pub struct EventHub {
    tx: broadcast::Sender<Fanned>,
    listening: watch::Receiver<bool>,
    closed: CancellationToken,
}

impl EventHub {
    /// Starts listening in the background until `shutdown`; open streams end then.
    pub fn start(db: Arc<dyn Database>, shutdown: CancellationToken) -> Self {
        let (tx, _) = broadcast::channel(BACKLOG);
        let (listening_tx, listening) = watch::channel(false);
        tokio::spawn(listen(db, tx.clone(), listening_tx, shutdown.clone()));
        Self { tx, listening, closed: shutdown }
    }

    /// Waits (a little) until the listener is live, so a client that got
    /// `ready` hears every change committed after it.
    async fn live(&self) -> bool {
        let mut l = self.listening.clone();
        tokio::time::timeout(Duration::from_secs(5), l.wait_for(|v| *v)).await.is_ok_and(|r| r.is_ok())
    }
}

async fn listen(
    db: Arc<dyn Database>,
    tx: broadcast::Sender<Fanned>,
    live: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(200);
    let mut first = true;
    while !shutdown.is_cancelled() {
        let listener = tokio::select! {
            l = db.listen() => l,
            _ = shutdown.cancelled() => return,
        };
        let mut listener = match listener {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for changes; retrying");
                let _ = live.send(false);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        delay = Duration::from_millis(200);
        let _ = live.send(true);
        if !first {
            // Listening again after a failure: what was committed meanwhile was not heard.
            let _ = tx.send(Fanned::Gap);
        }
        first = false;
        loop {
            let next = tokio::select! {
                n = listener.next() => n,
                _ = shutdown.cancelled() => return,
            };
            match next {
                Ok(Feed::Events(events)) => {
                    for e in events {
                        // No receivers is fine: nobody is watching.
                        let _ = tx.send(Fanned::Change(Arc::new(e)));
                    }
                }
                Ok(Feed::Gap) => {
                    let _ = tx.send(Fanned::Gap);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the change feed failed; listening again");
                    let _ = live.send(false);
                    break;
                }
            }
        }
    }
}

/// What one client asked to see.
struct Filter {
    commands: bool,
    runner_id: Option<String>,
}

impl Filter {
    fn shows(&self, e: &ChangeEvent) -> bool {
        if e.kind == "command" && !self.commands {
            return false;
        }
        match &self.runner_id {
            Some(id) => e.data.get("runner_id").and_then(|v| v.as_str()) == Some(id.as_str()),
            None => true,
        }
    }
}

/// Counts the connected clients while it lives.
struct Connected;

impl Connected {
    fn new() -> Self {
        metrics::gauge!(EVENTS_CLIENTS).increment(1.0);
        Self
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        metrics::gauge!(EVENTS_CLIENTS).decrement(1.0);
    }
}

struct Client {
    app: AppState,
    hub: EventHub,
    rx: broadcast::Receiver<Fanned>,
    caller: Caller,
    filter: Filter,
    ready: bool,
    ended: bool,
    recheck: tokio::time::Instant,
    _connected: Connected,
}

/// `GET /events` (`runner_id` to follow one runner; `types=runner` for runner
/// events only). Users get runner events; operators also command events.
pub async fn events(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    params: Params,
) -> Result<Response, ApiError> {
    let runner_id = params.parse_opt("runner_id", |v| {
        if v.is_empty() || v.len() > 255 {
            Err(FieldError::invalid("runner_id", "must be 1-255 characters"))
        } else {
            Ok(v.to_owned())
        }
    })?;
    let types = params.parse_opt("types", |v| {
        let kinds: Vec<&str> = v.split(',').map(str::trim).collect();
        if kinds.iter().all(|k| *k == "runner" || *k == "command") {
            Ok(kinds.contains(&"command"))
        } else {
            Err(FieldError::invalid("types", "must list runner and/or command"))
        }
    })?;
    let Some(hub) = app.events.clone() else {
        return Err(ApiError::Unavailable("live updates are not running in this process".into()));
    };
    if !hub.live().await {
        return Err(ApiError::Unavailable("not listening for changes yet (is the database reachable?)".into()));
    }
    let client = Client {
        rx: hub.tx.subscribe(),
        filter: Filter { commands: caller.role >= Role::Operator && types.unwrap_or(true), runner_id },
        hub,
        app,
        caller,
        ready: false,
        ended: false,
        recheck: tokio::time::Instant::now() + RECHECK,
        _connected: Connected::new(),
    };
    let sse = Sse::new(stream(client)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"));
    let mut r = sse.into_response();
    // Proxies must pass each event on as it comes.
    r.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store"));
    Ok(r)
}

fn stream(client: Client) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
    futures::stream::unfold(client, |mut c| async move {
        if c.ended {
            return None;
        }
        if !c.ready {
            c.ready = true;
            let data = json!({ "role": c.caller.role.to_string(), "commands": c.filter.commands });
            return Some((Ok(Event::default().event("ready").data(data.to_string())), c));
        }
        loop {
            tokio::select! {
                _ = c.hub.closed.cancelled() => return None,
                _ = tokio::time::sleep_until(c.recheck) => {
                    c.recheck = tokio::time::Instant::now() + RECHECK;
                    if !still_live(&c).await {
                        c.ended = true;
                        let data = json!({ "reason": "the token expired or was revoked; log in again" });
                        return Some((Ok(Event::default().event("end").data(data.to_string())), c));
                    }
                }
                next = c.rx.recv() => match next {
                    Ok(Fanned::Change(e)) if c.filter.shows(&e) => {
                        let event = Event::default().event(e.kind.as_str()).data(e.data.to_string());
                        return Some((Ok(event), c));
                    }
                    Ok(Fanned::Change(_)) => {}
                    Ok(Fanned::Gap) => return Some((Ok(resync("changes may have been missed")), c)),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        return Some((Ok(resync(&format!("this client fell {n} events behind"))), c));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    })
}

fn resync(reason: &str) -> Event {
    Event::default().event("resync").data(json!({ "reason": reason }).to_string())
}

/// Whether the stream's token still admits it (a database hiccup does not end it).
async fn still_live(c: &Client) -> bool {
    match c.app.db.token(c.caller.token_id).await {
        Ok(Some(t)) => t.is_live(Utc::now()),
        Ok(None) => false,
        Err(_) => true,
    }
}
