//! The describe endpoints, in both modes: filters, paging, ETag/304, and the API
//! document.

use crate::helpers::{Mode, spawn_app_in, unique};

in_both_modes!(
    describe_runners_pages_with_a_cursor_and_answers_304_until_something_changes,
    describe_commands_filters_by_runner_status_and_action_and_pages_newest_first,
    the_openapi_document_covers_every_route_and_health_endpoints_answer,
);

async fn describe_runners_pages_with_a_cursor_and_answers_304_until_something_changes(mode: Mode) {
    let mut app = spawn_app_in(mode).await;
    let mut ids: Vec<String> = (0..5).map(|i| unique(&format!("page{i}"))).collect();
    for id in &ids {
        let r = app.start_runner(id, "geonex/fire:1.5").await;
        assert_eq!(r.status, 202);
        app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    }
    for id in &ids {
        app.wait_runner(id, "running").await;
    }
    ids.sort();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/describe-runners?limit=2&cursor={c}"),
            None => "/describe-runners?limit=2".to_owned(),
        };
        let r = app.get(&q).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let page = r.body["runners"].as_array().unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|r| r["runner_id"].as_str().unwrap().to_owned()));
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    let first = app.get("/describe-runners?state=running").await;
    assert_eq!(first.body["runners"].as_array().unwrap().len(), 5);
    let etag = first.headers.get("etag").expect("etag").to_str().unwrap().to_owned();
    let again = app.send(app.http.get(format!("{}/describe-runners?state=running", app.address)).header("If-None-Match", &etag)).await;
    assert_eq!(again.status, 304);
    let other_query = app.send(app.http.get(format!("{}/describe-runners?state=stopped", app.address)).header("If-None-Match", &etag)).await;
    assert_eq!(other_query.status, 200, "the ETag covers the query");

    // A change to any runner makes the old ETag stale.
    let new = unique("new");
    let r = app.start_runner(&new, "geonex/fire:1.5").await;
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    app.wait_runner(&new, "running").await;
    let changed = app.send(app.http.get(format!("{}/describe-runners?state=running", app.address)).header("If-None-Match", &etag)).await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.body["runners"].as_array().unwrap().len(), 6);

    for bad in ["limit=0", "limit=100000", "limit=x", "cursor=garbage", "state=flying", "desired_state=maybe"] {
        let r = app.get(&format!("/describe-runners?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        let field = bad.split('=').next().unwrap();
        assert_eq!(r.body["error"]["field"], field, "{bad}");
    }
    app.stop_app().await;
}

async fn describe_commands_filters_by_runner_status_and_action_and_pages_newest_first(mode: Mode) {
    let mut app = spawn_app_in(mode).await;
    let runner = unique("cmds");
    let mut accepted = Vec::new();
    for _ in 0..3 {
        accepted.push(app.start_runner(&runner, "geonex/fire:1.5").await.body["command_id"].as_str().unwrap().to_owned());
    }
    let other = app.start_runner(&unique("other"), "geonex/fire:1.5").await.body["command_id"].as_str().unwrap().to_owned();
    for id in accepted.iter().chain([&other]) {
        app.wait_command(id, &["succeeded"]).await;
    }
    let r = app.get(&format!("/describe-commands?runner_id={runner}&limit=2")).await;
    let page: Vec<_> = r.body["commands"].as_array().unwrap().iter().map(|c| c["command_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(page, vec![accepted[2].clone(), accepted[1].clone()]);
    let next = r.body["next_cursor"].as_str().unwrap();
    let r = app.get(&format!("/describe-commands?runner_id={runner}&limit=2&cursor={next}")).await;
    assert_eq!(r.body["commands"][0]["command_id"], accepted[0].as_str());
    assert!(r.body["next_cursor"].is_null());

    let c = &r.body["commands"][0];
    for key in ["command_id", "action", "runner_id", "status", "attempts", "last_error", "requested_by", "created_at", "finished_at"] {
        assert!(c.get(key).is_some(), "missing {key}: {c}");
    }
    let r = app.get("/describe-commands?status=succeeded&action=start_runner").await;
    assert_eq!(r.body["commands"].as_array().unwrap().len(), 4);
    let r = app.get("/describe-commands?status=queued").await;
    assert_eq!(r.body["commands"].as_array().unwrap().len(), 0);
    let r = app.get("/describe-commands?action=stop_runner").await;
    assert_eq!(r.body["commands"].as_array().unwrap().len(), 0);
    for bad in ["status=lost", "action=fly", "cursor=abc"] {
        assert_eq!(app.get(&format!("/describe-commands?{bad}")).await.status, 400, "{bad}");
    }

    let one = app.get(&format!("/describe-command?command_id={}", accepted[0])).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["params"]["image_name"], "geonex/fire:1.5");
    assert!(one.body.get("result").is_some());
    assert_eq!(app.get("/describe-command?command_id=nope").await.status, 400);
    assert_eq!(app.get(&format!("/describe-command?command_id={}", uuid::Uuid::new_v4())).await.status, 404);
    assert_eq!(app.get("/describe-command").await.status, 400);
    app.stop_app().await;
}

async fn the_openapi_document_covers_every_route_and_health_endpoints_answer(mode: Mode) {
    let app = spawn_app_in(mode).await;
    let doc = app.get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    for spec in geonex_api::routes() {
        for method in spec.methods {
            let op = &doc.body["paths"][spec.path][method.to_ascii_lowercase()];
            assert!(op.is_object(), "{method} {} is missing from /openapi.json", spec.path);
        }
    }
    assert_eq!(app.get("/healthz").await.status, 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.body["database"], "ok");
    let any = app.get("/healthz").await;
    assert!(any.headers.get("x-request-id").is_some());
}
