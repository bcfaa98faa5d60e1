//! Users, tokens and roles: registration, login, logout, throttling, and the
//! access rule of every route.

use std::time::Duration;

use geonex_api::auth::Access;
use geonex_shared::domain::Role;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::helpers::{Reply, TestApp, TestConfig, eventually, service_token, spawn_app, spawn_app_with, unique};

const PASSWORD: &str = "correct horse battery staple";

async fn register(app: &TestApp, user_name: &str, email: &str) -> Reply {
    app.send_anonymous(app.http.post(format!("{}/register-user", app.address)).json(&serde_json::json!({
        "user_name": user_name, "password": PASSWORD, "display_name": "Test User", "email": email,
    })))
    .await
}

async fn login(app: &TestApp, user_name: &str, password: &str) -> Reply {
    app.send_anonymous(
        app.http.post(format!("{}/login", app.address)).form(&[("user_name", user_name), ("password", password)]),
    )
    .await
}

async fn call(app: &TestApp, method: &str, path: &str, token: Option<&str>) -> Reply {
    let url = format!("{}{}", app.address, path);
    let mut req = match method {
        "GET" => app.http.get(url),
        _ => app.http.post(url),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    app.send_anonymous(req).await
}

#[tokio::test]
async fn register_then_login_gives_a_token_that_works_and_the_password_is_stored_as_argon2id() {
    let app = spawn_app().await;
    let name = unique("alice");
    let r = register(&app, &name, &format!("{name}@example.org")).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["user_name"], name.as_str());
    assert_eq!(r.body["role"], "user");
    assert!(r.body["user_id"].is_string() && r.body["created_at"].is_string());
    let text = r.body.to_string();
    assert!(!text.contains(PASSWORD) && !text.contains("argon2") && !text.contains("password"), "{text}");

    let stored: String = sqlx::query_scalar("select password_hash from app_user where user_name = $1")
        .bind(&name)
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{stored}");

    let s = login(&app, &name.to_uppercase(), PASSWORD).await;
    assert_eq!(s.status, 200, "{}", s.body);
    let token = s.body["token"].as_str().unwrap().to_owned();
    assert!(s.body["expires_at"].is_string());
    assert!(!s.body.to_string().contains(PASSWORD));
    let r = call(&app, "GET", "/describe-runners", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The original document's `Display_name` spelling, as a form body.
    let other = unique("bob");
    let r = app
        .send_anonymous(app.http.post(format!("{}/register-user", app.address)).form(&[
            ("user_name", other.as_str()),
            ("password", PASSWORD),
            ("Display_name", "Bob B."),
            ("email", &format!("{other}@example.org")),
        ]))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["display_name"], "Bob B.");

    // Logout revokes the token.
    let r = call(&app, "POST", "/logout", Some(&token)).await;
    assert_eq!(r.status, 200);
    let r = call(&app, "GET", "/describe-runners", Some(&token)).await;
    assert_eq!(r.status, 401);

    // Wrong password.
    assert_eq!(login(&app, &name, "correct horse battery stapler").await.status, 401);
    assert_eq!(login(&app, "nobody-at-all", PASSWORD).await.status, 401);
}

#[tokio::test]
async fn every_route_refuses_missing_garbage_expired_revoked_and_too_weak_tokens() {
    let app = spawn_app().await;
    let user = service_token(&app.store, "t-user", Role::User, None).await;
    let operator = service_token(&app.store, "t-operator", Role::Operator, None).await;
    let expired =
        service_token(&app.store, "t-expired", Role::Admin, Some(chrono::Utc::now() - chrono::Duration::minutes(1))).await;
    let revoked = {
        let name = unique("revoked");
        register(&app, &name, &format!("{name}@example.org")).await;
        let t = login(&app, &name, PASSWORD).await.body["token"].as_str().unwrap().to_owned();
        assert_eq!(call(&app, "POST", "/logout", Some(&t)).await.status, 200);
        t
    };
    let agent = geonex_shared::auth::mint_token(geonex_shared::auth::TokenKind::Agent);
    let agent = secrecy::ExposeSecret::expose_secret(&agent.text).to_owned();
    let garbage = "gnx_00000000000000000000000000000000_notasecret";

    for spec in geonex_api::routes() {
        for method in spec.methods {
            let path = spec.path;
            let min = match spec.access {
                Access::Public => None,
                Access::Registration => None,
                Access::Role(r) => Some(r),
                // Agent routes have their own checks, in tests/api/agent.rs.
                Access::Agent => {
                    let anonymous = call(&app, method, path, None).await;
                    assert_eq!(anonymous.status, 401, "{method} {path} without a token");
                    let r = call(&app, method, path, Some(&app.token)).await;
                    assert_eq!(r.status, 403, "{method} {path} with a user token");
                    continue;
                }
            };
            let anonymous = call(&app, method, path, None).await;
            match min {
                Some(_) => {
                    assert_eq!(anonymous.status, 401, "{method} {path} without a token: {}", anonymous.body);
                    assert_eq!(anonymous.body["error"]["code"], "unauthorized");
                    assert!(anonymous.headers.contains_key("www-authenticate"));
                }
                None => assert!(![401, 403].contains(&anonymous.status), "{method} {path} is public"),
            }
            if spec.access == Access::Public {
                continue;
            }
            for (what, token) in [("garbage", garbage), ("expired", expired.as_str()), ("revoked", revoked.as_str()), ("not a token", "hello")] {
                let r = call(&app, method, path, Some(token)).await;
                assert_eq!(r.status, 401, "{method} {path} with a {what} token: {}", r.body);
            }
            let r = call(&app, method, path, Some(&agent)).await;
            assert_eq!(r.status, 403, "{method} {path} with an agent token");
            for (role, token) in [(Role::User, &user), (Role::Operator, &operator), (Role::Admin, &app.token)] {
                // Logging out revokes the token used: give it a throwaway one.
                let throwaway;
                let token = if path == "/logout" {
                    throwaway = service_token(&app.store, "t-logout", role, None).await;
                    &throwaway
                } else {
                    token
                };
                let r = call(&app, method, path, Some(token)).await;
                match min {
                    Some(m) if role < m => {
                        assert_eq!(r.status, 403, "{method} {path} as {role}: {}", r.body);
                        assert_eq!(r.body["error"]["code"], "forbidden");
                    }
                    _ => assert!(![401, 403].contains(&r.status), "{method} {path} as {role}: {} {}", r.status, r.body),
                }
            }
        }
    }
}

