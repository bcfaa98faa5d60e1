//! What the polling path keeps in memory, so that a dashboard's repeated poll
//! costs no database round trip:
//!
//! * verified bearer tokens, for `auth.token_cache_ms` (a logout through this
//!   process forgets its token at once; a revocation elsewhere takes effect
//!   here within that time);
//! * the lists' revision counters, for `api.revision_cache_ms`: a conditional
//!   poll within that time of a change may still get its 304. Any request that
//!   is about to render a page reads the counter afresh first, so a client that
//!   has seen new data is never told afterwards that older data is current;
//! * rendered pages of `/describe-runners`, by ETag: a page is rendered once per
//!   revision (and clock tick) however many dashboards poll it without an ETag.
//!
//! A time of 0 turns a cache off.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use geonex_shared::store::users::TokenRecord;
use uuid::Uuid;

/// A value fetched at most once per `ttl`; callers that find it stale while it
/// is being fetched wait for that fetch instead of making their own.
pub struct Fresh<T> {
    ttl: Duration,
    value: RwLock<Option<(T, Instant)>>,
    gate: tokio::sync::Mutex<()>,
}

impl<T: Clone> Fresh<T> {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, value: RwLock::new(None), gate: tokio::sync::Mutex::new(()) }
    }

    fn current(&self) -> Option<T> {
        let guard = self.value.read().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().filter(|(_, at)| at.elapsed() < self.ttl).map(|(v, _)| v.clone())
    }

    /// The value, fetched by `fetch` when none younger than the TTL is held.
    pub async fn get<E, Fut>(&self, fetch: impl FnOnce() -> Fut) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        if self.ttl.is_zero() {
            return fetch().await;
        }
        if let Some(v) = self.current() {
            return Ok(v);
        }
        let _fetching = self.gate.lock().await;
        if let Some(v) = self.current() {
            return Ok(v);
        }
        let v = fetch().await?;
        self.set(v.clone());
        Ok(v)
    }

    /// Holds `v`, fetched just now by the caller.
    pub fn set(&self, v: T) {
        if !self.ttl.is_zero() {
            *self.value.write().unwrap_or_else(|e| e.into_inner()) = Some((v, Instant::now()));
        }
    }
}

/// Token records by id, each kept for the TTL after it was read.
pub struct Tokens {
    ttl: Duration,
    held: Mutex<HashMap<Uuid, (TokenRecord, Instant)>>,
}

/// More tokens than any deployment polls with at once; past it the cache starts over.
const MAX_TOKENS: usize = 10_000;

impl Tokens {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, held: Mutex::new(HashMap::new()) }
    }

    pub fn get(&self, token_id: Uuid) -> Option<TokenRecord> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&token_id).filter(|(_, at)| at.elapsed() < self.ttl).map(|(r, _)| r.clone())
    }

    pub fn put(&self, record: &TokenRecord) {
        if self.ttl.is_zero() {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.len() >= MAX_TOKENS {
            held.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if held.len() >= MAX_TOKENS {
                held.clear();
            }
        }
        held.insert(record.token_id, (record.clone(), Instant::now()));
    }

    pub fn forget(&self, token_id: Uuid) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).remove(&token_id);
    }
}

/// The last few rendered pages, by ETag.
pub struct Pages {
    capacity: usize,
    held: Mutex<VecDeque<(String, Bytes)>>,
}

impl Pages {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, held: Mutex::new(VecDeque::with_capacity(capacity)) }
    }

    pub fn get(&self, tag: &str) -> Option<Bytes> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.iter().find(|(t, _)| t == tag).map(|(_, b)| b.clone())
    }

    pub fn put(&self, tag: String, page: Bytes) {
        if self.capacity == 0 {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|(t, _)| *t != tag);
        if held.len() >= self.capacity {
            held.pop_front();
        }
        held.push_back((tag, page));
    }
}

/// The API process's caches.
pub struct Caches {
    pub tokens: Tokens,
    pub runners_revision: Fresh<i64>,
    pub commands_revision: Fresh<i64>,
    pub runner_pages: Pages,
}

impl Caches {
    pub fn new(token_ttl: Duration, revision_ttl: Duration, pages: usize) -> Self {
        Self {
            tokens: Tokens::new(token_ttl),
            runners_revision: Fresh::new(revision_ttl),
            commands_revision: Fresh::new(revision_ttl),
            runner_pages: Pages::new(pages),
        }
    }

    /// Nothing kept: every request reads the database.
    pub fn off() -> Self {
        Self::new(Duration::ZERO, Duration::ZERO, 0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_fresh_value_is_fetched_once_per_ttl_even_by_concurrent_callers() {
        let fresh = Arc::new(Fresh::new(Duration::from_millis(200)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (fresh, fetches) = (fresh.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                fresh
                    .get(|| async {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, ()>(fetches.fetch_add(1, Ordering::SeqCst) as i64)
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(0));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        fresh.set(7);
        assert_eq!(fresh.get(|| async { Err::<i64, ()>(()) }).await, Ok(7), "a value set is served");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(fresh.get(|| async { Ok::<_, ()>(8) }).await, Ok(8), "a stale value is fetched again");
        let off = Fresh::new(Duration::ZERO);
        off.set(1);
        assert_eq!(off.get(|| async { Ok::<_, ()>(2) }).await, Ok(2), "a TTL of 0 always fetches");
    }

    #[test]
    fn pages_keep_the_newest_few_by_tag() {
        let pages = Pages::new(2);
        pages.put("a".into(), Bytes::from_static(b"1"));
        pages.put("b".into(), Bytes::from_static(b"2"));
        pages.put("c".into(), Bytes::from_static(b"3"));
        assert_eq!(pages.get("a"), None);
        assert_eq!(pages.get("c").as_deref(), Some(&b"3"[..]));
        assert_eq!(Pages::new(0).get("a"), None);
    }
}
