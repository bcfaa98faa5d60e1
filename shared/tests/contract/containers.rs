//! Agent tokens, runner events applied once per event id, container records and
//! their listings.

use chrono::{DateTime, Duration, Utc};
use geonex_shared::store::containers::{ContainerQuery, ContainerRecord, ContainerStore, EventKind, RunnerEvent};
use uuid::Uuid;

use crate::raw::Raw;

/// A whole-millisecond time, which both backends store exactly.
fn at(base: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    let t = base + Duration::seconds(secs);
    DateTime::from_timestamp_millis(t.timestamp_millis()).expect("time")
}

fn base() -> DateTime<Utc> {
    at(Utc::now() - Duration::hours(1), 0)
}

fn event(runner_id: &str, kind: EventKind, container_id: Option<Uuid>, when: DateTime<Utc>) -> RunnerEvent {
    RunnerEvent {
        event_id: Uuid::now_v7(),
        runner_id: runner_id.into(),
        kind,
        container_id,
        instance_id: None,
        image_name: None,
        input_url: Some(format!("s3://in/{}", when.timestamp_millis())),
        exit_code: None,
        duration_ms: None,
        log_tail: None,
        at: when,
    }
}

fn started(runner_id: &str, container_id: Uuid, when: DateTime<Utc>) -> RunnerEvent {
    event(runner_id, EventKind::ContainerStarted, Some(container_id), when)
}

fn finished(
    runner_id: &str,
    container_id: Uuid,
    when: DateTime<Utc>,
    exit_code: Option<i32>,
    duration_ms: i64,
) -> RunnerEvent {
    RunnerEvent {
        exit_code,
        duration_ms: Some(duration_ms),
        log_tail: Some("done\n".into()),
        ..event(runner_id, EventKind::ContainerFinished, Some(container_id), when)
    }
}

async fn container<S: ContainerStore>(store: &S, id: Uuid) -> ContainerRecord {
    let all = store.list_containers(&ContainerQuery { limit: 1000, ..Default::default() }).await.expect("list");
    all.into_iter().find(|c| c.container_id == id).expect("container")
}

fn ids(list: &[ContainerRecord]) -> Vec<Uuid> {
    list.iter().map(|c| c.container_id).collect()
}

async fn agent_tokens_are_kept_and_revoked<S: ContainerStore + Raw>(store: S) {
    store.add_runner("r-1", "geonex/a:1", "s3://bkt/a").await;
    store.add_runner("r-2", "geonex/a:1", "s3://bkt/b").await;
    let (c1, c2, c3) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (t1, t2, t3) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let hash = |b: u8| vec![b; 32];
    store.insert_agent_token(t1, "r-1", c1, &hash(1)).await.expect("t1");
    store.insert_agent_token(t2, "r-1", c2, &hash(2)).await.expect("t2");
    store.insert_agent_token(t3, "r-2", c3, &hash(3)).await.expect("t3");
    // A token belongs to an existing runner, and its id is unique.
    assert!(store.insert_agent_token(Uuid::now_v7(), "r-none", c1, &hash(4)).await.is_err());
    assert!(store.insert_agent_token(t1, "r-1", c1, &hash(1)).await.is_err());

    let token = store.agent_token(t1).await.expect("lookup").expect("t1");
    assert_eq!(token.token_id, t1);
    assert_eq!(token.runner_id, "r-1");
    assert_eq!(token.secret_hash, hash(1));
    assert_eq!(token.revoked_at, None);
    assert!(store.agent_token(Uuid::now_v7()).await.expect("lookup").is_none());

    // The command the instance now boots with keeps its token.
    assert_eq!(store.revoke_agent_tokens("r-1", Some(c2)).await.expect("revoke"), 1);
    assert!(store.agent_token(t1).await.expect("lookup").expect("t1").revoked_at.is_some());
    assert_eq!(store.agent_token(t2).await.expect("lookup").expect("t2").revoked_at, None);
    let revoked_at = store.agent_token(t1).await.expect("lookup").expect("t1").revoked_at;
    assert_eq!(store.revoke_agent_tokens("r-1", None).await.expect("revoke all"), 1);
    assert!(store.agent_token(t2).await.expect("lookup").expect("t2").revoked_at.is_some());
    // Revoked tokens stay revoked as they were.
    assert_eq!(store.revoke_agent_tokens("r-1", None).await.expect("again"), 0);
    assert_eq!(store.agent_token(t1).await.expect("lookup").expect("t1").revoked_at, revoked_at);
    // Other runners' tokens are untouched.
    assert_eq!(store.agent_token(t3).await.expect("lookup").expect("t3").revoked_at, None);
    assert_eq!(store.revoke_agent_tokens("r-none", None).await.expect("none"), 0);
}

