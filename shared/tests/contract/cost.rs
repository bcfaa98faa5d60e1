//! The cost port: the state history a trigger keeps, budgets, idle candidates.

use chrono::{Duration as Span, Utc};
use geonex_shared::cost::PurchaseOption;
use geonex_shared::domain::ObservedState;
use geonex_shared::store::cost::{BudgetScope, CostStore};
use geonex_shared::store::{RunnerObservation, Store};

use crate::core::{INSTANCE, command, start, submit};

async fn every_observed_state_change_is_logged_with_its_billing<S: Store + CostStore>(store: S) {
    submit(&store, command("r1", start("geonex/fire:1.5"))).await;
    let launched = RunnerObservation { instance_id: Some(INSTANCE.into()), observed: ObservedState::Pending };
    store.record_launch("r1", &launched, "m5d.xlarge", PurchaseOption::Spot).await.unwrap();
    let running = RunnerObservation { instance_id: Some(INSTANCE.into()), observed: ObservedState::Running };
    store.record_instance("r1", &running).await.unwrap();
    // A heartbeat or a rename is no state change.
    store.record_instance("r1", &running).await.unwrap();
    let changes = store.state_changes(None, Utc::now() + Span::seconds(5)).await.unwrap();
    let states: Vec<(&str, &str, PurchaseOption)> =
        changes.iter().map(|c| (c.state.as_str(), c.instance_type.as_str(), c.purchase_option)).collect();
    assert_eq!(
        states,
        vec![
            ("requested", "m5d.4xlarge", PurchaseOption::OnDemand),
            ("pending", "m5d.xlarge", PurchaseOption::Spot),
            ("running", "m5d.xlarge", PurchaseOption::Spot),
        ]
    );
    assert!(changes.windows(2).all(|w| w[0].at <= w[1].at));
    let owned = store.all_runners().await.unwrap();
    assert_eq!(owned[0].owner.as_deref(), Some("alice"));
    assert_eq!(owned[0].launched_instance_type.as_deref(), Some("m5d.xlarge"));
    let only = store.state_changes(Some(&["nobody".to_owned()]), Utc::now()).await.unwrap();
    assert!(only.is_empty());
}

async fn budgets_are_set_checked_and_their_crossings_recorded_once<S: CostStore>(store: S) {
    let b = store.set_budget(BudgetScope::User, "alice", 100.0, "admin").await.unwrap();
    assert_eq!((b.monthly_usd, b.spent_usd, b.spent_month.as_deref()), (100.0, 0.0, None));
    let again = store.set_budget(BudgetScope::User, "alice", 150.0, "root").await.unwrap();
    assert_eq!(again.budget_id, b.budget_id, "one budget per subject");
    assert_eq!((again.monthly_usd, again.set_by.as_str()), (150.0, "root"));
    store.set_budget(BudgetScope::Image, "geonex/fire:1.5", 10.0, "admin").await.unwrap();
    assert_eq!(store.list_budgets().await.unwrap().len(), 2);

    store.record_spend(b.budget_id, "2026-12", 151.0).await.unwrap();
    let exceeded = store.exceeded_in("2026-12").await.unwrap();
    assert_eq!(exceeded.len(), 1);
    assert!(exceeded[0].exceeded_in("2026-12") && !exceeded[0].exceeded_in("2027-01"));
    assert!(exceeded[0].governs("alice", "geonex/other:1") && !exceeded[0].governs("bob", "geonex/other:1"));
    assert!(store.exceeded_in("2027-01").await.unwrap().is_empty());
    let image = store.list_budgets().await.unwrap().into_iter().find(|b| b.scope == BudgetScope::Image).unwrap();
    assert!(image.governs("bob", "geonex/fire:1.5") && !image.governs("bob", "geonex/other:1"));

    assert!(store.record_notice(b.budget_id, "2026-12", 80, 121.0).await.unwrap());
    assert!(!store.record_notice(b.budget_id, "2026-12", 80, 125.0).await.unwrap(), "a crossing is recorded once");
    assert!(store.record_notice(b.budget_id, "2026-12", 100, 151.0).await.unwrap());
    assert!(store.record_notice(b.budget_id, "2027-01", 80, 130.0).await.unwrap(), "each month anew");
    assert_eq!(store.notices("2026-12").await.unwrap(), vec![(b.budget_id, 80), (b.budget_id, 100)]);
}

async fn idle_candidates_are_running_runners_with_an_idle_limit<S: Store + CostStore>(store: S) {
    let mut cmd = command("idle", start("geonex/fire:1.5"));
    if let geonex_shared::store::RunnerRequest::Start { options, .. } = &mut cmd.request {
        options.idle_stop_after_secs = Some(600);
    }
    submit(&store, cmd).await;
    submit(&store, command("busy", start("geonex/fire:1.5"))).await;
    assert!(store.idle_candidates().await.unwrap().is_empty(), "not running yet");
    let running = RunnerObservation { instance_id: Some(INSTANCE.into()), observed: ObservedState::Running };
    store.record_instance("idle", &running).await.unwrap();
    let found = store.idle_candidates().await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].runner.runner_id, "idle");
    assert_eq!(found[0].runner.idle_stop_after_secs, Some(600));
    assert_eq!((found[0].last_container_at, found[0].running_containers), (None, 0));
    assert_eq!(store.owner_email("nobody").await.unwrap(), None);
}

contract!(
    every_observed_state_change_is_logged_with_its_billing,
    budgets_are_set_checked_and_their_crossings_recorded_once,
    idle_candidates_are_running_runners_with_an_idle_limit,
);
