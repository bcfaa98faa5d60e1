//! The system under test: `geonex serve` (this very executable) as a child
//! process with an environment of the bench's making, and what the bench asks
//! of it from outside: readiness, tokens, an approved image, its memory.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::StatusCode;
use tokio::io::AsyncBufReadExt;

/// Settings the bench pins: where the data is and what serves it. Every other
/// `GEONEX_*` variable of the bench's own environment reaches the child (so a
/// tuning can be measured), over the bench's defaults.
const PINNED: &[&str] =
    &["GEONEX_CONFIG", "GEONEX_LISTEN", "GEONEX_DATA_DIR", "GEONEX_DATABASE_URL", "GEONEX_AMQP_URL", "GEONEX_CLOUD"];

/// The environment of a `geonex` child: the bench's defaults, the caller's
/// `GEONEX_*` tunings over them, then the pinned settings.
pub fn environment(pinned: Vec<(String, String)>) -> Vec<(String, String)> {
    let defaults = [
        // EC2 is simulated so that it is not what is measured: instances boot
        // and stop at once, and no agent runs on them.
        ("GEONEX_SIM__BOOT_DELAY_MS", "0"),
        ("GEONEX_SIM__STOP_DELAY_MS", "0"),
        ("GEONEX_SIM__AGENTS", "false"),
        // The cluster's EC2 request budget stays on (its round trips are part of
        // a command's cost) but sized far above the offered load.
        ("GEONEX_EC2__RATE__SCALE", "1000000"),
        ("GEONEX_S3USAGE__SCAN_INTERVAL_SECS", "0"),
        // Each command is logged at info, as in production.
        ("GEONEX_LOG__FILTER", "info"),
        ("GEONEX_LOG__FORMAT", "json"),
    ];
    let mut env: Vec<(String, String)> = defaults.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    for (k, v) in std::env::vars() {
        if k.starts_with("GEONEX_") && !PINNED.contains(&k.as_str()) {
            env.retain(|(ek, _)| *ek != k);
            env.push((k, v));
        }
    }
    for (k, v) in pinned {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    env
}

/// The settings of a process whose EC2 is `endpoint` (moto, `geonex sim-cloud`
/// or an account), tagging its instances with `fleet`, with [`credentials`].
pub fn ec2_at(endpoint: &str, fleet: &str) -> Vec<(&'static str, String)> {
    let (key, secret) = credentials();
    vec![
        ("GEONEX_CLOUD", "aws".to_owned()),
        ("GEONEX_EC2__ENDPOINT_URL", endpoint.to_owned()),
        ("GEONEX_EC2__REGION", "us-east-1".to_owned()),
        ("GEONEX_EC2__FLEET", fleet.to_owned()),
        ("AWS_ACCESS_KEY_ID", key),
        ("AWS_SECRET_ACCESS_KEY", secret),
    ]
}

/// The caller's AWS credentials, or placeholders (moto and the simulated cloud take any).
pub fn credentials() -> (String, String) {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| "bench".into());
    (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
}

fn command(env: &[(String, String)], args: &[&str]) -> anyhow::Result<tokio::process::Command> {
    let exe = std::env::current_exe().context("locating the geonex executable")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("GEONEX_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().cloned());
    Ok(cmd)
}

/// A free port on the loopback interface (the child binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?.local_addr()?.port())
}

/// A running `geonex serve`.
pub struct Serve {
    child: tokio::process::Child,
    pid: u32,
    pub url: String,
    /// The last lines of its log, for when it fails.
    log: Arc<Mutex<VecDeque<String>>>,
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_mib: f64,
    /// VmHWM: the most it has been resident.
    pub peak_mib: f64,
}

impl Serve {
    /// Starts `geonex serve` with `env` (plus a listen address) and waits until
    /// `/readyz` answers 200.
    pub async fn start(label: &str, env: Vec<(String, String)>) -> anyhow::Result<Self> {
        Self::start_as("serve", label, env).await
    }

    /// As `start`, for the role `role` (`serve` or `api`).
    pub async fn start_as(role: &str, label: &str, mut env: Vec<(String, String)>) -> anyhow::Result<Self> {
        let port = free_port()?;
        env.push(("GEONEX_LISTEN".into(), format!("127.0.0.1:{port}")));
        let mut serve = Self::spawn(role, env, format!("http://127.0.0.1:{port}"))?;
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        eprintln!("starting geonex {role} ({label}) on {}", serve.url);
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", serve.url)).send().await
                && r.status() == StatusCode::OK
            {
                return Ok(serve);
            }
            if let Some(status) = serve.child.try_wait()? {
                bail!("geonex {role} ({label}) exited with {status}:\n{}", serve.log_tail());
            }
            if Instant::now() > deadline {
                bail!("geonex {role} ({label}) was not ready within 60 s:\n{}", serve.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts `geonex worker` with `env`; it serves no HTTP.
    pub fn worker(env: Vec<(String, String)>) -> anyhow::Result<Self> {
        Self::spawn("worker", env, String::new())
    }

    fn spawn(role: &str, env: Vec<(String, String)>, url: String) -> anyhow::Result<Self> {
        let mut cmd = command(&env, &[role])?;
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting geonex {role}"))?;
        let pid = child.id().with_context(|| format!("geonex {role} exited at once"))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().context("the child's log")?).lines();
        let sink = log.clone();
        // Drained all along, so the child never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                if log.len() == 40 {
                    log.pop_front();
                }
                log.push_back(line);
            }
        });
        Ok(Self { child, pid, url, log })
    }

    /// SIGKILL, as a crash would end it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    pub fn log_tail(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("geonex serve exited with {status} during the run:\n{}", self.log_tail());
        }
        Ok(())
    }

    pub fn memory(&self) -> anyhow::Result<Memory> {
        let path = PathBuf::from(format!("/proc/{}/status", self.pid));
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let field = |name: &str| -> anyhow::Result<f64> {
            let kib: f64 = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {name} in {}", path.display()))?;
            Ok(kib / 1024.0)
        };
        Ok(Memory { rss_mib: field("VmRSS:")?, peak_mib: field("VmHWM:")? })
    }

    /// SIGTERM, then SIGKILL if it has not exited within ten seconds.
    pub async fn stop(mut self) {
        let _ = tokio::process::Command::new("kill").args(["-TERM", &self.pid.to_string()]).status().await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// Mints a service-account token with `geonex token create` on the database of `env`.
pub async fn token(env: &[(String, String)], name: &str, role: &str) -> anyhow::Result<String> {
    let out = command(env, &["token", "create", "--name", name, "--role", role])?
        .output()
        .await
        .context("running geonex token create")?;
    if !out.status.success() {
        bail!("geonex token create failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if token.is_empty() {
        bail!("geonex token create printed no token");
    }
    Ok(token)
}

/// Registers `image` and approves it through the API, as an administrator would.
pub async fn approve_image(url: &str, admin_token: &str, image: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let form = [("image_name", image), ("description", "benchmark image"), ("organization", "GeoNEX")];
    for (path, body, expect) in [("register-image", &form[..], StatusCode::CREATED), ("approve-image", &form[..1], StatusCode::OK)] {
        let resp = http
            .post(format!("{url}/{path}"))
            .bearer_auth(admin_token)
            .form(body)
            .send()
            .await
            .with_context(|| format!("POST /{path}"))?;
        let status = resp.status();
        if status != expect {
            bail!("POST /{path} answered {status}: {}", resp.text().await.unwrap_or_default());
        }
    }
    Ok(())
}