#[tokio::test]
async fn registration_refuses_taken_names_bad_fields_and_weak_passwords_naming_the_field() {
    let app = spawn_app().await;
    let name = unique("carol");
    let email = format!("{name}@example.org");
    assert_eq!(register(&app, &name, &email).await.status, 201);
    let r = register(&app, &name.to_uppercase(), &format!("x{email}")).await;
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (409, Some("user_name")), "{}", r.body);
    let r = register(&app, &unique("dave"), &email.to_uppercase()).await;
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (409, Some("email")), "{}", r.body);

    let base = serde_json::json!({
        "user_name": unique("erin"), "password": PASSWORD, "display_name": "Erin", "email": "erin@example.org",
    });
    let long = "x".repeat(300);
    for (field, value) in [
        ("email", "not-an-address"),
        ("email", "a@"),
        ("email", long.as_str()),
        ("password", "short"),
        ("password", "Password1234"),
        ("password", &"p".repeat(200)),
        ("user_name", "x"),
        ("user_name", "bad name"),
        ("user_name", long.as_str()),
        ("display_name", long.as_str()),
        ("display_name", ""),
        ("role", "emperor"),
    ] {
        let mut body = base.clone();
        body[field] = serde_json::json!(value);
        let r = app.send_anonymous(app.http.post(format!("{}/register-user", app.address)).json(&body)).await;
        assert_eq!(r.status, 400, "{field}={value:.20}: {}", r.body);
        assert_eq!(r.body["error"]["field"], field, "{field}={value:.20}");
        assert!(!r.body.to_string().contains(PASSWORD));
    }
    let r = app
        .send_anonymous(
            app.http.post(format!("{}/register-user", app.address)).header("content-type", "text/plain").body("user_name=x"),
        )
        .await;
    assert_eq!(r.status, 415);
    let r = app
        .send_anonymous(app.http.post(format!("{}/register-user?password={PASSWORD}", app.address)).json(&base))
        .await;
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (400, Some("password")), "a password in the URL is refused");
    // Only an administrator picks a role.
    let mut body = base.clone();
    body["role"] = serde_json::json!("admin");
    let r = app.send_anonymous(app.http.post(format!("{}/register-user", app.address)).json(&body)).await;
    assert_eq!(r.status, 403);
    let r = app.send(app.http.post(format!("{}/register-user", app.address)).json(&body)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["role"], "admin");
}

#[tokio::test]
async fn closed_registration_is_for_administrators_only() {
    let app = spawn_app_with(TestConfig {
        extra_env: vec![("GEONEX_AUTH__OPEN_REGISTRATION".into(), "false".into())],
        ..TestConfig::default()
    })
    .await;
    let name = unique("closed");
    assert_eq!(register(&app, &name, &format!("{name}@example.org")).await.status, 401);
    let r = app
        .send(app.http.post(format!("{}/register-user", app.address)).json(&serde_json::json!({
            "user_name": name, "password": PASSWORD, "display_name": "C", "email": format!("{name}@example.org"),
        })))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test]
