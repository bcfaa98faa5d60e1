//! The fleet store port: what the reconciliation sweep reads and records.

use geonex_shared::domain::ObservedState;
use geonex_shared::store::fleet::FleetStore;
use geonex_shared::store::postgres::PgStore;
use geonex_shared::store::sqlite::SqliteStore;
use geonex_shared::store::{RunnerObservation, Store};
use uuid::Uuid;

use crate::core::{INSTANCE, OTHER_INSTANCE, command, start, submit};

/// Plain SQL, for rows no method of these ports writes. Statements carry their
/// values as literals, so the same text runs on both databases.
trait RawSql {
    async fn execute(&self, sql: &str);
    async fn text(&self, sql: &str) -> String;
}

impl RawSql for PgStore {
    async fn execute(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(self.pool()).await.unwrap();
    }
    async fn text(&self, sql: &str) -> String {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(self.pool()).await.unwrap()
    }
}

impl RawSql for SqliteStore {
    async fn execute(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(self.pool()).await.unwrap();
    }
    async fn text(&self, sql: &str) -> String {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(self.pool()).await.unwrap()
    }
}

async fn container<S: RawSql>(store: &S, runner: &str, instance: Option<&str>, status: &str) -> Uuid {
    let id = Uuid::new_v4();
    let instance = instance.map_or("null".to_owned(), |i| format!("'{i}'"));
    let (exit_code, finished) = match status {
        "running" => ("null", "null"),
        _ => ("0", "'2026-01-01T00:00:00.000Z'"),
    };
    store
        .execute(&format!(
            "insert into container (container_id, runner_id, instance_id, image_name, status, exit_code, finished_at) \
             values ('{id}', '{runner}', {instance}, 'geonex/fire:1.5', '{status}', {exit_code}, {finished})"
        ))
        .await;
    id
}

/// A container's status, and whether it has a finish time.
async fn container_state<S: RawSql>(store: &S, id: Uuid) -> String {
    store
        .text(&format!(
            "select status || case when finished_at is null then '' else ' finished' end \
             from container where container_id = '{id}'"
        ))
        .await
}

async fn observe(store: &impl Store, runner: &str, instance: &str, state: ObservedState) {
    let obs = RunnerObservation { instance_id: Some(instance.into()), observed: state };
    store.record_instance(runner, &obs).await.unwrap();
}

async fn runners_to_reconcile<S: Store + FleetStore>(store: S) {
    for r in ["r1", "r2", "r3"] {
        submit(&store, command(r, start("geonex/fire:1.5"))).await;
    }
    observe(&store, "r1", INSTANCE, ObservedState::Running).await;
    observe(&store, "r2", OTHER_INSTANCE, ObservedState::Terminated).await;
    let mut ids: Vec<_> = store.runners_to_reconcile().await.unwrap().into_iter().map(|r| r.runner_id).collect();
    ids.sort();
    assert_eq!(ids, ["r1"]);

    let wanted = ["r3".to_owned(), "nope".to_owned(), "r1".to_owned()];
    let mut found: Vec<_> = store.runners_by_ids(&wanted).await.unwrap().into_iter().map(|r| r.runner_id).collect();
    found.sort();
    assert_eq!(found, ["r1", "r3"]);
    assert!(store.runners_by_ids(&[]).await.unwrap().is_empty());
}

async fn observe_instance_ends_containers<S: Store + FleetStore + RawSql>(store: S) {
    submit(&store, command("r1", start("geonex/fire:1.5"))).await;
    submit(&store, command("r2", start("geonex/fire:1.5"))).await;
    observe(&store, "r1", INSTANCE, ObservedState::Running).await;
    let on_instance = container(&store, "r1", Some(INSTANCE), "running").await;
    let unplaced = container(&store, "r1", None, "running").await;
    let elsewhere = container(&store, "r1", Some(OTHER_INSTANCE), "running").await;
    let exited = container(&store, "r1", Some(INSTANCE), "exited").await;
    let other_runner = container(&store, "r2", None, "running").await;

    // No change, and running instances end nothing.
    assert!(!store.observe_instance("r1", INSTANCE, ObservedState::Running).await.unwrap());
    assert_eq!(container_state(&store, on_instance).await, "running");
    // Not the runner's instance: the runner is left alone.
    assert!(!store.observe_instance("r1", OTHER_INSTANCE, ObservedState::Pending).await.unwrap());
    assert_eq!(store.get_runner("r1").await.unwrap().unwrap().observed_state, ObservedState::Running);

    let rev = store.runners_revision().await.unwrap();
    assert!(store.observe_instance("r1", INSTANCE, ObservedState::Stopped).await.unwrap());
    assert_eq!(store.get_runner("r1").await.unwrap().unwrap().observed_state, ObservedState::Stopped);
    assert!(store.runners_revision().await.unwrap() > rev);
    assert_eq!(container_state(&store, on_instance).await, "killed finished");
    assert_eq!(container_state(&store, unplaced).await, "killed finished");
    assert_eq!(container_state(&store, elsewhere).await, "running");
    assert_eq!(container_state(&store, exited).await, "exited finished");
    assert_eq!(container_state(&store, other_runner).await, "running");
    assert!(!store.observe_instance("r1", INSTANCE, ObservedState::Stopped).await.unwrap());

    // Gone instances end containers too, even when the state is already known.
    let late = container(&store, "r1", Some(INSTANCE), "running").await;
    assert!(store.observe_instance("r1", INSTANCE, ObservedState::Terminated).await.unwrap());
    assert_eq!(container_state(&store, late).await, "killed finished");
    let later = container(&store, "r1", None, "running").await;
    assert!(!store.observe_instance("r1", INSTANCE, ObservedState::Terminated).await.unwrap());
    assert_eq!(container_state(&store, later).await, "killed finished");
    assert!(store.runners_to_reconcile().await.unwrap().is_empty());
}

