//! The rate port: token buckets shared by every worker, taken from atomically.

use std::time::Duration;

use geonex_shared::config::BucketSize;
use geonex_shared::store::rate::{RateStore, Take, Taken};
use uuid::Uuid;

fn take(bucket: &str, burst: f64, per_sec: f64) -> Take {
    Take {
        bucket: bucket.to_owned(),
        tokens: 1.0,
        size: BucketSize::new(burst, per_sec),
        keep: 0.0,
        reserve: false,
        recovery: Duration::from_secs(60),
    }
}

async fn a_bucket_grants_its_burst_then_denies_with_the_time_to_the_next_token<S: RateStore>(store: S) {
    let t = take(&format!("acct/us-east-1/run-{}", Uuid::new_v4()), 5.0, 2.0);
    for i in 0..5 {
        assert_eq!(store.take_tokens(&t).await.unwrap(), Taken::Granted, "take {i} of the burst");
    }
    match store.take_tokens(&t).await.unwrap() {
        Taken::Denied { retry_in } => assert!(retry_in <= Duration::from_millis(520), "{retry_in:?}"),
        other => panic!("expected a denial, got {other:?}"),
    }
    // Half a second refills one token at 2/s.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(store.take_tokens(&t).await.unwrap(), Taken::Granted);
    let level = store.bucket_level(&t).await.unwrap().unwrap();
    assert!(level.tokens < 1.0 && level.factor == 1.0, "{level:?}");
}

async fn reservations_queue_callers_one_refill_apart<S: RateStore>(store: S) {
    let t = Take { reserve: true, ..take(&format!("acct/r/start-{}", Uuid::new_v4()), 2.0, 4.0) };
    assert_eq!(store.take_tokens(&t).await.unwrap(), Taken::Granted);
    assert_eq!(store.take_tokens(&t).await.unwrap(), Taken::Granted);
    // When each reservation falls due, on the caller's clock. The database
    // reads its clock somewhere between the call and the reply, so each due
    // time is known to lie in [asked + ready_in, replied + ready_in]: a busy
    // machine widens the window, it does not move the reservations.
    let start = std::time::Instant::now();
    let mut due = Vec::new();
    for _ in 0..3 {
        let asked = start.elapsed().as_secs_f64();
        match store.take_tokens(&t).await.unwrap() {
            Taken::Reserved { ready_in, .. } => {
                let replied = start.elapsed().as_secs_f64();
                due.push((asked + ready_in.as_secs_f64(), replied + ready_in.as_secs_f64()));
            }
            other => panic!("expected a reservation, got {other:?}"),
        }
    }
    // 4 tokens a second: the reservations fall a quarter second apart, the
    // first a quarter second after the burst.
    assert!(due[0].1 > 0.1 && due[0].0 < 0.4, "first reservation due at {:?} s ({due:?})", due[0]);
    for (i, pair) in due.windows(2).enumerate() {
        let (least, most) = (pair[1].0 - pair[0].1, pair[1].1 - pair[0].0);
        assert!(
            least - 0.06 < 0.25 && 0.25 < most + 0.06,
            "reservations {i} and {}: {least}..{most} s apart, expected 0.25 s ({due:?})",
            i + 1
        );
    }
}

async fn a_throttle_moves_reservations_booked_before_it_back<S: RateStore>(store: S) {
    // One token a second: slow enough that a loaded machine's pauses between
    // the statements below move nothing by much.
    let t = Take { reserve: true, ..take(&format!("acct/r/run-{}", Uuid::new_v4()), 2.0, 1.0) };
    for _ in 0..2 {
        assert_eq!(store.take_tokens(&t).await.unwrap(), Taken::Granted);
    }
    let mut tickets = Vec::new();
    for _ in 0..4 {
        match store.take_tokens(&t).await.unwrap() {
            Taken::Reserved { ticket, .. } => tickets.push(ticket),
            other => panic!("expected a reservation, got {other:?}"),
        }
    }
    // Places in the queue, one token apart.
    for pair in tickets.windows(2) {
        assert!((pair[1] - pair[0] - 1.0).abs() < 1e-9, "{tickets:?}");
    }
    let last = *tickets.last().unwrap();
    let before = store.ticket_due(&t, last).await.unwrap().expect("the last reservation is not due yet");
    assert!(before <= Duration::from_millis(4010), "four tokens at 1/s: {before:?}");
    store.throttled(&t).await.unwrap();
    let after = store.ticket_due(&t, last).await.unwrap().expect("still not due");
    // The refill halved: what was four seconds away is now about eight.
    assert!(after > before + Duration::from_secs(2), "before the throttle {before:?}, after {after:?}");
    // A place the refill has already reached (the burst's) is due.
    assert_eq!(store.ticket_due(&t, 2.0).await.unwrap(), None);
}

