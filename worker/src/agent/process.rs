//! Process adapter of the agent's [`Executor`] port: what `geonex agent` runs on
//! a real instance. One container is one run of the command template (by
//! default `docker run …`), in its own process group, bounded by a timeout;
//! past it the group is killed and the stop command ends the container itself.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use async_trait::async_trait;
use geonex_shared::config::AgentSettings;
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

use super::{Executor, Job, Outcome};

/// Runs the command template once per container.
pub struct ProcessExecutor {
    command: Vec<String>,
    /// Run after a timeout to stop what the command started (empty: nothing).
    stop_command: Vec<String>,
    timeout: Duration,
    stop_timeout: Duration,
    log_tail_bytes: usize,
}

impl ProcessExecutor {
    pub fn from_settings(s: &AgentSettings) -> anyhow::Result<Self> {
        let command: Vec<String> = s.command.split_whitespace().map(str::to_owned).collect();
        if command.is_empty() {
            bail!("GEONEX_AGENT__COMMAND is empty");
        }
        Ok(Self {
            command,
            stop_command: s.stop_command.split_whitespace().map(str::to_owned).collect(),
            timeout: Duration::from_secs(s.timeout_secs.max(1)),
            stop_timeout: Duration::from_secs(s.stop_timeout_secs.max(1)),
            log_tail_bytes: s.log_tail_bytes.clamp(0, super::MAX_LOG_TAIL_BYTES),
        })
    }
}

/// Fills the placeholders of a command template.
fn render(template: &[String], job: &Job<'_>) -> Vec<String> {
    let input = job.object.url();
    let cid = job.container_id.to_string();
    template
        .iter()
        .map(|w| {
            w.replace("{input_url}", &input)
                .replace("{s3_output}", job.s3_output)
                .replace("{runner_id}", job.runner_id)
                .replace("{image_name}", job.image_name)
                .replace("{container_id}", &cid)
        })
        .collect()
}

#[async_trait]
impl Executor for ProcessExecutor {
    async fn run(&self, job: &Job<'_>) -> Outcome {
        let argv = render(&self.command, job);
        let stop = Stop { argv: render(&self.stop_command, job), timeout: self.stop_timeout };
        let (exit_code, log_tail) = execute(&argv, self.timeout, &stop, self.log_tail_bytes).await;
        Outcome { exit_code, log_tail }
    }

    fn label(&self) -> String {
        format!("command {}", self.command.first().map(String::as_str).unwrap_or(""))
    }
}

/// What ends a container that ran past its timeout, besides killing its process
/// group: with `docker run` that group is only the client, and the container
/// goes on running in the docker daemon until it is stopped by name.
struct Stop {
    /// The stop command, rendered; empty runs nothing.
    argv: Vec<String>,
    timeout: Duration,
}

/// Starts a program in its own process group, so a timeout ends everything it
/// started (a shell script's children too), not just the first process.
fn spawn_in_group(program: &str, args: &[String], output: bool) -> std::io::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(program);
    #[cfg(unix)]
    command.process_group(0);
    let pipe = || if output { Stdio::piped() } else { Stdio::null() };
    command.args(args).stdin(Stdio::null()).stdout(pipe()).stderr(pipe()).kill_on_drop(true).spawn()
}

/// Kills a child's whole process group, then the child.
async fn kill_group(child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    let _ = child.kill().await;
}

/// Runs the stop command within its own timeout; says how it went, for the log tail.
async fn run_stop(stop: &Stop) -> String {
    let Some((program, args)) = stop.argv.split_first() else {
        return String::new();
    };
    let mut child = match spawn_in_group(program, args, false) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(program, error = %e, "could not start the stop command");
            return format!("; could not start the stop command {program}: {e}");
        }
    };
    match tokio::time::timeout(stop.timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => "; stopped".to_owned(),
        Ok(Ok(status)) => {
            tracing::warn!(program, code = ?status.code(), "the stop command failed");
            format!("; the stop command failed ({status})")
        }
        Ok(Err(e)) => format!("; the stop command failed: {e}"),
        Err(_) => {
            kill_group(&mut child).await;
            tracing::warn!(program, timeout_secs = stop.timeout.as_secs(), "the stop command timed out");
            format!("; the stop command timed out after {}s", stop.timeout.as_secs())
        }
    }
}

