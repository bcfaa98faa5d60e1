//! Folder adapter of the object storage port: bucket `b` is the directory
//! `root/b`, and an object is a regular file below it, its key the path relative
//! to that directory with `/` separators. Listings page like S3's ListObjectsV2:
//! keys in byte order, up to 1000 entries (objects and common prefixes) a page,
//! the continuation token being the last entry returned.
//!
//! Symbolic links are skipped (a bucket cannot reach outside the root), and so
//! are empty directories: like S3, a folder exists only through its objects.
//! A page is found without reading the whole bucket: the walk starts at the
//! deepest directory the prefix names, skips the directories that lie wholly
//! before the continuation token and stops once the page is full. The sorted
//! contents of directories larger than a page are kept between pages while the
//! directory is unchanged, so a folder of many files is read once per listing,
//! not once per page.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use super::{ListPage, ObjectStore, StorageError, StorageErrorKind};

/// S3's page size.
const PAGE_SIZE: usize = 1000;

pub struct FolderObjectStore {
    root: PathBuf,
    cache: Arc<DirCache>,
}

impl FolderObjectStore {
    /// Buckets are the directories directly under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), cache: Arc::new(DirCache::default()) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[async_trait]
impl ObjectStore for FolderObjectStore {
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
    ) -> Result<ListPage, StorageError> {
        let (root, cache, bucket, prefix) = (self.root.clone(), self.cache.clone(), bucket.to_owned(), prefix.to_owned());
        // S3 ignores an empty delimiter.
        let delimiter = delimiter.filter(|d| !d.is_empty()).map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            list_page(&root, &cache, &bucket, &prefix, delimiter.as_deref(), token.as_deref())
        })
        .await
            .map_err(|e| StorageError { kind: StorageErrorKind::Other, message: format!("listing task failed: {e}") })?
    }

    fn label(&self) -> String {
        format!("folders under {}", self.root.display())
    }
}

/// A bucket name that names a directory directly under the root.
fn valid_bucket(bucket: &str) -> bool {
    !bucket.is_empty()
        && !bucket.starts_with('.')
        && !bucket.contains("..")
        && !bucket.contains(['/', '\\', '\0'])
}

fn list_page(
    root: &Path,
    cache: &DirCache,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
    after: Option<&str>,
) -> Result<ListPage, StorageError> {
    if !valid_bucket(bucket) {
        return Err(StorageError {
            kind: StorageErrorKind::NoSuchBucket,
            message: format!("NoSuchBucket: {bucket:?} cannot name a folder under {}", root.display()),
        });
    }
    let bucket_dir = root.join(bucket);
    match std::fs::symlink_metadata(&bucket_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(StorageError {
                kind: StorageErrorKind::NoSuchBucket,
                message: format!("NoSuchBucket: {} is not a directory", bucket_dir.display()),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StorageError {
                kind: StorageErrorKind::NoSuchBucket,
                message: format!("NoSuchBucket: no folder {}", bucket_dir.display()),
            });
        }
        Err(e) => return Err(io_error(&bucket_dir, &e)),
    }
    let mut walk = Walk { cache, prefix, delimiter, after, entries: Vec::new() };
    // The deepest directory the prefix names in full; no key lies elsewhere.
    let base = match prefix.rfind('/') {
        Some(i) => &prefix[..=i],
        None => "",
    };
    if let Some(dir) = folder_of(&bucket_dir, base)? {
        walk.dir(&dir, base).map_err(|(path, e)| io_error(&path, &e))?;
    }
    let mut page = ListPage::default();
    if walk.entries.len() > PAGE_SIZE {
        walk.entries.truncate(PAGE_SIZE);
        page.next = walk.entries.last().map(|e| e.name.clone());
    }
    for entry in walk.entries {
        match entry.size {
            Some(size) => {
                page.objects += 1;
                page.bytes = page.bytes.saturating_add(i64::try_from(size).unwrap_or(i64::MAX));
            }
            None => page.common_prefixes.push(entry.name),
        }
    }
    Ok(page)
}

