//! The ingest journal: where an export is made durable before it is
//! acknowledged, on the SQLite backend.
//!
//! SQLite has one writer. Storing an export (the event rows, their five
//! indexes and the resource rows) takes milliseconds, and in `required` mode
//! every call of the export waits for it. With the journal, an export is
//! appended to a file next to the database with one `write` and
//! acknowledged; the indexer task then stores what the journal holds into the
//! event store, many exports per transaction.
//!
//! - **Durability**: the bytes are in the operating system's page cache
//!   when the answer is sent, so a crash of the process loses nothing. A
//!   task of the core syncs them to the disk every [`SYNC_INTERVAL`]
//!   ([`Journal::sync`], off the answer's path), and the journal syncs once
//!   more when it is closed: a power loss loses only the exports
//!   acknowledged since the last sync (that interval and the time a sync
//!   takes). A sync that fails leaves the journal broken, taking no more.
//!   (Syncing before each answer would add a disk flush, a few hundred
//!   microseconds here, to every audited call.) What the indexer stores is
//!   synced by SQLite's commit (`synchronous=FULL`) before the journal lets
//!   go of it.
//! - **Recovery**: at start, whatever the journal holds is indexed again.
//!   Inserts skip event ids already stored, so an export indexed just before
//!   a crash is not stored twice. An export cut short by the crash (shorter
//!   than its length prefix) was never acknowledged; it is not indexed. A
//!   whole record that cannot be read (a damaged file) ends what is indexed
//!   too. Either way, everything from there on is copied to
//!   `<journal>.corrupt-<ms>` before the journal is cut there (unless it is
//!   nothing but zeros): a damaged length prefix looks like a record cut
//!   short, and acknowledged exports after it are kept for an operator
//!   rather than lost.
//! - **Reads wait for the indexer** ([`Journal::settled`]): a lookup sees
//!   every event acknowledged before it began.
//! - **Bounded**: an append waits while the indexer is more than
//!   [`MAX_QUEUED_EVENTS`] events or [`MAX_QUEUED_BYTES`] behind. The file
//!   is emptied whenever the indexer has caught up. Under a steady load it may never quite catch up, so once
//!   the part already stored passes [`COMPACT_AFTER_BYTES`] the rest is
//!   copied to a new file that replaces the journal by a rename: a crash
//!   leaves one whole file or the other, never a mix. The copy is synced
//!   before the rename (and the directory after it), so not even a power
//!   loss can replace exports that had reached the disk by a copy that had
//!   not. The part waiting when the compaction starts is copied and synced
//!   while appends and syncs go on; then syncs wait while what was appended
//!   meanwhile is added and synced, and what comes after that is added,
//!   unsynced (no sync has run since), just before the rename. The copying
//!   and the syncs run off the lock, on a blocking thread: exports are
//!   appended and lookups served while they do. The copy keeps the
//!   journal's permissions.
//!
//! Postgres takes concurrent writers and shares its cache, so there exports
//! are stored directly, without a journal.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use coffer_platform::sync_directory_of;
use tokio::sync::{Notify, watch};

use crate::store::StoredEvent;

/// How far the indexer may fall behind before appends wait.
pub const MAX_QUEUED_EVENTS: usize = 50_000;
/// How far, in bytes of journal records, the indexer may fall behind before
/// appends wait: events of up to 256 KiB each would otherwise let 50,000
/// of them hold gigabytes of memory (and of file to read back at a start).
pub const MAX_QUEUED_BYTES: u64 = 256 * 1024 * 1024;
/// Events the indexer stores per transaction, at most.
const INDEX_BATCH: usize = 4_000;
/// Bytes of journal records the indexer takes at once, at most (a single
/// larger batch is taken alone).
const INDEX_BATCH_BYTES: u64 = 32 * 1024 * 1024;
/// How soon an appended export is on the disk, at most (see
/// [`Journal::sync`]).
pub const SYNC_INTERVAL: Duration = Duration::from_millis(50);
/// How much of the file may hold batches already stored, while others
/// still wait, before the waiting ones are moved to a new file.
pub const COMPACT_AFTER_BYTES: u64 = 64 * 1024 * 1024;
/// The largest batch record accepted when reading the journal back.
const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the ingest journal {path} could not be {action}: {source}")]
    Io {
        path: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Another journal (another process on the same database) holds the
    /// file: two would empty and replace each other's exports.
    #[error("the ingest journal {path} is in use by another process")]
    InUse { path: String },
    /// A failed append left part of its record behind and it could not be
    /// cut off: anything appended after it would be lost on a restart, so
    /// the journal takes no more until the service restarts (and drops it).
    #[error("the ingest journal {path} holds an append cut short; restart the audit service")]
    Broken { path: String },
    /// A batch whose record could not be read back is never written: a
    /// restart would cut the journal short at it.
    #[error("a batch of {bytes} bytes is larger than the ingest journal's {MAX_RECORD_BYTES}")]
    TooLarge { bytes: usize },
}

struct State {
    file: File,
    /// Length of the file: what an append that fails is cut back to.
    length: u64,
    /// Batches appended and not yet taken by the indexer, each with the
    /// length of its record.
    queue: VecDeque<(Vec<StoredEvent>, u64)>,
    queued_events: usize,
    queued_bytes: u64,
    /// Batches appended since the journal was opened (recovered ones
    /// included).
    appended: u64,
    /// Batches taken by the indexer.
    taken: u64,
    /// Where each batch not yet stored ends in the file, with its number
    /// (the count of batches appended once it was).
    ends: VecDeque<(u64, u64)>,
    /// See [`JournalError::Broken`]; also set when a sync fails.
    broken: bool,
    /// Batches known to be on the disk (see [`Journal::sync`]).
    synced: u64,
    /// After a compaction failed: how far the stored part must reach before
    /// the next is tried (0 otherwise), so a failing one is not retried
    /// after every batch.
    compact_again_at: u64,
}

