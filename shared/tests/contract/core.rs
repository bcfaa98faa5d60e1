//! The core store port: submitting runner commands, claiming them under a lease,
//! finishing them, publishing, recovery, replay and listings.

use std::time::Duration;

use chrono::Utc;
use geonex_shared::domain::{
    Action, CommandStatus, DesiredState, ImageRef, InstanceId, InstanceType, ObservedState, RunnerId, RunnerName,
    S3Uri,
};
use geonex_shared::store::{
    Claim, CommandQuery, CommandRecord, Lease, LeaseTerms, NewRunnerCommand, ReplaySelector, RunnerObservation,
    RunnerQuery, RunnerRequest, Store, SubmitError, Submitted, WorkerProcess,
};
use uuid::Uuid;

pub const INSTANCE: &str = "i-0123456789abcdef0";
pub const OTHER_INSTANCE: &str = "i-0fedcba9876543210";

pub fn start(image: &str) -> RunnerRequest {
    RunnerRequest::Start {
        instance_type: InstanceType::parse("m5d.4xlarge").unwrap(),
        image_name: ImageRef::parse(image).unwrap(),
        s3_output: S3Uri::parse("s3://geonex/out").unwrap(),
        runner_name: RunnerName::parse("Production").unwrap(),
        options: Default::default(),
    }
}

pub fn stop(instance: &str) -> RunnerRequest {
    RunnerRequest::Stop { instance_id: InstanceId::parse(instance).unwrap(), runner_name: None, reason: None }
}

pub fn delete(instance: &str) -> RunnerRequest {
    RunnerRequest::Delete { instance_id: InstanceId::parse(instance).unwrap(), runner_name: None }
}

pub fn command(runner: &str, request: RunnerRequest) -> NewRunnerCommand {
    NewRunnerCommand {
        command_id: Uuid::new_v4(),
        runner_id: RunnerId::parse(runner).unwrap(),
        request,
        requested_by: "alice".into(),
        idempotency_key: None,
        trace_id: "trace".into(),
        max_attempts: 3,
    }
}

pub fn keyed(runner: &str, request: RunnerRequest, key: &str) -> NewRunnerCommand {
    NewRunnerCommand { idempotency_key: Some(key.into()), ..command(runner, request) }
}

pub async fn submit<S: Store>(store: &S, cmd: NewRunnerCommand) -> CommandRecord {
    let submitted = store.submit_runner_command(cmd).await.unwrap();
    assert!(submitted.created);
    submitted.command
}

/// The worker process the cases claim as, unless a case names another.
pub const HOLDER: Uuid = Uuid::from_u128(0x0195_0000_0000_7000_8000_0000_0000_0001);

pub fn worker(worker_id: Uuid) -> WorkerProcess {
    WorkerProcess {
        worker_id,
        hostname: "host-a".into(),
        pid: 4242,
        version: "test".into(),
        started_at: Utc::now(),
        heartbeat_at: Utc::now(),
    }
}

/// Claim terms for `holder` under which other holders never look dead.
pub fn terms_of(holder: Uuid, lease: Duration) -> LeaseTerms {
    LeaseTerms { holder, lease, holder_timeout: HOUR, take_over: true }
}

pub fn terms(lease: Duration) -> LeaseTerms {
    terms_of(HOLDER, lease)
}

/// The lease `HOLDER` has on a command it claimed.
pub fn lease(command_id: Uuid) -> Lease {
    Lease { command_id, holder: HOLDER }
}

/// Claims as `HOLDER`, registered (alive) first.
pub async fn claim<S: Store>(store: &S, id: Uuid, lease: Duration) -> Claim {
    store.register_worker(&worker(HOLDER)).await.unwrap();
    store.claim(id, &terms(lease)).await.unwrap()
}

pub async fn claimed<S: Store>(store: &S, id: Uuid, lease: Duration) -> CommandRecord {
    match claim(store, id, lease).await {
        Claim::Claimed { command, .. } => command,
        other => panic!("expected Claimed, got {other:?}"),
    }
}

async fn status<S: Store>(store: &S, id: Uuid) -> CommandStatus {
    store.get_command(id).await.unwrap().unwrap().status
}

fn conflict_code(r: Result<Submitted, SubmitError>) -> &'static str {
    match r {
        Err(SubmitError::Conflict { code, .. }) => code,
        Err(SubmitError::KeyReused) => "idempotency_key_reused",
        other => panic!("expected a conflict, got {other:?}"),
    }
}

const HOUR: Duration = Duration::from_secs(3600);

