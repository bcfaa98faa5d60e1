//! EC2 state-change events read from SQS (moto) move runners within seconds. moto
//! emits no such events, so each test publishes them to its own queue, shaped as
//! an EventBridge rule delivers them. The periodic sweep is off in every test, so
//! only the events can change what the runners show.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestConfig, ec2_sdk_config, eventually, spawn_app_with, unique};

struct Events {
    app: TestApp,
    sqs: aws_sdk_sqs::Client,
    url: String,
}

async fn events_app() -> Events {
    let sqs = aws_sdk_sqs::Client::new(&ec2_sdk_config());
    let url = sqs.create_queue().queue_name(unique("ec2-events")).send().await.unwrap().queue_url.unwrap();
    let app = spawn_app_with(TestConfig {
        extra_env: vec![
            ("GEONEX_RECONCILE__INTERVAL_SECS".into(), "0".into()),
            // Only events move runners here: the observer's first look is far off.
            ("GEONEX_RECONCILE__OBSERVE_MIN_MS".into(), "600000".into()),
            ("GEONEX_RECONCILE__OBSERVE_MAX_MS".into(), "600000".into()),
            ("GEONEX_RECONCILE__EC2_EVENTS_QUEUE_URL".into(), url.clone()),
        ],
        ..TestConfig::default()
    })
    .await;
    Events { app, sqs, url }
}

/// An "EC2 Instance State-change Notification" as EventBridge delivers it
/// (whole-second time).
fn ec2_event(instance_id: &str, state: &str, at: DateTime<Utc>) -> String {
    json!({
        "version": "0",
        "id": uuid::Uuid::new_v4(),
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "region": "us-east-1",
        "resources": [format!("arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}")],
        "detail": {"instance-id": instance_id, "state": state},
    })
    .to_string()
}

fn sns(body: &str) -> String {
    json!({
        "Type": "Notification",
        "MessageId": uuid::Uuid::new_v4(),
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:ec2-events",
        "Message": body,
        "Timestamp": Utc::now().to_rfc3339(),
    })
    .to_string()
}

fn seconds(n: i64) -> chrono::TimeDelta {
    chrono::TimeDelta::seconds(n)
}

impl Events {
    async fn publish(&self, body: &str) {
        self.sqs.send_message().queue_url(&self.url).message_body(body).send().await.unwrap();
    }

    async fn started(&self) -> (String, String) {
        let runner = unique("ev");
        let r = self.app.start_runner(&runner, "geonex/fire:1.5").await;
        let done = self.app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
        let instance = done["result"]["instance_id"].as_str().unwrap().to_owned();
        // EC2 says the launched instance runs.
        self.publish(&ec2_event(&instance, "running", Utc::now())).await;
        self.app.wait_runner(&runner, "running").await;
        (runner, instance)
    }

    async fn state(&self, runner: &str) -> Value {
        self.app.runner(runner).await["observed_state"].clone()
    }

    async fn wait_state(&self, runner: &str, state: &str) {
        eventually(&format!("runner {runner} shows {state}"), Duration::from_secs(10), || async {
            self.state(runner).await == state
        })
        .await;
    }

    /// Waits until every message published so far was received and deleted: by
    /// then its effect, if any, is committed.
    async fn wait_consumed(&self) {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        eventually("the queue is drained", Duration::from_secs(10), || async {
            let out = self
                .sqs
                .get_queue_attributes()
                .queue_url(&self.url)
                .attribute_names(A::ApproximateNumberOfMessages)
                .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
                .send()
                .await
                .unwrap();
            let attrs = out.attributes.unwrap_or_default();
            [A::ApproximateNumberOfMessages, A::ApproximateNumberOfMessagesNotVisible]
                .iter()
                .all(|a| attrs.get(a).map(String::as_str) == Some("0"))
        })
        .await;
    }

    async fn add_running_container(&self, runner: &str, instance: &str) -> uuid::Uuid {
        let id = uuid::Uuid::new_v4();
        sqlx::query(
            "insert into container (container_id, runner_id, instance_id, image_name) values ($1, $2, $3, 'geonex/fire:1.5')",
        )
        .bind(id)
        .bind(runner)
        .bind(instance)
        .execute(self.app.store.pool())
        .await
        .unwrap();
        id
    }