async fn events_apply_once_per_event_id<S: ContainerStore + Raw>(store: S) {
    store.add_runner("r-1", "geonex/a:1", "s3://bkt/a").await;
    assert_eq!(store.int("select count(*) from runner where last_heartbeat_at is not null", &[]).await, 0);

    let beat = event("r-1", EventKind::Heartbeat, None, Utc::now());
    assert!(store.record_event(&beat).await.expect("heartbeat"));
    assert_eq!(store.int("select count(*) from runner where last_heartbeat_at is not null", &[]).await, 1);
    assert!(!store.record_event(&beat).await.expect("repeat"));
    assert_eq!(store.int("select count(*) from runner_event", &[]).await, 1);

    let id = Uuid::now_v7();
    let start = started("r-1", id, base());
    assert!(store.record_event(&start).await.expect("start"));
    assert!(!store.record_event(&start).await.expect("start again"));
    assert_eq!(store.int("select count(*) from container", &[]).await, 1);
    assert_eq!(store.int("select count(*) from runner_event", &[]).await, 2);
    let c = container(&store, id).await;
    assert_eq!(c.runner_id, "r-1");
    assert_eq!(c.status, "running");
    // Missing fields come from the runner.
    assert_eq!(c.image_name, "geonex/a:1");
    assert_eq!(c.instance_id, None);
    assert_eq!(c.started_at, start.at);

    // A repeated start under another event id is recorded but changes nothing.
    let mut restart = started("r-1", id, at(start.at, 30));
    restart.image_name = Some("geonex/b:2".into());
    assert!(store.record_event(&restart).await.expect("restart"));
    let again = container(&store, id).await;
    assert_eq!(again.started_at, c.started_at);
    assert_eq!(again.image_name, "geonex/a:1");
    assert_eq!(again.input_url, c.input_url);
    assert_eq!(store.int("select count(*) from container", &[]).await, 1);

    let finish = finished("r-1", id, at(start.at, 60), Some(0), 60_000);
    assert!(store.record_event(&finish).await.expect("finish"));
    assert!(!store.record_event(&finish).await.expect("finish again"));
    assert_eq!(container(&store, id).await.status, "exited");

    // Events of an unknown runner are refused and not remembered.
    let stray = event("r-none", EventKind::Heartbeat, None, Utc::now());
    assert!(store.record_event(&stray).await.is_err());
    assert_eq!(store.int("select count(*) from runner_event", &[]).await, 4);
}