/// Polls `f` every 20 ms until it returns `Some`, for at most 10 seconds.
pub async fn eventually<T>(mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not met in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ping_and_migrate_again<S: Store>(store: S) {
    store.ping().await.unwrap();
    // Migrating an up-to-date database is a no-op.
    store.migrate().await.unwrap();
    assert!(store.get_command(Uuid::new_v4()).await.unwrap().is_none());
    assert!(store.get_runner("nope").await.unwrap().is_none());
    assert_eq!(store.runners_revision().await.unwrap(), 0);
    assert_eq!(store.commands_revision().await.unwrap(), 0);
}

async fn submit_creates_runner_and_command<S: Store>(store: S) {
    let cmd = command("r1", start("geonex/fire:1.5"));
    let id = cmd.command_id;
    let c = submit(&store, cmd).await;
    assert_eq!(c.command_id, id);
    assert_eq!(c.action, Action::StartRunner);
    assert_eq!(c.status, CommandStatus::Queued);
    assert_eq!(c.runner_id.as_deref(), Some("r1"));
    assert_eq!((c.attempts, c.max_attempts), (0, 3));
    assert_eq!(c.requested_by, "alice");
    assert_eq!(c.trace_id, "trace");
    assert_eq!(c.params["image_name"], "geonex/fire:1.5");
    assert_eq!(c.params["runner_id"], "r1");
    assert!(c.result.is_none() && c.started_at.is_none() && c.finished_at.is_none() && c.next_attempt_at.is_none());
    assert!((Utc::now() - c.created_at).num_seconds().abs() < 60);

    let fetched = store.get_command(id).await.unwrap().unwrap();
    assert_eq!(fetched.seq, c.seq);
    assert_eq!(fetched.params, c.params);
    assert_eq!(fetched.created_at, c.created_at);

    let r = store.get_runner("r1").await.unwrap().unwrap();
    assert_eq!(r.runner_name, "Production");
    assert_eq!(r.instance_type, "m5d.4xlarge");
    assert_eq!(r.image_name, "geonex/fire:1.5");
    assert_eq!(r.s3_output, "s3://geonex/out");
    assert_eq!(r.instance_id, None);
    assert_eq!(r.desired_state, DesiredState::Running);
    assert_eq!(r.observed_state, ObservedState::Requested);

    // Starting it again with the same parameters converges: a new command.
    let again = submit(&store, command("r1", start("geonex/fire:1.5"))).await;
    assert!(again.seq > c.seq);
}

async fn idempotency_key<S: Store>(store: S) {
    let first = store.submit_runner_command(keyed("r1", start("geonex/fire:1.5"), "k1")).await.unwrap();
    assert!(first.created);
    // The same request with the same key answers with the same command.
    let repeat = store.submit_runner_command(keyed("r1", start("geonex/fire:1.5"), "k1")).await.unwrap();
    assert!(!repeat.created);
    assert_eq!(repeat.command.command_id, first.command.command_id);
    // A different request under the same key is refused, and writes nothing.
    let before = store.commands_revision().await.unwrap();
    let other = store.submit_runner_command(keyed("r1", start("geonex/fire:2.0"), "k1")).await;
    assert_eq!(conflict_code(other), "idempotency_key_reused");
    let other = store.submit_runner_command(keyed("r2", start("geonex/fire:1.5"), "k1")).await;
    assert_eq!(conflict_code(other), "idempotency_key_reused");
    assert_eq!(store.commands_revision().await.unwrap(), before);
    assert!(store.get_runner("r2").await.unwrap().is_none());
    // Keys are per requester.
    let bob = NewRunnerCommand { requested_by: "bob".into(), ..keyed("r1", start("geonex/fire:1.5"), "k1") };
    let bobs = store.submit_runner_command(bob).await.unwrap();
    assert!(bobs.created);
    assert_ne!(bobs.command.command_id, first.command.command_id);
}

async fn runner_state_planning<S: Store>(store: S) {
    assert!(matches!(
        store.submit_runner_command(command("r1", stop(INSTANCE))).await,
        Err(SubmitError::RunnerNotFound(id)) if id == "r1"
    ));
    assert!(store.get_runner("r1").await.unwrap().is_none());
    let c1 = submit(&store, command("r1", start("geonex/fire:1.5"))).await;
    assert_eq!(
        conflict_code(store.submit_runner_command(command("r1", start("geonex/fire:2.0"))).await),
        "runner_exists"
    );
    // Without an instance yet, a stop for any instance is accepted.
    submit(&store, command("r1", stop(OTHER_INSTANCE))).await;
    assert_eq!(store.get_runner("r1").await.unwrap().unwrap().desired_state, DesiredState::Stopped);

    store
        .record_instance("r1", &RunnerObservation { instance_id: Some(INSTANCE.into()), observed: ObservedState::Running })
        .await
        .unwrap();
    let r = store.get_runner("r1").await.unwrap().unwrap();
    assert_eq!(r.instance_id.as_deref(), Some(INSTANCE));
    assert_eq!(r.observed_state, ObservedState::Running);
    assert_eq!(
        conflict_code(store.submit_runner_command(command("r1", stop(OTHER_INSTANCE))).await),
        "instance_mismatch"
    );
    // An observation without an instance keeps the known one.
    store.record_instance("r1", &RunnerObservation { instance_id: None, observed: ObservedState::Terminated }).await.unwrap();
    let r = store.get_runner("r1").await.unwrap().unwrap();
    assert_eq!(r.instance_id.as_deref(), Some(INSTANCE));
    assert_eq!(
        conflict_code(store.submit_runner_command(command("r1", stop(INSTANCE))).await),
        "instance_terminated"
    );
    submit(&store, command("r1", delete(INSTANCE))).await;
    assert_eq!(store.get_runner("r1").await.unwrap().unwrap().desired_state, DesiredState::Deleted);
    assert_eq!(
        conflict_code(store.submit_runner_command(command("r1", start("geonex/fire:1.5"))).await),
        "runner_deleted"
    );
    let q = CommandQuery { runner_id: Some("r1".into()), limit: 10, ..Default::default() };
    let listed = store.list_commands(&q).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[2].command_id, c1.command_id);
}

