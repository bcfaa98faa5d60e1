//! Simulated adapters of the agent's two ports, for the agents the simulated
//! cloud runs on its instances (`cloud::sim_agents`):
//! - [`SimFeed`] ([`NotificationSource`]): a new GOES-16 ABI file "arrives" in
//!   the simulated NOAA bucket every interval, named as NOAA names them.
//! - [`SimExecutor`] ([`Executor`]): a container takes a short while, then
//!   writes small, plausible outputs (`.nc`, `.png`, `.json`, `.log`, named after
//!   the input's scan time) into the runner's S3 output in the folder store,
//!   `<root>/<bucket>/<prefix>/…`; a configurable share of containers fail.
//!
//! Everything around them (container ids, the spool, events, heartbeats, the
//! HTTP calls with the agent token) is the real agent's core.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use geonex_shared::store::usage::S3Output;
use rand::Rng;
use serde_json::json;
use tokio::time::Instant;

use super::notification::NewObject;
use super::{Executor, Job, Notification, NotificationSource, Outcome};

/// The simulated NOAA bucket new files appear in.
pub const SIM_BUCKET: &str = "noaa-goes16";

/// A new GOES file every `interval`; the first one an interval after the start.
///
/// Like the SQS queue it stands in for, it hands out again what was not
/// acknowledged: files announced and not acknowledged are kept in a small file,
/// and an agent started again (its instance rebooted, the process running the
/// simulated cloud restarted) gets those first, so a container cut off midway
/// runs again under the same id and its row is closed.
pub struct SimFeed {
    /// `None`: no data ever arrives (the agent still runs and sends heartbeats).
    interval: Option<Duration>,
    state: Mutex<FeedState>,
    /// Where the unacknowledged files are kept; `None`: in memory only.
    file: Option<PathBuf>,
    /// The ABI band of the next file, cycling through the 16 bands.
    band: AtomicU32,
}

struct FeedState {
    next: Instant,
    /// Announced and not acknowledged.
    unacked: Vec<NewObject>,
    /// Unacknowledged by an earlier run, not yet handed out again.
    redeliver: Vec<NewObject>,
}

impl SimFeed {
    pub fn new(interval: Option<Duration>, file: Option<PathBuf>) -> Self {
        let interval = interval.filter(|i| !i.is_zero());
        let earlier = file.as_deref().map(load_unacked).unwrap_or_default();
        let state = FeedState { next: Instant::now() + interval.unwrap_or_default(), unacked: earlier.clone(), redeliver: earlier };
        Self { interval, state: Mutex::new(state), file, band: AtomicU32::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, unacked: &[NewObject]) -> anyhow::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        let list: Vec<_> = unacked.iter().map(|o| json!({"bucket": o.bucket, "key": o.key, "sequencer": o.sequencer})).collect();
        let tmp = file.with_extension("tmp");
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&tmp, serde_json::to_vec(&list)?)?;
        std::fs::rename(&tmp, file)?;
        Ok(())
    }
}

fn load_unacked(file: &Path) -> Vec<NewObject> {
    let Ok(bytes) = std::fs::read(file) else { return Vec::new() };
    let list: Vec<serde_json::Value> = serde_json::from_slice(&bytes).unwrap_or_default();
    list.iter()
        .filter_map(|v| {
            Some(NewObject {
                bucket: v["bucket"].as_str()?.to_owned(),
                key: v["key"].as_str()?.to_owned(),
                sequencer: v["sequencer"].as_str()?.to_owned(),
            })
        })
        .collect()
}

