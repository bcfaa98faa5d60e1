//! A worker process's presence in the worker registry: the row that says which
//! process holds a running command and whether it is still alive.
//!
//! A process registers before it claims anything and refreshes its heartbeat
//! every `heartbeat_ms`. When it is killed the heartbeat stops, and after
//! `holder_timeout_ms` every command it held is taken over (by a redelivered
//! message's claim or by the relay's rescuer) instead of waiting out its lease.
//! A process that stops gracefully removes its row once its in-flight commands
//! are done, so whatever it left unfinished is taken over at once.
//!
//! A heartbeat is only evidence while the database could be reached: when it
//! was down (restarted, refusing connections) every process's heartbeat went
//! stale together, and the first claim after it came back would otherwise take
//! over every running command from workers that are alive and still in the
//! middle of it. So a process presumes another dead only once it has itself
//! reached the database without a break for a full holder timeout
//! ([`Steadiness`]): by then every live holder has beaten again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use geonex_shared::store::{LeaseTerms, Store, WorkerProcess};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Rows of workers silent for this long are forgotten when another worker stops.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
pub struct Presence {
    store: Arc<dyn Store>,
    me: WorkerProcess,
    heartbeat: Duration,
    steady: Steadiness,
}

/// How long this process has reached the database without a failure: until
/// that is a holder timeout, stale heartbeats and expired leases of others say
/// nothing about them (everyone's went stale in the same outage).
#[derive(Clone)]
pub struct Steadiness {
    since: Arc<Mutex<Option<Instant>>>,
    needed: Duration,
}

impl Steadiness {
    /// Starts unsteady: a process that just started has seen nothing yet.
    pub fn new(needed: Duration) -> Self {
        Self { since: Arc::new(Mutex::new(None)), needed }
    }

    /// A statement went through.
    pub fn reached(&self) {
        if let Ok(mut since) = self.since.lock() {
            since.get_or_insert_with(Instant::now);
        }
    }

    /// A statement failed: the database (or the way to it) broke.
    pub fn broke(&self) {
        if let Ok(mut since) = self.since.lock() {
            *since = None;
        }
    }

    /// Reached without a break for the needed time: others' silence now means
    /// they are gone.
    pub fn is_steady(&self) -> bool {
        self.since.lock().ok().and_then(|s| *s).is_some_and(|t| t.elapsed() >= self.needed)
    }
}

impl Presence {
    pub fn new(store: Arc<dyn Store>, heartbeat: Duration, holder_timeout: Duration) -> Self {
        let me = WorkerProcess {
            worker_id: Uuid::now_v7(),
            hostname: hostname(),
            pid: std::process::id() as i32,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: Utc::now(),
            heartbeat_at: Utc::now(),
        };
        Self { store, me, heartbeat, steady: Steadiness::new(holder_timeout) }
    }

    pub fn worker_id(&self) -> Uuid {
        self.me.worker_id
    }

    /// The terms this process claims commands on now: it takes commands over
    /// from holders presumed dead only while it is steady itself.
    pub fn terms(&self, lease: Duration, holder_timeout: Duration) -> LeaseTerms {
        LeaseTerms { holder: self.me.worker_id, lease, holder_timeout, take_over: self.steady.is_steady() }
    }

    /// Registers, retrying until the database takes it or `shutdown` fires.
    /// Returns false if it never registered.
    pub async fn register(&self, shutdown: &CancellationToken) -> bool {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.store.register_worker(&self.me).await {
                Ok(()) => {
                    self.steady.reached();
                    tracing::info!(worker_id = %self.me.worker_id, "worker registered");
                    return true;
                }
                Err(e) => tracing::warn!(error = %e, "cannot register the worker; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return false,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Refreshes the heartbeat until `stop` fires. A row that disappeared (an
    /// operator cleaned the registry) is written again.
    pub async fn beat(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.heartbeat) => {}
                _ = stop.cancelled() => return,
            }
            match self.store.heartbeat_worker(self.me.worker_id).await {
                Ok(true) => self.steady.reached(),
                Ok(false) => match self.store.register_worker(&self.me).await {
                    Ok(()) => self.steady.reached(),
                    Err(e) => {
                        self.steady.broke();
                        tracing::warn!(error = %e, "cannot re-register the worker");
                    }
                },
                Err(e) => {
                    self.steady.broke();
                    tracing::warn!(error = %e, "cannot refresh the worker heartbeat");
                }
            }
        }
    }

    /// Leaves the registry: whatever this process still holds is free at once.
    pub async fn retire(&self) {
        if let Err(e) = self.store.retire_worker(self.me.worker_id, FORGET_AFTER).await {
            tracing::warn!(error = %e, "could not leave the worker registry; its row will go stale");
        }
    }
}

/// This machine's name, for operators reading the registry.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_only_after_reaching_the_database_without_a_break_for_the_needed_time() {
        let s = Steadiness::new(Duration::from_millis(50));
        assert!(!s.is_steady(), "a process that has seen nothing yet is not steady");
        s.reached();
        assert!(!s.is_steady());
        std::thread::sleep(Duration::from_millis(60));
        s.reached();
        assert!(s.is_steady());
        s.broke();
        assert!(!s.is_steady(), "a failure starts the count again");
        s.reached();
        assert!(!s.is_steady());
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.is_steady());
    }
}