async fn concurrent_first_starts<S: Store + Clone>(store: S) {
    // Racing first starts of one runner: one creates it, the others converge on it.
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.submit_runner_command(command("r1", start("geonex/fire:1.5"))).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap().created);
    }
    let runners = store.list_runners(&RunnerQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(runners.len(), 1);
    let commands = store.list_commands(&CommandQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(commands.len(), 6);
}

async fn concurrent_same_idempotency_key<S: Store + Clone>(store: S) {
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.submit_runner_command(keyed("r1", start("geonex/fire:1.5"), "k")).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().unwrap());
    }
    assert_eq!(results.iter().filter(|s| s.created).count(), 1);
    let id = results[0].command.command_id;
    assert!(results.iter().all(|s| s.command.command_id == id));
    let commands = store.list_commands(&CommandQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(commands.len(), 1);
}

async fn claim_in_runner_order<S: Store>(store: S) {
    let c1 = submit(&store, command("r1", start("geonex/fire:1.5"))).await;
    let c2 = submit(&store, command("r1", stop(INSTANCE))).await;
    let other = submit(&store, command("r2", start("geonex/fire:1.5"))).await;
    // The later command on r1 waits for the earlier one; other runners do not.
    assert!(matches!(claim(&store, c2.command_id, HOUR).await, Claim::Blocked));
    claimed(&store, other.command_id, HOUR).await;

    let before = Utc::now();
    let Claim::Claimed { command, runner } = claim(&store, c1.command_id, HOUR).await else {
        panic!("expected Claimed");
    };
    assert_eq!(command.status, CommandStatus::Running);
    assert_eq!(command.attempts, 1);
    let started = command.started_at.unwrap();
    assert!((started - before).num_seconds().abs() < 5);
    assert!(command.updated_at >= command.created_at);
    assert!((command.updated_at - before).num_seconds().abs() < 5);
    assert_eq!(runner.unwrap().runner_id, "r1");
    assert_eq!(store.get_command(c1.command_id).await.unwrap().unwrap().updated_at, command.updated_at);

    assert!(matches!(claim(&store, c1.command_id, HOUR).await, Claim::Busy));
    assert!(matches!(claim(&store, c2.command_id, HOUR).await, Claim::Blocked));
    assert!(matches!(claim(&store, Uuid::new_v4(), HOUR).await, Claim::NotFound));

    let obs = RunnerObservation { instance_id: Some(INSTANCE.into()), observed: ObservedState::Running };
    store.succeed_command(&lease(c1.command_id), Some(("r1", &obs)), serde_json::json!({"instance_id": INSTANCE})).await.unwrap();
    let done = store.get_command(c1.command_id).await.unwrap().unwrap();
    assert_eq!(done.status, CommandStatus::Succeeded);
    assert_eq!(done.result, Some(serde_json::json!({"instance_id": INSTANCE})));
    assert!(done.finished_at.is_some());
    assert_eq!(done.started_at, Some(started));
    let r = store.get_runner("r1").await.unwrap().unwrap();
    assert_eq!(r.instance_id.as_deref(), Some(INSTANCE));
    assert_eq!(r.observed_state, ObservedState::Running);

    // A duplicate delivery of a finished command.
    assert!(matches!(claim(&store, c1.command_id, HOUR).await, Claim::Finished(CommandStatus::Succeeded)));
    let c2 = claimed(&store, c2.command_id, HOUR).await;
    assert_eq!(c2.attempts, 1);
}

async fn concurrent_claims<S: Store + Clone>(store: S) {
    let c = submit(&store, command("r1", start("geonex/fire:1.5"))).await;
    store.register_worker(&worker(HOLDER)).await.unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.claim(c.command_id, &terms(HOUR)).await })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Claim::Claimed { .. } => won += 1,
            Claim::Busy => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.get_command(c.command_id).await.unwrap().unwrap().attempts, 1);
}

