//! The ops console in a real browser: headless Chromium driven over WebDriver
//! (chromedriver) signs in with a token, watches a runner turn `running`
//! without reloading, finds a dead command and replays it. Screenshots of the
//! pages go to `target/console-screenshots/`.
//!
//! Chromium and chromedriver are Debian's (`apt-get install chromium
//! chromium-driver`; `.ci/run` installs them). Without them this test fails,
//! saying so: it is never skipped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::helpers::{TestConfig, moto_url, spawn_app_with, unique};
use crate::proxy::Proxy;

fn program(env: &str, default: &str, package: &str) -> PathBuf {
    let path = std::env::var(env).map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(default));
    assert!(
        path.exists(),
        "{} is missing: install it with `apt-get install {package}` (or set {env}); the console test needs a real browser",
        path.display()
    );
    path
}

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        let driver = program("GEONEX_TEST_CHROMEDRIVER", "/usr/bin/chromedriver", "chromium-driver");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{url}/status")).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start on {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, url }
    }

    async fn browser(&self) -> Client {
        let chromium = program("GEONEX_TEST_CHROMIUM", "/usr/bin/chromium", "chromium");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1500,900", "--no-first-run"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector).capabilities(caps).connect(&self.url).await.expect("a browser session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(screenshots().join(name), png).expect("write screenshot");
}

