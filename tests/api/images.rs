//! Images and e-mail against a real SMTP server: registration and review with
//! their notices, the approved-images rule for runners, `/send-email`, exactly
//! one message per command through duplicates, crashes, outages and refusals.

use std::time::Duration;

use geonex::startup::Role as AppRole;
use geonex_shared::queue::Queue;
use geonex_shared::queue::rabbitmq::{RabbitQueue, Topology};
use geonex_shared::store::users::NewUser;
use geonex_shared::domain::Role;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Mode, Reply, TestApp, TestConfig, amqp_url, eventually, spawn_app_with, unique};
use crate::smtp::{Mailbox, SmtpServer};

const PASSWORD: &str = "correct horse battery staple";

fn mail_env(smtp: &SmtpServer) -> Vec<(String, String)> {
    vec![
        ("GEONEX_SMTP_URL".into(), smtp.url()),
        ("GEONEX_EMAIL__FROM".into(), "GeoNEX <geonex@geonex.test>".into()),
        ("GEONEX_EMAIL__TIMEOUT_MS".into(), "3000".into()),
    ]
}

async fn spawn_with_mail(smtp: &SmtpServer) -> TestApp {
    spawn_app_with(TestConfig { extra_env: mail_env(smtp), ..TestConfig::default() }).await
}

/// An application in `mode` whose mail lands in `mailbox`, with `extra_env`.
async fn spawn_with_mailbox(mode: Mode, mailbox: &mut Mailbox, extra_env: Vec<(String, String)>) -> TestApp {
    let app = spawn_app_with(TestConfig { extra_env: [mailbox.env(), extra_env].concat(), ..TestConfig::in_mode(mode) }).await;
    mailbox.attach(&app.deployment);
    app
}

async fn post(app: &TestApp, path: &str, token: Option<&str>, body: Value) -> Reply {
    let mut req = app.http.post(format!("{}{}", app.address, path)).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    app.send(req).await
}

/// A user account with an e-mail address, logged in; returns its token.
async fn applicant(app: &TestApp, user_name: &str, email: &str) -> String {
    let r = app
        .send_anonymous(app.http.post(format!("{}/register-user", app.address)).json(&json!({
            "user_name": user_name, "password": PASSWORD, "display_name": "Ada Applicant", "email": email,
        })))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let s = app
        .send_anonymous(app.http.post(format!("{}/login", app.address)).form(&[("user_name", user_name), ("password", PASSWORD)]))
        .await;
    assert_eq!(s.status, 200, "{}", s.body);
    s.body["token"].as_str().unwrap().to_owned()
}

async fn admin_account(app: &TestApp, email: &str) {
    app.store
        .create_user(NewUser {
            user_id: Uuid::new_v4(),
            user_name: unique("admin"),
            display_name: "Desk Admin".into(),
            email: email.into(),
            role: Role::Admin,
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$unused".into(),
        })
        .await
        .unwrap();
}

async fn send_email(app: &TestApp, image: &str, user: &str, email: &str) -> String {
    let r = app.get(&format!("/send-email?image_name={image}&user_name={user}&email={email}")).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["action"], "send_email");
    assert_eq!(r.body["status"], "queued");
    r.body["command_id"].as_str().unwrap().to_owned()
}

fn assert_message(m: &Value, to: &str, image: &str, user: &str) {
    assert_eq!(m["rcpt_to"], to, "{m}");
    assert_eq!(m["to"], to, "{m}");
    assert_eq!(m["from"], "GeoNEX <geonex@geonex.test>");
    assert_eq!(m["content_type"], "multipart/alternative");
    assert_eq!(m["parts"], json!(["text/plain", "text/html"]));
    assert!(m["date"].as_str().is_some_and(|d| !d.is_empty()), "{m}");
    let subject = m["subject"].as_str().unwrap();
    assert!(subject.contains(image), "subject names the image: {subject}");
    for part in ["text", "html"] {
        let body = m[part].as_str().unwrap_or_default();
        assert!(body.contains(image) && body.contains(user), "{part} names {image} and {user}: {body}");
    }
    assert!(m["html"].as_str().unwrap().contains("<html>"));
}

