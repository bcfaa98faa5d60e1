//! Incremental usage updates: reads S3 event notifications from the event queue
//! (SQS, long polling), decodes them (the standard S3 notification JSON, bare or
//! inside an SNS envelope) and applies them to the usage counters. A message is
//! deleted only after its events are committed; one the store could not take
//! comes back after its visibility timeout, and applying it twice is harmless
//! because the store orders events per key by their sequencer.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use geonex_shared::store::usage::{ObjectChange, ObjectEvent, UsageStore, event_order};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::storage::EventQueue;

/// Decodes one queue message into object events. `Ok(vec![])` for messages that
/// carry nothing to count (the `s3:TestEvent` S3 sends when notifications are
/// configured, tagging or ACL events); `Err` for a body that is no S3 notification.
pub fn parse_notification(body: &str) -> Result<Vec<ObjectEvent>, String> {
    let value: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let value = match (value.get("Type").and_then(Value::as_str), value.get("Message").and_then(Value::as_str)) {
        (Some("Notification"), Some(inner)) => {
            serde_json::from_str(inner).map_err(|e| format!("SNS message is not JSON: {e}"))?
        }
        _ => value,
    };
    if value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    let Some(records) = value.get("Records").and_then(Value::as_array) else {
        return Err("no Records".into());
    };
    let mut events = Vec::with_capacity(records.len());
    for r in records {
        let name = r.get("eventName").and_then(Value::as_str).unwrap_or("");
        let is_created = name.starts_with("ObjectCreated:");
        let is_removed = name.starts_with("ObjectRemoved:") || name.starts_with("LifecycleExpiration:");
        if !is_created && !is_removed {
            continue;
        }
        let s3 = r.get("s3").ok_or("record without s3")?;
        let bucket = s3.pointer("/bucket/name").and_then(Value::as_str).ok_or("record without bucket name")?;
        let raw_key = s3.pointer("/object/key").and_then(Value::as_str).ok_or("record without object key")?;
        let key = decode_key(raw_key).ok_or_else(|| format!("object key {raw_key:?} is not URL-encoded UTF-8"))?;
        let time = r
            .get("eventTime")
            .and_then(Value::as_str)
            .and_then(parse_time)
            .ok_or("record without a readable eventTime")?;
        let sequencer = s3.pointer("/object/sequencer").and_then(Value::as_str);
        let change = if is_created {
            let size = s3.pointer("/object/size").and_then(Value::as_i64).ok_or("ObjectCreated record without size")?;
            ObjectChange::Created { size: size.max(0) }
        } else {
            ObjectChange::Removed
        };
        events.push(ObjectEvent {
            bucket: bucket.to_owned(),
            key,
            change,
            order: event_order(sequencer, time),
            time,
        });
    }
    Ok(events)
}

/// S3 sends keys form-URL-encoded (a space is '+').
fn decode_key(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// RFC 3339 as S3 sends it, or a zone-less time (some emulators), taken as UTC.
fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|n| n.and_utc()))
}

/// The loop that drains the event queue into the usage store.
pub struct EventIntake {
    queue: Arc<dyn EventQueue>,
    store: Arc<dyn UsageStore>,
}

/// What one batch did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub received: usize,
    pub deleted: usize,
    pub applied: usize,
    pub ignored: usize,
}

impl EventIntake {
    pub fn new(queue: Arc<dyn EventQueue>, store: Arc<dyn UsageStore>) -> Self {
        Self { queue, store }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(queue = %self.queue.label(), "reading S3 events");
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
                        tracing::debug!(received = b.received, applied = b.applied, ignored = b.ignored, "S3 events");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "S3 event queue unavailable; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Receives one batch, applies it and deletes what was recorded.
    pub async fn batch(&self) -> Result<Batch, crate::storage::StorageError> {
        let messages = self.queue.receive().await?;
        let mut batch = Batch { received: messages.len(), ..Batch::default() };
        let mut done = Vec::with_capacity(messages.len());
        for m in messages {
            let events = match parse_notification(&m.body) {
                Ok(events) => events,
                Err(why) => {
                    // Nothing could ever apply it; keeping it would only repeat this.
                    tracing::warn!(why, "dropping a message that is not an S3 event notification");
                    done.push(m.receipt);
                    continue;
                }
            };
            if events.is_empty() {
                done.push(m.receipt);
                continue;
            }
            match self.store.apply_object_events(&events).await {
                Ok(a) => {
                    batch.applied += a.applied;
                    batch.ignored += a.ignored;
                    if a.unknown_size > 0 {
                        tracing::info!(count = a.unknown_size, "objects of unknown size removed; bytes are approximate until the next scan");
                    }
                    done.push(m.receipt);
                }
                Err(e) => tracing::warn!(error = %e, "could not record S3 events; the message will be received again"),
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

    #[test]
    fn standard_and_sns_wrapped_notifications_decode_the_same() {
        let s3 = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","eventTime":"2026-11-28T10:00:00.123Z",
            "eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"geonex"},
            "object":{"key":"GO16/a+b%2Bc.nc","size":42,"sequencer":"0055AED6DCD90281E5"}}},
            {"eventTime":"2026-11-28T10:00:01Z","eventName":"ObjectRemoved:Delete",
            "s3":{"bucket":{"name":"geonex"},"object":{"key":"GO16/old.nc","sequencer":"0055AED6DCD90281E6"}}},
            {"eventTime":"2026-11-28T10:00:01Z","eventName":"ObjectTagging:Put",
            "s3":{"bucket":{"name":"geonex"},"object":{"key":"GO16/old.nc"}}}]}"#;
        let events = parse_notification(s3).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].key, "GO16/a b+c.nc");
        assert_eq!(events[0].change, ObjectChange::Created { size: 42 });
        assert_eq!(events[1].change, ObjectChange::Removed);
        assert!(events[0].order < events[1].order);
        let sns = serde_json::json!({"Type": "Notification", "MessageId": "m", "Message": s3}).to_string();
        assert_eq!(parse_notification(&sns).unwrap(), events);
    }

    #[test]
    fn test_events_carry_nothing_and_garbage_is_refused() {
        let test = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2026-11-28T10:00:00.000Z","Bucket":"b"}"#;
        assert_eq!(parse_notification(test).unwrap(), vec![]);
        assert!(parse_notification("hello").is_err());
        assert!(parse_notification(r#"{"foo": 1}"#).is_err());
        let no_size = r#"{"Records":[{"eventTime":"2026-11-28T10:00:00Z","eventName":"ObjectCreated:Put",
            "s3":{"bucket":{"name":"b"},"object":{"key":"k"}}}]}"#;
        assert!(parse_notification(no_size).is_err());
    }

    #[test]
    fn zone_less_event_times_are_utc() {
        let t = parse_time("2026-11-28T10:00:00.123456").unwrap();
        assert_eq!(t, parse_time("2026-11-28T10:00:00.123456Z").unwrap());
    }
}