async fn container_status_follows_its_events<S: ContainerStore + Raw>(store: S) {
    store.add_runner("r-1", "geonex/a:1", "s3://bkt/a").await;
    store.add_runner("r-2", "geonex/b:1", "s3://bkt/b").await;
    store.exec("update runner set instance_id = 'i-0123456789abcdef0' where runner_id = 'r-1'", &[]).await;
    let t0 = base();

    // start, then finish with an exit code: exited.
    let a = Uuid::now_v7();
    let mut start = started("r-1", a, t0);
    start.image_name = Some("geonex/a:2".into());
    store.record_event(&start).await.expect("start");
    let c = container(&store, a).await;
    assert_eq!(c.instance_id.as_deref(), Some("i-0123456789abcdef0"));
    assert_eq!(c.image_name, "geonex/a:2");
    assert_eq!((c.status.as_str(), c.exit_code, c.finished_at), ("running", None, None));
    store.record_event(&finished("r-1", a, at(t0, 90), Some(3), 90_000)).await.expect("finish");
    let c = container(&store, a).await;
    assert_eq!((c.status.as_str(), c.exit_code), ("exited", Some(3)));
    assert_eq!(c.finished_at, Some(at(t0, 90)));
    assert_eq!(c.started_at, t0);
    assert_eq!(c.log_tail.as_deref(), Some("done\n"));
    // A second finish (another event id) does not reopen or rewrite it.
    store.record_event(&finished("r-1", a, at(t0, 120), None, 1)).await.expect("finish again");
    let again = container(&store, a).await;
    assert_eq!((again.status.as_str(), again.exit_code, again.finished_at), ("exited", Some(3), Some(at(t0, 90))));

    // A finish whose start was never seen creates the row whole; no exit code: failed.
    let b = Uuid::now_v7();
    store.record_event(&finished("r-1", b, at(t0, 200), None, 50_000)).await.expect("finish unseen");
    let c = container(&store, b).await;
    assert_eq!((c.status.as_str(), c.exit_code), ("failed", None));
    assert_eq!(c.started_at, at(t0, 150));
    assert_eq!(c.finished_at, Some(at(t0, 200)));
    assert_eq!(c.image_name, "geonex/a:1");
    // Its late start leaves it alone.
    store.record_event(&started("r-1", b, at(t0, 150))).await.expect("late start");
    assert_eq!(container(&store, b).await.status, "failed");

    // One the control plane closed as killed keeps that status.
    let k = Uuid::now_v7();
    store.record_event(&started("r-1", k, at(t0, 300))).await.expect("start");
    let kill = if S::POSTGRES {
        "update container set status = 'killed', finished_at = started_at where container_id = $1::uuid"
    } else {
        "update container set status = 'killed', finished_at = started_at where container_id = $1"
    };
    assert_eq!(store.exec(kill, &[&k.to_string()]).await, 1);
    store.record_event(&finished("r-1", k, at(t0, 360), Some(0), 60_000)).await.expect("finish killed");
    let c = container(&store, k).await;
    assert_eq!((c.status.as_str(), c.exit_code), ("killed", None));

    // Another runner cannot close this runner's container.
    let own = Uuid::now_v7();
    store.record_event(&started("r-1", own, at(t0, 400))).await.expect("start");
    store.record_event(&finished("r-2", own, at(t0, 460), Some(0), 60_000)).await.expect("foreign finish");
    let c = container(&store, own).await;
    assert_eq!((c.status.as_str(), c.runner_id.as_str()), ("running", "r-1"));

    // Heartbeats carry no container.
    assert!(store.record_event(&event("r-2", EventKind::Heartbeat, None, Utc::now())).await.expect("beat"));
    assert_eq!(store.int("select count(*) from container", &[]).await, 4);
}