/// The object NOAA would publish for a CONUS radiance scan of `band` that
/// started at `start`: `ABI-L1b-RadC/<year>/<day of year>/<hour>/OR_ABI-L1b-RadC-M6C<band>_G16_s…_e…_c….nc`.
pub fn goes_object(start: DateTime<Utc>, band: u32) -> NewObject {
    // A CONUS scan takes about 2.6 minutes; the file is created a moment after.
    let end = start + chrono::Duration::milliseconds(157_300);
    let created = end + chrono::Duration::milliseconds(1_800);
    let stamp = |t: DateTime<Utc>| {
        format!("{}{:03}{:02}{:02}{:02}{}", t.year(), t.ordinal(), t.hour(), t.minute(), t.second(), t.timestamp_subsec_millis() / 100)
    };
    let key = format!(
        "ABI-L1b-RadC/{}/{:03}/{:02}/OR_ABI-L1b-RadC-M6C{:02}_G16_s{}_e{}_c{}.nc",
        start.year(),
        start.ordinal(),
        start.hour(),
        band,
        stamp(start),
        stamp(end),
        stamp(created)
    );
    // S3's sequencer grows with every write to a key; the time does too.
    let sequencer = format!("{:018X}", start.timestamp_nanos_opt().unwrap_or_default());
    NewObject { bucket: SIM_BUCKET.to_owned(), key, sequencer }
}

#[async_trait]
impl NotificationSource for SimFeed {
    async fn receive(&self) -> anyhow::Result<Option<Notification>> {
        if let Some(again) = self.lock().redeliver.pop() {
            return Ok(Some(Notification { objects: vec![again], receipt: None }));
        }
        let Some(interval) = self.interval else {
            // Cancel-safe: the agent drops this on shutdown.
            std::future::pending::<()>().await;
            return Ok(None);
        };
        let due = self.lock().next;
        tokio::time::sleep_until(due).await;
        let band = self.band.fetch_add(1, Ordering::Relaxed) % 16 + 1;
        let object = goes_object(Utc::now(), band);
        let unacked = {
            let mut state = self.lock();
            // Files missed while the agent was busy are not made up for: the
            // feed goes on from now, as a subscription would after a gap.
            let now = Instant::now();
            state.next = if due + interval > now { due + interval } else { now + interval };
            state.unacked.push(object.clone());
            state.unacked.clone()
        };
        self.save(&unacked)?;
        Ok(Some(Notification { objects: vec![object], receipt: None }))
    }

    async fn ack(&self, notification: &Notification) -> anyhow::Result<()> {
        let unacked = {
            let mut state = self.lock();
            state.unacked.retain(|o| !notification.objects.contains(o));
            state.unacked.clone()
        };
        self.save(&unacked)
    }

    fn label(&self) -> String {
        match self.interval {
            Some(i) => format!("simulated GOES feed: a new file in s3://{SIM_BUCKET} every {}s", i.as_secs_f64()),
            None => "simulated GOES feed: off".to_owned(),
        }
    }
}

/// How a simulated container behaves.
#[derive(Debug, Clone)]
pub struct SimExecutorSettings {
    /// About how long a container runs (each run varies by up to a quarter).
    pub container_time: Duration,
    /// Share of containers that fail (0–1): half exit with code 1, half are
    /// killed (no exit code, shown `failed`).
    pub failure_rate: f64,
    /// A container running longer is killed, as the real agent kills it.
    pub timeout: Duration,
    pub log_tail_bytes: usize,
    /// The folder store's root (`<data dir>/s3`); `None` when S3 outputs are on
    /// S3, where a simulated container writes nothing.
    pub outputs: Option<PathBuf>,
}

pub struct SimExecutor {
    settings: SimExecutorSettings,
}