/// The directory of `base` (a key prefix ending in '/', or empty), or `None`
/// when no such directory exists, so that no key has this prefix.
fn folder_of(bucket_dir: &Path, base: &str) -> Result<Option<PathBuf>, StorageError> {
    let mut dir = bucket_dir.to_path_buf();
    let Some(folders) = base.strip_suffix('/') else {
        return Ok(Some(dir));
    };
    for name in folders.split('/') {
        // File names are never empty, "." or "..": no key has such a segment.
        if name.is_empty() || name == "." || name == ".." || name.contains('\0') {
            return Ok(None);
        }
        dir.push(name);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&dir, &e)),
        }
    }
    Ok(Some(dir))
}

fn io_error(path: &Path, e: &io::Error) -> StorageError {
    /// Too many open files (process, system): the same on Linux and macOS.
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    let kind = match e.kind() {
        io::ErrorKind::PermissionDenied => StorageErrorKind::AccessDenied,
        io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::ResourceBusy => {
            StorageErrorKind::Transient
        }
        _ if cfg!(unix) && matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) => StorageErrorKind::Transient,
        _ => StorageErrorKind::Other,
    };
    StorageError { kind, message: format!("listing {}: {e}", path.display()) }
}

/// One entry of a page: an object with its size, or a common prefix.
struct Entry {
    name: String,
    size: Option<u64>,
}

/// A child of a directory, ordered as its keys are: a directory `d` sorts as
/// `d/`, so that `a.txt < a/… < a0`.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Child {
    /// The name, with a '/' after a directory's.
    key: Box<str>,
    /// The name as the file system has it, when it is not UTF-8.
    raw: Option<Box<OsStr>>,
}

impl Child {
    fn is_dir(&self) -> bool {
        self.key.ends_with('/')
    }

    fn name(&self) -> &OsStr {
        match &self.raw {
            Some(raw) => raw,
            None => OsStr::new(self.key.strip_suffix('/').unwrap_or(&self.key)),
        }
    }
}

/// The directories and regular files of `dir`, in key order.
fn read_children(dir: &Path) -> Result<Vec<Child>, WalkError> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        // Removed while listing: it holds no keys any more.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err((dir.to_path_buf(), e)),
    };
    let mut children = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| (dir.to_path_buf(), e))?;
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err((entry.path(), e)),
        };
        // Symbolic links (which could lead out of the root), sockets, devices: not objects.
        if !(file_type.is_file() || file_type.is_dir()) {
            continue;
        }
        let name = entry.file_name();
        let (mut key, raw) = match name.into_string() {
            Ok(key) => (key, None),
            Err(raw) => (raw.to_string_lossy().into_owned(), Some(raw.into_boxed_os_str())),
        };
        if file_type.is_dir() {
            key.push('/');
        }
        children.push(Child { key: key.into_boxed_str(), raw });
    }
    children.sort_unstable();
    Ok(children)
}

/// How many large directories' contents are kept (and how many entries in all,
/// some 100 MB), and for how long at most.
const CACHED_DIRS: usize = 32;
const CACHED_CHILDREN: usize = 2_000_000;
const CACHE_TTL: Duration = Duration::from_secs(30);
/// A directory modified this recently is not kept: a change within the same
/// tick of the file system's clock would not show in its modification time.
const SETTLED_AFTER: Duration = Duration::from_secs(2);

struct CachedDir {
    modified: SystemTime,
    read_at: Instant,
    children: Arc<Vec<Child>>,
}

/// The sorted contents of directories with more children than a page, reused
/// while their modification time is unchanged.
#[derive(Default)]
struct DirCache {
    dirs: Mutex<HashMap<PathBuf, CachedDir>>,
}

fn modified(dir: &Path) -> Option<SystemTime> {
    std::fs::symlink_metadata(dir).and_then(|m| m.modified()).ok()
}