async fn listing_filters_pages_and_revision<S: ContainerStore + Raw>(store: S) {
    store.add_runner("r-1", "geonex/a:1", "s3://bkt/a").await;
    store.add_runner("r-2", "geonex/b:1", "s3://bkt/b").await;
    let t0 = base();
    let rev0 = store.containers_revision().await.expect("revision");

    // Six containers, one a second apart, alternating runners; two share a start time.
    let mut made = Vec::new();
    for i in 0..6i64 {
        let runner = if i % 2 == 0 { "r-1" } else { "r-2" };
        let id = Uuid::now_v7();
        let when = at(t0, if i == 5 { 4 } else { i });
        store.record_event(&started(runner, id, when)).await.expect("start");
        made.push((id, when, runner));
    }
    let rev1 = store.containers_revision().await.expect("revision");
    assert!(rev1 > rev0);
    // Finish the first two.
    store.record_event(&finished("r-1", made[0].0, at(t0, 10), Some(0), 10_000)).await.expect("finish");
    store.record_event(&finished("r-2", made[1].0, at(t0, 10), None, 9_000)).await.expect("finish");
    let rev2 = store.containers_revision().await.expect("revision");
    assert!(rev2 > rev1);
    // Heartbeats touch no container.
    store.record_event(&event("r-1", EventKind::Heartbeat, None, Utc::now())).await.expect("beat");
    assert_eq!(store.containers_revision().await.expect("revision"), rev2);

    // Newest first, ties broken by id, descending.
    let mut expected: Vec<(DateTime<Utc>, Uuid)> = made.iter().map(|(id, when, _)| (*when, *id)).collect();
    expected.sort();
    expected.reverse();
    let expected: Vec<Uuid> = expected.into_iter().map(|(_, id)| id).collect();
    let all = store.list_containers(&ContainerQuery { limit: 100, ..Default::default() }).await.expect("all");
    assert_eq!(ids(&all), expected);

    // Paging with the (started_at, container_id) of the last row.
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = store.list_containers(&ContainerQuery { before, limit: 2, ..Default::default() }).await.expect("page");
        if page.is_empty() {
            break;
        }
        before = page.last().map(|c| (c.started_at, c.container_id));
        pages.extend(ids(&page));
    }
    assert_eq!(pages, expected);

    let q = |f: fn(&mut ContainerQuery)| {
        let mut q = ContainerQuery { limit: 100, ..Default::default() };
        f(&mut q);
        q
    };
    let by_runner = store.list_containers(&q(|q| q.runner_id = Some("r-2".into()))).await.expect("runner");
    let r2: Vec<Uuid> = expected.iter().copied().filter(|id| made.iter().any(|m| m.0 == *id && m.2 == "r-2")).collect();
    assert_eq!(ids(&by_runner), r2);
    let running = store.list_containers(&q(|q| q.status = Some("running".into()))).await.expect("running");
    assert_eq!(running.len(), 4);
    let failed = store.list_containers(&q(|q| q.status = Some("failed".into()))).await.expect("failed");
    assert_eq!(ids(&failed), [made[1].0]);
    let image = store.list_containers(&q(|q| q.image_name = Some("geonex/b:1".into()))).await.expect("image");
    assert_eq!(image.len(), 3);
    assert!(image.iter().all(|c| c.runner_id == "r-2"));

    // since is inclusive, until exclusive.
    let window = ContainerQuery { since: Some(at(t0, 1)), until: Some(at(t0, 4)), limit: 100, ..Default::default() };
    let w = store.list_containers(&window).await.expect("window");
    assert_eq!(ids(&w), [made[3].0, made[2].0, made[1].0]);
    let combined = ContainerQuery {
        since: Some(at(t0, 1)),
        runner_id: Some("r-1".into()),
        status: Some("running".into()),
        limit: 1,
        ..Default::default()
    };
    let c = store.list_containers(&combined).await.expect("combined");
    assert_eq!(ids(&c), [made[4].0]);
}

async fn runner_containers_groups_newest_per_runner<S: ContainerStore + Raw>(store: S) {
    for r in ["r-1", "r-2", "r-3"] {
        store.add_runner(r, "geonex/a:1", &format!("s3://bkt/{r}")).await;
    }
    let t0 = base();
    let mut by_runner: Vec<(String, Vec<Uuid>)> = Vec::new();
    for (n, r) in ["r-2", "r-1", "r-3"].into_iter().enumerate() {
        let mut mine = Vec::new();
        for i in 0..3i64 {
            let id = Uuid::now_v7();
            store.record_event(&started(r, id, at(t0, i * 10 + n as i64))).await.expect("start");
            mine.push(id);
        }
        mine.reverse();
        by_runner.push((r.to_owned(), mine));
    }
    by_runner.sort();

    let got = store.runner_containers(&["r-2".into(), "r-1".into()], 2).await.expect("grouped");
    let expected: Vec<Uuid> = by_runner.iter().filter(|(r, _)| r != "r-3").flat_map(|(_, ids)| ids[..2].to_vec()).collect();
    assert_eq!(ids(&got), expected);
    assert_eq!(got.iter().map(|c| c.runner_id.as_str()).collect::<Vec<_>>(), ["r-1", "r-1", "r-2", "r-2"]);

    let all = store.runner_containers(&["r-1".into(), "r-2".into(), "r-3".into(), "r-none".into()], 10).await.expect("all");
    assert_eq!(all.len(), 9);
    assert!(store.runner_containers(&[], 5).await.expect("no runners").is_empty());
    assert!(store.runner_containers(&["r-none".into()], 5).await.expect("unknown").is_empty());
    assert!(store.runner_containers(&["r-1".into()], 0).await.expect("none per runner").is_empty());
}

contract!(
    agent_tokens_are_kept_and_revoked,
    events_apply_once_per_event_id,
    container_status_follows_its_events,
    listing_filters_pages_and_revision,
    runner_containers_groups_newest_per_runner,
);