/// See the module docs.
pub struct Journal {
    path: PathBuf,
    /// See [`COMPACT_AFTER_BYTES`].
    compact_after: u64,
    /// See [`MAX_QUEUED_BYTES`].
    max_queued_bytes: u64,
    state: Mutex<State>,
    /// Held by a sync, and by a compaction from when the first part of its
    /// copy is synced until the copy has replaced the file: a batch a sync
    /// put on the disk is then always in the part of the copy synced before
    /// the rename (see [`Journal::finish_compaction`]).
    syncs: tokio::sync::Mutex<()>,
    /// Lets a test hold a compaction once it has noted what to copy.
    #[cfg(test)]
    copy_gate: tokio::sync::Semaphore,
    /// Batches stored by the indexer.
    indexed: watch::Sender<u64>,
    /// Wakes the indexer.
    work: Notify,
    /// Wakes appends waiting for room.
    room: Notify,
    /// Cuts the indexer's linger short: a reader waits.
    hurry: Notify,
}

impl Drop for Journal {
    /// Syncs what was appended since the last sync, so a service that stops
    /// leaves nothing it acknowledged only in the cache.
    fn drop(&mut self) {
        let state = self.lock();
        if state.synced != state.appended
            && let Err(error) = state.file.sync_data()
        {
            tracing::warn!(%error, journal = %self.path.display(), "the ingest journal could not be synced as it was closed");
        }
    }
}

/// What the indexer takes in one go: the events of one or more appended
/// batches, and how many batches have been taken once these are.
pub struct Taken {
    pub events: Vec<StoredEvent>,
    pub through: u64,
}

impl Journal {
    /// The journal of the SQLite database at `database`.
    pub fn path_for(database: &Path) -> PathBuf {
        let mut name = database.as_os_str().to_owned();
        name.push(".ingest");
        PathBuf::from(name)
    }

