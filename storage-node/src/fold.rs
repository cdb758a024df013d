//! Checkpointed aggregates: a storage node folds the partial aggregates of a query's
//! tasks into one set of states held in a Wasm instance, and snapshots that instance to
//! disk between tasks, so a node that is killed and restarted resumes the fold instead of
//! recomputing its finished tasks (`storage-node serve --checkpoint-dir DIR`).
//!
//! ```text
//! task (fold: job J, lease L) ──▶ run the pipeline as usual ──▶ partial aggregate (IPC)
//!                                                                   │ pushdown_fold
//!                                     job J's held instance ◀───────┘   (merge step)
//!                                       │ every --checkpoint-every: linear memory + globals
//!                                       ▼
//!                          DIR/J.ckpt  (manifest of the folded tasks, zstd memory, SHA-256)
//! finish (J, L, tasks the query saw folded) ──▶ pushdown_drain ──▶ merged partial aggregate
//! ```
//!
//! * **Jobs.** The intermediary names a job per scan partition: the SHA-256 of the
//!   partition's tasks ([`pushdown_protocol::fold_job_id`]), the same when the query runs
//!   again. A task is folded only into a job of its own shape (predicate, aggregate,
//!   output schema); a task the job already holds is answered without running (a retry,
//!   or a task folded before a restart: `from_checkpoint`).
//! * **Leases.** A job belongs to one run of a query (its lease) at a time. A task of
//!   another run is not folded while the holder is active (it runs as usual and returns
//!   its result); a holder idle for [`FoldOptions::lease_timeout`] loses the job, and its
//!   own finish then fails. A job restored from disk belongs to the first run that asks.
//! * **Finish** drains the states only when the job holds exactly the tasks the query saw
//!   folded on this node; otherwise (tasks folded after the last checkpoint were lost in a
//!   restart) it fails, asking to run the query again, and drops the job. Every query
//!   therefore answers exactly or fails.
//! * **Checkpoints.** The snapshot (a copy of linear memory and globals) is taken under the
//!   job's lock between two folds; a writer thread compresses it and writes it to a
//!   temporary file, synced and renamed, so a task waits for the copy only. A file that is
//!   torn, of another pipeline module, or whose folded tasks' files changed since (their
//!   stamp: device, inode, size, modification and status-change times) is discarded. The
//!   folder is kept under a byte budget, oldest files first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pushdown_protocol::FoldRef;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::sandbox::{GlobalValue, HeldInstance, InstanceSnapshot, PluginModule};

/// Export of the built-in pipeline that folds one partial aggregate into its states.
pub const EXPORT_FOLD: &str = "pushdown_fold";
/// Export of the built-in pipeline that returns the folded states.
pub const EXPORT_DRAIN: &str = "pushdown_drain";

const MAGIC: &[u8; 8] = b"PDCKPT01";

/// How a node folds and checkpoints.
#[derive(Debug, Clone)]
pub struct FoldOptions {
    /// Folder of the checkpoints. `None` (the default): jobs are held in memory only.
    pub checkpoint_dir: Option<PathBuf>,
    /// Least time between two checkpoints of a job; zero: after every folded task.
    /// Defaults to 1 s.
    pub checkpoint_every: Duration,
    /// Bytes of checkpoint files kept; the oldest beyond it are deleted. Defaults to 1 GiB.
    pub checkpoint_budget_bytes: u64,
    /// Jobs held at once, each an instance of up to the sandbox's linear-memory cap; a task
    /// of a job beyond them runs as usual (its result returned). Defaults to 16.
    pub max_jobs: usize,
    /// A run of a query idle this long loses its jobs to another run. Defaults to 60 s.
    pub lease_timeout: Duration,
}

impl Default for FoldOptions {
    fn default() -> Self {
        Self {
            checkpoint_dir: None,
            checkpoint_every: Duration::from_secs(1),
            checkpoint_budget_bytes: 1 << 30,
            max_jobs: 16,
            lease_timeout: Duration::from_secs(60),
        }
    }
}