    async fn container_status(&self, id: uuid::Uuid) -> String {
        sqlx::query_scalar("select status from container where container_id = $1")
            .bind(id)
            .fetch_one(self.app.store.pool())
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_terminated_event_shows_within_seconds_and_ends_the_running_containers_as_killed() {
    let ev = events_app().await;
    let (runner, instance) = ev.started().await;
    let (other, _) = ev.started().await;
    let container = ev.add_running_container(&runner, &instance).await;
    assert_eq!(ev.state(&runner).await, "running");

    ev.app.ec2.terminate_instances().instance_ids(&instance).send().await.unwrap();
    let now = Utc::now();
    ev.publish(&ec2_event(&instance, "shutting-down", now)).await;
    ev.publish(&ec2_event(&instance, "terminated", now)).await;
    ev.wait_state(&runner, "terminated").await;
    assert_eq!(ev.container_status(container).await, "killed");
    ev.wait_consumed().await;
    assert_eq!(ev.state(&other).await, "running", "another runner is untouched");
    assert_eq!(ev.state(&runner).await, "terminated");
}

#[tokio::test]
async fn a_stopped_event_shows_stopped_and_a_later_start_shows_running_again() {
    let ev = events_app().await;
    let (runner, instance) = ev.started().await;
    let container = ev.add_running_container(&runner, &instance).await;

    ev.app.ec2.stop_instances().instance_ids(&instance).send().await.unwrap();
    let t = Utc::now();
    ev.publish(&ec2_event(&instance, "stopping", t)).await;
    ev.wait_state(&runner, "stopping").await;
    assert_eq!(ev.container_status(container).await, "running", "stopping does not end containers yet");
    ev.publish(&ec2_event(&instance, "stopped", t + seconds(1))).await;
    ev.wait_state(&runner, "stopped").await;
    assert_eq!(ev.container_status(container).await, "killed");

    ev.app.ec2.start_instances().instance_ids(&instance).send().await.unwrap();
    ev.publish(&ec2_event(&instance, "pending", t + seconds(2))).await;
    ev.publish(&ec2_event(&instance, "running", t + seconds(3))).await;
    ev.wait_state(&runner, "running").await;
}

#[tokio::test]
async fn duplicate_and_out_of_order_events_never_move_the_state_backwards() {
    let ev = events_app().await;
    let (runner, instance) = ev.started().await;
    ev.app.ec2.stop_instances().instance_ids(&instance).send().await.unwrap();
    let t = Utc::now();
    let stopped = ec2_event(&instance, "stopped", t);
    ev.publish(&stopped).await;
    ev.wait_state(&runner, "stopped").await;

    // The same event again, and events older than it, arriving late.
    ev.publish(&stopped).await;
    ev.publish(&ec2_event(&instance, "running", t - seconds(30))).await;
    ev.publish(&ec2_event(&instance, "stopping", t - seconds(5))).await;
    ev.publish(&ec2_event(&instance, "pending", t - seconds(60))).await;
    ev.wait_consumed().await;
    assert_eq!(ev.state(&runner).await, "stopped", "late events did not win");

    // A start outside the API, its events delivered in reverse order.
    ev.app.ec2.start_instances().instance_ids(&instance).send().await.unwrap();
    ev.publish(&ec2_event(&instance, "running", t + seconds(3))).await;
    ev.wait_state(&runner, "running").await;
    ev.publish(&ec2_event(&instance, "pending", t + seconds(2))).await;
    ev.wait_consumed().await;
    assert_eq!(ev.state(&runner).await, "running", "the earlier pending event did not win");

    // A stale stop neither moves the runner nor ends its containers.
    let container = ev.add_running_container(&runner, &instance).await;
    ev.publish(&ec2_event(&instance, "stopped", t)).await;
    ev.wait_consumed().await;
    assert_eq!(ev.state(&runner).await, "running");
    assert_eq!(ev.container_status(container).await, "running");

    // terminated is final.
    ev.publish(&ec2_event(&instance, "terminated", t + seconds(4))).await;
    ev.wait_state(&runner, "terminated").await;
    ev.publish(&ec2_event(&instance, "running", t + seconds(600))).await;
    ev.wait_consumed().await;
    assert_eq!(ev.state(&runner).await, "terminated");
}

#[tokio::test]
async fn events_of_unknown_instances_and_malformed_messages_are_consumed_without_effect() {
    let ev = events_app().await;
    let (runner, instance) = ev.started().await;
    let before = ev.app.runner(&runner).await;

    // An instance of this fleet that no runner has.
    let stray = ev
        .app
        .ec2
        .run_instances()
        .image_id("ami-03cf127a")
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap()
        .instances()[0]
        .instance_id()
        .unwrap()
        .to_owned();
    ev.publish(&ec2_event(&stray, "terminated", Utc::now())).await;
    ev.publish(&ec2_event("i-0000000000000dead", "stopped", Utc::now())).await;
    ev.publish("not json at all").await;
    ev.publish(&json!({"detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
        "time": "2026-11-28T10:00:00Z", "detail": {"instance-id": instance, "state": "exploded"}}).to_string())
        .await;
    ev.publish(&json!({"version": "0", "detail-type": "EC2 Spot Instance Interruption Warning", "source": "aws.ec2",
        "time": "2026-11-28T10:00:00Z", "detail": {"instance-id": instance, "instance-action": "terminate"}}).to_string())
        .await;
    ev.wait_consumed().await;

    let after = ev.app.runner(&runner).await;
    assert_eq!(after["observed_state"], "running");
    assert_eq!(after["updated_at"], before["updated_at"], "the runner was not written: {after}");

    // The intake is still alive.
    ev.publish(&ec2_event(&instance, "stopped", Utc::now())).await;
    ev.wait_state(&runner, "stopped").await;
}

#[tokio::test]
async fn events_wrapped_in_sns_notifications_apply() {
    let ev = events_app().await;
    let (runner, instance) = ev.started().await;
    let container = ev.add_running_container(&runner, &instance).await;
    ev.app.ec2.stop_instances().instance_ids(&instance).send().await.unwrap();
    ev.publish(&sns(&ec2_event(&instance, "stopped", Utc::now()))).await;
    ev.wait_state(&runner, "stopped").await;
    assert_eq!(ev.container_status(container).await, "killed");
    ev.wait_consumed().await;
}