    /// Opens (or creates) the journal at `path`. What it already holds is
    /// queued for the indexer.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let failed = |action: &'static str| {
            let path = path.display().to_string();
            move |source| JournalError::Io {
                path,
                action,
                source,
            }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(failed("opened"))?;
        lock_journal(&file, path)?;
        // A copy that a crash interrupted: the journal itself is whole.
        let _unfinished = std::fs::remove_file(Self::compacting_path(path));
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(failed("read"))?;
        let (batches, ends, intact) = decode_records(&bytes);
        if let Some(rest) = bytes.get(intact..).filter(|rest| !rest.is_empty()) {
            // Kept aside unless it is nothing but zeros: a length prefix that
            // looks like a record cut short may be a damaged one, with
            // acknowledged records after it.
            let aside = match rest.iter().all(|byte| *byte == 0) {
                true => String::new(),
                false => set_aside(path, &file, rest)
                    .map_err(failed("copied aside"))?
                    .display()
                    .to_string(),
            };
            if torn_tail(rest) {
                tracing::warn!(
                    journal = %path.display(),
                    dropped_bytes = rest.len(),
                    kept_aside = %aside,
                    "the ingest journal ends in an export that was cut short, never acknowledged; it is not indexed"
                );
            } else {
                tracing::error!(
                    journal = %path.display(),
                    kept_aside = %aside,
                    kept_bytes = rest.len(),
                    indexed_exports = batches.len(),
                    "the ingest journal holds a record that cannot be read; it and what follows it are not indexed, and are kept aside for an operator"
                );
            }
            file.set_len(intact as u64).map_err(failed("truncated"))?;
        }
        if !batches.is_empty() {
            tracing::info!(
                journal = %path.display(),
                exports = batches.len(),
                "re-indexing the exports the ingest journal holds"
            );
        }
        let queued_events = batches.iter().map(Vec::len).sum();
        let appended = batches.len() as u64;
        let lengths = ends
            .iter()
            .scan(0, |start, &end| Some(end - std::mem::replace(start, end)));
        let queue: VecDeque<(Vec<StoredEvent>, u64)> = batches.into_iter().zip(lengths).collect();
        let queued_bytes = queue.iter().map(|(_, bytes)| bytes).sum();
        let (indexed, _) = watch::channel(0);
        Ok(Self {
            path: path.to_owned(),
            compact_after: COMPACT_AFTER_BYTES,
            max_queued_bytes: MAX_QUEUED_BYTES,
            state: Mutex::new(State {
                file,
                length: intact as u64,
                queue,
                queued_events,
                queued_bytes,
                appended,
                taken: 0,
                ends: (1..).zip(ends).collect(),
                broken: false,
                // Whatever was read back was on the disk or reaches it with
                // the next sync; counting it unsynced costs one sync.
                synced: 0,
                compact_again_at: 0,
            }),
            syncs: tokio::sync::Mutex::new(()),
            #[cfg(test)]
            copy_gate: tokio::sync::Semaphore::new(1),
            indexed,
            work: Notify::new(),
            room: Notify::new(),
            hurry: Notify::new(),
        })
    }

    /// [`Journal::open`], waiting up to `patience` while the file is held:
    /// a service of this process that was just stopped lets go of its
    /// journal once its indexer task has ended.
    pub async fn open_when_free(path: &Path, patience: Duration) -> Result<Self, JournalError> {
        let give_up = tokio::time::Instant::now() + patience;
        loop {
            match Self::open(path) {
                Err(JournalError::InUse { .. }) if tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                outcome => return outcome,
            }
        }
    }

    fn compacting_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".compacting");
        PathBuf::from(name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes `events` durable (one write) and queues them for the indexer.
    /// Once this returns they may be acknowledged.
    pub async fn append(&self, events: Vec<StoredEvent>) -> Result<(), JournalError> {
        let record = encode_record(&events);
        if record.len() > MAX_RECORD_BYTES {
            return Err(JournalError::TooLarge {
                bytes: record.len(),
            });
        }
        loop {
            let room = self.room.notified();
            if self.has_room() {
                break;
            }
            room.await;
        }
        {
            let mut state = self.lock();
            if state.broken {
                return Err(JournalError::Broken {
                    path: self.path.display().to_string(),
                });
            }
            if let Err(source) = state.file.write_all(&record) {
                // Cut off whatever part was written, so the next append
                // starts on a record boundary.
                let length = state.length;
                if let Err(error) = state.file.set_len(length) {
                    tracing::error!(%error, journal = %self.path.display(), "a failed journal append could not be cut off; the journal takes no more");
                    state.broken = true;
                }
                return Err(JournalError::Io {
                    path: self.path.display().to_string(),
                    action: "appended to",
                    source,
                });
            }
            let bytes = record.len() as u64;
            state.length += bytes;
            state.queued_events += events.len();
            state.queued_bytes += bytes;
            state.queue.push_back((events, bytes));
            state.appended += 1;
            let end = (state.appended, state.length);
            state.ends.push_back(end);
        }
        self.work.notify_one();
        Ok(())
    }

    /// Whether the indexer is within [`MAX_QUEUED_EVENTS`] and the byte
    /// bound of what was appended.
    fn has_room(&self) -> bool {
        let state = self.lock();
        state.queued_events < MAX_QUEUED_EVENTS && state.queued_bytes < self.max_queued_bytes
    }

    /// Takes what waits for the indexer, several batches at once, up to
    /// about [`INDEX_BATCH`] events and [`INDEX_BATCH_BYTES`]; `None` if
    /// nothing waits.
    pub fn take(&self) -> Option<Taken> {
        let mut state = self.lock();
        let mut events: Vec<StoredEvent> = Vec::new();
        let mut bytes = 0;
        while let Some((batch, batch_bytes)) = state.queue.front() {
            if !events.is_empty()
                && (events.len() + batch.len() > INDEX_BATCH
                    || bytes + batch_bytes > INDEX_BATCH_BYTES)
            {
                break;
            }
            let Some((batch, batch_bytes)) = state.queue.pop_front() else {
                break;
            };
            bytes += batch_bytes;
            state.queued_events -= batch.len();
            state.queued_bytes -= batch_bytes;
            state.taken += 1;
            if events.is_empty() {
                events = batch;
            } else {
                events.extend(batch);
            }
        }
        if events.is_empty() {
            return None;
        }
        let through = state.taken;
        drop(state);
        self.room.notify_waiters();
        Some(Taken { events, through })
    }

    /// Waits until there is something to [`take`](Self::take).
    pub async fn wait_for_work(&self) {
        self.work.notified().await;
    }

    /// Lets more exports gather before the indexer takes them, for up to
    /// `period`: a few large transactions cost SQLite far less per event
    /// than many small ones. Ends early when a batch is full or a reader
    /// waits for the indexer.
    pub async fn linger(&self, period: Duration) {
        if self.lock().queued_events >= INDEX_BATCH {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = self.hurry.notified() => {}
        }
    }

    /// Records that the batches up to `through` are in the event store.
    /// Empties the file once everything appended is stored, and moves what
    /// is not to a new file once the stored part is large.
    pub async fn stored(&self, through: u64) {
        let compact_from = {
            let mut state = self.lock();
            let mut stored_end = 0;
            while let Some(&(batch, end)) = state.ends.front()
                && batch <= through
            {
                stored_end = end;
                state.ends.pop_front();
            }
            if state.appended != through
                && stored_end >= self.compact_after.max(state.compact_again_at)
            {
                Some(stored_end)
            } else {
                if state.appended == through && state.length > 0 {
                    match state.file.set_len(0) {
                        Ok(()) => {
                            state.length = 0;
                            state.compact_again_at = 0;
                        }
                        Err(error) => {
                            // It is emptied at the next chance; what it holds
                            // is stored already and would be skipped on
                            // recovery.
                            tracing::warn!(%error, journal = %self.path.display(), "the ingest journal could not be emptied");
                        }
                    }
                }
                None
            }
        };
        if let Some(stored_end) = compact_from {
            self.compact(stored_end).await;
        }
        self.indexed.send_replace(through);
    }

    /// Replaces the file by a copy of what follows `stored_end`. The copy is
    /// written and synced off the lock and off the async workers, so appends
    /// and reads go on meanwhile; under the lock only what was appended
    /// after its last part is added to it before the rename. On failure
    /// the file stays as it is, to be compacted once the stored part has
    /// grown by [`COMPACT_AFTER_BYTES`] more.
    async fn compact(&self, stored_end: u64) {
        let compacting = Self::compacting_path(&self.path);
        if let Err(error) = self.compact_into(&compacting, stored_end).await {
            let _unfinished = std::fs::remove_file(&compacting);
            self.lock().compact_again_at = stored_end.saturating_add(self.compact_after);
            tracing::warn!(%error, journal = %self.path.display(), "the ingest journal could not be compacted");
        }
    }

    /// [`Self::compact`], through a copy at `compacting`. What waits now is
    /// copied and synced while syncs go on: exports acknowledged meanwhile
    /// reach the disk as ever.
    async fn compact_into(&self, compacting: &Path, stored_end: u64) -> std::io::Result<()> {
        let (first_part_end, _) = self.waiting_end()?;
        let (path, copy_path) = (self.path.clone(), compacting.to_owned());
        let (source, copy) =
            blocking(move || copy_part(&path, &copy_path, stored_end, first_part_end)).await?;
        self.finish_compaction(source, copy, compacting, stored_end, first_part_end)
            .await
    }

    /// Where the file ends now and how many batches it holds; an error when
    /// the journal takes no more (it is not compacted then).
    fn waiting_end(&self) -> std::io::Result<(u64, u64)> {
        let state = self.lock();
        if state.broken {
            return Err(std::io::Error::other("the journal takes no more appends"));
        }
        Ok((state.length, state.appended))
    }

    /// The rest of a compaction whose first part (to `first_part_end`) is
    /// copied and synced: from here until the rename no sync runs, so a
    /// batch a sync has put on the disk is always in the synced part of the
    /// copy. What was appended while the first part was copied (and perhaps
    /// synced) is added and synced too, off the lock; what is appended after
    /// that, under the lock, unsynced, just before the rename.
    async fn finish_compaction(
        &self,
        source: File,
        copy: File,
        compacting: &Path,
        stored_end: u64,
        first_part_end: u64,
    ) -> std::io::Result<()> {
        let _no_sync = self.syncs.lock().await;
        let (length, appended) = self.waiting_end()?;
        #[cfg(test)]
        let _held = self.copy_gate.acquire().await;
        let (source, copy) = blocking(move || {
            let (mut source, mut copy) = (source, copy);
            if length > first_part_end {
                append_part(&mut source, &mut copy, first_part_end, length)?;
                copy.sync_data()?;
            }
            Ok((source, copy))
        })
        .await?;
        self.replace(source, copy, compacting, stored_end, length)?;
        let path = self.path.clone();
        if let Err(error) = blocking(move || sync_directory_of(&path)).await {
            tracing::warn!(%error, journal = %self.path.display(), "the ingest journal's directory could not be synced after a compaction");
        }
        // What was appended since is in the copy too, but not yet on the
        // disk: the next sync puts it there.
        let mut state = self.lock();
        state.synced = state.synced.max(appended);
        Ok(())
    }

    /// The end of a compaction, under the lock: adds to the copy what was
    /// appended after `length` while it was made, and renames it over the
    /// journal, which from then on appends go to.
    fn replace(
        &self,
        mut source: File,
        mut copy: File,
        compacting: &Path,
        stored_end: u64,
        length: u64,
    ) -> std::io::Result<()> {
        let mut state = self.lock();
        if state.broken {
            return Err(std::io::Error::other("the journal takes no more appends"));
        }
        append_part(&mut source, &mut copy, length, state.length)?;
        // Opened before the rename: appends never go to a file that is no
        // longer the journal.
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(compacting)?;
        file.try_lock().map_err(std::io::Error::from)?;
        std::fs::rename(compacting, &self.path)?;
        state.file = file;
        state.length -= stored_end;
        for (_, end) in &mut state.ends {
            *end -= stored_end;
        }
        state.compact_again_at = 0;
        Ok(())
    }

    /// Puts every export appended before this call on the disk (one
    /// `fdatasync`, on a blocking thread, outside the lock), unless they are
    /// there already. The core calls it every [`SYNC_INTERVAL`].
    pub async fn sync(&self) -> Result<(), JournalError> {
        let failed = |source| JournalError::Io {
            path: self.path.display().to_string(),
            action: "synced",
            source,
        };
        let _no_compaction = self.syncs.lock().await;
        let (file, appended) = {
            let state = self.lock();
            if state.synced == state.appended {
                return Ok(());
            }
            // No compaction replaces the file while this syncs it: batches
            // appended before the last one are in its copy, synced before it
            // replaced the file; later ones are in the file this handle
            // shares.
            (state.file.try_clone().map_err(failed)?, state.appended)
        };
        let outcome = tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(std::io::Error::other)
            .and_then(|outcome| outcome);
        let mut state = self.lock();
        match outcome {
            Ok(()) => {
                state.synced = state.synced.max(appended);
                Ok(())
            }
            Err(source) => {
                // What failed to reach the disk may be gone from the cache
                // too (Linux marks it clean), and a second sync would report
                // success: the journal takes no more, as after an append cut
                // short.
                state.broken = true;
                Err(failed(source))
            }
        }
    }

    /// Batches appended and not yet known to be on the disk.
    pub fn unsynced(&self) -> u64 {
        let state = self.lock();
        state.appended - state.synced
    }

    /// Waits (up to `timeout`) until everything appended before this call is
    /// in the event store. Returns whether it is.
    pub async fn settled(&self, timeout: Duration) -> bool {
        let target = self.lock().appended;
        self.hurry.notify_one();
        let mut indexed = self.indexed.subscribe();
        tokio::time::timeout(timeout, indexed.wait_for(|through| *through >= target))
            .await
            .is_ok_and(|outcome| outcome.is_ok())
    }
}

