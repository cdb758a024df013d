//! The content-addressed partial-result cache of a storage node (`storage-node serve
//! --result-cache MIB`): a task's result, kept in memory within a byte budget, answers the
//! same task again without reading storage or entering the sandbox.
//!
//! The key is the SHA-256 of everything the result depends on:
//!
//! * the file's stamp as the node sees it when the task runs: path, device, inode, size,
//!   modification and status-change times (nanoseconds). Any write to the file changes its
//!   status-change time (which no user can set back), so a changed file never meets an
//!   entry of its old content;
//! * the SHA-256 of the built-in pipeline module and of every user plugin the task calls
//!   or parses with;
//! * the encoded guest request: the task (unit, predicate, projection, partial aggregate,
//!   output schema), the file schema, the byte segments read, the CSV dialect, the batch
//!   size.
//!
//! Eviction is least recently used; a result larger than an eighth of the budget is not
//! kept, so one large scan cannot flush the cache of small partial aggregates.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use arrow_array::RecordBatch;
use sha2::{Digest, Sha256};

use crate::node::TaskMetrics;

/// A cache key: SHA-256 (see the module doc).
pub type Key = [u8; 32];

/// The key of a task over the file at `path` (as `stat` reports it now), run by the
/// pipeline `builtin_sha256` with the user plugins `plugin_sha256s`, the encoded `request`
/// and the bytes that follow its segments in the input (`blobs`, the Bloom filter bitsets
/// of `GuestRequest::blobs`). `None` when the file cannot be read: such a task is not
/// cached.
pub fn key(
    path: &Path,
    builtin_sha256: &str,
    plugin_sha256s: &[&str],
    request: &[u8],
    blobs: &[Vec<u8>],
) -> Option<Key> {
    let m = std::fs::metadata(path).ok()?;
    let mut h = Sha256::new();
    h.update(b"pushdown result cache v2\0");
    h.update(path.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(crate::sandbox::file_stamp(&m));
    h.update(builtin_sha256.as_bytes());
    let mut plugins = plugin_sha256s.to_vec();
    plugins.sort_unstable();
    for p in plugins {
        h.update([0]);
        h.update(p.as_bytes());
    }
    h.update((request.len() as u64).to_le_bytes());
    h.update(request);
    for blob in blobs {
        h.update((blob.len() as u64).to_le_bytes());
        h.update(blob);
    }
    Some(h.finalize().into())
}

struct Entry {
    batches: Vec<RecordBatch>,
    metrics: TaskMetrics,
    bytes: u64,
    tick: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Entries by last use.
    by_use: BTreeMap<u64, Key>,
    tick: u64,
    bytes: u64,
}

/// Counters of a [`ResultCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered.
    pub hits: u64,
    /// Lookups not answered.
    pub misses: u64,
    /// Results kept now.
    pub entries: u64,
    /// Their size in bytes (Arrow memory).
    pub bytes: u64,
}