impl DirCache {
    fn children(&self, dir: &Path) -> Result<Arc<Vec<Child>>, WalkError> {
        let cached = {
            let dirs = self.dirs.lock().unwrap_or_else(PoisonError::into_inner);
            dirs.get(dir).map(|c| (c.modified, c.read_at, c.children.clone()))
        };
        if let Some((when, read_at, children)) = cached
            && read_at.elapsed() < CACHE_TTL
            && modified(dir) == Some(when)
        {
            return Ok(children);
        }
        // Taken before reading, so that a change during the read is seen next time.
        let when = modified(dir);
        let children = Arc::new(read_children(dir)?);
        let mut dirs = self.dirs.lock().unwrap_or_else(PoisonError::into_inner);
        dirs.remove(dir);
        dirs.retain(|_, c| c.read_at.elapsed() < CACHE_TTL);
        let keep = (PAGE_SIZE + 1..=CACHED_CHILDREN).contains(&children.len());
        if let Some(when) = when
            && keep
            && when.elapsed().is_ok_and(|age| age >= SETTLED_AFTER)
        {
            let held = |dirs: &HashMap<PathBuf, CachedDir>| dirs.values().map(|c| c.children.len()).sum::<usize>();
            while dirs.len() >= CACHED_DIRS || held(&dirs) + children.len() > CACHED_CHILDREN {
                let Some(oldest) = dirs.iter().min_by_key(|(_, c)| c.read_at).map(|(p, _)| p.clone()) else {
                    break;
                };
                dirs.remove(&oldest);
            }
            dirs.insert(dir.to_path_buf(), CachedDir { modified: when, read_at: Instant::now(), children: children.clone() });
        }
        Ok(children)
    }
}

enum Flow {
    Continue,
    /// The page is full (with one entry more, which tells that another page follows).
    Full,
}

type WalkError = (PathBuf, io::Error);

struct Walk<'a> {
    cache: &'a DirCache,
    prefix: &'a str,
    delimiter: Option<&'a str>,
    /// The continuation token: only entries after it belong to the page.
    after: Option<&'a str>,
    entries: Vec<Entry>,
}

impl Walk<'_> {
    /// The common prefix a key (or a directory's `d/`) rolls up into, when the
    /// delimiter occurs in it after the prefix.
    fn rollup(&self, key: &str) -> Option<String> {
        let d = self.delimiter?;
        let rest = key.get(self.prefix.len()..)?;
        rest.find(d).map(|i| format!("{}{}", self.prefix, &rest[..i + d.len()]))
    }

    fn before_token(&self, entry: &str) -> bool {
        self.after.is_some_and(|t| entry <= t)
    }

    /// Adds an entry unless the token or the previous entry already covers it.
    fn push(&mut self, entry: Entry) -> Flow {
        if self.before_token(&entry.name) || self.entries.last().is_some_and(|e| e.name == entry.name) {
            return Flow::Continue;
        }
        self.entries.push(entry);
        if self.entries.len() > PAGE_SIZE { Flow::Full } else { Flow::Continue }
    }

    /// Lists `dir`, whose keys start with `base` (empty or ending in '/'), in key order.
    fn dir(&mut self, dir: &Path, base: &str) -> Result<Flow, WalkError> {
        // Below the directory the prefix names, every key has the prefix; in it,
        // only names that continue the prefix do.
        let wanted = self.prefix.get(base.len()..).unwrap_or("");
        // The token, as a name in this directory.
        let after = match self.after {
            Some(t) => match t.strip_prefix(base) {
                Some(name) => Some(name),
                None if t < base => None,
                // Every key here sorts before the token.
                None => return Ok(Flow::Continue),
            },
            None => None,
        };
        let children = self.cache.children(dir)?;
        let mut start = children.partition_point(|c| &*c.key < wanted);
        if let Some(t) = after {
            // Past the names up to the token, but not past the directory holding it.
            let past = children.partition_point(|c| &*c.key <= t);
            let holder = past.checked_sub(1).filter(|&i| children[i].is_dir() && t.starts_with(&*children[i].key));
            start = start.max(holder.unwrap_or(past));
        }
        for child in children[start..].iter().take_while(|c| c.key.starts_with(wanted)) {
            let key = format!("{base}{}", child.key);
            let path = dir.join(child.name());
            let flow = if child.is_dir() {
                match self.rollup(&key) {
                    // Every key below rolls up into one common prefix.
                    Some(common) => {
                        if self.before_token(&common) || self.entries.last().is_some_and(|e| e.name == common) {
                            Flow::Continue
                        } else if has_file(&path)? {
                            self.push(Entry { name: common, size: None })
                        } else {
                            Flow::Continue
                        }
                    }
                    None => self.dir(&path, &key)?,
                }
            } else {
                let size = match std::fs::symlink_metadata(&path) {
                    // Replaced by something else since the directory was read.
                    Ok(m) if !m.is_file() => continue,
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err((path, e)),
                };
                let entry = match self.rollup(&key) {
                    Some(common) => Entry { name: common, size: None },
                    None => Entry { name: key, size: Some(size) },
                };
                self.push(entry)
            };
            if let Flow::Full = flow {
                return Ok(Flow::Full);
            }
        }
        Ok(Flow::Continue)
    }
}