async fn lease_renewal_and_expiry<S: Store>(store: S) {
    let short = Duration::from_millis(300);
    let c = NewRunnerCommand { max_attempts: 3, ..command("r1", start("geonex/fire:1.5")) };
    let c = submit(&store, c).await;
    claimed(&store, c.command_id, short).await;
    assert!(store.renew_lease(&lease(c.command_id), HOUR).await.unwrap());
    assert_eq!(store.rescue_expired_leases(HOUR).await.unwrap(), 0);
    assert!(store.renew_lease(&lease(c.command_id), short).await.unwrap());
    assert!(matches!(claim(&store, c.command_id, short).await, Claim::Busy));

    // The worker dies: once the lease runs out, the command is rescued to retrying.
    eventually(async || { (store.rescue_expired_leases(HOUR).await.unwrap() == 1).then_some(()) }).await;
    let rescued = store.get_command(c.command_id).await.unwrap().unwrap();
    assert_eq!(rescued.status, CommandStatus::Retrying);
    assert_eq!(rescued.last_error.as_deref(), Some("worker lost while running (lease expired)"));
    assert!(rescued.next_attempt_at.is_some());
    assert!(rescued.finished_at.is_none());
    assert!(!store.renew_lease(&lease(c.command_id), HOUR).await.unwrap());
    assert_eq!(store.rescue_expired_leases(HOUR).await.unwrap(), 0);
    // It must be published again.
    let due = eventually(async || {
        let due = store.due_for_publish(Duration::ZERO, HOUR, 10).await.unwrap();
        (!due.is_empty()).then_some(due)
    })
    .await;
    assert_eq!(due[0].command_id, c.command_id);

    // The second attempt dies too; an expired lease can also be taken over
    // directly, for the third and last attempt.
    let again = claimed(&store, c.command_id, short).await;
    assert_eq!(again.attempts, 2);
    assert!(again.next_attempt_at.is_none());
    let taken = eventually(async || {
        match claim(&store, c.command_id, short).await {
            Claim::Claimed { command, .. } => Some(command),
            Claim::Busy => None,
            other => panic!("unexpected {other:?}"),
        }
    })
    .await;
    assert_eq!(taken.attempts, 3);
    // Attempts spent: the next expiry kills it.
    eventually(async || { (store.rescue_expired_leases(HOUR).await.unwrap() == 1).then_some(()) }).await;
    let dead = store.get_command(c.command_id).await.unwrap().unwrap();
    assert_eq!(dead.status, CommandStatus::Dead);
    assert!(dead.finished_at.is_some() && dead.next_attempt_at.is_none());
    assert_eq!(
        dead.last_error.as_deref(),
        Some("worker lost while running (lease expired); previous: worker lost while running (lease expired)")
    );
    assert!(matches!(claim(&store, c.command_id, short).await, Claim::Finished(CommandStatus::Dead)));
}

async fn retry_and_kill<S: Store>(store: S) {
    let c = submit(&store, command("r1", start("geonex/fire:1.5"))).await;
    // Only a running command can be retried, killed or completed.
    let next = Utc::now() + chrono::Duration::minutes(5);
    store.retry_command(&lease(c.command_id), "boom", next).await.unwrap();
    store.kill_command(&lease(c.command_id), "boom", None).await.unwrap();
    store.succeed_command(&lease(c.command_id), None, serde_json::json!({})).await.unwrap();
    assert_eq!(status(&store, c.command_id).await, CommandStatus::Queued);

    claimed(&store, c.command_id, HOUR).await;
    store.mark_published(&[c.command_id]).await.unwrap();
    store.retry_command(&lease(c.command_id), "throttled", next).await.unwrap();
    let r = store.get_command(c.command_id).await.unwrap().unwrap();
    assert_eq!(r.status, CommandStatus::Retrying);
    assert_eq!(r.last_error.as_deref(), Some("throttled"));
    let at = r.next_attempt_at.unwrap();
    assert!((at - next).num_milliseconds().abs() <= 1);
    // Retrying again needs a new claim; a retrying command can be claimed early.
    assert!(!store.renew_lease(&lease(c.command_id), HOUR).await.unwrap());
    let again = claimed(&store, c.command_id, HOUR).await;
    assert_eq!(again.attempts, 2);

    store.kill_command(&lease(c.command_id), "no capacity", Some(ObservedState::Failed)).await.unwrap();
    let dead = store.get_command(c.command_id).await.unwrap().unwrap();
    assert_eq!(dead.status, CommandStatus::Dead);
    assert_eq!(dead.last_error.as_deref(), Some("no capacity"));
    assert!(dead.finished_at.is_some());
    let r = store.get_runner("r1").await.unwrap().unwrap();
    assert_eq!(r.last_error.as_deref(), Some("no capacity"));
    assert_eq!(r.observed_state, ObservedState::Failed);
    // Nothing moves a dead command but a replay.
    store.succeed_command(&lease(c.command_id), None, serde_json::json!({})).await.unwrap();
    assert_eq!(status(&store, c.command_id).await, CommandStatus::Dead);

    // Killing without a runner state keeps the observed state; a new command
    // clears the runner's error.
    let c2 = submit(&store, command("r1", stop(INSTANCE))).await;
    assert_eq!(store.get_runner("r1").await.unwrap().unwrap().last_error, None);
    claimed(&store, c2.command_id, HOUR).await;
    store.kill_command(&lease(c2.command_id), "later", None).await.unwrap();
    let r = store.get_runner("r1").await.unwrap().unwrap();
    assert_eq!(r.last_error.as_deref(), Some("later"));
    assert_eq!(r.observed_state, ObservedState::Failed);
}