fn put_u32(out: &mut Vec<u8>, value: usize) {
    out.extend_from_slice(&u32::try_from(value).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    put_u32(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

fn put_optional(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => out.push(0),
        Some(text) => {
            out.push(1);
            put_text(out, text);
        }
    }
}

/// One batch as a record: its length, then the events.
fn encode_record(events: &[StoredEvent]) -> Vec<u8> {
    let size: usize = events
        .iter()
        .map(|event| event.record.len() + event.event_id.len() + 160)
        .sum();
    let mut out = Vec::with_capacity(size + 8);
    out.extend_from_slice(&[0; 4]);
    put_u32(&mut out, events.len());
    for event in events {
        put_text(&mut out, &event.event_id);
        out.extend_from_slice(&event.event_time_ms.to_le_bytes());
        put_text(&mut out, &event.event_source);
        put_text(&mut out, &event.event_name);
        out.push(u8::from(event.read_only));
        put_optional(&mut out, event.username.as_deref());
        put_optional(&mut out, event.account_id.as_deref());
        // 2: trusted, and a correction (journals written before there were
        // corrections hold 0 or 1 only).
        out.push(match (event.trusted, event.corrects) {
            (true, true) => 2,
            (trusted, false) | (trusted @ false, true) => u8::from(trusted),
        });
        put_optional(&mut out, event.trace_id.as_deref());
        put_text(&mut out, &event.record);
        put_u32(&mut out, event.resources.len());
        for (kind, name) in &event.resources {
            put_text(&mut out, kind);
            put_text(&mut out, name);
        }
    }
    let body = out.len() - 4;
    if let Some(prefix) = out.get_mut(..4) {
        prefix.copy_from_slice(&u32::try_from(body).unwrap_or(u32::MAX).to_le_bytes());
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.bytes.split_at_checked(count)?;
        self.bytes = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u32(&mut self) -> Option<usize> {
        let bytes: [u8; 4] = self.take(4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(bytes)).ok()
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn flag(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn text(&mut self) -> Option<String> {
        let length = self.u32()?;
        String::from_utf8(self.take(length)?.to_vec()).ok()
    }

    fn optional(&mut self) -> Option<Option<String>> {
        if self.flag()? {
            Some(Some(self.text()?))
        } else {
            Some(None)
        }
    }

    fn event(&mut self) -> Option<StoredEvent> {
        let event_id = self.text()?;
        let event_time_ms = self.i64()?;
        let event_source = self.text()?;
        let event_name = self.text()?;
        let read_only = self.flag()?;
        let username = self.optional()?;
        let account_id = self.optional()?;
        let (trusted, corrects) = match self.u8()? {
            0 => (false, false),
            1 => (true, false),
            2 => (true, true),
            _ => return None,
        };
        let trace_id = self.optional()?;
        let record = self.text()?;
        let count = self.u32()?;
        let mut resources = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            resources.push((self.text()?, self.text()?));
        }
        Some(StoredEvent {
            seq: 0,
            event_id,
            event_time_ms,
            event_source,
            event_name,
            read_only,
            username,
            account_id,
            trusted,
            corrects,
            trace_id,
            received_at_ms: 0,
            record,
            resources,
        })
    }

    fn batch(&mut self) -> Option<Vec<StoredEvent>> {
        let count = self.u32()?;
        let mut events = Vec::with_capacity(count.min(4096));
        for _ in 0..count {
            events.push(self.event()?);
        }
        self.bytes.is_empty().then_some(events)
    }
}

/// The whole batches `bytes` holds, and how many bytes they take: reading
/// stops at the first record that is cut short or does not decode.
/// Locks `file`, opened as the journal at `path`. The lock is held while
/// the file is open (a compacted copy is locked before it replaces the
/// journal), and the system releases it if the process dies. Between the
/// open and the lock another journal may have replaced the file by its
/// copy and let go of the one it replaced: a lock on that file holds
/// nothing, and the journal counts as in use (an opener waiting for it
/// tries again).
fn lock_journal(file: &File, path: &Path) -> Result<(), JournalError> {
    let in_use = || JournalError::InUse {
        path: path.display().to_string(),
    };
    let failed = |source| JournalError::Io {
        path: path.display().to_string(),
        action: "locked",
        source,
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(in_use()),
        Err(std::fs::TryLockError::Error(source)) => return Err(failed(source)),
    }
    if is_named(file, path).map_err(failed)? {
        Ok(())
    } else {
        Err(in_use())
    }
}

/// Whether `file` is the file `path` names now.
#[cfg(unix)]
fn is_named(file: &File, path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let (open, named) = (file.metadata()?, std::fs::metadata(path)?);
    Ok(open.dev() == named.dev() && open.ino() == named.ino())
}

#[cfg(not(unix))]
fn is_named(_file: &File, _path: &Path) -> std::io::Result<bool> {
    Ok(true)
}

/// A new file at `path` (never one already there, nor through a link),
/// readable by no one `journal` is not readable by, from its creation on.
fn create_like(path: &Path, journal: &File) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(journal.metadata()?.permissions().mode() & 0o777);
    }
    #[cfg(not(unix))]
    let _ = journal;
    options.open(path)
}

/// Copies `[from, to)` of the journal at `path`, read through a handle of
/// its own (an append moves the offset of the handles that share the
/// journal's), to a new file at `compacting`, synced. Returns both handles.
fn copy_part(path: &Path, compacting: &Path, from: u64, to: u64) -> std::io::Result<(File, File)> {
    let mut source = File::open(path)?;
    match std::fs::remove_file(compacting) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut copy = create_like(compacting, &source)?;
    append_part(&mut source, &mut copy, from, to)?;
    // On the disk before it can replace a file that may be.
    copy.sync_all()?;
    Ok((source, copy))
}

/// Appends `[from, to)` of the journal (read through `source`) to `copy`.
fn append_part(source: &mut File, copy: &mut File, from: u64, to: u64) -> std::io::Result<()> {
    let length = to
        .checked_sub(from)
        .ok_or_else(|| std::io::Error::other("a part of the journal that ends before it begins"))?;
    source.seek(SeekFrom::Start(from))?;
    if std::io::copy(&mut source.take(length), copy)? != length {
        return Err(std::io::Error::other("the journal ended early"));
    }
    Ok(())
}

/// `work` on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|panic| Err(std::io::Error::other(panic)))
}

/// Whether `rest`, what follows the journal's last readable record, is
/// what a crash mid-append (or a power loss's zeroed tail) leaves: a
/// record shorter than its length prefix says, or nothing but zeros.
fn torn_tail(rest: &[u8]) -> bool {
    if rest.iter().all(|byte| *byte == 0) {
        return true;
    }
    let mut reader = Reader { bytes: rest };
    match reader.u32() {
        None => true,
        Some(length) => (1..=MAX_RECORD_BYTES).contains(&length) && reader.take(length).is_none(),
    }
}

/// Copies `rest` to a new file beside the journal (`journal`, whose
/// permissions it takes), synced, and returns its path.
fn set_aside(path: &Path, journal: &File, rest: &[u8]) -> std::io::Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{}", now_ms()));
    let aside = PathBuf::from(name);
    let mut file = create_like(&aside, journal)?;
    file.write_all(rest)?;
    file.sync_all()?;
    // As after a compaction: some file systems cannot sync a directory, and
    // refusing to start over it would keep the service down.
    if let Err(error) = sync_directory_of(path) {
        tracing::warn!(%error, journal = %path.display(), "the ingest journal's directory could not be synced after a part was kept aside");
    }
    Ok(aside)
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis())
}

