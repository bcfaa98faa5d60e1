//! The agent's event spool: an append-only file of events not yet accepted by
//! the API, and the offset up to which they were. Events are delivered in the
//! order they were appended; the file is emptied once everything is delivered.
//! It also keeps the ids of containers already run, so a notification delivered
//! twice runs its container once.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tokio::sync::{Mutex, Notify};
use uuid::Uuid;

pub struct Spool {
    dir: PathBuf,
    state: Mutex<State>,
    /// Woken when an event is appended.
    pub appended: Notify,
}

struct State {
    events: File,
    done: File,
    done_ids: HashSet<Uuid>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

impl Spool {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        let open = |name: &str| {
            let p = dir.join(name);
            OpenOptions::new().create(true).append(true).read(true).open(&p).map_err(|e| io("opening", &p, e))
        };
        let events = open("events.jsonl")?;
        let done = open("done")?;
        let mut done_ids = HashSet::new();
        for line in BufReader::new(File::open(dir.join("done"))?).lines() {
            if let Ok(id) = Uuid::parse_str(line?.trim()) {
                done_ids.insert(id);
            }
        }
        Ok(Self { dir: dir.to_owned(), state: Mutex::new(State { events, done, done_ids }), appended: Notify::new() })
    }

    /// Appends an event and syncs it to disk before returning.
    pub async fn append(&self, event: &serde_json::Value) -> std::io::Result<()> {
        let mut line = event.to_string();
        line.push('\n');
        let mut st = self.state.lock().await;
        st.events.write_all(line.as_bytes())?;
        st.events.sync_data()?;
        drop(st);
        self.appended.notify_one();
        Ok(())
    }

    /// Records that a container ran to the end (its finish is in the spool).
    pub async fn mark_done(&self, container_id: Uuid) -> std::io::Result<()> {
        let mut st = self.state.lock().await;
        writeln!(st.done, "{container_id}")?;
        st.done.sync_data()?;
        st.done_ids.insert(container_id);
        Ok(())
    }

    pub async fn is_done(&self, container_id: Uuid) -> bool {
        self.state.lock().await.done_ids.contains(&container_id)
    }

    fn offset_path(&self) -> PathBuf {
        self.dir.join("events.offset")
    }

    fn delivered_offset(&self) -> u64 {
        std::fs::read_to_string(self.offset_path()).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }

    /// The oldest undelivered event and the offset just past it.
    pub async fn next(&self) -> std::io::Result<Option<(serde_json::Value, u64)>> {
        let st = self.state.lock().await;
        let offset = self.delivered_offset();
        let mut reader = BufReader::new(st.events.try_clone()?);
        reader.seek(SeekFrom::Start(offset))?;
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            return Ok(None);
        }
        let end = offset + n as u64;
        match serde_json::from_str(line.trim_end()) {
            Ok(v) => Ok(Some((v, end))),
            // A torn line cannot be sent; skip it rather than block every later event.
            Err(_) => {
                self.write_offset(end)?;
                drop(st);
                Box::pin(self.next()).await
            }
        }
    }

    fn write_offset(&self, offset: u64) -> std::io::Result<()> {
        let tmp = self.dir.join("events.offset.tmp");
        std::fs::write(&tmp, offset.to_string())?;
        std::fs::rename(&tmp, self.offset_path())
    }

    /// Marks everything before `end` delivered; empties the spool when nothing is left.
    pub async fn delivered(&self, end: u64) -> std::io::Result<()> {
        let st = self.state.lock().await;
        if end >= st.events.metadata()?.len() {
            st.events.set_len(0)?;
            st.events.sync_data()?;
            self.write_offset(0)
        } else {
            self.write_offset(end)
        }
    }

    pub async fn pending(&self) -> std::io::Result<bool> {
        let st = self.state.lock().await;
        Ok(st.events.metadata()?.len() > self.delivered_offset())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_come_back_in_order_survive_a_reopen_and_the_file_empties_when_delivered() {
        let dir = std::env::temp_dir().join(format!("geonex-spool-{}", Uuid::new_v4()));
        let spool = Spool::open(&dir).unwrap();
        spool.append(&serde_json::json!({"n": 1})).await.unwrap();
        spool.append(&serde_json::json!({"n": 2})).await.unwrap();
        let (first, end) = spool.next().await.unwrap().unwrap();
        assert_eq!(first["n"], 1);
        spool.delivered(end).await.unwrap();
        let c = Uuid::new_v4();
        spool.mark_done(c).await.unwrap();
        drop(spool);

        let spool = Spool::open(&dir).unwrap();
        assert!(spool.is_done(c).await);
        let (second, end) = spool.next().await.unwrap().unwrap();
        assert_eq!(second["n"], 2);
        spool.delivered(end).await.unwrap();
        assert!(spool.next().await.unwrap().is_none());
        assert!(!spool.pending().await.unwrap());
        assert_eq!(std::fs::metadata(dir.join("events.jsonl")).unwrap().len(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