async fn orphans<S: FleetStore>(store: S) {
    const A: &str = "i-0000000000000000a";
    const B: &str = "i-0000000000000000b";
    const C: &str = "i-0000000000000000c";
    assert!(store.list_orphans().await.unwrap().is_empty());
    store.record_orphans(&[(A.into(), Some("r9".into()), ObservedState::Running), (B.into(), None, ObservedState::Stopped)])
        .await
        .unwrap();
    let listed = store.list_orphans().await.unwrap();
    assert_eq!(listed.iter().map(|o| o.instance_id.as_str()).collect::<Vec<_>>(), [A, B]);
    assert_eq!(listed[0].runner_id.as_deref(), Some("r9"));
    assert_eq!(listed[0].state, "running");
    assert_eq!(listed[1].runner_id, None);
    assert_eq!(listed[1].state, "stopped");
    assert!(listed[0].reaped_at.is_none());
    assert_eq!(listed[0].first_seen_at, listed[0].last_seen_at);
    let b_first_seen = listed[1].first_seen_at;

    // The next sweep replaces the list: A is gone, B changed, C is new.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store.record_orphans(&[(C.into(), None, ObservedState::Pending), (B.into(), None, ObservedState::Terminated)])
        .await
        .unwrap();
    let listed = store.list_orphans().await.unwrap();
    assert_eq!(listed.iter().map(|o| o.instance_id.as_str()).collect::<Vec<_>>(), [B, C]);
    assert_eq!(listed[0].state, "terminated");
    assert_eq!(listed[0].first_seen_at, b_first_seen);
    assert!(listed[0].last_seen_at > b_first_seen);

    // A reaped orphan stays listed even when no longer seen.
    store.mark_reaped(B).await.unwrap();
    store.mark_reaped("i-0000000000000000f").await.unwrap();
    store.record_orphans(&[]).await.unwrap();
    let listed = store.list_orphans().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].instance_id, B);
    assert!(listed[0].reaped_at.is_some());

    // States an instance cannot be in are refused, and the sweep leaves no trace.
    assert!(store.record_orphans(&[(A.into(), None, ObservedState::Requested)]).await.is_err());
    assert_eq!(store.list_orphans().await.unwrap().len(), 1);
}

async fn instance_events_apply_in_order_and_never_backwards<S: Store + FleetStore + RawSql>(store: S) {
    use chrono::{TimeDelta, Utc};
    use geonex_shared::store::fleet::{EventOutcome, InstanceEvent};
    submit(&store, command("r1", start("geonex/fire:1.5"))).await;
    observe(&store, "r1", INSTANCE, ObservedState::Running).await;
    let running = container(&store, "r1", Some(INSTANCE), "running").await;
    let event = |state, secs: i64| InstanceEvent { instance_id: INSTANCE.into(), state, at: Utc::now() + TimeDelta::seconds(secs) };

    let unknown = InstanceEvent { instance_id: OTHER_INSTANCE.into(), ..event(ObservedState::Stopped, 5) };
    assert_eq!(store.apply_instance_event(&unknown).await.unwrap(), EventOutcome::UnknownInstance);

    // A stop well before the state the command recorded is stale and kills nothing.
    let late = store.apply_instance_event(&event(ObservedState::Stopped, -60)).await.unwrap();
    assert!(matches!(late, EventOutcome::Stale { current: ObservedState::Running, .. }), "{late:?}");
    assert_eq!(container_state(&store, running).await, "running");

    // A later stop applies, and ends the running container.
    let stop = store.apply_instance_event(&event(ObservedState::Stopped, 5)).await.unwrap();
    assert_eq!(stop, EventOutcome::Applied { runner_id: "r1".into(), from: ObservedState::Running });
    assert_eq!(store.get_runner("r1").await.unwrap().unwrap().observed_state, ObservedState::Stopped);
    assert_eq!(container_state(&store, running).await, "killed finished");
    let again = store.apply_instance_event(&event(ObservedState::Stopped, 6)).await.unwrap();
    assert_eq!(again, EventOutcome::Unchanged { runner_id: "r1".into() });

    // The running event that came before it, delivered after it, does not win.
    let reordered = store.apply_instance_event(&event(ObservedState::Running, 3)).await.unwrap();
    assert!(matches!(reordered, EventOutcome::Stale { current: ObservedState::Stopped, .. }), "{reordered:?}");

    // A command's change stamps the time itself: an event older than it is stale.
    observe(&store, "r1", INSTANCE, ObservedState::Running).await;
    let older = store.apply_instance_event(&event(ObservedState::Stopped, -30)).await.unwrap();
    assert!(matches!(older, EventOutcome::Stale { current: ObservedState::Running, .. }), "{older:?}");

    // Terminated is final.
    let end = store.apply_instance_event(&event(ObservedState::Terminated, 20)).await.unwrap();
    assert!(matches!(end, EventOutcome::Applied { .. }), "{end:?}");
    let revived = store.apply_instance_event(&event(ObservedState::Running, 40)).await.unwrap();
    assert!(matches!(revived, EventOutcome::Stale { current: ObservedState::Terminated, .. }), "{revived:?}");
}

contract!(runners_to_reconcile, observe_instance_ends_containers, orphans, instance_events_apply_in_order_and_never_backwards);
