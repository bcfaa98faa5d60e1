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
//! * rendered pages of `/describe-runners`, by ETag, for `api.revision_cache_ms`
//!   as well: however many dashboards poll a page without an ETag, it is
//!   rendered once in that time (its costs and running seconds, which grow with
//!   the clock, are that much behind at most);
//! * for starts, for `api.revision_cache_ms` too: which images are approved
//!   (only the approval is kept: a pending or rejected image is read afresh,
//!   so an approval works at once and a later decision within that time), and
//!   the budgets spent this month, so that while none is spent a start reads
//!   nothing to check them.
//!
//! A time of 0 turns a cache off.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use geonex_shared::store::cost::BudgetRecord;
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

/// Values by key, each kept for the TTL after it was put.
pub struct Keyed<K, V> {
    ttl: Duration,
    held: Mutex<HashMap<K, (V, Instant)>>,
}

/// More keys than any deployment uses at once; past it the cache starts over.
const MAX_KEYS: usize = 10_000;

impl<K: std::hash::Hash + Eq, V: Clone> Keyed<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, held: Mutex::new(HashMap::new()) }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(key).filter(|(_, at)| at.elapsed() < self.ttl).map(|(v, _)| v.clone())
    }

    pub fn put(&self, key: K, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.len() >= MAX_KEYS {
            held.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if held.len() >= MAX_KEYS {
                held.clear();
            }
        }
        held.insert(key, (value, Instant::now()));
    }

    pub fn forget<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// The last few rendered pages, by ETag, each for the TTL after it was rendered.
pub struct Pages {
    capacity: usize,
    ttl: Duration,
    held: Mutex<VecDeque<(String, Bytes, Instant)>>,
}

impl Pages {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self { capacity, ttl, held: Mutex::new(VecDeque::with_capacity(capacity)) }
    }

    pub fn get(&self, tag: &str) -> Option<Bytes> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.iter().find(|(t, _, at)| t == tag && at.elapsed() < self.ttl).map(|(_, b, _)| b.clone())
    }

    pub fn put(&self, tag: String, page: Bytes) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|(t, _, at)| *t != tag && at.elapsed() < self.ttl);
        if held.len() >= self.capacity {
            held.pop_front();
        }
        held.push_back((tag, page, Instant::now()));
    }
}

/// The API process's caches.
pub struct Caches {
    pub tokens: Keyed<Uuid, TokenRecord>,
    pub runners_revision: Fresh<i64>,
    pub commands_revision: Fresh<i64>,
    pub runner_pages: Pages,
    /// Images known to be approved.
    pub approved: Keyed<String, ()>,
    /// The month and the budgets spent in it.
    pub spent_budgets: Fresh<(String, Vec<BudgetRecord>)>,
}

impl Caches {
    pub fn new(token_ttl: Duration, read_ttl: Duration, pages: usize) -> Self {
        Self {
            tokens: Keyed::new(token_ttl),
            runners_revision: Fresh::new(read_ttl),
            commands_revision: Fresh::new(read_ttl),
            runner_pages: Pages::new(pages, read_ttl),
            approved: Keyed::new(read_ttl),
            spent_budgets: Fresh::new(read_ttl),
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
        let pages = Pages::new(2, Duration::from_millis(100));
        pages.put("a".into(), Bytes::from_static(b"1"));
        pages.put("b".into(), Bytes::from_static(b"2"));
        pages.put("c".into(), Bytes::from_static(b"3"));
        assert_eq!(pages.get("a"), None);
        assert_eq!(pages.get("c").as_deref(), Some(&b"3"[..]));
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(pages.get("c"), None, "a page older than the TTL is rendered again");
        assert_eq!(Pages::new(0, Duration::from_secs(1)).get("a"), None);
    }
}
