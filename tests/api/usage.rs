//! S3 output usage against moto: scans with pagination, per-output errors,
//! collapsing refreshes, periodic scans with several workers, and incremental
//! updates from S3 event notifications through SQS. Scans and per-output errors
//! also in embedded mode, where outputs are folders in the data directory.

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;
use geonex::startup::Role;
use serde_json::{Value, json};

use crate::helpers::{Mode, TestApp, TestConfig, ec2_sdk_config, eventually, spawn_app_with, unique};

fn s3() -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&ec2_sdk_config()).force_path_style(true).build())
}

fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&ec2_sdk_config())
}

async fn bucket(s3: &aws_sdk_s3::Client) -> String {
    let name = unique("usage");
    s3.create_bucket().bucket(&name).send().await.expect("create bucket");
    name
}

/// Puts objects (key, size) concurrently.
async fn put(s3: &aws_sdk_s3::Client, bucket: &str, objects: Vec<(String, usize)>) {
    futures::stream::iter(objects)
        .map(|(key, size)| async move {
            s3.put_object().bucket(bucket).key(&key).body(ByteStream::from(vec![b'x'; size])).send().await.expect("put");
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

/// Where a deployment's outputs live: moto's S3, or folders in the data directory.
enum Objects {
    S3(aws_sdk_s3::Client),
    Folders(std::path::PathBuf),
}

impl Objects {
    fn of(app: &TestApp) -> Self {
        match app.deployment.mode {
            Mode::Production => Objects::S3(s3()),
            Mode::Embedded => Objects::Folders(app.deployment.data_dir.0.join("s3")),
        }
    }

    async fn create_bucket(&self, name: &str) {
        match self {
            Objects::S3(s3) => {
                s3.create_bucket().bucket(name).send().await.expect("create bucket");
            }
            Objects::Folders(root) => std::fs::create_dir_all(root.join(name)).expect("bucket folder"),
        }
    }

    async fn put(&self, bucket: &str, objects: Vec<(String, usize)>) {
        match self {
            Objects::S3(s3) => put(s3, bucket, objects).await,
            Objects::Folders(root) => {
                for (key, size) in objects {
                    let path = root.join(bucket).join(&key);
                    std::fs::create_dir_all(path.parent().expect("key has a folder")).expect("folders");
                    std::fs::write(path, vec![b'x'; size]).expect("object file");
                }
            }
        }
    }
}

async fn start_runner(app: &TestApp, runner_id: &str, s3_output: &str) {
    let r = app
        .get(&format!(
            "/start-runner?instance_type=m5d.large&image_name=geonex/fire:1.5&s3_output={s3_output}&runner_id={runner_id}&runner_name=P"
        ))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    // Settled, so the runner rows (part of the usage ETag) change no more.
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    app.wait_runner(runner_id, "running").await;
}

fn output<'a>(usage: &'a Value, s3_output: &str) -> &'a Value {
    usage["outputs"]
        .as_array()
        .and_then(|a| a.iter().find(|o| o["s3_output"] == s3_output))
        .unwrap_or_else(|| panic!("{s3_output} not in {usage}"))
}

/// Requests a scan and waits for it to finish; returns the scan command.
async fn refresh(app: &TestApp, query: &str) -> Value {
    let r = app.get(&format!("/get-s3-usage?refresh=true{query}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.body["scan_command_id"].as_str().expect("scan_command_id").to_owned();
    let done = app.wait_command(&id, &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    done
}

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

in_both_modes!(
    after_a_scan_usage_shows_exact_bytes_and_counts_per_runner_output_and_in_total,
    a_missing_bucket_shows_an_error_on_its_output_while_the_others_are_still_scanned,
);

async fn after_a_scan_usage_shows_exact_bytes_and_counts_per_runner_output_and_in_total(mode: Mode) {
    // Listed below the split depth, "a/day1/" takes two pages of 1000.
    let config =
        TestConfig { extra_env: env(&[("GEONEX_S3USAGE__SPLIT_DEPTH", "1".into())]), ..TestConfig::in_mode(mode) };
    let app = spawn_app_with(config).await;
    let store = Objects::of(&app);
    let b = unique("usage");
    store.create_bucket(&b).await;
    let (ra, rb) = (unique("ua"), unique("ub"));
    start_runner(&app, &ra, &format!("s3://{b}/a")).await;
    start_runner(&app, &rb, &format!("s3://{b}/b/")).await;

    let mut objects: Vec<(String, usize)> = (0..1100).map(|i| (format!("a/day1/{i:05}.nc"), 3)).collect();
    objects.extend([("a/top.json".to_owned(), 10), ("a/day2/x.png".to_owned(), 7)]);
    objects.extend((0..5).map(|i| (format!("b/2026/11/{i}.log"), 100 + i)));
    // Not in either output: a sibling prefix and the bucket root.
    objects.extend([("a_v2/other.nc".to_owned(), 999), ("root.txt".to_owned(), 5)]);
    store.put(&b, objects).await;

    let before = app.get(&format!("/get-s3-usage?bucket={b}")).await;
    assert_eq!(before.status, 200, "{}", before.body);
    let a = output(&before.body, &format!("s3://{b}/a"));
    assert_eq!((a["bytes"].as_i64(), a["stale"].as_bool(), a["scanned_at"].is_null()), (Some(0), Some(true), true));
    let etag = before.headers.get("etag").expect("etag").to_str().unwrap().to_owned();
    let again = app.send(app.http.get(format!("{}/get-s3-usage?bucket={b}", app.address)).header("If-None-Match", &etag)).await;
    assert_eq!(again.status, 304);

    let scan = refresh(&app, &format!("&bucket={b}")).await;
    assert_eq!(scan["action"], "s3_usage_scan");
    assert_eq!(scan["result"]["scanned"], 2, "{scan}");

    let after = app.send(app.http.get(format!("{}/get-s3-usage?bucket={b}", app.address)).header("If-None-Match", &etag)).await;
    assert_eq!(after.status, 200, "a scan changes the ETag");
    let a = output(&after.body, &format!("s3://{b}/a"));
    assert_eq!(a["objects"], 1102);
    assert_eq!(a["bytes"], 1100 * 3 + 10 + 7);
    assert_eq!(a["runner_ids"], json!([ra]));
    assert_eq!((a["stale"].as_bool(), a["error"].is_null(), a["bytes_exact"].as_bool()), (Some(false), true, Some(true)));
    assert!(a["scanned_at"].is_string());
    let bo = output(&after.body, &format!("s3://{b}/b"));
    assert_eq!((bo["objects"].as_i64(), bo["bytes"].as_i64()), (Some(5), Some(510)));
    assert_eq!(bo["runner_ids"], json!([rb]));
    assert_eq!(after.body["outputs"].as_array().unwrap().len(), 2);
    assert_eq!(after.body["total_objects"], 1107);
    assert_eq!(after.body["total_bytes"], 1100 * 3 + 17 + 510);

    let only_b = app.get(&format!("/get-s3-usage?runner_id={rb}")).await;
    assert_eq!(only_b.body["outputs"].as_array().unwrap().len(), 1);
    assert_eq!((only_b.body["total_objects"].as_i64(), only_b.body["total_bytes"].as_i64()), (Some(5), Some(510)));

    for (bad, field) in [("runner_id=a/b", "runner_id"), ("bucket=Not_A_Bucket", "bucket"), ("refresh=maybe", "refresh")] {
        let r = app.get(&format!("/get-s3-usage?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.body["error"]["field"], field, "{bad}");
    }
}

#[tokio::test]
async fn two_refresh_requests_at_once_make_one_scan() {
    let s3 = s3();
    let b = bucket(&s3).await;
    put(&s3, &b, vec![("out/x".into(), 4)]).await;
    let config = TestConfig {
        role: Role::Api,
        extra_env: env(&[("GEONEX_S3USAGE__EXTRA_OUTPUTS", format!("[s3://{b}/out]"))]),
        ..TestConfig::default()
    };
    let mut app = spawn_app_with(config).await;
    let (r1, r2) = tokio::join!(app.get("/get-s3-usage?refresh=true"), app.get("/get-s3-usage?refresh=true"));
    assert_eq!((r1.status, r2.status), (200, 200));
    assert_eq!(r1.body["scan_command_id"], r2.body["scan_command_id"]);
    // A narrower request joins the pending full scan too.
    let r3 = app.get(&format!("/get-s3-usage?refresh=true&bucket={b}")).await;
    assert_eq!(r3.body["scan_command_id"], r1.body["scan_command_id"]);
    let listed = app.get("/describe-commands?action=s3_usage_scan").await;
    assert_eq!(listed.body["commands"].as_array().unwrap().len(), 1, "{}", listed.body);

    let worker = app.deployment.spawn(Role::Worker).await;
    let id = r1.body["scan_command_id"].as_str().unwrap();
    let done = app.wait_command(id, &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let usage = app.get("/get-s3-usage").await;
    assert_eq!((usage.body["total_objects"].as_i64(), usage.body["total_bytes"].as_i64()), (Some(1), Some(4)));
    // Once it finished, a new refresh is a new scan.
    let r4 = app.get("/get-s3-usage?refresh=true").await;
    assert_ne!(r4.body["scan_command_id"], r1.body["scan_command_id"]);
    app.wait_command(r4.body["scan_command_id"].as_str().unwrap(), &["succeeded"]).await;
    worker.stop().await;
    app.stop_app().await;
}

async fn a_missing_bucket_shows_an_error_on_its_output_while_the_others_are_still_scanned(mode: Mode) {
    let b = unique("usage");
    let missing = unique("missing");
    let config = TestConfig {
        extra_env: env(&[("GEONEX_S3USAGE__EXTRA_OUTPUTS", format!("[s3://{missing}/out, s3://{b}/ok]"))]),
        ..TestConfig::in_mode(mode)
    };
    let app = spawn_app_with(config).await;
    let store = Objects::of(&app);
    store.create_bucket(&b).await;
    store.put(&b, vec![("ok/1".into(), 11), ("ok/2".into(), 22)]).await;
    let scan = refresh(&app, "").await;
    assert_eq!((scan["result"]["scanned"].as_i64(), scan["result"]["failed"].as_i64()), (Some(1), Some(1)), "{scan}");
    let usage = app.get("/get-s3-usage").await.body;
    let bad = output(&usage, &format!("s3://{missing}/out"));
    assert!(bad["error"].as_str().unwrap_or("").contains("NoSuchBucket"), "{bad}");
    assert_eq!((bad["stale"].as_bool(), bad["scanned_at"].is_null()), (Some(true), true));
    let ok = output(&usage, &format!("s3://{b}/ok"));
    assert_eq!((ok["objects"].as_i64(), ok["bytes"].as_i64(), ok["error"].is_null()), (Some(2), Some(33), true));
    assert_eq!(usage["total_bytes"], 33);
}

#[tokio::test]
async fn periodic_scans_are_scheduled_once_per_interval_by_one_of_several_workers() {
    let s3 = s3();
    let b = bucket(&s3).await;
    put(&s3, &b, vec![("p/1".into(), 1)]).await;
    let config = TestConfig {
        role: Role::Api,
        extra_env: env(&[
            ("GEONEX_S3USAGE__EXTRA_OUTPUTS", format!("[s3://{b}/p]")),
            ("GEONEX_S3USAGE__SCAN_INTERVAL_SECS", "2".into()),
        ]),
        ..TestConfig::default()
    };
    let mut app = spawn_app_with(config).await;
    let w1 = app.deployment.spawn(Role::Worker).await;
    let w2 = app.deployment.spawn(Role::Worker).await;
    let scans = || async {
        let r = app.get("/describe-commands?action=s3_usage_scan").await;
        r.body["commands"].as_array().cloned().unwrap_or_default()
    };
    eventually("three periodic scans", Duration::from_secs(30), || async { scans().await.len() >= 3 }).await;
    w1.stop().await;
    w2.stop().await;
    let mut created: Vec<chrono::DateTime<chrono::Utc>> = scans()
        .await
        .iter()
        .map(|c| {
            assert_eq!(c["requested_by"], "scheduler");
            c["created_at"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    created.sort();
    for pair in created.windows(2) {
        assert!(pair[1] - pair[0] >= chrono::Duration::seconds(2), "two scans within one interval: {created:?}");
    }
    let usage = app.get("/get-s3-usage").await.body;
    assert_eq!(output(&usage, &format!("s3://{b}/p"))["objects"], 1);
    app.stop_app().await;
}

/// Sends one message to the queue, as S3 (or SNS) would.
async fn send(sqs: &aws_sdk_sqs::Client, queue_url: &str, body: String) {
    sqs.send_message().queue_url(queue_url).message_body(body).send().await.expect("send message");
}

fn record(bucket: &str, event: &str, key: &str, size: Option<i64>, sequencer: &str) -> Value {
    let mut object = json!({ "key": key, "sequencer": sequencer, "eTag": "x" });
    if let Some(size) = size {
        object["size"] = json!(size);
    }
    json!({ "Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "eventName": event,
        "s3": { "s3SchemaVersion": "1.0", "bucket": { "name": bucket }, "object": object }
    }]})
}

async fn queue_drained(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> bool {
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .expect("queue attributes");
    let n = |name: aws_sdk_sqs::types::QueueAttributeName| {
        attrs.attributes().and_then(|a| a.get(&name)).and_then(|v| v.parse::<i64>().ok()).unwrap_or(-1)
    };
    n(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages) == 0
        && n(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible) == 0
}

#[tokio::test]
async fn s3_events_update_the_counters_and_a_duplicate_or_late_event_counts_once() {
    let (s3, sqs) = (s3(), sqs());
    let b = bucket(&s3).await;
    // Objects that exist before notifications are on: only the scan knows them.
    put(&s3, &b, vec![("out/base0".into(), 50), ("out/base1".into(), 60)]).await;
    let queue_url = sqs.create_queue().queue_name(unique("usage-events")).send().await.unwrap().queue_url().unwrap().to_owned();
    let queue_arn = format!("arn:aws:sqs:us-east-1:123456789012:{}", queue_url.rsplit('/').next().unwrap());
    s3.put_bucket_notification_configuration()
        .bucket(&b)
        .notification_configuration(
            aws_sdk_s3::types::NotificationConfiguration::builder()
                .queue_configurations(
                    aws_sdk_s3::types::QueueConfiguration::builder()
                        .queue_arn(&queue_arn)
                        .events(aws_sdk_s3::types::Event::S3ObjectCreated)
                        .events(aws_sdk_s3::types::Event::S3ObjectRemoved)
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .expect("notification configuration");
    let config = TestConfig {
        extra_env: env(&[
            ("GEONEX_S3USAGE__EXTRA_OUTPUTS", format!("[s3://{b}/out]")),
            ("GEONEX_S3USAGE__SQS_QUEUE_URL", queue_url.clone()),
        ]),
        ..TestConfig::default()
    };
    let app = spawn_app_with(config).await;
    refresh(&app, "").await;
    let out = format!("s3://{b}/out");
    let figures = || async {
        let u = app.get("/get-s3-usage").await.body;
        let o = output(&u, &out);
        (o["objects"].as_i64().unwrap(), o["bytes"].as_i64().unwrap(), o["bytes_exact"].as_bool().unwrap())
    };
    assert_eq!(figures().await, (2, 110, true));

    // Real notifications from S3: a new object, then its removal.
    put(&s3, &b, vec![("out/new.nc".into(), 7)]).await;
    eventually("created event counted", Duration::from_secs(20), || async { figures().await == (3, 117, true) }).await;
    s3.delete_object().bucket(&b).key("out/new.nc").send().await.unwrap();
    eventually("removed event counted", Duration::from_secs(20), || async { figures().await == (2, 110, true) }).await;

    // Events with sequencers: the same creation delivered twice counts once.
    let created = record(&b, "ObjectCreated:Put", "out/syn+file.nc", Some(100), "0055AED6DCD90281E5").to_string();
    send(&sqs, &queue_url, created.clone()).await;
    eventually("creation counted", Duration::from_secs(20), || async { figures().await == (3, 210, true) }).await;
    send(&sqs, &queue_url, created.clone()).await;
    eventually("duplicate consumed", Duration::from_secs(20), || queue_drained(&sqs, &queue_url)).await;
    assert_eq!(figures().await, (3, 210, true), "a duplicate event counted twice");

    // The removal, in an SNS envelope; then the creation arrives again, late.
    let removed = record(&b, "ObjectRemoved:Delete", "out/syn+file.nc", None, "0055AED6DCD90281E6").to_string();
    send(&sqs, &queue_url, json!({ "Type": "Notification", "MessageId": "m-1", "Message": removed }).to_string()).await;
    eventually("removal counted", Duration::from_secs(20), || async { figures().await == (2, 110, true) }).await;
    send(&sqs, &queue_url, created).await;
    eventually("late creation consumed", Duration::from_secs(20), || queue_drained(&sqs, &queue_url)).await;
    assert_eq!(figures().await, (2, 110, true), "an out-of-order event was applied");

    // Outside the output: ignored.
    send(&sqs, &queue_url, record(&b, "ObjectCreated:Put", "elsewhere/x", Some(5), "01").to_string()).await;
    // Removal of an object only the scan saw: one object fewer, bytes unknown until the next scan.
    s3.delete_object().bucket(&b).key("out/base0").send().await.unwrap();
    eventually("unknown-size removal counted", Duration::from_secs(20), || async { figures().await == (1, 110, false) }).await;
    refresh(&app, "").await;
    assert_eq!(figures().await, (1, 60, true), "the next scan reconciles");
}