async fn a_throttle_empties_the_bucket<S: RateStore>(store: S) {
    let t = take(&format!("acct/r/mutating-{}", Uuid::new_v4()), 10.0, 0.001);
    assert_eq!(store.take_tokens(&t).await.unwrap(), Taken::Granted);
    store.throttled(&t).await.unwrap();
    // EC2's bucket was empty although this one held nine: so is this one now.
    let level = store.bucket_level(&t).await.unwrap().unwrap();
    assert!(level.tokens < 0.01, "{level:?}");
    assert!(matches!(store.take_tokens(&t).await.unwrap(), Taken::Denied { .. }));
}

async fn a_keep_leaves_tokens_for_higher_priority_callers<S: RateStore>(store: S) {
    let name = format!("acct/r/describe-{}", Uuid::new_v4());
    let background = Take { keep: 5.0, ..take(&name, 10.0, 0.001) };
    let command = take(&name, 10.0, 0.001);
    let mut granted = 0;
    while store.take_tokens(&background).await.unwrap() == Taken::Granted {
        granted += 1;
        assert!(granted <= 10);
    }
    assert_eq!(granted, 5, "background work stops at the kept share");
    for _ in 0..5 {
        assert_eq!(store.take_tokens(&command).await.unwrap(), Taken::Granted);
    }
    assert!(matches!(store.take_tokens(&command).await.unwrap(), Taken::Denied { .. }));
}

async fn concurrent_takes_never_overdraw<S: RateStore + Clone>(store: S) {
    let t = take(&format!("acct/r/terminate-{}", Uuid::new_v4()), 6.0, 0.001);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (store, t) = (store.clone(), t.clone());
            tokio::spawn(async move { store.take_tokens(&t).await.unwrap() })
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        if task.await.unwrap() == Taken::Granted {
            granted += 1;
        }
    }
    assert_eq!(granted, 6);
}

async fn throttling_halves_the_refill_and_it_grows_back<S: RateStore>(store: S) {
    let t = Take { recovery: Duration::from_secs(2), ..take(&format!("acct/r/mutating-{}", Uuid::new_v4()), 50.0, 5.0) };
    store.take_tokens(&t).await.unwrap();
    store.throttled(&t).await.unwrap();
    let after = store.bucket_level(&t).await.unwrap().unwrap();
    assert!((0.45..=0.55).contains(&after.factor), "{after:?}");
    store.throttled(&t).await.unwrap();
    store.throttled(&t).await.unwrap();
    store.throttled(&t).await.unwrap();
    store.throttled(&t).await.unwrap();
    let floor = store.bucket_level(&t).await.unwrap().unwrap();
    assert!(floor.factor >= 0.1 && floor.factor < 0.2, "{floor:?}");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(store.bucket_level(&t).await.unwrap().unwrap().factor, 1.0, "recovered over the recovery time");
}

contract!(
    a_bucket_grants_its_burst_then_denies_with_the_time_to_the_next_token,
    reservations_queue_callers_one_refill_apart,
    a_throttle_moves_reservations_booked_before_it_back,
    a_throttle_empties_the_bucket,
    a_keep_leaves_tokens_for_higher_priority_callers,
    concurrent_takes_never_overdraw,
    throttling_halves_the_refill_and_it_grows_back,
);