impl SimExecutor {
    pub fn new(settings: SimExecutorSettings) -> Self {
        Self { settings }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Succeeds,
    ExitsWithError,
    IsKilled,
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[async_trait]
impl Executor for SimExecutor {
    async fn run(&self, job: &Job<'_>) -> Outcome {
        let s = &self.settings;
        // Decided before any await: the thread's generator is not Send.
        let (fate, runtime, fire_pixels) = {
            let mut rng = rand::rng();
            let fate = if rng.random_bool(s.failure_rate.clamp(0.0, 1.0)) {
                if rng.random_bool(0.5) { Fate::ExitsWithError } else { Fate::IsKilled }
            } else {
                Fate::Succeeds
            };
            (fate, s.container_time.mul_f64(rng.random_range(0.75..=1.25)), rng.random_range(0..40u32))
        };
        let input = job.object.url();
        let mut log = vec![
            format!("{} INFO {} (simulated) starting, container {}", now_text(), job.image_name, job.container_id),
            format!("{} INFO reading {input}", now_text()),
        ];
        if runtime > s.timeout {
            tokio::time::sleep(s.timeout).await;
            log.push(format!("[killed after {}s]", s.timeout.as_secs()));
            return outcome(None, &log, s.log_tail_bytes);
        }
        tokio::time::sleep(runtime).await;
        let exit_code = match fate {
            Fate::IsKilled => {
                log.push(format!("{} INFO scanning 1500x2500 pixels", now_text()));
                log.push("[killed: out of memory (simulated)]".to_owned());
                return outcome(None, &log, s.log_tail_bytes);
            }
            Fate::ExitsWithError => {
                log.push(format!("{} ERROR {input}: truncated file, expected 6 variables, found 2 (simulated)", now_text()));
                1
            }
            Fate::Succeeds => {
                log.push(format!("{} INFO {fire_pixels} fire pixels detected", now_text()));
                0
            }
        };
        let exit_code = match write_outputs(s.outputs.as_deref(), job, fate, fire_pixels, &mut log).await {
            Ok(()) => exit_code,
            Err(e) => {
                log.push(format!("{} ERROR writing the outputs: {e}", now_text()));
                1
            }
        };
        log.push(format!("{} INFO exit {exit_code}", now_text()));
        outcome(Some(exit_code), &log, s.log_tail_bytes)
    }

    fn label(&self) -> String {
        let s = &self.settings;
        format!(
            "simulated containers (about {} ms each, {}% fail) writing to {}",
            s.container_time.as_millis(),
            (s.failure_rate.clamp(0.0, 1.0) * 100.0).round(),
            s.outputs.as_ref().map_or("nothing (outputs are on S3)".to_owned(), |p| p.display().to_string())
        )
    }
}

fn outcome(exit_code: Option<i32>, log: &[String], tail_bytes: usize) -> Outcome {
    let mut text = log.join("\n");
    text.push('\n');
    let mut cut = text.len().saturating_sub(tail_bytes);
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    Outcome { exit_code, log_tail: text[cut..].to_owned() }
}

/// The folder of `s3_output` under the folder store's root, or why there is none.
fn output_folder(root: &Path, s3_output: &str) -> Result<(PathBuf, S3Output), String> {
    let output = S3Output::parse("s3_output", s3_output).map_err(|e| e.message)?;
    let bucket = output.bucket();
    if bucket.is_empty() || bucket.starts_with('.') || bucket.contains(['/', '\\', '\0']) {
        return Err(format!("{s3_output}: not a bucket name the folder store takes"));
    }
    let mut dir = root.join(bucket);
    for segment in output.prefix().split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." || segment.contains(['\\', '\0']) {
            return Err(format!("{s3_output}: the prefix leaves its bucket"));
        }
        dir.push(segment);
    }
    Ok((dir, output))
}

