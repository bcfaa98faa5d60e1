//! Every documented parameter, missing or malformed, gets a 4xx in the project's
//! error JSON naming the field; no input produces a 5xx.

use crate::helpers::{spawn_app, unique};

const START: &[(&str, &str)] = &[
    ("instance_type", "m5d.4xlarge"),
    ("image_name", "geonex/active_fire_go16abi15:1.5"),
    ("s3_output", "s3://geonex/GO16_ABI15"),
    ("runner_id", "8dcdfcd4-c21a-c8ba-5152-9475dea5f1bd"),
    ("runner_name", "Production"),
];
const RESTART: &[(&str, &str)] = &[
    ("instance_id", "i-01730beccb93d7c5c"),
    ("image_name", "geonex/active_fire_go16abi15:1.5"),
    ("s3_output", "s3://geonex/GO16_ABI15"),
    ("runner_id", "8dcdfcd4-c21a-c8ba-5152-9475dea5f1bd"),
    ("runner_name", "Production"),
];
const STOP: &[(&str, &str)] = &[
    ("instance_id", "i-01730beccb93d7c5c"),
    ("runner_id", "8dcdfcd4-c21a-c8ba-5152-9475dea5f1bd"),
    ("runner_name", "Production"),
];

fn malformed(field: &str) -> &'static [&'static str] {
    match field {
        "instance_type" => &["huge", "m5d", "M5D.LARGE", "m5d.large;reboot", "p4d.24xlarge"],
        "image_name" => &["UPPER/case", "a b", "x::1", "-lead", "img@sha256:short", "$(id)"],
        "s3_output" => &["geonex/x", "s3://", "s3://ab/x", "s3://UPPER/x", "s3://bad_bucket/x", "http://geonex/x", "s3://geonex//x"],
        "runner_id" => &["has space", "a/b", "ünïcode", "x;y"],
        "runner_name" => &[" padded", "semi;colon", "quote'd"],
        "instance_id" => &["i-xyz", "01730beccb93d7c5c", "i-01730BECCB93D7C5C", "i-1"],
        _ => &[],
    }
}

fn query(params: &[(&str, String)]) -> String {
    serde_urlencoded::to_string(params).unwrap()
}

#[tokio::test]
async fn every_documented_parameter_missing_or_malformed_is_a_400_naming_it() {
    let app = spawn_app().await;
    let long = "x".repeat(300);
    for (path, params) in [("/start-runner", START), ("/restart-runner", RESTART), ("/stop-runner", STOP), ("/delete-runner", STOP)] {
        for (i, (field, _)) in params.iter().enumerate() {
            let optional = *field == "runner_name" && matches!(path, "/stop-runner" | "/delete-runner");
            let mut cases: Vec<(String, Option<String>)> = vec![("missing".into(), None), ("empty".into(), Some(String::new()))];
            cases.extend(malformed(field).iter().map(|v| (format!("malformed {v:?}"), Some((*v).to_owned()))));
            cases.push(("overlong".into(), Some(long.clone())));
            for (case, value) in cases {
                if optional && value.as_deref().is_none_or(str::is_empty) {
                    continue;
                }
                let mut q: Vec<(&str, String)> = params.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
                match &value {
                    None => {
                        q.remove(i);
                    }
                    Some(v) => q[i].1 = v.clone(),
                }
                let r = app.get(&format!("{path}?{}", query(&q))).await;
                assert_eq!(r.status, 400, "{path} {field} {case}: {}", r.body);
                assert_eq!(r.body["error"]["field"], *field, "{path} {field} {case}: {}", r.body);
                assert!(r.body["error"]["code"].as_str().unwrap().ends_with("_parameter"));
                assert!(!r.body["error"]["message"].as_str().unwrap().is_empty());
            }
        }
    }
}

