//! An HTTP proxy in front of a moto server that answers a share of EC2 calls
//! the way an overloaded EC2 does: `RequestLimitExceeded` (throttling),
//! `InsufficientInstanceCapacity` on launches, and timeouts, both before the
//! call reaches EC2 (the request is lost) and after (the call was made, its
//! answer is lost). Rates are set while it runs; at zero it only forwards.
//!
//! moto ignores `ClientToken`, real EC2 does not: a `RunInstances` repeated
//! with the token of one that succeeded is answered here with that launch, as
//! EC2 documents, so a retry after a lost answer behaves as it would on AWS.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Shares of calls answered with each fault (0–1).
#[derive(Debug, Clone, Copy, Default)]
pub struct Rates {
    pub throttle: f64,
    /// Of `RunInstances` and `StartInstances` only.
    pub capacity: f64,
    pub timeout: f64,
}

/// How many calls got each fault, and how many went through.
#[derive(Debug, Default)]
pub struct Injected {
    pub throttled: AtomicU64,
    pub capacity: AtomicU64,
    pub timed_out: AtomicU64,
    pub forwarded: AtomicU64,
}

struct Shared {
    upstream: String,
    rates: Mutex<Rates>,
    /// How long a timed-out call is held before the proxy lets go of it.
    hold: Duration,
    injected: Injected,
    http: reqwest::Client,
    /// ClientToken → the answer of the launch made under it. Each token has
    /// its own lock: a retry arriving while its first attempt is still with
    /// moto waits for that attempt's answer, as EC2 would give it.
    launches: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Bytes>>>>>,
}

pub struct Ec2FaultProxy {
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Ec2FaultProxy {
    /// Starts forwarding to `upstream` (moto's URL). A timed-out call is held
    /// for `hold`, which should exceed the client's attempt timeout.
    pub async fn start(upstream: &str, hold: Duration) -> Self {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            rates: Mutex::new(Rates::default()),
            hold,
            injected: Injected::default(),
            http: reqwest::Client::new(),
            launches: Mutex::new(HashMap::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the EC2 proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, shared, task }
    }

    pub fn inject(&self, rates: Rates) {
        *self.shared.rates.lock().unwrap_or_else(|e| e.into_inner()) = rates;
    }

    pub fn stop_injecting(&self) {
        self.inject(Rates::default());
    }

    pub fn injected(&self) -> &Injected {
        &self.shared.injected
    }
}

impl Drop for Ec2FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A uniform draw in [0, 1).
fn roll() -> f64 {
    (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0
}

/// An error as EC2's query API writes it.
fn ec2_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
        uuid::Uuid::new_v4()
    );
    (status, [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")], body).into_response()
}

fn xml(body: Bytes) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")], body).into_response()
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 16 << 20).await else {
        return (StatusCode::BAD_REQUEST, "unreadable body").into_response();
    };
    // A client that gives up drops this future; EC2 goes on with a call it
    // received, and so does the proxy: the call and what it learns (a launch
    // under a ClientToken) complete in a task of their own.
    let call = tokio::spawn(answer(s, parts, body));
    call.await.unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

async fn answer(s: Arc<Shared>, parts: axum::http::request::Parts, body: Bytes) -> Response {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let action = field("Action").unwrap_or_default();
    let rates = *s.rates.lock().unwrap_or_else(|e| e.into_inner());
    let injected = &s.injected;

    if roll() < rates.throttle {
        injected.throttled.fetch_add(1, Ordering::Relaxed);
        return ec2_error(StatusCode::SERVICE_UNAVAILABLE, "RequestLimitExceeded", "Request limit exceeded.");
    }
    if matches!(action.as_str(), "RunInstances" | "StartInstances") && roll() < rates.capacity {
        injected.capacity.fetch_add(1, Ordering::Relaxed);
        return ec2_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient capacity in the Availability Zone you requested.",
        );
    }
    let timeout = roll() < rates.timeout;
    let answer_lost = timeout && roll() < 0.5;
    if timeout && !answer_lost {
        // The request never reaches EC2.
        injected.timed_out.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(s.hold).await;
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }

    let token = field("ClientToken").filter(|_| action == "RunInstances");
    let slot = token.map(|t| s.launches.lock().unwrap_or_else(|e| e.into_inner()).entry(t).or_default().clone());
    let mut launch = match &slot {
        Some(slot) => Some(slot.clone().lock_owned().await),
        None => None,
    };
    let response = match launch.as_deref().cloned().flatten() {
        Some(earlier) => xml(earlier),
        None => {
            let began = std::time::Instant::now();
            let forwarded = forward(&s, parts.method, &parts.uri, &parts.headers, body).await;
            if std::env::var_os("GEONEX_TEST_PROXY_TRACE").is_some() {
                eprintln!("proxy: {action} forwarded in {:?}: {:?}", began.elapsed(), forwarded.as_ref().map(|r| r.0));
            }
            injected.forwarded.fetch_add(1, Ordering::Relaxed);
            match forwarded {
                Ok((status, headers, bytes)) => {
                    if let Some(l) = launch.as_mut().filter(|_| status.is_success()) {
                        **l = Some(bytes.clone());
                    }
                    let mut r = (status, bytes).into_response();
                    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
                        r.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
                    }
                    r
                }
                Err(e) => (StatusCode::BAD_GATEWAY, e).into_response(),
            }
        }
    };
    drop(launch);
    if answer_lost {
        // EC2 did the call; its answer never arrives.
        injected.timed_out.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(s.hold).await;
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }
    response
}

async fn forward(
    s: &Shared,
    method: axum::http::Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, HeaderMap, Bytes), String> {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = s.http.request(method, format!("{}{path}", s.upstream)).body(body);
    for (name, value) in headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            req = req.header(name, value);
        }
    }
    // Bounded, so a call moto never answers cannot hold its ClientToken's lock.
    let resp = req.timeout(Duration::from_secs(30)).send().await.map_err(|e| format!("moto unreachable: {e}"))?;
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.bytes().await.map_err(|e| format!("moto's answer cut: {e}"))?;
    Ok((status, headers, bytes))
}
