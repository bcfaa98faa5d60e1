//! The progress line a bench keeps on standard error while a phase runs:
//! requests sent and commands done so far, redrawn in place.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counters of the phase running now, shared by the load generator (requests
/// sent) and the watcher of the database (commands done).
#[derive(Default)]
pub struct Progress {
    label: Mutex<String>,
    total: AtomicUsize,
    pub sent: AtomicUsize,
    pub done: AtomicUsize,
    started: Mutex<Option<Instant>>,
}

impl Progress {
    /// Starts a phase of `total` requests (or commands).
    pub fn phase(&self, label: &str, total: usize) {
        *self.label.lock().unwrap_or_else(|e| e.into_inner()) = label.to_owned();
        self.total.store(total, Ordering::Relaxed);
        self.sent.store(0, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    fn line(&self) -> String {
        let label = self.label.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let secs = self.started.lock().unwrap_or_else(|e| e.into_inner()).map_or(0.0, |s| s.elapsed().as_secs_f64());
        let total = self.total.load(Ordering::Relaxed);
        let (sent, done) = (self.sent.load(Ordering::Relaxed), self.done.load(Ordering::Relaxed));
        if total == 0 {
            format!("{label}: {secs:.0}s, {sent} requests")
        } else {
            format!("{label}: {secs:.0}s, sent {sent}/{total}, done {done}/{total}")
        }
    }

    /// Redraws the line every quarter second until the returned guard is dropped.
    pub fn show(self: &Arc<Self>) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let (me, flag) = (self.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut last = 0;
            while !flag.load(Ordering::Relaxed) {
                let line = me.line();
                // Pad over the longer line drawn before.
                eprint!("\r{line:<last$}");
                let _ = std::io::stderr().flush();
                last = line.len();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            eprintln!("\r{:<last$}", me.line());
        });
        Ticker { stop, task: Some(task) }
    }
}

/// Keeps the progress line drawn; dropping it draws the final state on its own line.
pub struct Ticker {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Ticker {
    pub async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