/// Task results by [`Key`], at most `budget` bytes of Arrow memory.
pub struct ResultCache {
    budget: u64,
    inner: Mutex<Inner>,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl ResultCache {
    /// An empty cache of `budget` bytes.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            inner: Mutex::new(Inner::default()),
            hits: 0.into(),
            misses: 0.into(),
        }
    }

    /// The result stored under `key`, marking it recently used.
    pub fn get(&self, key: &Key) -> Option<(Vec<RecordBatch>, TaskMetrics)> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.tick += 1;
        let tick = inner.tick;
        let Some(entry) = inner.entries.get_mut(key) else {
            self.misses.fetch_add(1, Relaxed);
            return None;
        };
        let old = std::mem::replace(&mut entry.tick, tick);
        let found = (entry.batches.clone(), entry.metrics);
        inner.by_use.remove(&old);
        inner.by_use.insert(tick, *key);
        self.hits.fetch_add(1, Relaxed);
        Some(found)
    }

    /// Keeps a result under `key` unless it is larger than an eighth of the budget,
    /// evicting the least recently used results beyond the budget.
    pub fn insert(&self, key: Key, batches: &[RecordBatch], metrics: TaskMetrics) {
        let bytes: u64 = batches
            .iter()
            .map(|b| b.get_array_memory_size() as u64)
            .sum::<u64>()
            + 256;
        if bytes > self.budget / 8 {
            return;
        }
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.tick += 1;
        let tick = inner.tick;
        if let Some(old) = inner.entries.remove(&key) {
            inner.by_use.remove(&old.tick);
            inner.bytes -= old.bytes;
        }
        while inner.bytes + bytes > self.budget {
            let Some((_, victim)) = inner.by_use.pop_first() else {
                break;
            };
            if let Some(e) = inner.entries.remove(&victim) {
                inner.bytes -= e.bytes;
            }
        }
        inner.bytes += bytes;
        inner.by_use.insert(tick, key);
        inner.entries.insert(
            key,
            Entry {
                batches: batches.to_vec(),
                metrics,
                bytes,
                tick,
            },
        );
    }

    /// Hits, misses, entries and bytes now.
    pub fn stats(&self) -> CacheStats {
        use std::sync::atomic::Ordering::Relaxed;
        let inner = self.inner.lock().expect("not poisoned");
        CacheStats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            entries: inner.entries.len() as u64,
            bytes: inner.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::Int64Array;

    use super::*;

    fn batch(rows: i64) -> RecordBatch {
        RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from_iter_values(0..rows)) as _)])
            .unwrap()
    }

    #[test]
    fn keeps_within_budget_and_evicts_the_least_recently_used() {
        let one = batch(1000);
        let size = one.get_array_memory_size() as u64 + 256;
        let cache = ResultCache::new(size * 8 + size / 2);
        for k in 0..8u8 {
            cache.insert([k; 32], std::slice::from_ref(&one), TaskMetrics::default());
        }
        assert_eq!(cache.stats().entries, 8);
        // Use 0, then a ninth entry evicts 1, the least recently used.
        assert!(cache.get(&[0; 32]).is_some());
        cache.insert([8; 32], std::slice::from_ref(&one), TaskMetrics::default());
        assert!(cache.get(&[1; 32]).is_none());
        assert!(cache.get(&[0; 32]).is_some() && cache.get(&[8; 32]).is_some());
        let stats = cache.stats();
        assert!(stats.bytes <= size * 8 + size / 2, "{stats:?}");
        assert_eq!((stats.hits, stats.misses), (3, 1));
        // Larger than an eighth of the budget: not kept.
        cache.insert([9; 32], &[batch(100_000)], TaskMetrics::default());
        assert!(cache.get(&[9; 32]).is_none());
    }

    #[test]
    fn a_written_file_changes_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, "x\n1\n").unwrap();
        let before = key(&path, "b", &["p"], b"req", &[]).unwrap();
        assert_eq!(before, key(&path, "b", &["p"], b"req", &[]).unwrap());
        assert_ne!(before, key(&path, "b", &["q"], b"req", &[]).unwrap());
        assert_ne!(before, key(&path, "c", &["p"], b"req", &[]).unwrap());
        assert_ne!(before, key(&path, "b", &["p"], b"req2", &[]).unwrap());
        // The same request with another Bloom filter bitset after its input.
        assert_ne!(
            before,
            key(&path, "b", &["p"], b"req", &[vec![1; 32]]).unwrap()
        );
        assert_ne!(
            key(&path, "b", &["p"], b"req", &[vec![1; 32]]),
            key(&path, "b", &["p"], b"req", &[vec![2; 32]])
        );
        // Same size, same content even: the status-change time moves.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, "x\n1\n").unwrap();
        assert_ne!(before, key(&path, "b", &["p"], b"req", &[]).unwrap());
        assert!(key(&dir.path().join("gone.csv"), "b", &[], b"req", &[]).is_none());
    }
}