async fn publishing<S: Store>(store: S) {
    store.mark_published(&[]).await.unwrap();
    let a = submit(&store, command("r1", start("geonex/fire:1.5"))).await;
    let b = submit(&store, command("r2", start("geonex/fire:1.5"))).await;
    let c = submit(&store, command("r3", start("geonex/fire:1.5"))).await;
    // Within the grace period nothing is due.
    assert!(store.due_for_publish(HOUR, HOUR, 10).await.unwrap().is_empty());
    let due = eventually(async || {
        let due = store.due_for_publish(Duration::ZERO, HOUR, 10).await.unwrap();
        (due.len() == 3).then_some(due)
    })
    .await;
    let ids: Vec<_> = due.iter().map(|c| c.command_id).collect();
    assert_eq!(ids, [a.command_id, b.command_id, c.command_id]);
    let limited = store.due_for_publish(Duration::ZERO, HOUR, 2).await.unwrap();
    assert_eq!(limited.len(), 2);

    store.mark_published(&[a.command_id, c.command_id, Uuid::new_v4()]).await.unwrap();
    let due = store.due_for_publish(Duration::ZERO, HOUR, 10).await.unwrap();
    assert_eq!(due.iter().map(|c| c.command_id).collect::<Vec<_>>(), [b.command_id]);
    let a_published = store.get_command(a.command_id).await.unwrap().unwrap();
    assert!(a_published.next_attempt_at.is_none());

    // A running command is not marked; a retry must be published again.
    claimed(&store, b.command_id, HOUR).await;
    store.mark_published(&[b.command_id]).await.unwrap();
    let long_ago = Utc::now() - chrono::Duration::hours(2);
    store.retry_command(&lease(b.command_id), "boom", long_ago).await.unwrap();
    let due = store.due_for_publish(HOUR, HOUR, 10).await.unwrap();
    // Unpublished but within the grace period, yet overdue by more than an hour.
    assert_eq!(due.iter().map(|c| c.command_id).collect::<Vec<_>>(), [b.command_id]);
    // Publishing an overdue retry moves its due time to now.
    let before = Utc::now();
    store.mark_published(&[b.command_id]).await.unwrap();
    let b_now = store.get_command(b.command_id).await.unwrap().unwrap();
    assert!(b_now.next_attempt_at.unwrap() >= before - chrono::Duration::milliseconds(5));
    assert!(store.due_for_publish(Duration::ZERO, HOUR, 10).await.unwrap().is_empty());
    // It becomes overdue again later; so do the queued commands whose publish
    // was confirmed long ago and that nobody claimed since (their messages lost).
    let due = eventually(async || {
        let due = store.due_for_publish(Duration::ZERO, Duration::ZERO, 10).await.unwrap();
        (due.len() == 3).then_some(due)
    })
    .await;
    assert_eq!(due.iter().map(|c| c.command_id).collect::<Vec<_>>(), [a.command_id, b.command_id, c.command_id]);
    assert!(store.due_for_publish(Duration::ZERO, HOUR, 10).await.unwrap().is_empty());

    // Publishing a retry whose due time is still ahead keeps it.
    let c_claimed = claimed(&store, c.command_id, HOUR).await;
    assert_eq!(c_claimed.status, CommandStatus::Running);
    let later = Utc::now() + chrono::Duration::hours(1);
    store.retry_command(&lease(c.command_id), "boom", later).await.unwrap();
    store.mark_published(&[c.command_id]).await.unwrap();
    let kept = store.get_command(c.command_id).await.unwrap().unwrap().next_attempt_at.unwrap();
    assert!((kept - later).num_milliseconds().abs() <= 1);
}

async fn recover_after_restart<S: Store>(store: S) {
    let queued = submit(&store, command("r1", start("geonex/fire:1.5"))).await;
    let running = submit(&store, command("r2", start("geonex/fire:1.5"))).await;
    let spent = submit(&store, NewRunnerCommand { max_attempts: 1, ..command("r3", start("geonex/fire:1.5")) }).await;
    let finished = submit(&store, command("r4", start("geonex/fire:1.5"))).await;
    store.mark_published(&[queued.command_id, running.command_id, spent.command_id, finished.command_id]).await.unwrap();
    claimed(&store, running.command_id, HOUR).await;
    claimed(&store, spent.command_id, HOUR).await;
    claimed(&store, finished.command_id, HOUR).await;
    store.succeed_command(&lease(finished.command_id), None, serde_json::json!({})).await.unwrap();

    assert_eq!(store.recover_unfinished().await.unwrap(), 2);
    let r = store.get_command(running.command_id).await.unwrap().unwrap();
    assert_eq!(r.status, CommandStatus::Retrying);
    assert_eq!(r.last_error.as_deref(), Some("interrupted by a restart"));
    assert!(r.next_attempt_at.is_some());
    let s = store.get_command(spent.command_id).await.unwrap().unwrap();
    assert_eq!(s.status, CommandStatus::Dead);
    assert!(s.finished_at.is_some());
    assert_eq!(status(&store, queued.command_id).await, CommandStatus::Queued);
    assert_eq!(status(&store, finished.command_id).await, CommandStatus::Succeeded);
    // Both unfinished commands are published again.
    let due = eventually(async || {
        let due = store.due_for_publish(Duration::ZERO, HOUR, 10).await.unwrap();
        (due.len() == 2).then_some(due)
    })
    .await;
    assert_eq!(due.iter().map(|c| c.command_id).collect::<Vec<_>>(), [queued.command_id, running.command_id]);
}

