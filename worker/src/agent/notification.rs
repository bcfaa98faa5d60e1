//! New-data notifications as they arrive on the agent's queue: S3 event JSON,
//! bare or wrapped in an SNS envelope (how NOAA publishes new GOES objects).

use serde_json::Value;

/// One new object to process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewObject {
    pub bucket: String,
    pub key: String,
    /// S3's per-key ordering token; two notifications of the same write share it.
    pub sequencer: String,
}

impl NewObject {
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not an S3 event notification: {0}")]
pub struct NotificationError(String);

/// The objects a message announces; empty for S3's test event and for records
/// that are not object creations.
pub fn parse(body: &str) -> Result<Vec<NewObject>, NotificationError> {
    let v: Value = serde_json::from_str(body).map_err(|e| NotificationError(e.to_string()))?;
    // An SNS envelope carries the S3 event as a JSON string in `Message`.
    let v = match (v.get("Type").and_then(Value::as_str), v.get("Message").and_then(Value::as_str)) {
        (Some("Notification"), Some(inner)) => serde_json::from_str(inner).map_err(|e| NotificationError(e.to_string()))?,
        _ => v,
    };
    if v.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    let records = v.get("Records").and_then(Value::as_array).ok_or_else(|| NotificationError("no Records".into()))?;
    let mut out = Vec::new();
    for r in records {
        let name = r.get("eventName").and_then(Value::as_str).unwrap_or("");
        if !name.starts_with("ObjectCreated") {
            continue;
        }
        let s3 = r.get("s3").ok_or_else(|| NotificationError("a record without s3".into()))?;
        let bucket = s3.pointer("/bucket/name").and_then(Value::as_str);
        let key = s3.pointer("/object/key").and_then(Value::as_str);
        let (Some(bucket), Some(key)) = (bucket, key) else {
            return Err(NotificationError("a record without bucket or key".into()));
        };
        let sequencer = s3
            .pointer("/object/sequencer")
            .or_else(|| s3.pointer("/object/eTag"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        out.push(NewObject { bucket: bucket.to_owned(), key: decode_key(key), sequencer });
    }
    Ok(out)
}

/// S3 event keys are URL-encoded with `+` for spaces.
fn decode_key(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match key.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S3_EVENT: &str = r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"noaa-goes16"},
        "object":{"key":"ABI-L1b-RadF/2026/001/OR+ABI%2Bx.nc","sequencer":"0055AED6DCD90281E5"}}}]}"#;

    #[test]
    fn bare_and_sns_wrapped_events_give_the_same_object() {
        let bare = parse(S3_EVENT).unwrap();
        assert_eq!(bare, vec![NewObject {
            bucket: "noaa-goes16".into(),
            key: "ABI-L1b-RadF/2026/001/OR ABI+x.nc".into(),
            sequencer: "0055AED6DCD90281E5".into(),
        }]);
        let sns = serde_json::json!({"Type": "Notification", "Message": S3_EVENT}).to_string();
        assert_eq!(parse(&sns).unwrap(), bare);
        assert_eq!(bare[0].url(), "s3://noaa-goes16/ABI-L1b-RadF/2026/001/OR ABI+x.nc");
    }

    #[test]
    fn test_events_and_deletions_announce_nothing_and_junk_is_an_error() {
        assert!(parse(r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#).unwrap().is_empty());
        assert!(parse(r#"{"Records":[{"eventName":"ObjectRemoved:Delete","s3":{}}]}"#).unwrap().is_empty());
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"hello":1}"#).is_err());
        assert_eq!(decode_key("a%2"), "a%2");
    }
}
