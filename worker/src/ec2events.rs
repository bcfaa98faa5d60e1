//! EC2 state-change events: reads "EC2 Instance State-change Notification" events
//! (EventBridge JSON, bare or inside an SNS envelope) from an SQS queue and moves
//! the runner that owns the instance to the state the event reports, within
//! seconds of the change. The periodic sweep ([`crate::reconcile`]) still runs and
//! catches anything missed.
//!
//! Rules, per message:
//! * applied, unchanged, stale (older than the runner's current observation, see
//!   [`judge_event`](geonex_shared::store::fleet::judge_event)) or naming an
//!   instance no runner has: deleted once the store has committed;
//! * not an EC2 state-change event (another detail type or source): deleted;
//! * malformed (not JSON, a missing instance id, state or time, an unknown state):
//!   logged without its body and deleted, since no retry could ever apply it;
//! * the store failed: left on the queue, to come back after its visibility
//!   timeout (applying an event twice is harmless).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use geonex_shared::domain::ObservedState;
use geonex_shared::store::fleet::{EventOutcome, FleetStore, InstanceEvent};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::spot::Relauncher;
use crate::storage::{EventQueue, StorageError};

pub const DETAIL_TYPE: &str = "EC2 Instance State-change Notification";
pub const SOURCE: &str = "aws.ec2";

/// A decoded message: the EC2 event with its EventBridge id (for logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub event_id: Option<String>,
    pub event: InstanceEvent,
}

/// Decodes one queue message. `Ok(None)` for an EventBridge event that is not an
/// EC2 state-change notification; `Err` for a body that is no usable event.
pub fn parse_event(body: &str) -> Result<Option<Decoded>, String> {
    let value: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let value = match (value.get("Type").and_then(Value::as_str), value.get("Message").and_then(Value::as_str)) {
        (Some("Notification"), Some(inner)) => {
            serde_json::from_str(inner).map_err(|e| format!("SNS message is not JSON: {e}"))?
        }
        _ => value,
    };
    let Some(detail_type) = value.get("detail-type").and_then(Value::as_str) else {
        return Err("not an EventBridge event (no detail-type)".into());
    };
    if detail_type != DETAIL_TYPE || value.get("source").and_then(Value::as_str) != Some(SOURCE) {
        return Ok(None);
    }
    let detail = value.get("detail").ok_or("no detail")?;
    let instance_id = detail
        .get("instance-id")
        .and_then(Value::as_str)
        .filter(|i| i.starts_with("i-") && i.len() > 2)
        .ok_or("no instance-id in detail")?;
    let state_name = detail.get("state").and_then(Value::as_str).ok_or("no state in detail")?;
    let state = ec2_state(state_name).ok_or_else(|| format!("unknown instance state {state_name:?}"))?;
    let at = value
        .get("time")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .ok_or("no readable time")?;
    Ok(Some(Decoded {
        event_id: value.get("id").and_then(Value::as_str).map(str::to_owned),
        event: InstanceEvent { instance_id: instance_id.to_owned(), state, at },
    }))
}

/// The instance states EC2 reports (`requested` and `failed` are the control
/// plane's own).
fn ec2_state(name: &str) -> Option<ObservedState> {
    ObservedState::parse(name).filter(|s| !matches!(s, ObservedState::Requested | ObservedState::Failed))
}

/// The loop that drains the EC2 event queue into the runners' observed state.
pub struct InstanceEventIntake {
    queue: Arc<dyn EventQueue>,
    fleet: Arc<dyn FleetStore>,
    relauncher: Relauncher,
}

/// What one batch did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub received: usize,
    pub deleted: usize,
    pub applied: usize,
    pub unchanged: usize,
    pub stale: usize,
    pub unknown_instance: usize,
    /// Other EventBridge events, and malformed messages.
    pub ignored: usize,
    /// Left on the queue because the store failed.
    pub failed: usize,
}