async fn repeated_failed_logins_are_throttled_and_the_throttle_recovers() {
    let app = spawn_app_with(TestConfig {
        extra_env: vec![
            ("GEONEX_AUTH__MAX_FAILED_LOGINS".into(), "3".into()),
            ("GEONEX_AUTH__FAILED_LOGIN_WINDOW_SECS".into(), "2".into()),
        ],
        ..TestConfig::default()
    })
    .await;
    let name = unique("frank");
    register(&app, &name, &format!("{name}@example.org")).await;
    for _ in 0..3 {
        assert_eq!(login(&app, &name, "wrong password here").await.status, 401);
    }
    let r = login(&app, &name, PASSWORD).await;
    assert_eq!(r.status, 429, "even the right password waits: {}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(r.body["error"]["code"], "too_many_requests");
    eventually("the throttle recovers", Duration::from_secs(10), || async { login(&app, &name, PASSWORD).await.status == 200 })
        .await;
}

#[tokio::test]
async fn users_see_runners_but_cannot_act_and_only_admins_list_users_without_secrets() {
    let app = spawn_app().await;
    let name = unique("gina");
    register(&app, &name, &format!("{name}@example.org")).await;
    let token = login(&app, &name, PASSWORD).await.body["token"].as_str().unwrap().to_owned();
    assert_eq!(call(&app, "GET", "/describe-runners", Some(&token)).await.status, 200);
    let r = call(
        &app,
        "GET",
        "/start-runner?instance_type=m5d.large&image_name=geonex/fire:1&s3_output=s3://geonex/o&runner_id=x&runner_name=x",
        Some(&token),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(call(&app, "GET", "/describe-users", Some(&token)).await.status, 403);

    let r = app.get("/describe-users?limit=1000").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let users = r.body["users"].as_array().unwrap();
    let me = users.iter().find(|u| u["user_name"] == name.as_str()).expect("listed");
    for key in ["user_id", "user_name", "display_name", "email", "role", "created_at"] {
        assert!(me.get(key).is_some(), "missing {key}");
    }
    let text = r.body.to_string();
    assert!(!text.contains("argon2") && !text.contains("password") && !text.contains("token"), "{text}");
    let tag = r.headers.get("etag").unwrap().to_str().unwrap().to_owned();
    let again = app.send(app.http.get(format!("{}/describe-users?limit=1000", app.address)).header("If-None-Match", tag)).await;
    assert_eq!(again.status, 304);

    // Commands record who asked.
    let op = service_token(&app.store, "dashboard", Role::Operator, None).await;
    let runner = unique("audit");
    let r = call(
        &app,
        "GET",
        &format!("/start-runner?instance_type=m5d.large&image_name=geonex/fire:1&s3_output=s3://geonex/o&runner_id={runner}&runner_name=x"),
        Some(&op),
    )
    .await;
    assert_eq!(r.status, 202);
    let listed = app.get(&format!("/describe-commands?runner_id={runner}")).await;
    assert_eq!(listed.body["commands"][0]["requested_by"], "service:dashboard");
}

#[tokio::test]
async fn the_command_line_creates_an_admin_and_a_service_token_and_logs_no_secrets() {
    let app = spawn_app().await;
    let admin = unique("root");
    let mut child = app
        .deployment
        .command(&["user", "create", "--admin", "--user-name", &admin])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = login(&app, &admin, PASSWORD).await;
    assert_eq!(s.body["role"], "admin");
    let admin_token = s.body["token"].as_str().unwrap().to_owned();
    assert_eq!(call(&app, "GET", "/describe-users", Some(&admin_token)).await.status, 200);

    let out = app.deployment.command(&["token", "create", "--name", "dashboard", "--role", "operator"]).output().await.unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("gnx_"));
    assert_eq!(call(&app, "GET", "/describe-commands", Some(&token)).await.status, 200);
    assert_eq!(call(&app, "GET", "/describe-users", Some(&token)).await.status, 403);

    // A whole server's log, at debug level, through registration and login.
    let mut server = app
        .deployment
        .command(&["serve"])
        .env("GEONEX_LOG__FILTER", "debug")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(server.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let address = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
        log.push(line.clone());
        if line.contains("API listening") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            break v["url"].as_str().unwrap().to_owned();
        }
    };
    let http = reqwest::Client::new();
    let name = unique("henry");
    let r = http
        .post(format!("{address}/register-user"))
        .json(&serde_json::json!({"user_name": name, "password": PASSWORD, "display_name": "H", "email": format!("{name}@example.org")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for pw in [PASSWORD, "a wrong password"] {
        http.post(format!("{address}/login")).form(&[("user_name", name.as_str()), ("password", pw)]).send().await.unwrap();
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &server.id().unwrap().to_string()]).status();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
        log.push(line);
    }
    let log = log.join("\n");
    assert!(log.contains("login"), "the log is being captured");
    for secret in [PASSWORD, "a wrong password", "$argon2id", "gnx_", &token] {
        assert!(!log.contains(secret), "the log contains {secret:?}");
    }
}