/// Waits until the element's text is `want`, re-finding it as the page re-renders.
async fn wait_text(browser: &Client, css: &str, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    loop {
        if let Ok(e) = browser.find(Locator::Css(css)).await {
            last = e.text().await.unwrap_or_default();
            if last == want {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{css} never read {want:?} (last {last:?})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The element once the page shows it and it takes input (a form appears a
/// moment after the click that reveals it).
async fn interactable(browser: &Client, css: &str) -> fantoccini::elements::Element {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(e) = browser.find(Locator::Css(css)).await
            && e.is_displayed().await.unwrap_or(false)
            && e.is_enabled().await.unwrap_or(false)
        {
            return e;
        }
        assert!(Instant::now() < deadline, "{css} never became visible and enabled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_operator_watches_a_runner_start_and_replays_a_dead_command_in_the_console() {
    let driver = Driver::start().await;
    // EC2 behind a proxy the test can cut, so a command can die for want of it.
    let proxy = Proxy::start(moto_url().trim_start_matches("http://")).await;
    let config = TestConfig {
        extra_env: vec![
            ("GEONEX_EC2__ENDPOINT_URL".into(), format!("http://127.0.0.1:{}", proxy.port)),
            ("GEONEX_WORKER__MAX_ATTEMPTS".into(), "1".into()),
        ],
        ..TestConfig::default()
    };
    let app = spawn_app_with(config).await;
    let browser = driver.browser().await;

    // The page is locked down: its script only from this origin, no framing.
    let page = app.http.get(format!("{}/console", app.address)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(!html.contains(" onclick=") && !html.contains("<script>"), "no inline script or handlers");

    // Sign in by pasting the token.
    browser.goto(&format!("{}/console", app.address)).await.unwrap();
    interactable(&browser, "#token-input").await.send_keys(&app.token).await.unwrap();
    interactable(&browser, "#token-save").await.click().await.unwrap();
    wait_text(&browser, "#live", "live", Duration::from_secs(15)).await;
    wait_text(&browser, "#whoami", "admin", Duration::from_secs(5)).await;
    // Marks this page load: a reload would lose it.
    browser.execute("window.geonexMark = 42;", vec![]).await.unwrap();

    // A runner started from the API turns running on the page by itself.
    let runner_id = unique("console");
    let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    assert_eq!(r.status, 202, "{}", r.body);
    let row = format!("tr[data-runner-id=\"{runner_id}\"] td.state");
    wait_text(&browser, &row, "running", Duration::from_secs(30)).await;
    let mark = browser.execute("return window.geonexMark;", vec![]).await.unwrap();
    assert_eq!(mark, json!(42), "the page was not reloaded");
    screenshot(&browser, "runners.png").await;

    // A start that cannot reach EC2 dies (one attempt allowed) ...
    proxy.cut().await;
    let doomed = unique("console-dead");
    let r = app.start_runner(&doomed, "geonex/fire:1.5").await;
    let dead_id = r.body["command_id"].as_str().unwrap().to_owned();
    let c = app.wait_command(&dead_id, &["dead", "succeeded"]).await;
    assert_eq!(c["status"], "dead", "{c}");
    proxy.restore();

    // ... shows among the dead letters, and Replay brings it through.
    interactable(&browser, "#tab-dead").await.click().await.unwrap();
    let status = format!("#dead tr[data-command-id=\"{dead_id}\"] td.status");
    wait_text(&browser, &status, "dead", Duration::from_secs(10)).await;
    screenshot(&browser, "dead-letters.png").await;
    let replay = format!("#dead tr[data-command-id=\"{dead_id}\"] button[data-act=\"replay\"]");
    browser.find(Locator::Css(&replay)).await.unwrap().click().await.unwrap();
    wait_text(&browser, &status, "succeeded", Duration::from_secs(30)).await;
    screenshot(&browser, "dead-letters-replayed.png").await;
    let c = app.command(&dead_id).await;
    assert_eq!(c["status"], "succeeded", "{c}");

    // The other pages render what the API says.
    for (tab, table) in [("#tab-commands", "#commands"), ("#tab-images", "#images"), ("#tab-usage", "#usage")] {
        browser.find(Locator::Css(tab)).await.unwrap().click().await.unwrap();
        browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(&format!("{table} tbody tr")))
            .await
            .unwrap();
    }
    interactable(&browser, "#tab-commands").await.click().await.unwrap();
    let in_list = format!("#commands tr[data-command-id=\"{dead_id}\"] td.status");
    wait_text(&browser, &in_list, "succeeded", Duration::from_secs(10)).await;
    screenshot(&browser, "commands.png").await;
    let message = browser.find(Locator::Css("#message")).await.unwrap().text().await.unwrap();
    assert!(!message.contains("error"), "{message}");

    // A user signs in with a password, sees an image awaiting approval, and may not decide it.
    let name = unique("viewer");
    let password = "correct horse battery staple";
    let r = app
        .send_anonymous(app.http.post(format!("{}/register-user", app.address)).json(&json!({
            "user_name": name, "password": password, "display_name": "Viewer", "email": format!("{name}@example.org"),
        })))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let image = format!("geonex/{}:1", unique("pending"));
    let r = app
        .send(app.http.post(format!("{}/register-image", app.address)).json(&json!({
            "image_name": image, "description": "awaiting approval", "organization": "NEX",
        })))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    interactable(&browser, "#logout").await.click().await.unwrap();
    interactable(&browser, "#login-user").await.send_keys(&name).await.unwrap();
    interactable(&browser, "#login-password").await.send_keys(password).await.unwrap();
    interactable(&browser, "#login-form button").await.click().await.unwrap();
    wait_text(&browser, "#whoami", "user", Duration::from_secs(15)).await;
    interactable(&browser, "#tab-images").await.click().await.unwrap();
    let approve = format!("#images tr[data-image=\"{image}\"] button[data-act=\"approve\"]");
    let button = browser.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css(&approve)).await.unwrap();
    assert!(!button.is_enabled().await.unwrap(), "a user's Approve is disabled");
    screenshot(&browser, "images-as-user.png").await;
    let token = browser.execute("return sessionStorage.getItem('geonex.token');", vec![]).await.unwrap();
    assert!(token.as_str().is_some_and(|t| t.starts_with("gnx_")), "the login token is kept for the tab");
    let cookies = browser.execute("return document.cookie;", vec![]).await.unwrap();
    assert_eq!(cookies, json!(""), "no cookie carries it");
    browser.close().await.unwrap();
}
