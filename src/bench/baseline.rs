//! The baselines measured in the same run, on the same broker and cores: the
//! anchors (`raw_amqp`, the ceiling of a RabbitMQ command loop; `bare_axum`, the
//! ceiling of a polling endpoint), built from their Cargo project or found
//! already built. A baseline that cannot be had is reported as such and the
//! bench goes on without it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The anchors' Cargo project beside the checkout (`../shared/anchors`).
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/anchors")
}

/// Built anchors.
pub struct Anchors {
    bare_axum: PathBuf,
    raw_amqp: PathBuf,
}

/// Builds the anchors in `dir` (release, into `target/anchors` of this project,
/// cargo's progress shown) and returns their binaries.
pub async fn build(dir: &Path) -> anyhow::Result<Anchors> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!("no anchors at {} (give --anchors DIR)", dir.display());
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t).join("anchors"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/anchors"),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building the anchors of {} into {}", dir.display(), target.display());
    let status = tokio::process::Command::new(cargo)
        .args(["build", "--release", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .await
        .context("running cargo to build the anchors")?;
    if !status.success() {
        bail!("building the anchors failed ({status})");
    }
    let anchors = Anchors { bare_axum: target.join("release/bare_axum"), raw_amqp: target.join("release/raw_amqp") };
    for bin in [&anchors.bare_axum, &anchors.raw_amqp] {
        if !bin.is_file() {
            bail!("the anchors' build made no {}", bin.display());
        }
    }
    Ok(anchors)
}

/// What `raw_amqp` measured.
#[derive(Debug, Clone, Copy)]
pub struct RawAmqp {
    pub publish_per_s: f64,
    pub end_to_end_per_s: f64,
}

impl Anchors {
    /// Runs `raw_amqp` with `n` messages on the broker of `amqp_url`.
    pub async fn raw_amqp(&self, amqp_url: &str, n: usize) -> anyhow::Result<RawAmqp> {
        eprintln!("raw_amqp: {n} persistent messages through a quorum queue");
        let out = tokio::process::Command::new(&self.raw_amqp)
            .args([amqp_url, &n.to_string()])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("running raw_amqp")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("raw_amqp failed ({}): {}{}", out.status, text, String::from_utf8_lossy(&out.stderr));
        }
        let field = |name: &str| -> anyhow::Result<f64> {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {name} in raw_amqp's output: {text}"))
        };
        Ok(RawAmqp { publish_per_s: field("publish_confirmed_per_s=")?, end_to_end_per_s: field("end_to_end_per_s=")? })
    }

    /// Starts `bare_axum` on a free port and waits until it accepts connections.
    pub async fn bare_axum(&self) -> anyhow::Result<BareAxum> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = tokio::process::Command::new(&self.bare_axum)
            .arg(&addr)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting bare_axum")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("bare_axum exited with {status}");
            }
            if Instant::now() > deadline {
                bail!("bare_axum did not listen on {addr} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(BareAxum { child, url: format!("http://{addr}/describe") })
    }
}

/// A running `bare_axum`: `GET url` answers 200 with an ETag, 304 with
/// `If-None-Match: "v1"`. Killed when dropped.
pub struct BareAxum {
    child: tokio::process::Child,
    pub url: String,
}

impl BareAxum {
    pub const ETAG: &'static str = "\"v1\"";

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
