//! The relay: the outbox's safety net, and the rescuer of commands whose worker died.
//!
//! Each tick it (1) returns commands whose worker died — lease expired, or the
//! holder's heartbeat stopped — to `retrying` (or `dead` when their attempts are
//! spent) and (2) publishes every command that should
//! have a message in flight but has no confirmed publish: accepted while the
//! broker was down, scheduled for retry when the publish failed, rescued, or
//! replayed, or queued with a publish the broker confirmed long ago but never
//! delivered (lost in a broker restart). Several relays may run (one per
//! worker process); a command they both publish is claimed once, the second
//! message is dropped as a duplicate.
//!
//! It rescues only once it has reached the database without a break for a
//! holder timeout: right after an outage every holder's heartbeat is stale,
//! the live ones' too (see [`crate::presence`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use geonex_shared::config::RelaySettings;
use geonex_shared::dispatch::Dispatcher;
use geonex_shared::domain::CommandStatus;
use geonex_shared::store::Store;
use tokio_util::sync::CancellationToken;

use crate::presence::Steadiness;

pub struct Relay {
    store: Arc<dyn Store>,
    dispatcher: Dispatcher,
    settings: RelaySettings,
    /// A lease holder silent for this long is presumed dead (worker settings).
    holder_timeout: Duration,
    steady: Steadiness,
}

/// What one pass did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub rescued: u64,
    pub published: usize,
    pub failed: usize,
}

impl Relay {
    pub fn new(store: Arc<dyn Store>, dispatcher: Dispatcher, settings: RelaySettings, holder_timeout: Duration) -> Self {
        Self { store, dispatcher, settings, holder_timeout, steady: Steadiness::new(holder_timeout) }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let interval = Duration::from_millis(self.settings.interval_ms);
        loop {
            let pass = self.pass().await;
            match &pass {
                Ok(_) => self.steady.reached(),
                Err(_) => self.steady.broke(),
            }
            match pass {
                Ok(p) if p.rescued > 0 || p.published > 0 || p.failed > 0 => {
                    tracing::info!(rescued = p.rescued, published = p.published, failed = p.failed, "relay pass");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "relay pass failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One rescue-and-publish pass over the store.
    pub async fn pass(&self) -> Result<Pass, geonex_shared::store::StoreError> {
        let rescued = match self.steady.is_steady() {
            true => self.store.rescue_expired_leases(self.holder_timeout).await?,
            false => 0,
        };
        let mut pass = Pass { rescued, ..Pass::default() };
        loop {
            let due = self
                .store
                .due_for_publish(
                    Duration::from_millis(self.settings.grace_ms),
                    Duration::from_millis(self.settings.overdue_ms),
                    self.settings.batch,
                )
                .await?;
            let full = due.len() as i64 == self.settings.batch;
            for cmd in &due {
                let delay = match (cmd.status, cmd.next_attempt_at) {
                    (CommandStatus::Retrying, Some(at)) => (at - Utc::now()).to_std().ok(),
                    _ => None,
                };
                match self.dispatcher.publish(&cmd.message(), delay).await {
                    Ok(()) => pass.published += 1,
                    Err(e) => {
                        tracing::debug!(error = %e, "relay publish failed; broker still unavailable");
                        pass.failed += 1;
                        return Ok(pass);
                    }
                }
            }
            if !full {
                return Ok(pass);
            }
        }
    }
}