/// Whether a regular file lies anywhere below `dir` (not through symbolic links).
fn has_file(dir: &Path) -> Result<bool, WalkError> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err((dir.to_path_buf(), e)),
    };
    let mut subdirs = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| (dir.to_path_buf(), e))?;
        match entry.file_type() {
            Ok(t) if t.is_file() => return Ok(true),
            Ok(t) if t.is_dir() => subdirs.push(entry.path()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err((entry.path(), e)),
        }
    }
    for sub in subdirs {
        if has_file(&sub)? {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use geonex_shared::store::usage::S3Output;

    use super::*;
    use crate::s3usage::{Scanner, Totals};

    /// A fresh directory under the system's temporary directory, removed on drop.
    struct TempRoot(PathBuf);

    impl TempRoot {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("geonex-folder-store-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        /// Writes `root/bucket/key` with `size` bytes.
        fn write(&self, bucket: &str, key: &str, size: usize) {
            let path = self.0.join(bucket).join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, vec![b'x'; size]).unwrap();
        }

        fn store(&self) -> FolderObjectStore {
            FolderObjectStore::new(&self.0)
        }
    }

    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Dates back every folder below `dir`, as if written long ago.
    fn age(dir: &Path) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                age(&entry.path());
            }
        }
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::open(dir).unwrap().set_modified(long_ago).unwrap();
    }

    fn cached(store: &FolderObjectStore) -> Vec<PathBuf> {
        store.cache.dirs.lock().unwrap().keys().cloned().collect()
    }

    /// Writes the keys into `bucket` and returns them with their sizes.
    fn fill(root: &TempRoot, bucket: &str, keys: &[(&str, usize)]) -> BTreeMap<String, usize> {
        for (k, size) in keys {
            root.write(bucket, k, *size);
        }
        keys.iter().map(|(k, s)| (k.to_string(), *s)).collect()
    }

    /// Every page of a listing, following the continuation tokens.
    async fn pages(store: &FolderObjectStore, bucket: &str, prefix: &str, delimiter: Option<&str>) -> Vec<ListPage> {
        let mut pages = Vec::new();
        let mut token = None;
        loop {
            let page = store.list_page(bucket, prefix, delimiter, token.take()).await.unwrap();
            token = page.next.clone();
            pages.push(page);
            if token.is_none() {
                return pages;
            }
            assert!(pages.len() < 10_000, "the listing does not end");
        }
    }

    /// The pages S3 would return for these keys, computed the obvious way.
    fn expected_pages(keys: &BTreeMap<String, usize>, prefix: &str, delimiter: Option<&str>) -> Vec<ListPage> {
        let mut entries: Vec<(String, Option<usize>)> = Vec::new();
        for (k, size) in keys.iter().filter(|(k, _)| k.starts_with(prefix)) {
            let rest = &k[prefix.len()..];
            match delimiter.and_then(|d| rest.find(d).map(|i| format!("{prefix}{}", &rest[..i + d.len()]))) {
                Some(common) if entries.last().map(|e| &e.0) == Some(&common) => {}
                Some(common) => entries.push((common, None)),
                None => entries.push((k.clone(), Some(*size))),
            }
        }
        let chunks: Vec<_> = entries.chunks(PAGE_SIZE).collect();
        let mut pages: Vec<ListPage> = chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| ListPage {
                objects: chunk.iter().filter(|e| e.1.is_some()).count() as i64,
                bytes: chunk.iter().filter_map(|e| e.1).sum::<usize>() as i64,
                common_prefixes: chunk.iter().filter(|e| e.1.is_none()).map(|e| e.0.clone()).collect(),
                next: (i + 1 < chunks.len()).then(|| chunk[chunk.len() - 1].0.clone()),
            })
            .collect();
        if pages.is_empty() {
            pages.push(ListPage::default());
        }
        pages
    }

    const NESTED: &[(&str, usize)] = &[
        ("out/a1/x", 10),
        ("out/a1/y/z", 20),
        ("out/a1.txt", 3),
        ("out/ab", 40),
        ("out/b.txt", 50),
        ("out/c/d/e/f.nc", 60),
        ("out_v2/g", 70),
        ("outside", 80),
        ("top.json", 0),
    ];

    #[tokio::test]
    async fn files_are_counted_with_their_sizes() {
        let root = TempRoot::new();
        fill(&root, "bkt", NESTED);
        let store = root.store();
        let all = store.list_page("bkt", "", None, None).await.unwrap();
        assert_eq!(all, ListPage { objects: 9, bytes: 333, common_prefixes: vec![], next: None });
        let out = store.list_page("bkt", "out/", None, None).await.unwrap();
        assert_eq!((out.objects, out.bytes, out.next), (6, 183, None));
        let deep = store.list_page("bkt", "out/c/d/", None, None).await.unwrap();
        assert_eq!((deep.objects, deep.bytes), (1, 60));
        let exact = store.list_page("bkt", "out/c/d/e/f.nc", None, None).await.unwrap();
        assert_eq!((exact.objects, exact.bytes), (1, 60));
        for nothing in ["nope/", "out/zz", "out/c/d/e/f.nc/", "out//", "/out/", "out/../out_v2/", "./out/"] {
            assert_eq!(store.list_page("bkt", nothing, None, None).await.unwrap(), ListPage::default(), "{nothing}");
        }
        assert_eq!(store.label(), format!("folders under {}", root.0.display()));
    }

    #[tokio::test]
    async fn a_delimiter_rolls_up_folders_that_hold_files() {
        let root = TempRoot::new();
        fill(&root, "bkt", NESTED);
        std::fs::create_dir_all(root.0.join("bkt/out/empty/deeper")).unwrap();
        let store = root.store();
        let out = store.list_page("bkt", "out/", Some("/"), None).await.unwrap();
        assert_eq!(
            out,
            ListPage { objects: 3, bytes: 93, common_prefixes: vec!["out/a1/".into(), "out/c/".into()], next: None }
        );
        let top = store.list_page("bkt", "", Some("/"), None).await.unwrap();
        assert_eq!(
            top,
            ListPage { objects: 2, bytes: 80, common_prefixes: vec!["out/".into(), "out_v2/".into()], next: None }
        );
        // Another delimiter splits names as well as folders.
        let dots = store.list_page("bkt", "out/", Some("."), None).await.unwrap();
        assert_eq!(
            dots,
            ListPage {
                objects: 3,
                bytes: 70,
                common_prefixes: vec!["out/a1.".into(), "out/b.".into(), "out/c/d/e/f.".into()],
                next: None
            }
        );
    }

    #[tokio::test]
    async fn a_prefix_may_end_in_the_middle_of_a_name() {
        let root = TempRoot::new();
        let keys = fill(&root, "bkt", NESTED);
        let store = root.store();
        let flat = store.list_page("bkt", "out/a", None, None).await.unwrap();
        assert_eq!((flat.objects, flat.bytes, flat.common_prefixes.len()), (4, 73, 0));
        let split = store.list_page("bkt", "out/a", Some("/"), None).await.unwrap();
        assert_eq!(split, ListPage { objects: 2, bytes: 43, common_prefixes: vec!["out/a1/".into()], next: None });
        let bucket_level = store.list_page("bkt", "out", Some("/"), None).await.unwrap();
        assert_eq!(
            bucket_level,
            ListPage { objects: 1, bytes: 80, common_prefixes: vec!["out/".into(), "out_v2/".into()], next: None }
        );
        for prefix in ["", "o", "out", "out/", "out/a", "out/a1", "out/a1/", "out/a1/y", "out/c/d", "t"] {
            for delimiter in [None, Some("/"), Some("."), Some("a1")] {
                assert_eq!(
                    pages(&store, "bkt", prefix, delimiter).await,
                    expected_pages(&keys, prefix, delimiter),
                    "prefix {prefix:?}, delimiter {delimiter:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn pages_hold_1000_entries_and_together_the_whole_listing() {
        let root = TempRoot::new();
        // Names in many folders and in one big one, sizes that differ from page to page.
        let names: Vec<(String, usize)> = (0..2600)
            .map(|i| (i % 4, i / 4))
            .map(|(kind, j)| match kind {
                0 => (format!("out/big/f{j:05}.nc"), j % 97),
                1 => (format!("out/d{:03}/f{j}", j % 400), j % 89 + 1),
                2 => (format!("out/d{j:03}.json"), 7),
                _ => (format!("out/e/{}/{j}", j % 11), j % 13),
            })
            .collect();
        let refs: Vec<(&str, usize)> = names.iter().map(|(k, s)| (k.as_str(), *s)).collect();
        let keys = fill(&root, "bkt", &refs);
        let store = root.store();
        let whole = pages(&store, "bkt", "", None).await;
        assert_eq!(whole.len(), keys.len().div_ceil(PAGE_SIZE));
        assert_eq!(whole.iter().map(|p| p.objects).sum::<i64>(), keys.len() as i64);
        assert_eq!(whole.iter().map(|p| p.bytes).sum::<i64>(), keys.values().sum::<usize>() as i64);
        assert!(whole[..whole.len() - 1].iter().all(|p| p.objects == PAGE_SIZE as i64));
        // Folders just written are read for each page; settled large ones are kept.
        for settled in [false, true] {
            if settled {
                age(&root.0);
            }
            for prefix in ["", "out/", "out/big/", "out/d", "out/d1", "out/e/"] {
                for delimiter in [None, Some("/")] {
                    let got = pages(&store, "bkt", prefix, delimiter).await;
                    let expected = expected_pages(&keys, prefix, delimiter);
                    assert_eq!(got, expected, "prefix {prefix:?}, delimiter {delimiter:?}, settled {settled}");
                    let mut folders: Vec<_> = got.iter().flat_map(|p| p.common_prefixes.iter()).collect();
                    let listed = folders.len();
                    folders.dedup();
                    assert_eq!(folders.len(), listed, "a folder listed twice");
                }
            }
            let kept = if settled { vec![root.0.join("bkt/out")] } else { vec![] };
            assert_eq!(cached(&store), kept);
        }
        assert_eq!(keys.len(), 2600);
        // The delimited listing of out/ has 400 + 2 folders and 650 files: two pages.
        let split = pages(&store, "bkt", "out/", Some("/")).await;
        assert_eq!(split.len(), 2);
        assert_eq!(split.iter().map(|p| p.common_prefixes.len()).sum::<usize>(), 402);
        assert_eq!(split.iter().map(|p| p.objects).sum::<i64>(), 650);
    }

    #[tokio::test]
    async fn a_kept_folder_is_read_again_once_it_changes() {
        let root = TempRoot::new();
        let names: Vec<String> = (0..2500).map(|i| format!("big/f{i:04}")).collect();
        let refs: Vec<(&str, usize)> = names.iter().map(|k| (k.as_str(), 2)).collect();
        fill(&root, "bkt", &refs);
        age(&root.0);
        let store = root.store();
        let first = store.list_page("bkt", "big/", None, None).await.unwrap();
        assert_eq!((first.objects, first.next.as_deref()), (1000, Some("big/f0999")));
        assert_eq!(cached(&store), vec![root.0.join("bkt/big")]);
        // One file before the token (not listed any more, as with S3), one after it.
        root.write("bkt", "big/f0000a", 1);
        root.write("bkt", "big/f1500a", 100);
        let second = store.list_page("bkt", "big/", None, first.next).await.unwrap();
        assert_eq!((second.objects, second.bytes, second.next.as_deref()), (1000, 2098, Some("big/f1998")));
        // Changed just now: not kept until it settles.
        assert!(cached(&store).is_empty());
        let last = store.list_page("bkt", "big/", None, second.next).await.unwrap();
        assert_eq!((last.objects, last.bytes, last.next), (501, 1002, None));
    }

    #[tokio::test]
    async fn a_full_last_page_ends_the_listing() {
        let root = TempRoot::new();
        let names: Vec<String> = (0..PAGE_SIZE).map(|i| format!("p/{i:04}")).collect();
        let refs: Vec<(&str, usize)> = names.iter().map(|k| (k.as_str(), 1)).collect();
        fill(&root, "bkt", &refs);
        let got = pages(&root.store(), "bkt", "p/", None).await;
        assert_eq!(got, vec![ListPage { objects: PAGE_SIZE as i64, bytes: PAGE_SIZE as i64, common_prefixes: vec![], next: None }]);
    }

    #[tokio::test]
    async fn a_missing_bucket_is_no_such_bucket() {
        let root = TempRoot::new();
        root.write("bkt", "a", 1);
        std::fs::write(root.0.join("file"), b"x").unwrap();
        let store = root.store();
        for bucket in ["nope", "file"] {
            let e = store.list_page(bucket, "", None, None).await.unwrap_err();
            assert_eq!(e.kind, StorageErrorKind::NoSuchBucket, "{bucket}: {e}");
        }
        let gone = FolderObjectStore::new(root.0.join("not-created"));
        assert_eq!(gone.list_page("bkt", "", None, None).await.unwrap_err().kind, StorageErrorKind::NoSuchBucket);
    }

    #[tokio::test]
    async fn a_bucket_cannot_name_a_folder_outside_the_root() {
        let outer = TempRoot::new();
        std::fs::write(outer.0.join("secret"), b"secret").unwrap();
        std::fs::create_dir_all(outer.0.join("root/bkt/sub")).unwrap();
        std::fs::write(outer.0.join("root/.hidden"), b"x").unwrap();
        std::fs::create_dir_all(outer.0.join("root/.cache/k")).unwrap();
        std::fs::write(outer.0.join("root/.cache/k/v"), b"x").unwrap();
        let store = FolderObjectStore::new(outer.0.join("root"));
        for bucket in ["..", "../root/bkt", "bkt/..", "bkt/sub", ".", ".cache", "", "a..b", "bkt\\sub"] {
            let e = store.list_page(bucket, "", None, None).await.unwrap_err();
            assert_eq!(e.kind, StorageErrorKind::NoSuchBucket, "{bucket:?}: {e}");
        }
        // Nor can a prefix climb out of its bucket.
        assert_eq!(store.list_page("bkt", "../../", None, None).await.unwrap(), ListPage::default());
        assert_eq!(store.list_page("bkt", "sub/../../", None, None).await.unwrap(), ListPage::default());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn symbolic_links_are_not_followed() {
        let outer = TempRoot::new();
        std::fs::create_dir_all(outer.0.join("elsewhere")).unwrap();
        std::fs::write(outer.0.join("elsewhere/big"), vec![0u8; 1000]).unwrap();
        let root = outer.0.join("root");
        std::fs::create_dir_all(root.join("bkt/out")).unwrap();
        std::fs::write(root.join("bkt/out/real"), b"12345").unwrap();
        std::os::unix::fs::symlink(outer.0.join("elsewhere"), root.join("bkt/out/linked-dir")).unwrap();
        std::os::unix::fs::symlink(outer.0.join("elsewhere/big"), root.join("bkt/out/linked-file")).unwrap();
        std::os::unix::fs::symlink(outer.0.join("elsewhere"), root.join("linked-bucket")).unwrap();
        let store = FolderObjectStore::new(&root);
        assert_eq!(
            store.list_page("bkt", "", None, None).await.unwrap(),
            ListPage { objects: 1, bytes: 5, common_prefixes: vec![], next: None }
        );
        assert_eq!(store.list_page("bkt", "out/linked-dir/", None, None).await.unwrap(), ListPage::default());
        let split = store.list_page("bkt", "out/", Some("/"), None).await.unwrap();
        assert!(split.common_prefixes.is_empty(), "{split:?}");
        assert_eq!(store.list_page("linked-bucket", "", None, None).await.unwrap_err().kind, StorageErrorKind::NoSuchBucket);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn names_that_are_not_utf8_are_counted() {
        use std::os::unix::ffi::OsStrExt;
        let root = TempRoot::new();
        let dir = root.0.join("bkt").join(OsStr::from_bytes(b"d\xff"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(OsStr::from_bytes(b"f\xfe")), b"1234").unwrap();
        root.write("bkt", "plain", 3);
        let store = root.store();
        assert_eq!(
            store.list_page("bkt", "", None, None).await.unwrap(),
            ListPage { objects: 2, bytes: 7, common_prefixes: vec![], next: None }
        );
        let split = store.list_page("bkt", "", Some("/"), None).await.unwrap();
        assert_eq!((split.objects, split.common_prefixes), (1, vec!["d\u{fffd}/".to_owned()]));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn an_unreadable_folder_is_access_denied() {
        use std::os::unix::fs::PermissionsExt;
        let root = TempRoot::new();
        root.write("bkt", "locked/a", 1);
        let locked = root.0.join("bkt/locked");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        // Privileged users read it anyway; then there is nothing to check.
        let readable = std::fs::read_dir(&locked).is_ok();
        let listed = root.store().list_page("bkt", "", None, None).await;
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
        match readable {
            true => assert_eq!(listed.unwrap().objects, 1),
            false => assert_eq!(listed.unwrap_err().kind, StorageErrorKind::AccessDenied),
        }
    }

    #[tokio::test]
    async fn a_scan_over_folders_totals_the_files_written() {
        let root = TempRoot::new();
        let mut names: Vec<(String, usize)> =
            (0..1800).map(|i| (format!("GO16/{}/{}/f{i}.nc", i % 3, i % 5), i % 1000 + 1)).collect();
        // One folder big enough to take several pages.
        names.extend((0..1500).map(|i| (format!("GO16/bulk/{i:05}"), 2)));
        names.extend([
            ("GO16/top.json".to_owned(), 1000),
            ("GO16_v2/y".to_owned(), 7),
            ("GO160".to_owned(), 9),
            ("other/x".to_owned(), 5),
        ]);
        let refs: Vec<(&str, usize)> = names.iter().map(|(k, s)| (k.as_str(), *s)).collect();
        let keys = fill(&root, "geonex", &refs);
        let store: Arc<dyn ObjectStore> = Arc::new(root.store());
        let under = |p: &str| Totals {
            objects: keys.keys().filter(|k| k.starts_with(p)).count() as i64,
            bytes: keys.iter().filter(|(k, _)| k.starts_with(p)).map(|(_, s)| *s as i64).sum(),
        };
        let expected = under("GO16/");
        assert_eq!(expected.objects, 1800 + 1500 + 1);
        let output = S3Output::parse("s3_output", "s3://geonex/GO16").unwrap();
        for depth in 0..4 {
            let totals = Scanner::new(store.clone(), 4, depth).scan(&output).await.unwrap();
            assert_eq!(totals, expected, "split depth {depth}");
        }
        let sub = S3Output::parse("s3_output", "s3://geonex/GO16/1").unwrap();
        assert_eq!(Scanner::new(store.clone(), 2, 1).scan(&sub).await.unwrap(), under("GO16/1/"));
        let whole = S3Output::parse("s3_output", "s3://geonex").unwrap();
        assert_eq!(Scanner::new(store.clone(), 3, 2).scan(&whole).await.unwrap(), under(""));
        let missing = S3Output::parse("s3_output", "s3://absent/GO16").unwrap();
        let e = Scanner::new(store, 2, 1).scan(&missing).await.unwrap_err();
        assert_eq!(e.kind, StorageErrorKind::NoSuchBucket);
    }
}