fn decode_records(bytes: &[u8]) -> (Vec<Vec<StoredEvent>>, Vec<u64>, usize) {
    let mut batches = Vec::new();
    let mut ends = Vec::new();
    let mut offset = 0;
    while let Some(rest) = bytes.get(offset..) {
        let mut reader = Reader { bytes: rest };
        let Some(length) = reader.u32() else {
            break;
        };
        if length == 0 || length > MAX_RECORD_BYTES {
            break;
        }
        let Some(body) = reader.take(length) else {
            break;
        };
        let Some(batch) = (Reader { bytes: body }).batch() else {
            break;
        };
        batches.push(batch);
        offset += 4 + length;
        ends.push(offset as u64);
    }
    (batches, ends, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn event(id: &str, resources: usize) -> StoredEvent {
        StoredEvent {
            seq: 0,
            event_id: id.to_owned(),
            event_time_ms: 1_700_000_000_123,
            event_source: "kms.amazonaws.com".into(),
            event_name: "Encrypt".into(),
            read_only: true,
            username: Some("admin".into()),
            account_id: None,
            trusted: true,
            corrects: false,
            trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
            received_at_ms: 0,
            record: format!("{{\"eventID\":\"{id}\",\"note\":\"line\\nbreak é\"}}"),
            resources: (0..resources)
                .map(|index| ("AWS::KMS::Key".to_owned(), format!("arn:{index}")))
                .collect(),
        }
    }

    #[tokio::test]
    async fn appended_batches_come_back_after_a_reopen_in_order() -> TestResult {
        let directory = tempfile::tempdir()?;
        let path = Journal::path_for(&directory.path().join("audit.db"));
        let mut correction = event("b", 0);
        correction.corrects = true;
        let mut untrusted = event("b2", 0);
        untrusted.trusted = false;
        let first = vec![event("a", 2), correction, untrusted];
        let second = vec![event("c", 1)];
        {
            let journal = Journal::open(&path)?;
            journal.append(first.clone()).await?;
            journal.append(second.clone()).await?;
        }
        let journal = Journal::open(&path)?;
        let taken = journal.take().ok_or("nothing recovered")?;
        assert_eq!(taken.events, [first, second].concat());
        assert_eq!(taken.through, 2);
        assert!(journal.take().is_none());
        Ok(())
    }

    #[tokio::test]
    async fn an_append_cut_short_is_dropped_and_the_journal_goes_on() -> TestResult {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("audit.db.ingest");
        {
            let journal = Journal::open(&path)?;
            journal.append(vec![event("whole", 1)]).await?;
        }
        let whole = std::fs::metadata(&path)?.len();
        let partial = encode_record(&[event("cut", 1)]);
        let mut file = OpenOptions::new().append(true).open(&path)?;
        file.write_all(partial.get(..partial.len() - 3).ok_or("short")?)?;
        drop(file);

        let journal = Journal::open(&path)?;
        assert_eq!(
            std::fs::metadata(&path)?.len(),
            whole,
            "the cut record is removed"
        );
        // Kept aside all the same: a damaged length prefix looks the same.
        assert_eq!(set_aside_files(directory.path())?.len(), 1);
        journal.append(vec![event("after", 0)]).await?;
        drop(journal);
        assert_eq!(ids_after_reopening(&path)?, ["whole", "after"]);
        Ok(())
    }

    #[tokio::test]
    async fn the_file_is_emptied_once_everything_is_stored_and_settled_waits_for_it() -> TestResult
    {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("audit.db.ingest");
        let journal = Journal::open(&path)?;
        journal.append(vec![event("one", 0)]).await?;
        assert!(
            !journal.settled(Duration::from_millis(20)).await,
            "nothing is stored yet"
        );
        let taken = journal.take().ok_or("nothing to take")?;
        journal.append(vec![event("two", 0)]).await?;
        journal.stored(taken.through).await;
        assert!(
            std::fs::metadata(&path)?.len() > 0,
            "a batch appended after the take is still only in the journal"
        );
        assert!(!journal.settled(Duration::from_millis(20)).await);
        let taken = journal.take().ok_or("nothing to take")?;
        journal.stored(taken.through).await;
        assert_eq!(std::fs::metadata(&path)?.len(), 0);
        assert!(journal.settled(Duration::from_millis(20)).await);
        Ok(())
    }

    /// The ids a restart would recover: what the file holds, read as
    /// [`Journal::open`] reads it (without taking the file from a journal
    /// that still has it open).
    fn ids_after_reopening(path: &Path) -> std::io::Result<Vec<String>> {
        let _unfinished_copy = std::fs::remove_file(Journal::compacting_path(path));
        let (batches, _, _) = decode_records(&std::fs::read(path)?);
        Ok(batches
            .into_iter()
            .flatten()
            .map(|event| event.event_id)
            .collect())
    }

    #[tokio::test]
    async fn a_second_journal_on_the_same_file_is_refused() -> TestResult {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("audit.db.ingest");
        let mut journal = Journal::open(&path)?;
        let in_use = |outcome: Result<Journal, JournalError>| {
            matches!(outcome, Err(JournalError::InUse { .. }))
        };
        assert!(in_use(Journal::open(&path)));
        // The copy that replaces the file is held too.
        journal.compact_after = 1;
        journal.append(vec![event("one", 0)]).await?;
        let taken = journal.take().ok_or("nothing to take")?;
        journal.append(vec![event("two", 0)]).await?;
        journal.stored(taken.through).await;
        assert_eq!(ids_after_reopening(&path)?, ["two"]);
        assert!(in_use(Journal::open(&path)));
        // Let go of a little later (a stopped service's task ending), it is
        // opened once free; never, and the wait ends.
        assert!(matches!(
            Journal::open_when_free(&path, Duration::from_millis(50)).await,
            Err(JournalError::InUse { .. })
        ));
        let holder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(journal);
        });
        let reopened = Journal::open_when_free(&path, Duration::from_secs(10)).await?;
        holder.await?;
        assert_eq!(reopened.take().map(|taken| taken.events.len()), Some(1));
        Ok(())
    }

    #[tokio::test]
    async fn a_stored_part_past_the_threshold_is_cut_off_while_the_rest_waits() -> TestResult {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("audit.db.ingest");
        let mut journal = Journal::open(&path)?;
        journal.compact_after = 1;
        journal
            .append(vec![event("one", 1), event("two", 0)])
            .await?;
        let taken = journal.take().ok_or("nothing to take")?;
        let stored_part = std::fs::metadata(&path)?.len();
        journal.append(vec![event("three", 2)]).await?;
        journal.append(vec![event("four", 0)]).await?;
        let waiting_part = std::fs::metadata(&path)?.len() - stored_part;
        journal.stored(taken.through).await;
        assert_eq!(
            std::fs::metadata(&path)?.len(),
            waiting_part,
            "only the batches still waiting are left"
        );
        assert!(!Journal::compacting_path(&path).exists());
        assert_eq!(ids_after_reopening(&path)?, ["three", "four"]);
        // Once those are stored while another batch waits, the file is cut
        // again, where the copy moved them to, and the batch appended after
        // the copy went into the new file.
        let taken = journal.take().ok_or("nothing to take")?;
        journal.append(vec![event("five", 0)]).await?;
        journal.stored(taken.through).await;
        assert_eq!(ids_after_reopening(&path)?, ["five"]);
        Ok(())
    }

    /// A compaction copies and syncs without holding up appends, while no
    /// sync runs; what was appended meanwhile moves to the copy, counted
    /// unsynced until the next sync puts it on the disk there.
    #[tokio::test]
    async fn exports_are_appended_while_a_compaction_copies() -> TestResult {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("audit.db.ingest");
        let mut journal = Journal::open(&path)?;
        journal.compact_after = 1;
        let journal = std::sync::Arc::new(journal);
        journal.append(vec![event("one", 0)]).await?;
        let taken = journal.take().ok_or("nothing to take")?;
        journal.append(vec![event("two", 0)]).await?;
        journal.sync().await?;
        let held = journal.copy_gate.acquire().await?;
        let compaction = tokio::spawn({
            let journal = journal.clone();
            async move { journal.stored(taken.through).await }
        });
        tokio::time::timeout(Duration::from_secs(10), async {
            while journal.syncs.try_lock().is_ok() {
                tokio::task::yield_now().await;
            }
        })
        .await?;
        tokio::time::timeout(
            Duration::from_secs(10),
            journal.append(vec![event("three", 0)]),
        )
        .await??;
        assert_eq!(journal.unsynced(), 1);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), journal.sync())
                .await
                .is_err(),
            "a sync ran while the copy was being made"
        );
        drop(held);
        compaction.await?;
        assert_eq!(ids_after_reopening(&path)?, ["two", "three"]);
        assert_eq!(journal.unsynced(), 1, "three is not yet synced in the copy");
        journal.sync().await?;
        assert_eq!(journal.unsynced(), 0);
        let taken = journal.take().ok_or("nothing to take")?;
        assert_eq!(taken.events.len(), 2);
        journal.append(vec![event("four", 0)]).await?;
        journal.stored(taken.through).await;
        assert_eq!(ids_after_reopening(&path)?, ["four"]);
        Ok(())
    }

    /// Appends wait while the part not yet indexed holds as many bytes as
    /// the bound allows, however few events that is, and go on once the
    /// indexer takes it.
    #[tokio::test]
    async fn appends_wait_while_the_waiting_part_is_at_its_byte_bound() -> TestResult {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("audit.db.ingest");
        let mut journal = Journal::open(&path)?;
        let one_record = encode_record(&[event("one", 0)]).len() as u64;
        journal.max_queued_bytes = one_record + 1;
        journal.append(vec![event("one", 0)]).await?;
        journal.append(vec![event("two", 0)]).await?;
        let journal = std::sync::Arc::new(journal);
        let third = tokio::spawn({
            let journal = journal.clone();
            async move { journal.append(vec![event("three", 0)]).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!third.is_finished(), "an append went past the byte bound");
        let taken = journal.take().ok_or("nothing to take")?;
        assert_eq!(taken.events.len(), 2);
        tokio::time::timeout(Duration::from_secs(5), third).await???;
        assert_eq!(journal.take().map(|taken| taken.events.len()), Some(1));
        Ok(())
    }

    /// A compaction's copy, and a part kept aside, are as private as the
    /// journal they come from.
    #[cfg(unix)]
    #[tokio::test]
    async fn copies_of_the_journal_keep_its_permissions() -> TestResult {
        use std::os::unix::fs::PermissionsExt as _;
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("audit.db.ingest");
        let mode = |path: &Path| -> std::io::Result<u32> {
            Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
        };
        {
            let mut journal = Journal::open(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604))?;
            journal.compact_after = 1;
            journal.append(vec![event("one", 0)]).await?;
            let taken = journal.take().ok_or("nothing to take")?;
            journal.append(vec![event("two", 0)]).await?;
            journal.stored(taken.through).await;
            assert_eq!(ids_after_reopening(&path)?, ["two"], "compacted");
            assert_eq!(mode(&path)?, 0o604);
        }
        let mut file = OpenOptions::new().append(true).open(&path)?;
        file.write_all(&[0xff; 9])?;
        drop(file);
        drop(Journal::open(&path)?);
        let aside = set_aside_files(directory.path())?;
        assert_eq!(aside.len(), 1);
        assert_eq!(mode(&directory.path().join(&aside[0]))?, 0o604);
        Ok(())
    }

    /// What was appended is counted unsynced until a sync puts it on the
    /// disk; a sync with nothing new to sync does nothing.
    #[tokio::test]
    async fn a_sync_covers_every_append_before_it() -> TestResult {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("audit.db.ingest");
        let journal = Journal::open(&path)?;
        assert_eq!(journal.unsynced(), 0);
        journal.append(vec![event("one", 0)]).await?;
        journal.append(vec![event("two", 0)]).await?;
        assert_eq!(journal.unsynced(), 2);
        journal.sync().await?;
        assert_eq!(journal.unsynced(), 0);
        journal.sync().await?;
        journal.append(vec![event("three", 0)]).await?;
        assert_eq!(journal.unsynced(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn below_the_threshold_the_stored_part_stays_until_everything_is_stored() -> TestResult {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("audit.db.ingest");
        let journal = Journal::open(&path)?;
        journal.append(vec![event("one", 0)]).await?;
        let taken = journal.take().ok_or("nothing to take")?;
        journal.append(vec![event("two", 0)]).await?;
        let length = std::fs::metadata(&path)?.len();
        journal.stored(taken.through).await;
        assert_eq!(std::fs::metadata(&path)?.len(), length);
        // Recovery skips stored events by their ids; both come back.
        assert_eq!(ids_after_reopening(&path)?, ["one", "two"]);
        Ok(())
    }

    #[test]
    fn an_unfinished_copy_is_removed_and_the_journal_read_whole() -> TestResult {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("audit.db.ingest");
        std::fs::write(&path, encode_record(&[event("kept", 0)]))?;
        std::fs::write(Journal::compacting_path(&path), [1, 2, 3])?;
        assert_eq!(ids_after_reopening(&path)?, ["kept"]);
        assert!(!Journal::compacting_path(&path).exists());
        Ok(())
    }

    /// A whole record that cannot be read ends what is indexed; it and the
    /// acknowledged records after it are kept aside, not cut off and lost.
    #[tokio::test]
    async fn records_after_an_unreadable_one_are_kept_aside() -> TestResult {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("audit.db.ingest");
        {
            let journal = Journal::open(&path)?;
            for id in ["first", "second", "third"] {
                journal.append(vec![event(id, 1)]).await?;
            }
        }
        let mut bytes = std::fs::read(&path)?;
        let first_end = encode_record(&[event("first", 1)]).len();
        // The second record's event count, past its own bytes.
        bytes
            .get_mut(first_end + 4..first_end + 8)
            .ok_or("short")?
            .copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &bytes)?;

        let journal = Journal::open(&path)?;
        let taken = journal.take().ok_or("nothing recovered")?;
        let ids: Vec<_> = taken.events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["first"]);
        assert_eq!(std::fs::metadata(&path)?.len(), first_end as u64);
        let aside = set_aside_files(directory.path())?;
        assert_eq!(aside.len(), 1, "{aside:?}");
        let kept = std::fs::read(directory.path().join(&aside[0]))?;
        assert_eq!(kept, bytes.get(first_end..).ok_or("short")?);
        // The copy starts at the unreadable record, and the third record
        // is whole in it.
        let (batches, _, intact) = decode_records(&kept);
        assert!(
            batches.is_empty(),
            "the copy starts at the unreadable record"
        );
        assert_eq!(intact, 0);
        let third_start = kept.len() - encode_record(&[event("third", 1)]).len();
        let (batches, _, _) = decode_records(kept.get(third_start..).ok_or("short")?);
        let ids: Vec<_> = batches.concat().into_iter().map(|e| e.event_id).collect();
        assert_eq!(ids, ["third"]);
        Ok(())
    }

    /// The files `open` set aside in `directory`.
    fn set_aside_files(directory: &Path) -> std::io::Result<Vec<String>> {
        let names: Vec<String> = std::fs::read_dir(directory)?
            .map(|entry| entry.map(|entry| entry.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        Ok(names
            .into_iter()
            .filter(|name| name.starts_with("audit.db.ingest.corrupt-"))
            .collect())
    }

    /// A zeroed tail (a power loss's) is dropped with nothing kept aside.
    #[tokio::test]
    async fn a_zeroed_tail_is_dropped_and_not_kept() -> TestResult {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("audit.db.ingest");
        let mut bytes = encode_record(&[event("kept", 0)]);
        let whole = bytes.len() as u64;
        bytes.extend_from_slice(&[0; 4096]);
        std::fs::write(&path, &bytes)?;
        let journal = Journal::open(&path)?;
        assert_eq!(std::fs::metadata(&path)?.len(), whole);
        assert!(set_aside_files(directory.path())?.is_empty());
        assert_eq!(journal.take().map(|taken| taken.events.len()), Some(1));
        Ok(())
    }

    /// Which tails are what a crash leaves (logged as such) and which are
    /// damage (logged as an error).
    #[test]
    fn only_a_cut_short_or_zeroed_tail_is_torn() {
        let record = encode_record(&[event("e", 0)]);
        assert!(torn_tail(&[0; 100]));
        assert!(torn_tail(&[5, 0]));
        assert!(torn_tail(
            record.get(..record.len() - 1).unwrap_or_default()
        ));
        assert!(!torn_tail(&[7, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]));
        assert!(!torn_tail(&[0, 0, 0, 0, 9]));
        assert!(!torn_tail(&[0xff, 0xff, 0xff, 0xff, 1]));
    }

    /// An opener that locks the file a compaction has just replaced (and
    /// let go of) holds nothing: the journal counts as in use.
    #[tokio::test]
    async fn a_lock_on_a_replaced_file_is_not_the_journal() -> TestResult {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("audit.db.ingest");
        let mut journal = Journal::open(&path)?;
        journal.compact_after = 1;
        journal.append(vec![event("one", 0)]).await?;
        let taken = journal.take().ok_or("nothing to take")?;
        journal.append(vec![event("two", 0)]).await?;
        let opened_before = OpenOptions::new().read(true).append(true).open(&path)?;
        journal.stored(taken.through).await;
        drop(journal);
        assert!(matches!(
            lock_journal(&opened_before, &path),
            Err(JournalError::InUse { .. })
        ));
        drop(opened_before);
        let reopened = Journal::open(&path)?;
        assert_eq!(reopened.take().map(|taken| taken.events.len()), Some(1));
        Ok(())
    }

    #[test]
    fn garbage_after_the_records_is_not_read_as_events() {
        let mut bytes = encode_record(&[event("kept", 1)]);
        let kept = bytes.len();
        bytes.extend_from_slice(&[7, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]);
        let (batches, ends, intact) = decode_records(&bytes);
        assert_eq!(batches.len(), 1);
        assert_eq!(ends, [kept as u64]);
        assert_eq!(intact, kept);
        let (batches, _, intact) = decode_records(&[0; 64]);
        assert!(batches.is_empty());
        assert_eq!(intact, 0);
    }
}
