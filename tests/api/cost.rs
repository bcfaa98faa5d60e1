//! Cost control: what a runner cost from its running intervals, budgets that
//! warn once and then stop exactly the owner's runners and refuse their starts,
//! idle runners stopped (busy ones not), and spot with on-demand and
//! instance-type fallbacks, relaunched when EC2 takes an instance back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use geonex_shared::domain::Role;
use geonex_shared::store::users::NewUser;
use serde_json::Value;

use crate::helpers::{Mode, TestApp, TestConfig, TestStore, eventually, service_token, spawn_app_with, unique};

in_both_modes!(
    a_runner_that_ran_for_known_intervals_costs_exactly_its_price,
    a_budget_warns_once_then_stops_exactly_its_owners_runners_and_refuses_their_starts,
    an_idle_runner_is_stopped_and_a_busy_one_is_not,
);

fn config(mode: Mode, extra: &[(&str, &str)]) -> TestConfig {
    let mut extra_env: Vec<(String, String)> = vec![
        ("GEONEX_COST__CHECK_INTERVAL_SECS".into(), "1".into()),
        // The tests write runners' histories behind the API's back, which no
        // revision counter sees: no page is served from the API's cache.
        ("GEONEX_API__PAGE_CACHE_ENTRIES".into(), "0".into()),
    ];
    extra_env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    TestConfig { extra_env, ..TestConfig::in_mode(mode) }
}

pub(crate) async fn started(app: &TestApp, runner: &str, extra: &str) -> String {
    let r = app
        .get(&format!(
            "/start-runner?instance_type=m5d.large&image_name=geonex/fire:1.5&s3_output=s3://geonex/cost&runner_id={runner}&runner_name=P{extra}"
        ))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    app.wait_runner(runner, "running").await["instance_id"].as_str().unwrap().to_owned()
}

/// Replaces a runner's logged history with `changes` (state, time), as if its
/// instance had run exactly then.
async fn history(store: &TestStore, runner: &str, changes: &[(&str, DateTime<Utc>)]) {
    billed_history(store, runner, "on-demand", changes).await
}