/// Writes the outputs of one run beside its input's date folders: the input
/// `ABI-L1b-RadC/2026/336/14/OR_….nc` gives `<output>/2026/336/14/OR_…_<product>.*`.
async fn write_outputs(
    root: Option<&Path>,
    job: &Job<'_>,
    fate: Fate,
    fire_pixels: u32,
    log: &mut Vec<String>,
) -> Result<(), String> {
    let Some(root) = root else {
        log.push(format!("{} INFO outputs not written: S3 outputs of this deployment are on S3", now_text()));
        return Ok(());
    };
    let (mut dir, output) = output_folder(root, job.s3_output)?;
    let key = &job.object.key;
    let (folders, file) = key.rsplit_once('/').unwrap_or(("", key));
    // The product folder (`ABI-L1b-RadC`) is the input's, not the output's.
    let mut key_folders: Vec<&str> = folders.split('/').filter(|s| !s.is_empty() && *s != "." && *s != "..").collect();
    if key_folders.len() > 1 {
        key_folders.remove(0);
    }
    for f in &key_folders {
        dir.push(f);
    }
    let stem = file.strip_suffix(".nc").unwrap_or(file).replace(['\\', '\0'], "_");
    let product = job.image_name.rsplit('/').next().unwrap_or("output").split(':').next().unwrap_or("output");
    let name = |ext: &str| format!("{stem}_{product}.{ext}");
    let key_of = |ext: &str| {
        let mut parts: Vec<&str> = vec![output.prefix()];
        parts.extend(&key_folders);
        let n = name(ext);
        parts.retain(|p| !p.is_empty());
        format!("s3://{}/{}/{n}", output.bucket(), parts.join("/"))
    };
    tokio::fs::create_dir_all(&dir).await.map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |ext: &'static str, bytes: Vec<u8>| {
        let path = dir.join(name(ext));
        async move { tokio::fs::write(&path, bytes).await.map_err(|e| format!("{}: {e}", path.display())) }
    };
    let mut written = Vec::new();
    if fate == Fate::Succeeds {
        let title = format!("{} fire mask (simulated)", job.image_name);
        write("nc", netcdf(&[("title", &title), ("source", &job.object.url()), ("container_id", &job.container_id.to_string())]))
            .await?;
        write("png", PNG.to_vec()).await?;
        let summary = json!({
            "input_url": job.object.url(),
            "runner_id": job.runner_id,
            "image_name": job.image_name,
            "container_id": job.container_id,
            "processed_at": now_text(),
            "fire_pixels": fire_pixels,
            "outputs": [key_of("nc"), key_of("png"), key_of("log")],
            "simulated": true,
        });
        write("json", format!("{summary:#}\n").into_bytes()).await?;
        written.extend([key_of("nc"), key_of("png"), key_of("json")]);
    }
    written.push(key_of("log"));
    log.push(format!("{} INFO wrote {}", now_text(), written.join(", ")));
    let mut text = log.join("\n");
    text.push('\n');
    write("log", text.into_bytes()).await
}

/// A 1×1 PNG (one orange pixel): a real image, the smallest there is.
const PNG: [u8; 70] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00, 0x01,
    0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41,
    0x54, 0x78, 0x9c, 0x63, 0xf8, 0xef, 0xca, 0xf0, 0x1f, 0x00, 0x05, 0xcf, 0x02, 0x44, 0x77, 0xc5, 0x4b, 0xcc, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// A NetCDF classic file with no dimensions or variables, only text global
