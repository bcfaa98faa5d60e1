//! The lease check before an effect outside the store.
//!
//! A command's lease can pass to another worker while its handler runs (this
//! process was presumed dead, or its lease ran out while the database was
//! away). The store already ignores what a former holder writes; what it
//! cannot undo is an instance launched or an e-mail sent. So right before each
//! such call a handler confirms the command is still this worker's: the
//! confirmation renews the lease for its full length, so no takeover can start
//! while the call that follows is under way. A command found taken over is
//! abandoned on the spot, as when the lease renewer finds it lost.
//!
//! The consumer runs every handler inside [`Fence::scope`]; a handler calls
//! [`confirm`] without carrying the lease through its own signatures.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use geonex_shared::store::{Lease, Store};
use tokio_util::sync::CancellationToken;

use crate::retry::HandlerError;

tokio::task_local! {
    static FENCE: Fence;
}

/// The lease a handler runs under, and what to do when it is gone.
#[derive(Clone)]
pub struct Fence {
    store: Arc<dyn Store>,
    lease: Lease,
    duration: Duration,
    /// Cancelled when the lease is found lost: the consumer drops the handler.
    lost: CancellationToken,
}

impl Fence {
    pub fn new(store: Arc<dyn Store>, lease: Lease, duration: Duration, lost: CancellationToken) -> Self {
        Self { store, lease, duration, lost }
    }

    /// Runs a handler under this lease.
    pub async fn scope<F: Future>(self, f: F) -> F::Output {
        FENCE.scope(self, f).await
    }
}

/// Confirms that the running command is still this worker's and holds it for a
/// full lease from now. Fails (retryably) if the store cannot be reached, so
/// nothing is done that could not be recorded; never returns if the command was
/// taken over: the consumer abandons the attempt. Outside a command (a sweep,
/// the observer) there is no lease to confirm.
pub async fn confirm() -> Result<(), HandlerError> {
    let Ok(fence) = FENCE.try_with(Clone::clone) else {
        return Ok(());
    };
    match fence.store.renew_lease(&fence.lease, fence.duration).await {
        Ok(true) => Ok(()),
        Ok(false) => {
            tracing::warn!("the command was taken over by another worker; not making the call");
            fence.lost.cancel();
            std::future::pending().await
        }
        Err(e) => Err(HandlerError::retryable(format!("cannot confirm the command's lease: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use geonex_shared::domain::{ImageRef, InstanceType, RunnerId, RunnerName, S3Uri};
    use geonex_shared::store::sqlite::SqliteStore;
    use geonex_shared::store::{Claim, LeaseTerms, NewRunnerCommand, RunnerRequest, WorkerProcess};
    use uuid::Uuid;

    const HOUR: Duration = Duration::from_secs(3600);

    fn worker(id: Uuid) -> WorkerProcess {
        let now = Utc::now();
        WorkerProcess { worker_id: id, hostname: "h".into(), pid: 1, version: "t".into(), started_at: now, heartbeat_at: now }
    }

    /// A handler whose command was taken over while it ran gets no further than
    /// its next confirmation: the call after it is never made, and the consumer
    /// is told to abandon the attempt. Its holder's own confirmations pass.
    #[tokio::test]
    async fn a_taken_over_command_makes_no_further_call() {
        let store = SqliteStore::connect("sqlite::memory:", 1, Duration::from_secs(5)).await.unwrap();
        store.run_migrations().await.unwrap();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        store.register_worker(&worker(a)).await.unwrap();
        store.register_worker(&worker(b)).await.unwrap();
        let cmd = store
            .submit_runner_command(NewRunnerCommand {
                command_id: Uuid::now_v7(),
                runner_id: RunnerId::parse("r1").unwrap(),
                request: RunnerRequest::Start {
                    instance_type: InstanceType::parse("m5d.large").unwrap(),
                    image_name: ImageRef::parse("geonex/fire:1").unwrap(),
                    s3_output: S3Uri::parse("s3://geonex/out").unwrap(),
                    runner_name: RunnerName::parse("R").unwrap(),
                    options: Default::default(),
                },
                requested_by: "alice".into(),
                idempotency_key: None,
                trace_id: "t".into(),
                max_attempts: 3,
            })
            .await
            .unwrap()
            .command;
        let store: Arc<dyn Store> = Arc::new(store);
        let sqlite = || store.clone();
        assert!(claimed_by_dyn(&sqlite(), cmd.command_id, a, HOUR).await);

        let lost = CancellationToken::new();
        let fence = Fence::new(sqlite(), Lease { command_id: cmd.command_id, holder: a }, HOUR, lost.clone());
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let handler = || async {
            confirm().await.unwrap();
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // b takes the command over (a presumed dead) while a's handler runs.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            store.heartbeat_worker(b).await.unwrap();
            assert!(claimed_by_dyn(&sqlite(), cmd.command_id, b, Duration::from_secs(1)).await);
            confirm().await.unwrap();
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        };
        let run = fence.scope(handler());
        tokio::select! {
            _ = run => panic!("the handler went past a confirmation of a lease it had lost"),
            _ = lost.cancelled() => {}
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "only the call before the takeover was made");
        // Outside any command there is nothing to confirm.
        confirm().await.unwrap();
    }

    async fn claimed_by_dyn(store: &Arc<dyn Store>, command_id: Uuid, holder: Uuid, holder_timeout: Duration) -> bool {
        let terms = LeaseTerms { holder, lease: HOUR, holder_timeout, take_over: true };
        matches!(store.claim(command_id, &terms).await.unwrap(), Claim::Claimed { .. })
    }
}