/// Counters of a node's fold jobs.
#[derive(Debug, Default)]
pub struct FoldStats {
    /// Tasks whose partial aggregate was folded into a job.
    pub tasks_folded: AtomicU64,
    /// Tasks answered from a job restored from a checkpoint (not run again).
    pub tasks_from_checkpoint: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Bytes of checkpoint files written.
    pub checkpoint_bytes: AtomicU64,
    /// Jobs restored from checkpoints.
    pub restored: AtomicU64,
}

/// A folded task as a checkpoint records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FoldedTask {
    /// The file, as the node opened it.
    path: PathBuf,
    /// Its stamp when the task ran, hex.
    stamp: String,
    /// Folded before the node restarted.
    #[serde(skip)]
    restored: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    job: String,
    shape: String,
    module_sha256: String,
    globals: Vec<(String, GlobalValue)>,
    memory_len: u64,
    folded: BTreeMap<String, FoldedTask>,
}

/// One job; see the module doc.
struct Job {
    id: String,
    shape: String,
    lease: Option<u64>,
    active: Instant,
    /// The held instance; `None` until the first fold, or for a job restored from a
    /// checkpoint until it is needed.
    instance: Option<HeldInstance>,
    /// Restore from this checkpoint when the instance is needed.
    restore_from: Option<PathBuf>,
    folded: BTreeMap<String, FoldedTask>,
    last_checkpoint: Option<Instant>,
}

/// What a node answers for a task that asks to be folded.
pub enum Claim {
    /// Run it unfolded: the job is held by another run or the node holds too many.
    Unfolded,
    /// The job already holds it; `restored` when it was folded before a restart.
    Held {
        /// Folded before the node restarted (read from a checkpoint).
        restored: bool,
    },
    /// Run it and fold its result into the job.
    Fold(Arc<Mutex<JobHandle>>),
}

/// A claimed job, to fold into.
pub struct JobHandle(Job);

/// The jobs of one node.
pub struct FoldJobs {
    options: FoldOptions,
    jobs: Mutex<HashMap<String, Arc<Mutex<JobHandle>>>>,
    /// Leases whose job broke (a fold failed): their later tasks and finish fail.
    broken: Mutex<BTreeMap<u64, String>>,
    stats: Arc<FoldStats>,
    /// Writes checkpoints off the tasks' threads, when there is a checkpoint folder.
    writer: Option<Writer>,
}

/// A checkpoint to write: the snapshot was taken under the job's lock; compressing,
/// hashing and syncing it to disk happen on the writer thread.
struct PendingWrite {
    path: PathBuf,
    manifest: Manifest,
    memory: Vec<u8>,
}