async fn kill<S: Store>(store: &S, id: Uuid) {
    claimed(store, id, HOUR).await;
    store.kill_command(&lease(id), "boom", Some(ObservedState::Failed)).await.unwrap();
}

async fn replay_dead_commands<S: Store>(store: S) {
    let a = submit(&store, command("r1", start("geonex/fire:1.5"))).await;
    kill(&store, a.command_id).await;
    let replayed = store.replay(ReplaySelector::Command(a.command_id)).await.unwrap();
    assert!(replayed.skipped.is_empty());
    assert_eq!(replayed.replayed.len(), 1);
    let back = &replayed.replayed[0];
    assert_eq!(back.command_id, a.command_id);
    assert_eq!(back.status, CommandStatus::Queued);
    assert_eq!(back.attempts, 0);
    assert!(back.finished_at.is_none() && back.next_attempt_at.is_none());
    assert!(back.updated_at >= a.updated_at);
    assert_eq!(store.get_command(a.command_id).await.unwrap().unwrap().updated_at, back.updated_at);
    // It is published again.
    eventually(async || {
        let due = store.due_for_publish(Duration::ZERO, HOUR, 10).await.unwrap();
        due.iter().any(|c| c.command_id == a.command_id).then_some(())
    })
    .await;
    // Replaying a command that is not dead does nothing.
    let nothing = store.replay(ReplaySelector::Command(a.command_id)).await.unwrap();
    assert!(nothing.replayed.is_empty() && nothing.skipped.is_empty());
    let claimed_again = claimed(&store, a.command_id, HOUR).await;
    assert_eq!(claimed_again.attempts, 1);
    store.succeed_command(&lease(a.command_id), None, serde_json::json!({})).await.unwrap();

    // On r2 the dead start was superseded by a later stop: replaying it would undo that.
    let b = submit(&store, command("r2", start("geonex/fire:1.5"))).await;
    kill(&store, b.command_id).await;
    let b_stop = submit(&store, command("r2", stop(INSTANCE))).await;
    // On r3 the later command died too: both are replayed, in order.
    let c = submit(&store, command("r3", start("geonex/fire:1.5"))).await;
    kill(&store, c.command_id).await;
    let c_stop = submit(&store, command("r3", stop(INSTANCE))).await;
    kill(&store, c_stop.command_id).await;

    assert!(store.replay(ReplaySelector::Action(Action::SendEmail)).await.unwrap().replayed.is_empty());
    let stops = store.replay(ReplaySelector::Action(Action::StopRunner)).await.unwrap();
    assert_eq!(stops.replayed.iter().map(|c| c.command_id).collect::<Vec<_>>(), [c_stop.command_id]);
    assert!(stops.skipped.is_empty());
    kill(&store, c_stop.command_id).await;
    let all = store.replay(ReplaySelector::All).await.unwrap();
    assert_eq!(all.replayed.iter().map(|c| c.command_id).collect::<Vec<_>>(), [c.command_id, c_stop.command_id]);
    assert_eq!(all.skipped.len(), 1);
    assert_eq!(all.skipped[0].0, b.command_id);
    assert_eq!(all.skipped[0].1, format!("superseded by later command {} on runner r2", b_stop.command_id));
    assert_eq!(status(&store, b.command_id).await, CommandStatus::Dead);
}