impl InstanceEventIntake {
    pub fn new(queue: Arc<dyn EventQueue>, fleet: Arc<dyn FleetStore>, relauncher: Relauncher) -> Self {
        Self { queue, fleet, relauncher }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(queue = %self.queue.label(), "reading EC2 state-change events");
        let mut delay = Duration::from_millis(500);
        loop {
            let batch = tokio::select! {
                b = self.batch() => b,
                _ = shutdown.cancelled() => return,
            };
            match batch {
                Ok(b) => {
                    delay = Duration::from_millis(500);
                    if b.received > 0 {
                        tracing::debug!(
                            received = b.received,
                            applied = b.applied,
                            unchanged = b.unchanged,
                            stale = b.stale,
                            unknown_instance = b.unknown_instance,
                            ignored = b.ignored,
                            failed = b.failed,
                            "EC2 events"
                        );
                    }
                    if b.failed > 0 {
                        // The store is struggling: give it a moment before the next batch.
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.cancelled() => return,
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "EC2 event queue unavailable; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Receives one batch, applies it and deletes what was recorded or can never be.
    pub async fn batch(&self) -> Result<Batch, StorageError> {
        let messages = self.queue.receive().await?;
        let mut batch = Batch { received: messages.len(), ..Batch::default() };
        let mut done = Vec::with_capacity(messages.len());
        for m in messages {
            let decoded = match parse_event(&m.body) {
                Ok(Some(d)) => d,
                Ok(None) => {
                    tracing::debug!("ignoring an event that is not an EC2 state-change notification");
                    batch.ignored += 1;
                    done.push(m.receipt);
                    continue;
                }
                Err(why) => {
                    // Nothing could ever apply it; keeping it would only repeat this.
                    tracing::warn!(why, "dropping a message that is not an EC2 state-change event");
                    batch.ignored += 1;
                    done.push(m.receipt);
                    continue;
                }
            };
            let Decoded { event_id, event } = decoded;
            let event_id = event_id.as_deref().unwrap_or("");
            match self.fleet.apply_instance_event(&event).await {
                Ok(outcome) => {
                    match outcome {
                        EventOutcome::Applied { runner_id, from } => {
                            tracing::info!(
                                %runner_id,
                                instance_id = %event.instance_id,
                                from = from.as_str(),
                                state = event.state.as_str(),
                                event_id,
                                "runner state changed (EC2 event)"
                            );
                            batch.applied += 1;
                            self.relauncher.after_event(&runner_id, &event.instance_id, event.state).await;
                        }
                        EventOutcome::Unchanged { .. } => batch.unchanged += 1,
                        EventOutcome::Stale { runner_id, current } => {
                            tracing::info!(
                                %runner_id,
                                instance_id = %event.instance_id,
                                state = event.state.as_str(),
                                current = current.as_str(),
                                at = %event.at,
                                event_id,
                                "ignoring an EC2 event older than the runner's state"
                            );
                            batch.stale += 1;
                        }
                        EventOutcome::UnknownInstance => {
                            tracing::debug!(instance_id = %event.instance_id, event_id, "EC2 event for an instance of no runner");
                            batch.unknown_instance += 1;
                        }
                    }
                    done.push(m.receipt);
                }
                Err(e) => {
                    tracing::warn!(error = %e, instance_id = %event.instance_id, event_id, "could not record an EC2 event; it will be received again");
                    batch.failed += 1;
                }
            }
        }
        if !done.is_empty() {
            self.queue.delete(&done).await?;
            batch.deleted = done.len();
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"version":"0","id":"7bf73129-1428-4cd3-a780-95db273d1602",
        "detail-type":"EC2 Instance State-change Notification","source":"aws.ec2","account":"123456789012",
        "time":"2026-11-28T10:00:05Z","region":"us-east-1",
        "resources":["arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"],
        "detail":{"instance-id":"i-0123456789abcdef0","state":"stopped"}}"#;

    #[test]
    fn bare_and_sns_wrapped_events_decode_the_same() {
        let d = parse_event(EVENT).unwrap().unwrap();
        assert_eq!(d.event_id.as_deref(), Some("7bf73129-1428-4cd3-a780-95db273d1602"));
        assert_eq!(d.event.instance_id, "i-0123456789abcdef0");
        assert_eq!(d.event.state, ObservedState::Stopped);
        assert_eq!(d.event.at, "2026-11-28T10:00:05Z".parse::<DateTime<Utc>>().unwrap());
        let sns = serde_json::json!({"Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": EVENT})
            .to_string();
        assert_eq!(parse_event(&sns).unwrap().unwrap(), d);
    }

    #[test]
    fn every_ec2_state_decodes() {
        for s in ["pending", "running", "stopping", "stopped", "shutting-down", "terminated"] {
            let body = EVENT.replace(r#""state":"stopped""#, &format!(r#""state":"{s}""#));
            assert_eq!(parse_event(&body).unwrap().unwrap().event.state.as_str(), s);
        }
    }

    #[test]
    fn other_events_are_ignored_and_garbage_is_refused() {
        let other = EVENT.replace("EC2 Instance State-change Notification", "EC2 Spot Instance Interruption Warning");
        assert_eq!(parse_event(&other).unwrap(), None);
        let other = EVENT.replace(r#""source":"aws.ec2""#, r#""source":"my.app""#);
        assert_eq!(parse_event(&other).unwrap(), None);
        assert!(parse_event("hello").is_err());
        assert!(parse_event(r#"{"foo": 1}"#).is_err());
        assert!(parse_event(r#"{"Type":"Notification","Message":"not json"}"#).is_err());
        for (from, to) in [
            (r#""state":"stopped""#, r#""state":"requested""#),
            (r#""state":"stopped""#, r#""state":"rebooting""#),
            (r#""state":"stopped""#, r#""status":"stopped""#),
            (r#""instance-id":"i-0123456789abcdef0""#, r#""instance-id":42"#),
            (r#""time":"2026-11-28T10:00:05Z""#, r#""time":"yesterday""#),
            (r#""time":"2026-11-28T10:00:05Z""#, r#""when":"2026-11-28T10:00:05Z""#),
        ] {
            let body = EVENT.replace(from, to);
            assert!(parse_event(&body).is_err(), "{to}");
        }
    }
}
