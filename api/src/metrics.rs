//! `GET /metrics`: the Prometheus text format. What this process counted (HTTP
//! requests, commands, EC2 calls, e-mails, scans; see `geonex_shared::metrics`)
//! comes from the recorder; what the database knows is read at scrape time and
//! appended: queue depth and age by queue, the outbox's lag, runners by state,
//! and this process's connection pool.
//!
//! The same page is served on the API listener (operators) and, when
//! `GEONEX_METRICS__LISTEN` is set, on a listener of its own without a token
//! ([`scrape_router`]), which is how worker processes are scraped.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use geonex_shared::domain::{Action, ObservedState};
use geonex_shared::metrics::{HTTP_DURATION, HTTP_REQUESTS};
use geonex_shared::store::Database;

use crate::state::AppState;

/// The content type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counts and times every request by its matched route (not its raw path, so a
/// scanner probing random URLs cannot grow the series: those are `unmatched`).
pub async fn track(req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!(HTTP_DURATION, "route" => route, "method" => method).record(started.elapsed().as_secs_f64());
    response
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format (version 0.0.4)", body = String, content_type = "text/plain"),
        (status = 401, description = "No or a bad token", body = crate::error::ErrorBody),
        (status = 403, description = "Too weak a role (operator needed)", body = crate::error::ErrorBody),
    ))]
pub async fn metrics(State(app): State<AppState>) -> Response {
    page(app.db.as_ref()).await
}

/// A router serving only `/metrics`, without a token, for a listener of its own.
pub fn scrape_router(db: Arc<dyn Database>) -> Router {
    Router::new()
        .route("/metrics", get(|State(db): State<Arc<dyn Database>>| async move { page(db.as_ref()).await }))
        .with_state(db)
}

async fn page(db: &dyn Database) -> Response {
    let mut body = geonex_shared::metrics::handle().render();
    if !body.is_empty() && !body.ends_with('\n') {
        body.push('\n');
    }
    database_figures(db, &mut body).await;
    let mut r = body.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

const UNFINISHED: [&str; 4] = ["queued", "retrying", "waiting", "running"];

/// Appends what the database says now. Every label combination is written,
/// zeros included, so a series that empties reads 0 rather than vanishing. A
/// database that does not answer makes `geonex_database_up` 0 and leaves its
/// figures out; the process's own counters are still served.
async fn database_figures(db: &dyn Database, out: &mut String) {
    let (queues, outbox, runners) = tokio::join!(db.queue_stats(), db.outbox_stat(), db.runners_by_state());
    let up = queues.is_ok() && outbox.is_ok() && runners.is_ok();
    gauge_header(out, "geonex_database_up", "1 when the database answered this scrape's queries");
    let _ = writeln!(out, "geonex_database_up {}", u8::from(up));

    if let Ok(queues) = queues {
        gauge_header(out, "geonex_queue_depth", "Unfinished commands by queue and status");
        for queue in ["runner", "email", "s3usage"] {
            for status in UNFINISHED {
                let n: i64 = queues
                    .iter()
                    .filter(|q| q.action.queue().routing_key() == queue && q.status == status)
                    .map(|q| q.count)
                    .sum();
                let _ = writeln!(out, "geonex_queue_depth{{queue=\"{queue}\",status=\"{status}\"}} {n}");
            }
        }
        gauge_header(
            out,
            "geonex_queue_oldest_seconds",
            "Seconds the longest-waiting queued command of each queue has waited",
        );
        for queue in ["runner", "email", "s3usage"] {
            let oldest = queues
                .iter()
                .filter(|q| q.action.queue().routing_key() == queue && q.status == "queued")
                .map(|q| q.oldest_secs)
                .fold(0.0_f64, f64::max);
            let _ = writeln!(out, "geonex_queue_oldest_seconds{{queue=\"{queue}\"}} {oldest:.3}");
        }
        gauge_header(out, "geonex_commands_unfinished", "Unfinished commands by action and status");
        for action in Action::ALL {
            for status in UNFINISHED {
                let n: i64 = queues.iter().filter(|q| q.action == *action && q.status == status).map(|q| q.count).sum();
                let _ = writeln!(
                    out,
                    "geonex_commands_unfinished{{action=\"{}\",status=\"{status}\"}} {n}",
                    action.as_str()
                );
            }
        }
    }
    if let Ok(outbox) = outbox {
        gauge_header(out, "geonex_outbox_unpublished", "Accepted commands whose message the broker has not confirmed");
        let _ = writeln!(out, "geonex_outbox_unpublished {}", outbox.unpublished);
        gauge_header(
            out,
            "geonex_outbox_lag_seconds",
            "Age of the oldest unconfirmed command: how far the relay is behind",
        );
        let _ = writeln!(out, "geonex_outbox_lag_seconds {:.3}", outbox.oldest_secs);
    }
    if let Ok(runners) = runners {
        gauge_header(out, "geonex_runners", "Runners (not deleted and gone) by observed state");
        for state in ObservedState::ALL {
            let n = runners.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "geonex_runners{{observed_state=\"{}\"}} {n}", state.as_str());
        }
    }
    let pool = db.pool_stat();
    gauge_header(out, "geonex_db_pool_connections", "This process's database connections by state");
    let _ = writeln!(out, "geonex_db_pool_connections{{state=\"in_use\"}} {}", pool.size.saturating_sub(pool.idle));
    let _ = writeln!(out, "geonex_db_pool_connections{{state=\"idle\"}} {}", pool.idle);
    gauge_header(out, "geonex_db_pool_max_connections", "The most connections this process's pool opens");
    let _ = writeln!(out, "geonex_db_pool_max_connections {}", pool.max);
}

fn gauge_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
}
