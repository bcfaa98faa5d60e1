//! Prometheus metrics: the process's one recorder, and the names of the series
//! every part records into, so each series is spelled in one place.
//!
//! Counters and histograms are recorded where things happen (the HTTP layer,
//! the consumer, the cloud, mail and scan adapters) through the `metrics`
//! facade. What the database knows — queue depths, the outbox's lag, runners
//! by state — is read when `/metrics` is scraped (`geonex_api::metrics`), so it
//! is never stale and costs nothing between scrapes.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::Action;

pub const HTTP_REQUESTS: &str = "geonex_http_requests_total";
pub const HTTP_DURATION: &str = "geonex_http_request_duration_seconds";
pub const COMMANDS_ACCEPTED: &str = "geonex_commands_accepted_total";
pub const COMMANDS_STARTED: &str = "geonex_commands_started_total";
pub const COMMANDS_SUCCEEDED: &str = "geonex_commands_succeeded_total";
pub const COMMANDS_RETRIED: &str = "geonex_commands_retried_total";
pub const COMMANDS_WAITING: &str = "geonex_commands_waiting_total";
pub const COMMANDS_DEAD: &str = "geonex_commands_dead_total";
pub const COMMAND_DURATION: &str = "geonex_command_duration_seconds";
pub const EC2_REQUESTS: &str = "geonex_ec2_requests_total";
pub const OBSERVER_PASSES: &str = "geonex_observer_passes_total";
pub const OBSERVER_TRANSITIONS: &str = "geonex_observer_transitions_total";
pub const EMAILS_SENT: &str = "geonex_emails_sent_total";
pub const EMAILS_FAILED: &str = "geonex_emails_failed_total";
pub const S3_SCAN_DURATION: &str = "geonex_s3_scan_duration_seconds";
pub const S3_OBJECTS_LISTED: &str = "geonex_s3_objects_listed_total";
pub const EVENTS_CLIENTS: &str = "geonex_events_clients";

/// Latency buckets for everything measured in seconds: from a cached 304
/// (well under a millisecond) to an EC2 launch or a large scan (minutes).
const SECONDS_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use. One per process: the API,
/// the workers and the relay of `geonex serve` share it, as they share the
/// process. If another recorder was installed first (an embedding program's),
/// this one still renders, but only what is recorded through it directly.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .expect("the bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only database figures");
        }
        describe();
        handle
    })
}

/// Drains histogram samples into their buckets now and then, so memory stays
/// bounded however rarely the process is scraped.
pub async fn upkeep(shutdown: tokio_util::sync::CancellationToken) {
    let handle = handle();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
            _ = shutdown.cancelled() => return,
        }
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by matched route, method and status");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "Time to answer an HTTP request, by matched route and method");
    describe_counter!(COMMANDS_ACCEPTED, "Commands accepted by the API (a repeated Idempotency-Key does not count)");
    describe_counter!(COMMANDS_STARTED, "Command attempts claimed by a worker of this process");
    describe_counter!(COMMANDS_SUCCEEDED, "Commands that succeeded in this process");
    describe_counter!(COMMANDS_RETRIED, "Command attempts that failed and were scheduled again");
    describe_counter!(COMMANDS_WAITING, "Command attempts that released their worker to wait (instance, EC2 budget)");
    describe_counter!(COMMANDS_DEAD, "Commands that became dead (permanent error or attempts exhausted)");
    describe_histogram!(COMMAND_DURATION, Unit::Seconds, "Time a command attempt ran in its handler");
    describe_counter!(EC2_REQUESTS, "EC2 API requests, by operation and error code (ok when it succeeded)");
    describe_counter!(OBSERVER_PASSES, "Passes of the instance observer that described instances");
    describe_counter!(OBSERVER_TRANSITIONS, "Instance state changes the instance observer saw (pending to running, ...)");
    describe_counter!(EMAILS_SENT, "E-mails the SMTP server (or the file mailer) accepted");
    describe_counter!(EMAILS_FAILED, "E-mail sends that failed, by class (retryable or permanent)");
    describe_histogram!(S3_SCAN_DURATION, Unit::Seconds, "Time to list one S3 output in a usage scan, by result");
    describe_counter!(S3_OBJECTS_LISTED, "Objects listed by S3 usage scans");
    describe_gauge!(EVENTS_CLIENTS, "Clients connected to /events");
}

/// One step of a command's life, counted by action.
pub fn command(name: &'static str, action: Action) {
    metrics::counter!(name, "action" => action.as_str()).increment(1);
}