/// The checkpoint writer: one thread, writes in the order the snapshots were taken (a
/// job's later snapshot never replaced by an earlier one), at most [`WRITE_QUEUE`]
/// waiting; a snapshot that finds the queue full is skipped (the next fold tries again).
struct Writer {
    queue: Option<std::sync::mpsc::SyncSender<PendingWrite>>,
    /// Snapshots queued or being written, and its condition.
    pending: Arc<(Mutex<usize>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Checkpoints waiting for the writer at most.
const WRITE_QUEUE: usize = 4;

impl Writer {
    fn start(budget: u64, stats: Arc<FoldStats>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<PendingWrite>(WRITE_QUEUE);
        let pending: Arc<(Mutex<usize>, std::sync::Condvar)> = Arc::default();
        let done = pending.clone();
        let thread = std::thread::Builder::new()
            .name("pushdown-checkpoints".into())
            .spawn(move || {
                for write in rx {
                    match write_checkpoint(&write, budget) {
                        Ok(bytes) => {
                            stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                            stats.checkpoint_bytes.fetch_add(bytes, Ordering::Relaxed);
                        }
                        // A checkpoint that cannot be written costs only a restart's work.
                        Err(e) => log::warn!(
                            "fold job {}: checkpoint not written: {e}",
                            write.manifest.job
                        ),
                    }
                    let (count, changed) = &*done;
                    *count.lock().expect("not poisoned") -= 1;
                    changed.notify_all();
                }
            })?;
        Ok(Self {
            queue: Some(tx),
            pending,
            thread: Some(thread),
        })
    }

    /// Queues `write`; false when the queue is full.
    fn submit(&self, write: PendingWrite) -> bool {
        let (count, _) = &*self.pending;
        let mut n = count.lock().expect("not poisoned");
        let Some(queue) = &self.queue else {
            return false;
        };
        match queue.try_send(write) {
            Ok(()) => {
                *n += 1;
                true
            }
            Err(_) => false,
        }
    }

    /// Waits until every queued checkpoint is on disk.
    fn flush(&self) {
        let (count, changed) = &*self.pending;
        let mut n = count.lock().expect("not poisoned");
        while *n > 0 {
            n = changed.wait(n).expect("not poisoned");
        }
    }
}

impl Drop for Writer {
    /// A node that shuts down writes the checkpoints it has queued.
    fn drop(&mut self) {
        self.queue = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// True for a job id as the intermediary makes them: 64 lowercase hex digits (so it is a
/// safe file name).
fn valid_job(job: &str) -> bool {
    job.len() == 64
        && job
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The stamp of the file at `path` now, hex; `None` when it cannot be read.
fn stamp_of(path: &Path) -> Option<String> {
    std::fs::metadata(path)
        .ok()
        .map(|m| hex(&crate::sandbox::file_stamp(&m)))
}

impl FoldJobs {
    /// Jobs under `options`; creates the checkpoint folder and deletes checkpoints older
    /// than a day in it.
    ///
    /// # Errors
    /// [`Error::Io`] when the folder cannot be created.
    pub fn new(options: FoldOptions) -> Result<Self> {
        if let Some(dir) = &options.checkpoint_dir {
            std::fs::create_dir_all(dir).map_err(|error| Error::Io {
                path: dir.display().to_string(),
                error,
            })?;
            for (path, _, modified) in checkpoint_files(dir) {
                if modified.elapsed().unwrap_or_default() > Duration::from_secs(24 * 3600) {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let stats = Arc::new(FoldStats::default());
        let writer = match &options.checkpoint_dir {
            Some(dir) => Some(
                Writer::start(options.checkpoint_budget_bytes, stats.clone()).map_err(|error| {
                    Error::Io {
                        path: dir.display().to_string(),
                        error,
                    }
                })?,
            ),
            None => None,
        };
        Ok(Self {
            options,
            jobs: Mutex::default(),
            broken: Mutex::default(),
            stats,
            writer,
        })
    }

    /// The options.
    pub fn options(&self) -> &FoldOptions {
        &self.options
    }

    /// The counters.
    pub fn stats(&self) -> &FoldStats {
        &self.stats
    }

    /// Waits until every checkpoint taken so far is written.
    pub fn flush(&self) {
        if let Some(w) = &self.writer {
            w.flush();
        }
    }

    /// Deletes job `job`'s checkpoint, after the writes queued before (so none of them
    /// brings it back).
    fn delete_checkpoint(&self, job: &str) {
        self.flush();
        if let Some(path) = self.checkpoint_path(job) {
            let _ = std::fs::remove_file(path);
        }
    }

    fn checkpoint_path(&self, job: &str) -> Option<PathBuf> {
        self.options
            .checkpoint_dir
            .as_ref()
            .map(|d| d.join(format!("{job}.ckpt")))
    }

    /// What to do with a task of `shape` (its [`pushdown_protocol::Task::shape_hash`])
    /// and content hash `task` that asks to be folded as `fold`; see [`Claim`].
    ///
    /// # Errors
    /// [`Error::BadData`] for a malformed job id; [`Error::Internal`] when this run's job
    /// broke earlier (its folded tasks are lost).
    pub fn claim(&self, fold: &FoldRef, shape: &str, task: &str, builtin: &str) -> Result<Claim> {
        if !valid_job(&fold.job) {
            return Err(Error::BadData {
                file: "fold job".into(),
                message: format!("{:?} is not a job id (64 hex digits)", fold.job),
            });
        }
        if let Some(m) = self.broken.lock().expect("not poisoned").get(&fold.lease) {
            return Err(Error::Internal(format!(
                "fold job {} failed: {m}",
                fold.job
            )));
        }
        let mut jobs = self.jobs.lock().expect("not poisoned");
        let handle = match jobs.get(&fold.job) {
            Some(h) => h.clone(),
            None => {
                if jobs.len() >= self.options.max_jobs {
                    // Forget jobs whose run went quiet (their checkpoints stay on disk).
                    let timeout = self.options.lease_timeout;
                    jobs.retain(|_, h| {
                        h.try_lock()
                            .map_or(true, |j| j.0.active.elapsed() < timeout)
                    });
                    if jobs.len() >= self.options.max_jobs {
                        return Ok(Claim::Unfolded);
                    }
                }
                let job = self
                    .load_checkpoint(&fold.job, shape, builtin)
                    .unwrap_or_else(|| Job {
                        id: fold.job.clone(),
                        shape: shape.to_string(),
                        lease: None,
                        active: Instant::now(),
                        instance: None,
                        restore_from: None,
                        folded: BTreeMap::new(),
                        last_checkpoint: None,
                    });
                let h = Arc::new(Mutex::new(JobHandle(job)));
                jobs.insert(fold.job.clone(), h.clone());
                h
            }
        };
        drop(jobs);
        let mut guard = handle.lock().expect("not poisoned");
        let job = &mut guard.0;
        match job.lease {
            Some(l) if l == fold.lease => {}
            Some(l) if job.active.elapsed() < self.options.lease_timeout => {
                log::debug!("fold job {}: held by run {l:x}; task runs unfolded", job.id);
                return Ok(Claim::Unfolded);
            }
            previous => {
                if let Some(l) = previous {
                    log::info!(
                        "fold job {}: run {l:x} idle for {:?}, taken over by run {:x}",
                        job.id,
                        job.active.elapsed(),
                        fold.lease
                    );
                }
                job.lease = Some(fold.lease);
            }
        }
        if job.shape != shape {
            return Ok(Claim::Unfolded);
        }
        job.active = Instant::now();
        if let Some(t) = job.folded.get(task) {
            if t.restored {
                self.stats
                    .tasks_from_checkpoint
                    .fetch_add(1, Ordering::Relaxed);
            }
            return Ok(Claim::Held {
                restored: t.restored,
            });
        }
        drop(guard);
        Ok(Claim::Fold(handle))
    }

    /// Folds `partial` (the task's result as an Arrow IPC stream) into the claimed job
    /// with the pipeline `builtin`'s `pushdown_fold` (`request`: JSON of a
    /// [`pushdown_protocol::FoldRequest`]), records the task (content hash `task`, over
    /// the file at `path`) and writes a checkpoint when one is due. Returns false when the
    /// job already held the task (it ran twice at once).
    ///
    /// # Errors
    /// [`Error::Plugin`] when the fold fails or traps: the job is dropped and its run's
    /// later tasks and finish fail.
    #[allow(clippy::too_many_arguments)]
    pub fn fold(
        &self,
        handle: &Mutex<JobHandle>,
        lease: u64,
        builtin: &PluginModule,
        plugins: Arc<HashMap<String, PluginModule>>,
        request: &[u8],
        partial: &[u8],
        task: &str,
        path: &Path,
    ) -> Result<bool> {
        let mut guard = handle.lock().expect("not poisoned");
        let job = &mut guard.0;
        if job.lease != Some(lease) {
            return Err(Error::Internal(format!(
                "fold job {} was taken over by another run of the query while this one was idle",
                job.id
            )));
        }
        if job.folded.contains_key(task) {
            return Ok(false);
        }
        let stamp = stamp_of(path).unwrap_or_default();
        let result = self
            .instance(job, builtin)
            .and_then(|instance| instance.call(EXPORT_FOLD, Some((request, partial)), plugins));
        if let Err(e) = result {
            let id = job.id.clone();
            drop(guard);
            self.break_job(&id, lease, &e.to_string());
            return Err(e);
        }
        job.folded.insert(
            task.to_string(),
            FoldedTask {
                path: path.to_path_buf(),
                stamp,
                restored: false,
            },
        );
        job.active = Instant::now();
        self.stats.tasks_folded.fetch_add(1, Ordering::Relaxed);
        let due = job
            .last_checkpoint
            .is_none_or(|t| t.elapsed() >= self.options.checkpoint_every);
        if let (true, Some(path), Some(writer)) = (due, self.checkpoint_path(&job.id), &self.writer)
        {
            match snapshot(job, path) {
                Ok(write) => {
                    if writer.submit(write) {
                        job.last_checkpoint = Some(Instant::now());
                    } else {
                        log::debug!("fold job {}: checkpoint writer busy, skipped", job.id);
                    }
                }
                Err(e) => log::warn!("fold job {}: no snapshot for a checkpoint: {e}", job.id),
            }
        }
        Ok(true)
    }

    /// The job's instance: held already, restored from its checkpoint, or new.
    fn instance<'a>(
        &self,
        job: &'a mut Job,
        builtin: &PluginModule,
    ) -> Result<&'a mut HeldInstance> {
        if job.instance.is_none() {
            let held = match job.restore_from.take() {
                Some(path) => {
                    let snapshot = read_checkpoint(&path, builtin.limits().max_memory_bytes)?.1;
                    let held = builtin.restore(&snapshot)?;
                    self.stats.restored.fetch_add(1, Ordering::Relaxed);
                    held
                }
                None => builtin.hold()?,
            };
            job.instance = Some(held);
        }
        Ok(job.instance.as_mut().expect("set above"))
    }

    fn break_job(&self, job: &str, lease: u64, message: &str) {
        self.jobs.lock().expect("not poisoned").remove(job);
        self.delete_checkpoint(job);
        let mut broken = self.broken.lock().expect("not poisoned");
        if broken.len() >= 1024 {
            broken.pop_first();
        }
        broken.insert(lease, message.to_string());
    }

    /// Drains job `job` for run `lease`, which saw exactly `tasks` (content hashes) folded
    /// on this node: the merged partial aggregate as an Arrow IPC stream. The job and its
    /// checkpoint are dropped.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the node holds no such job; [`Error::Internal`] when the
    /// job belongs to another run, or holds other tasks than `tasks` (some were lost in a
    /// restart: run the query again), or the drain fails.
    pub fn finish(
        &self,
        job: &str,
        lease: u64,
        tasks: &BTreeSet<String>,
        builtin: &PluginModule,
    ) -> Result<Vec<u8>> {
        if !valid_job(job) {
            return Err(Error::BadData {
                file: "fold job".into(),
                message: format!("{job:?} is not a job id (64 hex digits)"),
            });
        }
        if let Some(m) = self.broken.lock().expect("not poisoned").remove(&lease) {
            return Err(Error::Internal(format!("fold job {job} failed: {m}")));
        }
        let handle = {
            let mut jobs = self.jobs.lock().expect("not poisoned");
            match jobs.get(job) {
                Some(h) => h.clone(),
                None => {
                    // Restarted since the last task: the checkpoint may hold them all.
                    let loaded = self
                        .load_checkpoint(job, "", builtin.sha256())
                        .ok_or_else(|| Error::Internal(format!(
                            "fold job {job} is not held by this storage node (it restarted without a checkpoint of it): run the query again"
                        )))?;
                    let h = Arc::new(Mutex::new(JobHandle(loaded)));
                    jobs.insert(job.to_string(), h.clone());
                    h
                }
            }
        };
        let mut guard = handle.lock().expect("not poisoned");
        let j = &mut guard.0;
        let drop_job = |message: String| {
            self.jobs.lock().expect("not poisoned").remove(job);
            self.delete_checkpoint(job);
            Error::Internal(message)
        };
        if j.lease.is_some_and(|l| l != lease) {
            return Err(Error::Internal(format!(
                "fold job {job} was taken over by another run of the query while this one was idle"
            )));
        }
        let held: BTreeSet<&String> = j.folded.keys().collect();
        if held.len() != tasks.len() || !tasks.iter().all(|t| held.contains(t)) {
            let message = format!(
                "fold job {job} holds {} tasks, but the query saw {} folded on this storage node (tasks folded after its last checkpoint were lost in a restart): run the query again",
                held.len(),
                tasks.len()
            );
            return Err(drop_job(message));
        }
        let restored = j.folded.values().filter(|t| t.restored).count();
        let result = self
            .instance(j, builtin)
            .and_then(|i| i.call(EXPORT_DRAIN, None, Arc::default()));
        log::info!(
            "fold job {}: drained {} tasks ({restored} of them from a checkpoint, not run again)",
            &job[..12],
            j.folded.len()
        );
        drop(guard);
        self.jobs.lock().expect("not poisoned").remove(job);
        self.delete_checkpoint(job);
        result
    }

    /// The job saved in its checkpoint, when there is a valid one: same pipeline module,
    /// same shape (unless `shape` is empty), every folded task's file unchanged. Invalid
    /// checkpoints are deleted.
    fn load_checkpoint(&self, job: &str, shape: &str, builtin: &str) -> Option<Job> {
        let path = self.checkpoint_path(job)?;
        if !path.exists() {
            return None;
        }
        let discard = |why: String| {
            log::info!("checkpoint {} discarded: {why}", path.display());
            let _ = std::fs::remove_file(&path);
            None
        };
        let manifest = match read_manifest(&path) {
            Ok(m) => m,
            Err(e) => return discard(e.to_string()),
        };
        if manifest.job != job {
            return discard("it is of another job".into());
        }
        if manifest.module_sha256 != builtin {
            return discard("the pipeline module changed".into());
        }
        if !shape.is_empty() && manifest.shape != shape {
            return discard("the query's shape differs".into());
        }
        for t in manifest.folded.values() {
            if stamp_of(&t.path).as_deref() != Some(t.stamp.as_str()) {
                return discard(format!("{} changed since", t.path.display()));
            }
        }
        log::info!(
            "fold job {job}: resumed from its checkpoint, {} tasks folded before",
            manifest.folded.len()
        );
        let folded = manifest
            .folded
            .into_iter()
            .map(|(k, t)| {
                (
                    k,
                    FoldedTask {
                        restored: true,
                        ..t
                    },
                )
            })
            .collect();
        Some(Job {
            id: job.to_string(),
            shape: manifest.shape,
            lease: None,
            active: Instant::now(),
            instance: None,
            restore_from: Some(path),
            folded,
            last_checkpoint: Some(Instant::now()),
        })
    }
}

/// A snapshot of the job's instance and the manifest of its folded tasks, to write to `path`.
fn snapshot(job: &mut Job, path: PathBuf) -> Result<PendingWrite> {
    let instance = job
        .instance
        .as_mut()
        .ok_or_else(|| Error::Internal("no instance to checkpoint".into()))?;
    let snapshot = instance.snapshot()?;
    let manifest = Manifest {
        job: job.id.clone(),
        shape: job.shape.clone(),
        module_sha256: snapshot.module_sha256.clone(),
        globals: snapshot.globals.clone(),
        memory_len: snapshot.memory.len() as u64,
        folded: job.folded.clone(),
    };
    Ok(PendingWrite {
        path,
        manifest,
        memory: snapshot.memory,
    })
}

/// Writes a checkpoint file atomically (temporary file, synced, renamed), keeping the
/// folder within `budget` bytes; returns the bytes written.
fn write_checkpoint(write: &PendingWrite, budget: u64) -> Result<u64> {
    let path = &write.path;
    let io = |error| Error::Io {
        path: path.display().to_string(),
        error,
    };
    let json = serde_json::to_vec(&write.manifest)
        .map_err(|e| Error::Internal(format!("checkpoint manifest: {e}")))?;
    let memory = zstd::bulk::compress(&write.memory, 1).map_err(io)?;
    let mut out = Vec::with_capacity(memory.len() + json.len() + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&(memory.len() as u64).to_le_bytes());
    out.extend_from_slice(&memory);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    if let Some(dir) = path.parent() {
        enforce_budget(dir, budget, out.len() as u64, path);
    }
    let tmp = path.with_extension("ckpt.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&out).map_err(io)?;
        f.sync_data().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(out.len() as u64)
}

/// The checkpoint files in `dir`: path, size, modification time.
fn checkpoint_files(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "ckpt"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().ok()?))
        })
        .collect()
}

/// Deletes the oldest checkpoints in `dir` (never `keep`) until `incoming` more bytes fit
/// in `budget`.
fn enforce_budget(dir: &Path, budget: u64, incoming: u64, keep: &Path) {
    let mut files = checkpoint_files(dir);
    let mut total: u64 = files.iter().map(|f| f.1).sum::<u64>() + incoming;
    files.sort_by_key(|f| f.2);
    for (path, len, _) in files {
        if total <= budget {
            break;
        }
        if path != keep {
            log::info!("checkpoint {} deleted: over the budget", path.display());
            let _ = std::fs::remove_file(&path);
            total = total.saturating_sub(len);
        }
    }
}

fn bad(path: &Path, message: &str) -> Error {
    Error::BadData {
        file: path.display().to_string(),
        message: format!("not a valid checkpoint: {message}"),
    }
}

/// The bytes of a checkpoint file, checked against its trailing SHA-256.
fn read_verified(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|error| Error::Io {
            path: path.display().to_string(),
            error,
        })?;
    if bytes.len() < MAGIC.len() + 4 + 8 + 32 || &bytes[..8] != MAGIC {
        return Err(bad(path, "too short or wrong magic"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(bad(path, "its SHA-256 does not match (torn or altered)"));
    }
    bytes.truncate(bytes.len() - 32);
    Ok(bytes)
}

/// Splits a verified checkpoint into its manifest and compressed memory.
fn split(path: &Path, bytes: &[u8]) -> Result<(Manifest, std::ops::Range<usize>)> {
    let json_len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let json_end = 12usize
        .checked_add(json_len)
        .filter(|&e| e + 8 <= bytes.len())
        .ok_or_else(|| bad(path, "manifest length out of range"))?;
    let manifest: Manifest = serde_json::from_slice(&bytes[12..json_end])
        .map_err(|e| bad(path, &format!("manifest: {e}")))?;
    let mem_len =
        u64::from_le_bytes(bytes[json_end..json_end + 8].try_into().expect("8 bytes")) as usize;
    let start = json_end + 8;
    if start.checked_add(mem_len) != Some(bytes.len()) {
        return Err(bad(path, "memory length out of range"));
    }
    Ok((manifest, start..bytes.len()))
}

fn read_manifest(path: &Path) -> Result<Manifest> {
    let bytes = read_verified(path)?;
    Ok(split(path, &bytes)?.0)
}

/// The manifest and instance snapshot of a checkpoint file.
fn read_checkpoint(path: &Path, max_memory: usize) -> Result<(Manifest, InstanceSnapshot)> {
    let bytes = read_verified(path)?;
    let (manifest, memory) = split(path, &bytes)?;
    if manifest.memory_len > max_memory as u64 {
        return Err(bad(path, "its memory is over the linear-memory cap"));
    }
    let memory = zstd::bulk::decompress(&bytes[memory], manifest.memory_len as usize)
        .map_err(|e| bad(path, &format!("memory: {e}")))?;
    if memory.len() as u64 != manifest.memory_len {
        return Err(bad(path, "memory length differs from the manifest's"));
    }
    let snapshot = InstanceSnapshot {
        module_sha256: manifest.module_sha256.clone(),
        memory,
        globals: manifest.globals.clone(),
    };
    Ok((manifest, snapshot))
}