in_both_modes!(
    send_email_delivers_exactly_one_multipart_message_and_the_command_shows_its_message_id,
    registration_notifies_the_admins_and_approval_notifies_the_applicant_and_lets_the_image_run,
    a_rejected_image_cannot_run_its_applicant_learns_why_and_may_resubmit,
    restart_runner_refuses_an_image_that_is_not_approved,
    describe_images_filters_pages_and_answers_304_while_nothing_changed,
    bad_addresses_image_names_and_overlong_fields_are_a_400_naming_the_field,
);

async fn send_email_delivers_exactly_one_multipart_message_and_the_command_shows_its_message_id(mode: Mode) {
    let mut smtp = Mailbox::start(mode).await;
    let app = spawn_with_mailbox(mode, &mut smtp, Vec::new()).await;
    let id = send_email(&app, "geonex/active_fire_go16abi15:1.5", "user1", "email@gmail.com").await;
    let done = app.wait_command(&id, &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let messages = smtp.wait_for(1).await;
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_message(m, "email@gmail.com", "geonex/active_fire_go16abi15:1.5", "user1");
    assert!(m["subject"].as_str().unwrap().contains("user1"));
    assert_eq!(m["message_id"], format!("<{id}@geonex.test>"));
    assert_eq!(done["result"]["message_id"], format!("<{id}@geonex.test>"));
    let reply = done["result"]["smtp_reply"].as_str().unwrap();
    match mode {
        Mode::Production => assert!(reply.starts_with("250"), "{done}"),
        Mode::Embedded => assert!(reply.starts_with("written to"), "{done}"),
    }

    // The dashboard's view: e-mail commands with their delivery state.
    let listed = app.get("/describe-commands?action=send_email").await;
    let c = &listed.body["commands"][0];
    assert_eq!((c["command_id"].as_str(), c["status"].as_str()), (Some(id.as_str()), Some("succeeded")));
    assert_eq!(c["result"]["message_id"], format!("<{id}@geonex.test>"));

    // POST with a JSON body works too, and an Idempotency-Key makes one command.
    let url = format!("{}/send-email", app.address);
    let body = json!({"image_name": "geonex/fire:1.5", "user_name": "user2", "email": "user2@example.org"});
    let a = app.send(app.http.post(&url).json(&body).header("Idempotency-Key", "mail-1")).await;
    let b = app.send(app.http.post(&url).json(&body).header("Idempotency-Key", "mail-1")).await;
    assert_eq!((a.status, b.status), (202, 202), "{} {}", a.body, b.body);
    assert_eq!(a.body["command_id"], b.body["command_id"]);
    app.wait_command(a.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    let messages = smtp.wait_for(2).await;
    assert_eq!(messages.len(), 2);
    assert!(messages.iter().any(|m| m["rcpt_to"] == "user2@example.org"));
}

fn topology(app: &TestApp) -> Topology {
    let s = app.deployment.settings();
    Topology { prefix: s.queue.prefix.clone(), queue_expires_ms: s.queue.queue_expires_ms }
}

#[tokio::test]
async fn the_same_command_delivered_twice_sends_one_message() {
    let smtp = SmtpServer::start().await;
    let mut app = spawn_app_with(TestConfig { role: AppRole::Api, extra_env: mail_env(&smtp), ..TestConfig::default() }).await;
    let id = send_email(&app, "geonex/fire:1.5", "user1", "twice@example.org").await;
    let command = app.store.get_command(id.parse().unwrap()).await.unwrap().unwrap();
    // A second copy of the message, as a broker redelivery or a relay race makes.
    let broker = RabbitQueue::new(&amqp_url(), topology(&app), Duration::from_secs(5));
    broker.publish(&command.message(), None).await.unwrap();

    let worker = app.deployment.spawn(AppRole::Worker).await;
    let done = app.wait_command(&id, &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let queue = topology(&app).work_queue(geonex_shared::domain::WorkQueue::Email);
    eventually("both copies consumed", Duration::from_secs(20), || async {
        crate::durability::ready_messages(&queue).await == 0
    })
    .await;
    // A graceful stop waits for in-flight deliveries: every copy has been handled.
    worker.stop().await;
    assert_eq!(smtp.messages().len(), 1);
    app.stop_app().await;
}

#[tokio::test]
async fn a_worker_killed_after_the_server_accepted_the_message_does_not_send_it_again() {
    let smtp = SmtpServer::start().await;
    let mut env = mail_env(&smtp);
    env.push(("GEONEX_WORKER__LEASE_SECS".into(), "2".into()));
    let mut app = spawn_app_with(TestConfig { role: AppRole::Api, extra_env: env, ..TestConfig::default() }).await;
    let id = send_email(&app, "geonex/fire:1.5", "user1", "crash@example.org").await;

    // This worker dies right after recording that the server took the message,
    // before the command is completed: the command is rescued and runs again.
    let mut crashing = app.deployment.command(&["worker"]).env("GEONEX_FAILPOINTS", "after-email-recorded").spawn().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), crashing.wait()).await.expect("worker exits").unwrap();
    assert_eq!(status.code(), Some(86), "the failpoint was reached");
    assert_eq!(smtp.wait_for(1).await.len(), 1);

    let worker = app.deployment.spawn(AppRole::Worker).await;
    let done = app.wait_command(&id, &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "the rescued command ran a second time: {done}");
    assert_eq!(done["result"]["sends"], 1, "{done}");
    worker.stop().await;
    assert_eq!(smtp.messages().len(), 1, "no second message");
    app.stop_app().await;
}

#[tokio::test]
async fn an_smtp_server_that_is_down_is_retried_and_the_message_is_delivered_once_it_is_back() {
    let mut smtp = SmtpServer::not_started();
    let app = spawn_with_mail(&smtp).await;
    let id = send_email(&app, "geonex/fire:1.5", "user1", "later@example.org").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let last = loop {
        let c = app.command(&id).await;
        if c["attempts"].as_i64().unwrap_or(0) >= 1 && c["status"] == "retrying" {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "the command never waited for a retry: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(last["last_error"].as_str().unwrap().contains("SMTP send failed"), "{last}");

    smtp.run().await;
    let done = app.wait_command(&id, &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["attempts"].as_i64().unwrap() >= 2, "{done}");
    let messages = smtp.wait_for(1).await;
    assert_eq!(messages.len(), 1);
    assert_message(&messages[0], "later@example.org", "geonex/fire:1.5", "user1");
}

#[tokio::test]
async fn a_recipient_refused_with_550_makes_the_command_dead_with_the_reply_and_a_replay_sends_it() {
    let smtp = SmtpServer::start().await;
    smtp.reject("nobody@example.org");
    let app = spawn_with_mail(&smtp).await;
    let id = send_email(&app, "geonex/fire:1.5", "user1", "nobody@example.org").await;
    let dead = app.wait_command(&id, &["succeeded", "dead"]).await;
    assert_eq!(dead["status"], "dead", "{dead}");
    assert_eq!(dead["attempts"], 1, "a 5xx is not retried: {dead}");
    let error = dead["last_error"].as_str().unwrap();
    assert!(error.contains("550") && error.contains("Recipient address rejected"), "{error}");
    let listed = app.get("/describe-commands?action=send_email&status=dead").await;
    assert_eq!(listed.body["commands"][0]["command_id"], id.as_str());
    assert!(smtp.messages().is_empty());

    // The mailbox is created; the administrator replays the dead command.
    smtp.accept_all();
    let r = app.send(app.http.post(format!("{}/replay-command", app.address)).form(&[("command_id", id.as_str())])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = app.wait_command(&id, &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let messages = smtp.wait_for(1).await;
    assert_eq!(messages.len(), 1);
    assert_message(&messages[0], "nobody@example.org", "geonex/fire:1.5", "user1");
}

async fn registration_notifies_the_admins_and_approval_notifies_the_applicant_and_lets_the_image_run(mode: Mode) {
    let mut smtp = Mailbox::start(mode).await;
    let app = spawn_with_mailbox(mode, &mut smtp, Vec::new()).await;
    admin_account(&app, "desk@example.org").await;
    let user = unique("ada");
    let email = format!("{user}@example.org");
    let token = applicant(&app, &user, &email).await;
    let image = format!("geonex/{}:1.0", unique("algo").to_lowercase());

    // Unknown image: no runner.
    let runner_id = unique("img");
    let start = format!(
        "/start-runner?instance_type=m5d.large&image_name={image}&s3_output=s3://geonex/out&runner_id={runner_id}&runner_name=P"
    );
    let r = app.get(&start).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!((r.body["error"]["code"].as_str(), r.body["error"]["field"].as_str()), (Some("image_not_approved"), Some("image_name")));

    let r = post(&app, "/register-image", Some(&token), json!({
        "image_name": image, "description": "Active fire detection\nfor GOES-16 ABI", "organization": "NASA Ames",
    }))
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["status"], "pending");
    assert_eq!(r.body["owner"], user.as_str());
    assert_eq!(r.body["tag"], "1.0");
    assert_eq!(r.body["runners"], 0);

    // The administrators hear about it.
    let notice = smtp.wait_for(1).await;
    assert_message(&notice[0], "desk@example.org", &image, &user);
    assert!(notice[0]["text"].as_str().unwrap().contains("NASA Ames"));

    // The same name again is a conflict; pending images cannot run.
    let again = post(&app, "/register-image", Some(&token), json!({"image_name": image, "description": "x", "organization": "y"})).await;
    assert_eq!((again.status, again.body["error"]["code"].as_str()), (409, Some("image_exists")));
    let r = app.get(&start).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("approval"));

    // Only an administrator decides.
    let r = post(&app, "/approve-image", Some(&token), json!({"image_name": image})).await;
    assert_eq!(r.status, 403);
    let r = post(&app, "/approve-image", None, json!({"image_name": image, "reason": "Looks good"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "approved");
    assert_eq!(r.body["decided_by"], "service:test-admin");
    assert!(r.body["decided_at"].is_string());
    let r = post(&app, "/reject-image", None, json!({"image_name": image})).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("image_already_decided")));

    // The applicant hears about it.
    let messages = smtp.wait_for(2).await;
    let approved = messages.iter().find(|m| m["rcpt_to"] == email.as_str()).expect("applicant notified");
    assert_message(approved, &email, &image, &user);
    assert!(approved["subject"].as_str().unwrap().contains("approved"));
    assert!(approved["text"].as_str().unwrap().contains("Looks good"));

    // Now it runs, and the registry counts its runner.
    let r = app.get(&start).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let listed = app.get(&format!("/describe-images?owner={user}")).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let images = listed.body["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["runners"], 1);
    assert_eq!(images[0]["status"], "approved");
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
}

async fn a_rejected_image_cannot_run_its_applicant_learns_why_and_may_resubmit(mode: Mode) {
    let mut smtp = Mailbox::start(mode).await;
    let recipients = vec![("GEONEX_EMAIL__ADMIN_RECIPIENTS".into(), "[desk@example.org, ops@example.org]".into())];
    let app = spawn_with_mailbox(mode, &mut smtp, recipients).await;
    let user = unique("bob");
    let email = format!("{user}@example.org");
    let token = applicant(&app, &user, &email).await;
    let image = "geonex/pending_algo:0.1";
    let r = post(&app, "/register-image", Some(&token), json!({"image_name": image, "description": "d", "organization": "o"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let notices = smtp.wait_for(2).await;
    let mut to: Vec<&str> = notices.iter().map(|m| m["rcpt_to"].as_str().unwrap()).collect();
    to.sort();
    assert_eq!(to, ["desk@example.org", "ops@example.org"], "the configured recipients, one message each");

    let r = post(&app, "/reject-image", None, json!({"image_name": image, "reason": "No source code link"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((r.body["status"].as_str(), r.body["reason"].as_str()), (Some("rejected"), Some("No source code link")));
    let messages = smtp.wait_for(3).await;
    let m = messages.iter().find(|m| m["rcpt_to"] == email.as_str()).expect("applicant notified");
    assert_message(m, &email, image, &user);
    assert!(m["text"].as_str().unwrap().contains("No source code link"));
    assert!(m["html"].as_str().unwrap().contains("No source code link"));

    let restart_like = format!(
        "/start-runner?instance_type=m5d.large&image_name={image}&s3_output=s3://geonex/out&runner_id={}&runner_name=P",
        unique("rej")
    );
    let r = app.get(&restart_like).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("image_not_approved")));
    assert!(r.body["error"]["message"].as_str().unwrap().contains("rejected"));

    // Someone else cannot take the name over; the applicant can resubmit.
    let other = applicant(&app, &unique("eve"), &format!("{}@example.org", unique("eve"))).await;
    let r = post(&app, "/register-image", Some(&other), json!({"image_name": image, "description": "d", "organization": "o"})).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = post(&app, "/register-image", Some(&token), json!({"image_name": image, "description": "now with a link", "organization": "o"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!((r.body["status"].as_str(), r.body["reason"].as_str()), (Some("pending"), None));
}

async fn restart_runner_refuses_an_image_that_is_not_approved(mode: Mode) {
    let mut smtp = Mailbox::start(mode).await;
    let app = spawn_with_mailbox(mode, &mut smtp, Vec::new()).await;
    let runner_id = unique("rst");
    let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    let c = app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    let instance_id = app.runner(&runner_id).await["instance_id"].as_str().unwrap().to_owned();
    assert_eq!(c["status"], "succeeded");
    let r = app
        .get(&format!(
            "/restart-runner?instance_id={instance_id}&image_name=geonex/unknown:2&s3_output=s3://geonex/out&runner_id={runner_id}&runner_name=P"
        ))
        .await;
    assert_eq!((r.status, r.body["error"]["code"].as_str(), r.body["error"]["field"].as_str()), (422, Some("image_not_approved"), Some("image_name")));
}

async fn describe_images_filters_pages_and_answers_304_while_nothing_changed(mode: Mode) {
    let mut smtp = Mailbox::start(mode).await;
    let app = spawn_with_mailbox(mode, &mut smtp, Vec::new()).await;
    let token = applicant(&app, &unique("cy"), &format!("{}@example.org", unique("cy"))).await;
    for n in ["a", "b", "c"] {
        let r = post(&app, "/register-image", Some(&token), json!({"image_name": format!("zz/{n}:1"), "description": "d", "organization": "o"})).await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let pending = app.get("/describe-images?status=pending&limit=2").await;
    assert_eq!(pending.status, 200, "{}", pending.body);
    let names: Vec<&str> = pending.body["images"].as_array().unwrap().iter().map(|i| i["image_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["zz/a:1", "zz/b:1"]);
    for key in ["image_name", "owner", "status", "description", "created_at", "repository", "tag", "runners", "updated_at"] {
        assert!(pending.body["images"][0].get(key).is_some(), "{key} missing");
    }
    let cursor = pending.body["next_cursor"].as_str().unwrap();
    let next = app.get(&format!("/describe-images?status=pending&limit=2&cursor={cursor}")).await;
    assert_eq!(next.body["images"][0]["image_name"], "zz/c:1");
    assert!(next.body["next_cursor"].is_null());
    let approved = app.get("/describe-images?status=approved").await;
    assert!(approved.body["images"].as_array().unwrap().iter().all(|i| i["status"] == "approved"));

    // A user may list images too; an unchanged list is a 304.
    let first = app.send(app.http.get(format!("{}/describe-images", app.address)).bearer_auth(&token)).await;
    assert_eq!(first.status, 200);
    let etag = first.headers.get("etag").unwrap().to_str().unwrap().to_owned();
    let same = app.send(app.http.get(format!("{}/describe-images", app.address)).bearer_auth(&token).header("If-None-Match", &etag)).await;
    assert_eq!(same.status, 304);
    post(&app, "/approve-image", None, json!({"image_name": "zz/a:1"})).await;
    let changed = app.send(app.http.get(format!("{}/describe-images", app.address)).bearer_auth(&token).header("If-None-Match", &etag)).await;
    assert_eq!(changed.status, 200);

    let bad = app.get("/describe-images?status=sideways").await;
    assert_eq!((bad.status, bad.body["error"]["field"].as_str()), (400, Some("status")));
}

async fn bad_addresses_image_names_and_overlong_fields_are_a_400_naming_the_field(mode: Mode) {
    let mut smtp = Mailbox::start(mode).await;
    let app = spawn_with_mailbox(mode, &mut smtp, Vec::new()).await;
    let long = |n: usize| "x".repeat(n);
    let send_cases: Vec<(&str, String, String, String)> = vec![
        ("email", "geonex/fire:1.5".into(), "user1".into(), "not-an-address".into()),
        ("email", "geonex/fire:1.5".into(), "user1".into(), "a@b@c".into()),
        ("email", "geonex/fire:1.5".into(), "user1".into(), format!("{}@example.org", long(300))),
        ("email", "geonex/fire:1.5".into(), "user1".into(), String::new()),
        ("image_name", "Not A Reference".into(), "user1".into(), "a@example.org".into()),
        ("image_name", "geonex/UPPER:1".into(), "user1".into(), "a@example.org".into()),
        ("image_name", format!("geonex/{}", long(300)), "user1".into(), "a@example.org".into()),
        ("user_name", "geonex/fire:1.5".into(), "bad name".into(), "a@example.org".into()),
        ("user_name", "geonex/fire:1.5".into(), long(100), "a@example.org".into()),
    ];
    for (field, image, user, email) in &send_cases {
        let q = serde_urlencoded::to_string([("image_name", image), ("user_name", user), ("email", email)]).unwrap();
        let r = app.get(&format!("/send-email?{q}")).await;
        assert_eq!(r.status, 400, "{field} {image} {user} {email}: {}", r.body);
        assert_eq!(r.body["error"]["field"], *field, "{}", r.body);
    }
    let r = app.get("/send-email?image_name=geonex/fire:1.5&user_name=user1").await;
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (400, Some("email")));

    let ok = json!({"image_name": "geonex/new:1", "description": "d", "organization": "o"});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let register_cases = [
        ("image_name", with("image_name", json!("no spaces allowed"))),
        ("image_name", with("image_name", json!(long(300)))),
        ("description", with("description", json!(long(2001)))),
        ("description", with("description", json!("   "))),
        ("organization", with("organization", json!(long(201)))),
        ("organization", with("organization", json!("line\nbreak"))),
        ("organization", json!({"image_name": "geonex/new:1", "description": "d"})),
    ];
    for (field, body) in register_cases {
        let r = post(&app, "/register-image", None, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.body["error"]["field"], field, "{}", r.body);
    }
    let r = post(&app, "/approve-image", None, json!({"image_name": "geonex/new:1", "reason": long(1001)})).await;
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (400, Some("reason")));
    let r = post(&app, "/approve-image", None, json!({"image_name": "geonex/never-registered:1"})).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (404, Some("image_not_found")));
    // send-email is for operators; plain users may not send mail.
    let token = applicant(&app, &unique("dan"), &format!("{}@example.org", unique("dan"))).await;
    let r = app.send(app.http.get(format!("{}/send-email?image_name=geonex/fire:1.5&user_name=u1&email=a@example.org", app.address)).bearer_auth(&token)).await;
    assert_eq!(r.status, 403);
}