async fn listing_paging_and_revisions<S: Store>(store: S) {
    let r0 = store.runners_revision().await.unwrap();
    let mut ids = Vec::new();
    for runner in ["r3", "r1", "r2"] {
        ids.push(submit(&store, command(runner, start("geonex/fire:1.5"))).await);
    }
    ids.push(submit(&store, command("r1", stop(INSTANCE))).await);
    let r1 = store.runners_revision().await.unwrap();
    assert!(r1 > r0);
    let c1 = store.commands_revision().await.unwrap();

    // Commands: newest first, paged by seq.
    let q = CommandQuery { limit: 3, ..Default::default() };
    let page = store.list_commands(&q).await.unwrap();
    let want: Vec<_> = ids.iter().rev().map(|c| c.command_id).collect();
    assert_eq!(page.iter().map(|c| c.command_id).collect::<Vec<_>>(), want[..3]);
    let q = CommandQuery { before_seq: Some(page[2].seq), limit: 3, ..Default::default() };
    let rest = store.list_commands(&q).await.unwrap();
    assert_eq!(rest.iter().map(|c| c.command_id).collect::<Vec<_>>(), want[3..]);
    let q = CommandQuery { runner_id: Some("r1".into()), limit: 10, ..Default::default() };
    assert_eq!(store.list_commands(&q).await.unwrap().len(), 2);
    let q = CommandQuery { action: Some(Action::StopRunner), limit: 10, ..Default::default() };
    assert_eq!(store.list_commands(&q).await.unwrap()[0].command_id, ids[3].command_id);
    claimed(&store, ids[0].command_id, HOUR).await;
    let c2 = store.commands_revision().await.unwrap();
    assert!(c2 > c1);
    let q = CommandQuery { status: Some(CommandStatus::Running), limit: 10, ..Default::default() };
    let running = store.list_commands(&q).await.unwrap();
    assert_eq!(running.iter().map(|c| c.command_id).collect::<Vec<_>>(), [ids[0].command_id]);
    let q = CommandQuery {
        runner_id: Some("r1".into()),
        status: Some(CommandStatus::Queued),
        action: Some(Action::StartRunner),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(store.list_commands(&q).await.unwrap()[0].command_id, ids[1].command_id);

    // Runners: by id, paged after an id.
    let q = RunnerQuery { limit: 2, ..Default::default() };
    let page = store.list_runners(&q).await.unwrap();
    assert_eq!(page.iter().map(|r| r.runner_id.as_str()).collect::<Vec<_>>(), ["r1", "r2"]);
    let q = RunnerQuery { after_runner_id: Some("r2".into()), limit: 2, ..Default::default() };
    let rest = store.list_runners(&q).await.unwrap();
    assert_eq!(rest.iter().map(|r| r.runner_id.as_str()).collect::<Vec<_>>(), ["r3"]);
    let q = RunnerQuery { desired: Some(DesiredState::Stopped), limit: 10, ..Default::default() };
    assert_eq!(store.list_runners(&q).await.unwrap().iter().map(|r| r.runner_id.as_str()).collect::<Vec<_>>(), ["r1"]);
    let obs = RunnerObservation { instance_id: Some(INSTANCE.into()), observed: ObservedState::Pending };
    let before = store.get_runner("r2").await.unwrap().unwrap();
    store.record_instance("r2", &obs).await.unwrap();
    let after = store.get_runner("r2").await.unwrap().unwrap();
    assert!(after.updated_at >= before.updated_at);
    assert!(store.runners_revision().await.unwrap() > r1);
    let q = RunnerQuery { observed: Some(ObservedState::Pending), limit: 10, ..Default::default() };
    assert_eq!(store.list_runners(&q).await.unwrap().iter().map(|r| r.runner_id.as_str()).collect::<Vec<_>>(), ["r2"]);
    let q = RunnerQuery { runner_id: Some("r3".into()), limit: 10, ..Default::default() };
    assert_eq!(store.list_runners(&q).await.unwrap().len(), 1);
    // Reads change no revision.
    let rev = (store.runners_revision().await.unwrap(), store.commands_revision().await.unwrap());
    store.list_runners(&RunnerQuery { limit: 10, ..Default::default() }).await.unwrap();
    claim(&store, ids[0].command_id, HOUR).await;
    assert_eq!((store.runners_revision().await.unwrap(), store.commands_revision().await.unwrap()), rev);
}

/// A dead worker's commands are taken over as soon as its heartbeat is stale,
/// long before their leases run out; the old holder can no longer write.
async fn takeover_from_a_dead_holder<S: Store>(store: S) {
    let quick = Duration::from_millis(1500);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    store.register_worker(&worker(a)).await.unwrap();
    store.register_worker(&worker(b)).await.unwrap();
    let c = submit(&store, command("r1", start("geonex/fire:1.5"))).await;
    let Claim::Claimed { command, .. } = store.claim(c.command_id, &terms_of(a, HOUR)).await.unwrap() else {
        panic!("a claims first");
    };
    assert_eq!(command.lease_holder, Some(a));
    let claimed_at = command.claimed_at.expect("claim time");
    assert!(command.lease_until.unwrap() > claimed_at);
    let b_terms = LeaseTerms { holder: b, lease: HOUR, holder_timeout: quick, take_over: true };
    // While a's heartbeat is fresh, b sees it busy.
    assert!(store.heartbeat_worker(a).await.unwrap());
    assert!(matches!(store.claim(c.command_id, &b_terms).await.unwrap(), Claim::Busy));
    let listed = store.list_workers().await.unwrap();
    assert!(listed.iter().any(|w| w.worker_id == a && w.hostname == "host-a" && w.pid == 4242));
    let before = store.get_worker(a).await.unwrap().unwrap().heartbeat_at;

    // a is killed: no more heartbeats. A claimer that has not reached the
    // database steadily itself (it may have lost it with everyone else) still
    // sees the command busy, however stale a's heartbeat.
    tokio::time::sleep(quick + Duration::from_millis(200)).await;
    store.heartbeat_worker(b).await.unwrap();
    let unsteady = LeaseTerms { take_over: false, ..b_terms };
    assert!(matches!(store.claim(c.command_id, &unsteady).await.unwrap(), Claim::Busy));
    // Within the holder timeout a steady b takes over, though a's lease has an
    // hour left.
    let taken = eventually(async || {
        store.heartbeat_worker(b).await.unwrap();
        match store.claim(c.command_id, &b_terms).await.unwrap() {
            Claim::Claimed { command, .. } => Some(command),
            Claim::Busy => None,
            other => panic!("unexpected {other:?}"),
        }
    })
    .await;
    assert_eq!(taken.attempts, 2);
    assert_eq!(taken.lease_holder, Some(b));
    assert!(taken.claimed_at.unwrap() >= claimed_at);
    assert_eq!(store.get_worker(a).await.unwrap().unwrap().heartbeat_at, before);

    // a comes back: it cannot renew, and what it writes is ignored.
    let lease_a = Lease { command_id: c.command_id, holder: a };
    assert!(!store.renew_lease(&lease_a, HOUR).await.unwrap());
    let obs = RunnerObservation { instance_id: Some(INSTANCE.into()), observed: ObservedState::Running };
    store.succeed_command(&lease_a, Some(("r1", &obs)), serde_json::json!({"by": "a"})).await.unwrap();
    store.retry_command(&lease_a, "a", Utc::now()).await.unwrap();
    store.kill_command(&lease_a, "a", Some(ObservedState::Failed)).await.unwrap();
    let still = store.get_command(c.command_id).await.unwrap().unwrap();
    assert_eq!((still.status, still.lease_holder), (CommandStatus::Running, Some(b)));
    let r = store.get_runner("r1").await.unwrap().unwrap();
    assert_eq!((r.instance_id, r.observed_state), (None, ObservedState::Requested));

    let lease_b = Lease { command_id: c.command_id, holder: b };
    assert!(store.renew_lease(&lease_b, HOUR).await.unwrap());
    store.succeed_command(&lease_b, Some(("r1", &obs)), serde_json::json!({"by": "b"})).await.unwrap();
    let done = store.get_command(c.command_id).await.unwrap().unwrap();
    assert_eq!(done.status, CommandStatus::Succeeded);
    assert_eq!(done.result, Some(serde_json::json!({"by": "b"})));
}

/// The rescuer returns a dead holder's command to the queue; a holder that left
/// the registry (stopped gracefully) frees its commands at once.
async fn rescue_of_dead_and_retired_holders<S: Store>(store: S) {
    let quick = Duration::from_millis(300);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    store.register_worker(&worker(a)).await.unwrap();
    let c = submit(&store, command("r1", start("geonex/fire:1.5"))).await;
    let d = submit(&store, command("r2", start("geonex/fire:1.5"))).await;
    assert!(matches!(store.claim(c.command_id, &terms_of(a, HOUR)).await.unwrap(), Claim::Claimed { .. }));
    assert_eq!(store.rescue_expired_leases(HOUR).await.unwrap(), 0);
    eventually(async || (store.rescue_expired_leases(quick).await.unwrap() == 1).then_some(())).await;
    let rescued = store.get_command(c.command_id).await.unwrap().unwrap();
    assert_eq!(rescued.status, CommandStatus::Retrying);
    assert_eq!(rescued.last_error.as_deref(), Some("worker lost while running (its process stopped heartbeating)"));
    assert!(rescued.lease_until.is_none());
    assert_eq!(store.due_for_publish(Duration::ZERO, HOUR, 10).await.unwrap()[0].command_id, c.command_id);

    // A graceful stop: a leaves the registry, b (alive) takes its command over.
    store.register_worker(&worker(a)).await.unwrap();
    store.register_worker(&worker(b)).await.unwrap();
    assert!(matches!(store.claim(d.command_id, &terms_of(a, HOUR)).await.unwrap(), Claim::Claimed { .. }));
    assert!(matches!(store.claim(d.command_id, &terms_of(b, HOUR)).await.unwrap(), Claim::Busy));
    store.retire_worker(a, HOUR).await.unwrap();
    assert!(store.get_worker(a).await.unwrap().is_none());
    assert!(!store.heartbeat_worker(a).await.unwrap());
    let Claim::Claimed { command, .. } = store.claim(d.command_id, &terms_of(b, HOUR)).await.unwrap() else {
        panic!("a retired holder's command is free");
    };
    assert_eq!(command.lease_holder, Some(b));
    // Retiring also forgets every row silent for longer than `forget_after`.
    store.retire_worker(Uuid::now_v7(), Duration::ZERO).await.unwrap();
    assert!(store.list_workers().await.unwrap().is_empty());
}

contract!(
    ping_and_migrate_again,
    takeover_from_a_dead_holder,
    rescue_of_dead_and_retired_holders,
    submit_creates_runner_and_command,
    idempotency_key,
    runner_state_planning,
    concurrent_first_starts,
    concurrent_same_idempotency_key,
    claim_in_runner_order,
    concurrent_claims,
    lease_renewal_and_expiry,
    retry_and_kill,
    publishing,
    recover_after_restart,
    replay_dead_commands,
    listing_paging_and_revisions,
);