#[tokio::test]
async fn the_documented_examples_are_accepted_as_written() {
    let app = spawn_app().await;
    let r = app
        .get("/start-runner?instance_type=m5d.4xlarge&image_name=geonex/active_fire_go16abi15:1.5&s3_output=s3://geonex/GO16_ABI15&runner_id=8dcdfcd4-c21a-c8ba-5152-9475dea5f1bd&runner_name=Production")
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let done = app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let id = app.runner("8dcdfcd4-c21a-c8ba-5152-9475dea5f1bd").await["instance_id"].as_str().unwrap().to_owned();
    for path in [
        format!("/stop-runner?instance_id={id}&runner_id=8dcdfcd4-c21a-c8ba-5152-9475dea5f1bd&runner_name=Production"),
        format!("/restart-runner?instance_id={id}&image_name=geonex/active_fire_go16abi15:1.5&s3_output=s3://geonex/GO16_ABI15&runner_id=8dcdfcd4-c21a-c8ba-5152-9475dea5f1bd&runner_name=Production"),
        format!("/delete-runner?instance_id={id}&runner_id=8dcdfcd4-c21a-c8ba-5152-9475dea5f1bd"),
    ] {
        let r = app.get(&path).await;
        assert_eq!(r.status, 202, "{path}: {}", r.body);
        let done = app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded", "dead"]).await;
        assert_eq!(done["status"], "succeeded", "{path}: {done}");
    }
}

#[tokio::test]
async fn post_accepts_json_and_form_bodies_and_refuses_other_content_types() {
    let app = spawn_app().await;
    let url = format!("{}/start-runner", app.address);
    let body = |id: &str| {
        serde_json::json!({"instance_type": "m5d.large", "image_name": "geonex/fire:1", "s3_output": "s3://geonex/o",
            "runner_id": id, "runner_name": "P"})
    };
    let r = app.send(app.http.post(&url).json(&body(&unique("json")))).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let form_id = unique("form");
    let r = app
        .send(app.http.post(&url).form(&[
            ("instance_type", "m5d.large"), ("image_name", "geonex/fire:1"), ("s3_output", "s3://geonex/o"),
            ("runner_id", form_id.as_str()), ("runner_name", "P"),
        ]))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);

    let r = app.send(app.http.post(&url).header("content-type", "text/plain").body("instance_type=m5d.large")).await;
    assert_eq!(r.status, 415);
    assert_eq!(r.body["error"]["code"], "unsupported_media_type");
    let r = app.send(app.http.post(&url).header("content-type", "application/json").body("{not json")).await;
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (400, Some("body")));
    let r = app.send(app.http.post(&url).header("content-type", "application/json").body("[1,2]")).await;
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (400, Some("body")));
    let mut nested = body(&unique("nested"));
    nested["image_name"] = serde_json::json!({"a": 1});
    let r = app.send(app.http.post(&url).json(&nested)).await;
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (400, Some("image_name")));
    let r = app.send(app.http.post(&url).header("content-type", "application/json").body(vec![b'x'; 200_000])).await;
    assert_eq!(r.status, 413);
    let r = app.get("/start-runner?runner_id=a&runner_id=b").await;
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (400, Some("runner_id")));
    let r = app.get("/start-runner?%ZZ=1").await;
    assert!(r.status < 500, "{}", r.body);
}

#[tokio::test]
async fn unknown_runners_foreign_instances_and_unknown_routes_get_their_own_errors() {
    let app = spawn_app().await;
    let r = app.get("/stop-runner?instance_id=i-01730beccb93d7c5c&runner_id=nobody").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"]["field"], "runner_id");

    let runner_id = unique("foreign");
    let s = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    app.wait_command(s.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    let r = app.get(&format!("/stop-runner?instance_id=i-0aaaaaaaaaaaaaaaa&runner_id={runner_id}")).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["error"]["code"], "instance_mismatch");
    assert_eq!(r.body["error"]["field"], "instance_id");

    let r = app.get("/no-such-thing").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"]["code"], "no_such_endpoint");
    let r = app.send(app.http.delete(format!("{}/start-runner", app.address))).await;
    assert_eq!(r.status, 405);
    let r = app.get("/replay-command?all=true").await;
    assert_eq!(r.status, 405, "replay changes state: POST only");
    let r = app.send(app.http.post(format!("{}/replay-command", app.address)).form(&[("all", "maybe")])).await;
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (400, Some("all")));
    let r = app.send(app.http.post(format!("{}/replay-command", app.address)).form(&[("action", "fly")])).await;
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (400, Some("action")));
    let r = app.send(app.http.post(format!("{}/replay-command", app.address))).await;
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (400, Some("command_id")));
    let r = app.send(app.http.get(format!("{}/start-runner?instance_type=m5d.large", app.address)).header("Idempotency-Key", "")).await;
    assert_eq!(r.status, 400);
}
