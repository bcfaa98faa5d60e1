//! The operations port: scrape-time figures, cancelling a command that has not
//! started, and the change feed, the same on both databases.

use std::time::Duration;

use geonex_shared::domain::{Action, ObservedState};
use geonex_shared::store::ops::{ChangeListener, Feed, OpsStore};
use geonex_shared::store::{Claim, RunnerObservation, Store};

use crate::core::{HOLDER, claim, command, lease, start, submit};

async fn next_events(listener: &mut Box<dyn ChangeListener>) -> Vec<geonex_shared::store::ops::ChangeEvent> {
    let mut out = Vec::new();
    while let Ok(Ok(Feed::Events(events))) = tokio::time::timeout(Duration::from_secs(2), listener.next()).await {
        out.extend(events);
        if out.len() >= 16 {
            break;
        }
    }
    out
}

async fn figures_follow_the_queue_and_the_fleet<S: Store + OpsStore>(store: S) {
    assert!(store.queue_stats().await.unwrap().is_empty());
    let a = submit(&store, command("ops-a", start("geonex/fire:1"))).await;
    submit(&store, command("ops-b", start("geonex/fire:1"))).await;
    let stats = store.queue_stats().await.unwrap();
    let queued: i64 =
        stats.iter().filter(|s| s.status == "queued" && s.action == Action::StartRunner).map(|s| s.count).sum();
    assert_eq!(queued, 2, "{stats:?}");
    assert!(stats.iter().all(|s| s.oldest_secs >= 0.0 && s.oldest_secs < 60.0), "{stats:?}");
    let outbox = store.outbox_stat().await.unwrap();
    assert_eq!(outbox.unpublished, 2);
    store.mark_published(&[a.command_id]).await.unwrap();
    assert_eq!(store.outbox_stat().await.unwrap().unpublished, 1);

    let Claim::Claimed { .. } = claim(&store, a.command_id, Duration::from_secs(30)).await else { panic!("claimed") };
    let stats = store.queue_stats().await.unwrap();
    assert!(stats.iter().any(|s| s.status == "running" && s.count == 1), "{stats:?}");
    let obs = RunnerObservation { instance_id: Some("i-0123456789abcdef0".into()), observed: ObservedState::Running };
    store.succeed_command(&lease(a.command_id), Some(("ops-a", &obs)), serde_json::json!({})).await.unwrap();
    let runners = store.runners_by_state().await.unwrap();
    assert!(runners.contains(&(ObservedState::Running, 1)), "{runners:?}");
    assert!(runners.contains(&(ObservedState::Requested, 1)), "{runners:?}");
    let pool = store.pool_stat();
    assert!(pool.max >= 1 && pool.idle <= pool.size, "{pool:?}");
    let _ = HOLDER;
}

async fn only_commands_that_have_not_started_can_be_cancelled<S: Store + OpsStore>(store: S) {
    let a = submit(&store, command("cancel-a", start("geonex/fire:1"))).await;
    assert!(store.cancel_command(a.command_id, "cancelled by alice").await.unwrap());
    let c = store.get_command(a.command_id).await.unwrap().unwrap();
    assert_eq!(c.status.as_str(), "dead");
    assert_eq!(c.last_error.as_deref(), Some("cancelled by alice"));
    assert!(c.finished_at.is_some());
    assert!(!store.cancel_command(a.command_id, "again").await.unwrap(), "a dead command is not cancelled again");
    assert!(matches!(claim(&store, a.command_id, Duration::from_secs(30)).await, Claim::Finished(_)));
    assert_eq!(store.outbox_stat().await.unwrap().unpublished, 0, "nothing left to publish");

    let b = submit(&store, command("cancel-b", start("geonex/fire:1"))).await;
    let Claim::Claimed { .. } = claim(&store, b.command_id, Duration::from_secs(30)).await else { panic!("claimed") };
    assert!(!store.cancel_command(b.command_id, "too late").await.unwrap(), "a running command is not cancelled");
    assert!(!store.cancel_command(uuid::Uuid::new_v4(), "nobody").await.unwrap());
}

async fn the_change_feed_announces_runner_states_and_command_statuses<S: Store + OpsStore>(store: S) {
    let mut listener = store.listen().await.unwrap();
    let a = submit(&store, command("feed-a", start("geonex/fire:1"))).await;
    let Claim::Claimed { .. } = claim(&store, a.command_id, Duration::from_secs(30)).await else { panic!("claimed") };
    let obs = RunnerObservation { instance_id: Some("i-0123456789abcdef0".into()), observed: ObservedState::Pending };
    store.succeed_command(&lease(a.command_id), Some(("feed-a", &obs)), serde_json::json!({})).await.unwrap();
    let events = next_events(&mut listener).await;
    let statuses: Vec<&str> =
        events.iter().filter(|e| e.kind == "command").map(|e| e.data["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["queued", "running", "succeeded"], "{events:?}");
    let states: Vec<&str> =
        events.iter().filter(|e| e.kind == "runner").map(|e| e.data["observed_state"].as_str().unwrap()).collect();
    assert_eq!(states, ["requested", "pending"], "{events:?}");
    let pending = events.iter().rfind(|e| e.kind == "runner").unwrap();
    assert_eq!(pending.data["previous_state"], "requested");
    assert_eq!(pending.data["instance_id"], "i-0123456789abcdef0");
    assert_eq!(pending.data["runner_id"], "feed-a");
    assert!(pending.at.is_some(), "{pending:?}");
    // Renewing a lease or recording a publish changes no status: nothing is announced.
    store.mark_published(&[a.command_id]).await.unwrap();
    assert!(next_events(&mut listener).await.is_empty());
}

contract!(
    figures_follow_the_queue_and_the_fleet,
    only_commands_that_have_not_started_can_be_cancelled,
    the_change_feed_announces_runner_states_and_command_statuses
);