/// The same, billed at `purchase_option` (`on-demand` or `spot`).
pub(crate) async fn billed_history(store: &TestStore, runner: &str, purchase_option: &str, changes: &[(&str, DateTime<Utc>)]) {
    match store {
        TestStore::Postgres(s) => {
            sqlx::query("delete from runner_state_change where runner_id = $1").bind(runner).execute(s.pool()).await.unwrap();
            for (state, at) in changes {
                sqlx::query(
                    "insert into runner_state_change (runner_id, state, instance_type, purchase_option, at) \
                     values ($1, $2, 'm5d.large', $3, $4)",
                )
                .bind(runner)
                .bind(state)
                .bind(purchase_option)
                .bind(at)
                .execute(s.pool())
                .await
                .unwrap();
            }
        }
        TestStore::Sqlite(s) => {
            sqlx::query("delete from runner_state_change where runner_id = ?1").bind(runner).execute(s.pool()).await.unwrap();
            for (state, at) in changes {
                sqlx::query(
                    "insert into runner_state_change (runner_id, state, instance_type, purchase_option, at) \
                     values (?1, ?2, 'm5d.large', ?3, ?4)",
                )
                .bind(runner)
                .bind(state)
                .bind(purchase_option)
                .bind(at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .execute(s.pool())
                .await
                .unwrap();
            }
        }
    }
}

/// Two hours of m5d.large at the shipped us-east-1 price: $0.226.
const TWO_HOURS_M5D_LARGE: f64 = 0.226;

pub(crate) fn hours_ago(h: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::hours(h)
}

async fn a_runner_that_ran_for_known_intervals_costs_exactly_its_price(mode: Mode) {
    let app = spawn_app_with(config(mode, &[])).await;
    let runner = unique("cost");
    started(&app, &runner, "").await;
    // Ran 1h, stopped 1h, ran 1h, stopped since: two hours in all.
    history(&app.store, &runner, &[
        ("running", hours_ago(5)),
        ("stopped", hours_ago(4)),
        ("running", hours_ago(3)),
        ("stopping", hours_ago(2)),
        ("stopped", hours_ago(2)),
    ])
    .await;
    let r = app.runner(&runner).await;
    assert!((r["running_seconds"].as_f64().unwrap() - 7200.0).abs() < 1.0, "{r}");
    assert!((r["cost_usd"].as_f64().unwrap() - TWO_HOURS_M5D_LARGE).abs() < 0.005, "to the cent: {r}");

    let since = hours_ago(6).to_rfc3339();
    let costs = app.get(&format!("/describe-costs?group_by=runner&since={}", urlencode(&since))).await;
    assert_eq!(costs.status, 200, "{}", costs.body);
    let group = costs.body["groups"].as_array().unwrap().iter().find(|g| g["key"] == runner.as_str()).cloned().unwrap();
    assert!((group["instance_usd"].as_f64().unwrap() - TWO_HOURS_M5D_LARGE).abs() < 0.005, "{group}");
    // A window holding only the second hour.
    let one = app
        .get(&format!(
            "/describe-costs?group_by=user&since={}&until={}",
            urlencode(&hours_ago(3).to_rfc3339()),
            urlencode(&hours_ago(2).to_rfc3339())
        ))
        .await;
    let user = &one.body["groups"][0];
    assert_eq!(user["key"], "service:test-admin", "{}", one.body);
    assert!((user["instance_usd"].as_f64().unwrap() - TWO_HOURS_M5D_LARGE / 2.0).abs() < 0.005, "{user}");
    let by_day = app.get(&format!("/describe-costs?group_by=day&since={}", urlencode(&since))).await;
    let day_total: f64 = by_day.body["groups"].as_array().unwrap().iter().map(|g| g["instance_usd"].as_f64().unwrap()).sum();
    assert!((day_total - by_day.body["total"]["instance_usd"].as_f64().unwrap()).abs() < 0.0001, "{}", by_day.body);
    for bad in ["group_by=owner", "since=yesterday", "until=2000-01-01T00:00:00Z"] {
        let r = app.get(&format!("/describe-costs?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
}

pub(crate) fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

/// Budget e-mails queued so far, by kind, recipient.
async fn budget_mails(app: &TestApp) -> Vec<(String, String)> {
    let r = app.get("/describe-commands?action=send_email&limit=1000").await;
    let mut out = Vec::new();
    for c in r.body["commands"].as_array().unwrap() {
        let full = app.command(c["command_id"].as_str().unwrap()).await;
        let kind = full["params"]["kind"].as_str().unwrap_or_default().to_owned();
        if kind.starts_with("budget") {
            out.push((kind, full["params"]["to"].as_str().unwrap_or_default().to_owned()));
        }
    }
    out.sort();
    out
}

async fn set_budget(app: &TestApp, subject: &str, usd: f64) -> Value {
    let r = app
        .send(app.http.post(format!("{}/set-budget", app.address)).json(&serde_json::json!({
            "scope": "user", "subject": subject, "monthly_usd": usd
        })))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

async fn a_budget_warns_once_then_stops_exactly_its_owners_runners_and_refuses_their_starts(mode: Mode) {
    let app = spawn_app_with(config(mode, &[])).await;
    app.store
        .create_user(NewUser {
            user_id: uuid::Uuid::now_v7(),
            user_name: unique("boss"),
            display_name: "Boss".into(),
            email: "boss@example.org".into(),
            role: Role::Admin,
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$UjVzYlVpQ2VTa1VqZ0lIZ3ZmZW1wZw".into(),
        })
        .await
        .expect("an administrator with an address");
    let mine = unique("mine");
    started(&app, &mine, "").await;
    history(&app.store, &mine, &[("running", hours_ago(3)), ("stopped", hours_ago(1))]).await;
    // Someone else's runner, on their own budget.
    let other_token = service_token(&app.store, "other", Role::Operator, None).await;
    let theirs = unique("theirs");
    let r = app
        .send(app.http.get(format!(
            "{}/start-runner?instance_type=m5d.large&image_name=geonex/fire:1.5&s3_output=s3://geonex/cost&runner_id={theirs}&runner_name=P",
            app.address
        )).bearer_auth(&other_token))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    app.wait_runner(&theirs, "running").await;

    // $0.25: the runner's $0.226 is 90% of it. One warning, no stop.
    set_budget(&app, "service:test-admin", 0.25).await;
    eventually("the 80% warning", Duration::from_secs(20), || async {
        budget_mails(&app).await == vec![("budget_warning".to_owned(), "boss@example.org".to_owned())]
    })
    .await;
    let crossed = chrono::Utc::now();
    eventually("a budget check after the crossing", Duration::from_secs(20), || async {
        let listed = app.get("/describe-budgets").await;
        let checked = listed.body["budgets"][0]["checked_at"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        checked.is_some_and(|t| t > crossed)
    })
    .await;
    assert_eq!(budget_mails(&app).await.len(), 1, "checks after the crossing send nothing more");
    assert_eq!(app.runner(&mine).await["desired_state"], "running");
    let listed = app.get("/describe-budgets").await;
    let b = &listed.body["budgets"][0];
    assert_eq!((b["state"].as_str(), b["crossed"].clone()), (Some("warning"), serde_json::json!([80])), "{b}");

    // $0.10: spent. The owner's runner is stopped by an ordinary stop; the other's is not.
    set_budget(&app, "service:test-admin", 0.10).await;
    app.wait_runner(&mine, "stopped").await;
    let stops = app.get(&format!("/describe-commands?runner_id={mine}&action=stop_runner")).await;
    let stop = &stops.body["commands"][0];
    assert!(stop["requested_by"].as_str().unwrap().starts_with("budget:"), "{stop}");
    let stop = app.command(stop["command_id"].as_str().unwrap()).await;
    assert_eq!(stop["params"]["reason"], "budget", "{stop}");
    assert_eq!(app.runner(&theirs).await["desired_state"], "running");
    assert_eq!(
        budget_mails(&app).await,
        vec![
            ("budget_exceeded".to_owned(), "boss@example.org".to_owned()),
            ("budget_warning".to_owned(), "boss@example.org".to_owned()),
        ]
    );
    // Starts of the owner's runners are refused, naming the budget.
    let again = unique("again");
    let r = app
        .get(&format!(
            "/start-runner?instance_type=m5d.large&image_name=geonex/fire:1.5&s3_output=s3://geonex/cost&runner_id={again}&runner_name=P"
        ))
        .await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("budget_exceeded")), "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("service:test-admin"), "{}", r.body);
    // Raised: starts are taken again.
    set_budget(&app, "service:test-admin", 100.0).await;
    eventually("the raised budget lets starts through", Duration::from_secs(20), || async {
        app.get(&format!(
            "/start-runner?instance_type=m5d.large&image_name=geonex/fire:1.5&s3_output=s3://geonex/cost&runner_id={again}&runner_name=P"
        ))
        .await
        .status
            == 202
    })
    .await;
}

/// Makes the runner look idle since `ago`: its observation is that old.
async fn idle_since(store: &TestStore, runner: &str, ago: DateTime<Utc>) {
    match store {
        TestStore::Postgres(s) => {
            sqlx::query("update runner set observed_at = $2 where runner_id = $1")
                .bind(runner)
                .bind(ago)
                .execute(s.pool())
                .await
                .unwrap();
        }
        TestStore::Sqlite(s) => {
            sqlx::query("update runner set observed_at = ?2 where runner_id = ?1")
                .bind(runner)
                .bind(ago.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .execute(s.pool())
                .await
                .unwrap();
        }
    }
}

async fn an_idle_runner_is_stopped_and_a_busy_one_is_not(mode: Mode) {
    let app = spawn_app_with(config(mode, &[])).await;
    let (idle, busy) = (unique("idle"), unique("busy"));
    started(&app, &idle, "&idle_stop_after=10m").await;
    let busy_instance = started(&app, &busy, "&idle_stop_after=10m").await;
    // A container running on the busy one, started an hour ago.
    let event = serde_json::json!({
        "event_id": uuid::Uuid::new_v4(), "runner_id": busy, "kind": "container_started",
        "container_id": uuid::Uuid::new_v4(), "instance_id": busy_instance,
        "at": hours_ago(1).to_rfc3339(),
    });
    let user_data = app.user_data(&busy_instance).await;
    let token = user_data
        .lines()
        .find(|l| l.starts_with("GEONEX_AGENT__TOKEN="))
        .map(|l| l.trim_start_matches("GEONEX_AGENT__TOKEN=").trim_matches('\'').to_owned())
        .expect("agent token");
    let posted = app.send(app.http.post(format!("{}/runner-events", app.address)).bearer_auth(&token).json(&event)).await;
    assert_eq!(posted.status, 202, "{}", posted.body);
    for r in [&idle, &busy] {
        idle_since(&app.store, r, hours_ago(1)).await;
    }
    app.wait_runner(&idle, "stopped").await;
    let stops = app.get(&format!("/describe-commands?runner_id={idle}&action=stop_runner")).await;
    let stop = app.command(stops.body["commands"][0]["command_id"].as_str().unwrap()).await;
    assert_eq!((stop["params"]["reason"].as_str(), stop["requested_by"].as_str()), (Some("idle"), Some("system:idle")));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.runner(&busy).await["desired_state"], "running", "a runner with a container running is never idle");
    for bad in ["idle_stop_after=5", "idle_stop_after=soon", "purchase_option=cheap", "fallback_instance_types=x"] {
        let r = app
            .get(&format!(
                "/start-runner?instance_type=m5d.large&image_name=geonex/fire:1.5&s3_output=s3://geonex/o&runner_id={}&runner_name=P&{bad}",
                unique("bad")
            ))
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.body["error"]["field"], bad.split('=').next().unwrap(), "{bad}");
    }
}

async fn embedded(extra: &[(&str, &str)]) -> TestApp {
    spawn_app_with(config(Mode::Embedded, extra)).await
}

#[tokio::test]
async fn a_spot_shortage_falls_back_to_on_demand_and_ends_with_one_instance() {
    let app = embedded(&[("GEONEX_SIM__SPOT_CAPACITY_ERROR_RATE", "1")]).await;
    let sim = app.deployment.sim.clone().expect("simulated cloud");
    let runner = unique("spot");
    let r = app
        .get(&format!(
            "/start-runner?instance_type=m5d.large&image_name=geonex/fire:1.5&s3_output=s3://geonex/o&runner_id={runner}&runner_name=P&purchase_option=spot-or-on-demand"
        ))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let done = app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["purchase_option"], "on-demand", "{done}");
    let why = &done["result"]["fell_back_from"][0];
    assert_eq!(why["purchase_option"], "spot", "{done}");
    assert!(why["error"].as_str().unwrap().contains("InsufficientInstanceCapacity"), "{done}");
    let instance = done["result"]["instance_id"].as_str().unwrap();
    assert_eq!(sim.billing(instance), Some(("m5d.large".into(), false)));
    assert_eq!(app.instances_of(&runner).await.len(), 1, "one instance in the end");
    let shown = app.wait_runner(&runner, "running").await;
    assert_eq!((shown["purchase_option"].as_str(), shown["launched_purchase_option"].as_str()), (Some("spot-or-on-demand"), Some("on-demand")));
}

#[tokio::test]
async fn a_type_without_capacity_falls_back_to_the_next_type_in_order() {
    let app = embedded(&[("GEONEX_SIM__SHORT_INSTANCE_TYPES", "[m5d.large, m5d.xlarge]")]).await;
    let runner = unique("types");
    let r = app
        .get(&format!(
            "/start-runner?instance_type=m5d.large&image_name=geonex/fire:1.5&s3_output=s3://geonex/o&runner_id={runner}&runner_name=P&fallback_instance_types=m5d.xlarge,m5d.2xlarge"
        ))
        .await;
    let done = app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["instance_type"], "m5d.2xlarge", "{done}");
    let tried: Vec<&str> =
        done["result"]["fell_back_from"].as_array().unwrap().iter().map(|f| f["instance_type"].as_str().unwrap()).collect();
    assert_eq!(tried, ["m5d.large", "m5d.xlarge"]);
    assert_eq!(app.wait_runner(&runner, "running").await["launched_instance_type"], "m5d.2xlarge");
}

#[tokio::test]
async fn an_interrupted_spot_runner_is_relaunched_by_an_ordinary_start() {
    // Without EC2 events, the sweep is what sees a running instance go.
    let app = embedded(&[("GEONEX_RECONCILE__INTERVAL_SECS", "1")]).await;
    let sim = app.deployment.sim.clone().expect("simulated cloud");
    let runner = unique("interrupted");
    let r = app
        .get(&format!(
            "/start-runner?instance_type=m5d.large&image_name=geonex/fire:1.5&s3_output=s3://geonex/o&runner_id={runner}&runner_name=P&purchase_option=spot"
        ))
        .await;
    let done = app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    let first = done["result"]["instance_id"].as_str().unwrap().to_owned();
    app.wait_runner(&runner, "running").await;
    assert!(sim.interrupt(&first), "a live spot instance");
    eventually("a new instance runs", Duration::from_secs(30), || async {
        let r = app.runner(&runner).await;
        r["observed_state"] == "running" && r["instance_id"] != first.as_str()
    })
    .await;
    let starts = app.get(&format!("/describe-commands?runner_id={runner}&action=start_runner")).await;
    let relaunch = &starts.body["commands"][0];
    assert_eq!(relaunch["requested_by"], "system:spot-relaunch", "{}", starts.body);
    let live: Vec<_> = app.instances_of(&runner).await.into_iter().filter(|(_, s)| s != "terminated" && s != "shutting-down").collect();
    assert_eq!(live.len(), 1, "{live:?}");
}