/// Runs a program; `None` as exit code when it could not start, was killed by a
/// signal or ran past the timeout. Past the timeout its process group is killed
/// and then the stop command runs. The tail keeps the last bytes of its output.
async fn execute(argv: &[String], timeout: Duration, stop: &Stop, tail_bytes: usize) -> (Option<i32>, String) {
    let Some((program, args)) = argv.split_first() else {
        return (None, "empty command".into());
    };
    let child = spawn_in_group(program, args, true);
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (None, format!("could not start {program}: {e}")),
    };
    let tail = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut readers = Vec::new();
    let streams: Vec<Box<dyn tokio::io::AsyncRead + Unpin + Send>> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for mut stream in streams {
        let tail = tail.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut t = tail.lock().await;
                t.extend_from_slice(&buf[..n]);
                let excess = t.len().saturating_sub(tail_bytes);
                t.drain(..excess);
            }
        }));
    }
    let code = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status.code(),
        Ok(Err(_)) => None,
        Err(_) => {
            kill_group(&mut child).await;
            let stopped = run_stop(stop).await;
            let mut t = tail.lock().await;
            t.extend_from_slice(format!("\n[killed after {}s{stopped}]", timeout.as_secs()).as_bytes());
            let excess = t.len().saturating_sub(tail_bytes);
            t.drain(..excess);
            None
        }
    };
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
    }
    let bytes = tail.lock().await.clone();
    (code, String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use uuid::Uuid;

    use super::*;
    use crate::agent::notification::NewObject;

    #[test]
    fn the_template_gets_the_containers_values() {
        let object = NewObject { bucket: "noaa-goes16".into(), key: "ABI/x.nc".into(), sequencer: "01".into() };
        let container_id = Uuid::nil();
        let job = Job { container_id, object: &object, runner_id: "r-1", image_name: "geonex/fire:1", s3_output: "s3://geonex/o" };
        let template: Vec<String> =
            "run --name geonex-{container_id} -e IN={input_url} -e OUT={s3_output} {runner_id} {image_name}"
                .split_whitespace()
                .map(str::to_owned)
                .collect();
        assert_eq!(render(&template, &job).join(" "), format!(
            "run --name geonex-{container_id} -e IN=s3://noaa-goes16/ABI/x.nc -e OUT=s3://geonex/o r-1 geonex/fire:1"
        ));
    }

    #[tokio::test]
    async fn a_program_reports_its_exit_code_and_a_bounded_tail_and_a_slow_one_is_killed() {
        let argv = |s: &str| vec!["sh".to_owned(), "-c".to_owned(), s.to_owned()];
        let none = Stop { argv: Vec::new(), timeout: Duration::from_secs(1) };
        let (code, tail) = execute(&argv("printf 0123456789; echo err >&2; exit 7"), Duration::from_secs(10), &none, 8).await;
        assert_eq!(code, Some(7));
        assert_eq!(tail.len(), 8, "{tail}");
        let begun = Instant::now();
        let (code, tail) = execute(&argv("sleep 30; echo never"), Duration::from_millis(200), &none, 100).await;
        assert_eq!(code, None);
        // The whole group went: nothing held the output open until the readers gave up.
        assert!(begun.elapsed() < Duration::from_secs(2), "{:?}", begun.elapsed());
        assert!(tail.contains("killed"), "{tail}");
        let (code, _) = execute(&["/no/such/program".to_owned()], Duration::from_secs(1), &none, 100).await;
        assert_eq!(code, None);
    }

    #[tokio::test]
    async fn the_stop_command_runs_only_after_a_timeout_and_is_bounded_by_its_own() {
        let dir = std::env::temp_dir().join(format!("geonex-stop-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("stopped");
        let sh = |s: &str| vec!["sh".to_owned(), "-c".to_owned(), s.to_owned()];
        let stop = Stop { argv: sh(&format!("echo geonex-c1 >> {}", marker.display())), timeout: Duration::from_secs(5) };

        let (code, _) = execute(&sh("exit 0"), Duration::from_secs(10), &stop, 100).await;
        assert_eq!(code, Some(0));
        assert!(!marker.exists(), "no stop command for a container that ended by itself");

        let (code, tail) = execute(&sh("sleep 30"), Duration::from_millis(200), &stop, 100).await;
        assert_eq!(code, None);
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "geonex-c1\n");
        assert!(tail.contains("killed") && tail.contains("stopped"), "{tail}");

        let hanging = Stop { argv: sh("sleep 30"), timeout: Duration::from_millis(300) };
        let begun = Instant::now();
        let (code, tail) = execute(&sh("sleep 30"), Duration::from_millis(200), &hanging, 200).await;
        assert_eq!(code, None);
        assert!(begun.elapsed() < Duration::from_secs(3), "{:?}", begun.elapsed());
        assert!(tail.contains("stop command timed out"), "{tail}");

        let missing = Stop { argv: vec!["/no/such/docker".to_owned()], timeout: Duration::from_secs(1) };
        let (_, tail) = execute(&sh("sleep 30"), Duration::from_millis(200), &missing, 200).await;
        assert!(tail.contains("could not start the stop command"), "{tail}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