/// attributes: small, and readable by `ncdump`.
fn netcdf(attributes: &[(&str, &str)]) -> Vec<u8> {
    fn counted(out: &mut Vec<u8>, text: &str) {
        out.extend(u32::try_from(text.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend(text.as_bytes());
        out.resize(out.len().next_multiple_of(4), 0);
    }
    const ABSENT: [u8; 8] = [0; 8];
    const NC_ATTRIBUTE: u32 = 0x0C;
    const NC_CHAR: u32 = 2;
    let mut out = b"CDF\x01".to_vec();
    out.extend(0u32.to_be_bytes()); // records
    out.extend(ABSENT); // dimensions
    out.extend(NC_ATTRIBUTE.to_be_bytes());
    out.extend(u32::try_from(attributes.len()).unwrap_or(0).to_be_bytes());
    for (name, value) in attributes {
        counted(&mut out, name);
        out.extend(NC_CHAR.to_be_bytes());
        counted(&mut out, value);
    }
    out.extend(ABSENT); // variables
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_objects_are_named_as_noaa_names_goes_files() {
        let start = DateTime::parse_from_rfc3339("2026-12-02T14:00:00.512Z").unwrap().with_timezone(&Utc);
        let o = goes_object(start, 7);
        assert_eq!(o.bucket, "noaa-goes16");
        assert_eq!(
            o.key,
            "ABI-L1b-RadC/2026/336/14/OR_ABI-L1b-RadC-M6C07_G16_s20263361400005_e20263361402378_c20263361402396.nc"
        );
        let later = goes_object(start + chrono::Duration::seconds(1), 8);
        assert!(later.sequencer > o.sequencer, "{} then {}", o.sequencer, later.sequencer);
    }

    #[tokio::test]
    async fn the_feed_hands_out_again_what_an_earlier_run_did_not_acknowledge() {
        let dir = std::env::temp_dir().join(format!("geonex-sim-feed-{}", uuid::Uuid::new_v4().simple()));
        let file = dir.join("feed.json");
        let feed = SimFeed::new(Some(Duration::from_millis(10)), Some(file.clone()));
        let first = feed.receive().await.unwrap().unwrap();
        let second = feed.receive().await.unwrap().unwrap();
        assert_ne!(first.objects, second.objects);
        feed.ack(&second).await.unwrap();
        drop(feed);

        // Started again: the unacknowledged file comes first, at once.
        let feed = SimFeed::new(Some(Duration::from_secs(3600)), Some(file.clone()));
        let again = tokio::time::timeout(Duration::from_secs(1), feed.receive()).await.unwrap().unwrap().unwrap();
        assert_eq!(again.objects, first.objects);
        feed.ack(&again).await.unwrap();
        let feed = SimFeed::new(Some(Duration::from_secs(3600)), Some(file));
        assert!(tokio::time::timeout(Duration::from_millis(50), feed.receive()).await.is_err(), "nothing left to hand out");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_netcdf_header_is_word_aligned() {
        let nc = netcdf(&[("title", "x")]);
        assert!(nc.starts_with(b"CDF\x01"));
        assert_eq!(nc.len() % 4, 0);
        assert_eq!(nc.len(), 4 + 4 + 8 + 8 + (4 + 8) + 4 + (4 + 4) + 8);
    }

    #[tokio::test]
    async fn a_container_writes_its_outputs_into_the_runners_folder() {
        let root = std::env::temp_dir().join(format!("geonex-sim-exec-{}", uuid::Uuid::new_v4().simple()));
        let exec = SimExecutor::new(SimExecutorSettings {
            container_time: Duration::from_millis(10),
            failure_rate: 0.0,
            timeout: Duration::from_secs(60),
            log_tail_bytes: 4096,
            outputs: Some(root.clone()),
        });
        let start = DateTime::parse_from_rfc3339("2026-12-02T14:00:00Z").unwrap().with_timezone(&Utc);
        let object = goes_object(start, 1);
        let job = Job {
            container_id: uuid::Uuid::new_v4(),
            object: &object,
            runner_id: "r-1",
            image_name: "geonex/active_fire_go16abi15:1.5",
            s3_output: "s3://geonex/GO16_ABI15",
        };
        let out = exec.run(&job).await;
        assert_eq!(out.exit_code, Some(0), "{}", out.log_tail);
        assert!(out.log_tail.contains(&object.url()), "{}", out.log_tail);
        let dir = root.join("geonex/GO16_ABI15/2026/336/14");
        let mut names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        let stem = "OR_ABI-L1b-RadC-M6C01_G16_s20263361400000_e20263361402373_c20263361402391_active_fire_go16abi15";
        assert_eq!(names, ["json", "log", "nc", "png"].map(|e| format!("{stem}.{e}")));
        let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(format!("{stem}.json"))).unwrap()).unwrap();
        assert_eq!(summary["input_url"], object.url());
        assert_eq!(summary["outputs"][0], format!("s3://geonex/GO16_ABI15/2026/336/14/{stem}.nc"));

        let failing = SimExecutor::new(SimExecutorSettings { failure_rate: 1.0, ..exec.settings.clone() });
        let out = failing.run(&job).await;
        assert_ne!(out.exit_code, Some(0), "{}", out.log_tail);

        assert!(output_folder(&root, "s3://geonex/a/../../x").is_err(), "a prefix cannot leave its bucket");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
