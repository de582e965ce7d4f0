//! The exporter: every event a service emits travels to the audit service
//! as an OTLP span, with group commit.
//!
//! `emit` appends the event to one in-memory queue and wakes the sender
//! task. The sender takes everything waiting (up to the batch limit) and
//! sends it as one Export, which the audit service stores in one
//! transaction; while that export is in flight new events gather for the
//! next one. So under load many calls share one round trip and one commit,
//! and a call that waits for its acknowledgement waits about one export.
//!
//! **Gathering.** When calls are slow (an RSA signature takes a millisecond of
//! CPU), their events arrive one at a time, and each would travel in an export
//! of its own: a round trip, a journal write and an acknowledgement per call,
//! which cost more CPU than the call's own work outside the signature. So before
//! an export of fewer than [`GATHERED_ENOUGH`] events leaves, the sender waits
//! up to `gather` for the calls that were already running to hand over
//! theirs ([`CallCounter`]). Calls that start during the wait do not extend
//! it, and with no other call running (one client calling in sequence) there
//! is no wait at all.
//!
//! **A lone call exports its own event.** In `required` mode, when nothing
//! is queued, no export is under way and no other call is running, the call
//! exports its event from its own task instead of handing it to the sender
//! and waiting to be woken: a client calling in sequence saves two task
//! wake-ups a call ([`AuditExporter::export_alone`]).
//!
//! - `required` mode: a failed export is retried with backoff, the queue
//!   kept (up to `queue_limit`). Once exports have failed for longer than
//!   the deadline the exporter reports itself unhealthy; data-plane calls
//!   then fail UNAVAILABLE and health says NOT_SERVING, until an export
//!   succeeds again.
//! - `best_effort` mode: a failed export's events are dropped and counted
//!   in [`ExportCounters::lost`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tokio::sync::{Notify, oneshot, watch};
use tonic::transport::Channel;

use super::otlp::{EncodedEvent, export_request};
use super::outbox::SqlOutbox;
use super::{AuditDeliveryError, AuditEvent, AuditSink, CallCounter, Delivery};
use crate::config::AuditMode;

/// Longest pause between retries of a failed export.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// An export of this many events leaves without gathering more: the round
/// trip's cost is already shared. Signatures finish about half a millisecond
/// apart at c=64 on two cores; 4 events an export left ~30 % of the CPU
/// outside RSA, 16 about 23 % (BENCHMARKS.md, session 9).
pub const GATHERED_ENOUGH: usize = 16;
/// Most bytes of records in one export. Every record is within
/// [`super::caps::MAX_RECORD_BYTES`], so an export of events of any size
/// stays far below what the audit service accepts (16 MiB); a batch that
/// could not be accepted would be retried, and refused, for ever.
pub const MAX_EXPORT_RECORD_BYTES: usize = 4 * 1024 * 1024;
/// Most bytes of records held in the queue, whatever `queue_limit` allows:
/// past it the queue counts as full.
pub const MAX_QUEUED_RECORD_BYTES: usize = 512 * 1024 * 1024;

/// Where exports go.
#[async_trait::async_trait]
pub trait ExportTransport: Send + Sync + 'static {
    async fn export(&self, events: &[EncodedEvent]) -> Result<(), String>;
}

/// OTLP/gRPC over an mTLS channel.
pub struct OtlpTransport {
    client: TraceServiceClient<Channel>,
    service_name: String,
    timeout: Duration,
    mode: AuditMode,
}

impl OtlpTransport {
    pub fn new(channel: Channel, service_name: &str, timeout: Duration, mode: AuditMode) -> Self {
        Self {
            client: TraceServiceClient::new(channel).max_decoding_message_size(4 * 1024 * 1024),
            service_name: service_name.to_owned(),
            timeout,
            mode,
        }
    }
}

#[async_trait::async_trait]
impl ExportTransport for OtlpTransport {
    async fn export(&self, events: &[EncodedEvent]) -> Result<(), String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| {
                u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
            });
        let request = export_request(&self.service_name, events, now);
        let mut client = self.client.clone();
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.timeout);
        match tokio::time::timeout(self.timeout, client.export(request)).await {
            Ok(Ok(response)) => {
                let Some(partial) = response
                    .into_inner()
                    .partial_success
                    .filter(|partial| partial.rejected_spans > 0)
                else {
                    return Ok(());
                };
                // Coffer's own records are refused only when this process's
                // certificate does not fit what it exports (or by a defect):
                // every export would be. In `required` mode that is a
                // failed export, retried, so that no answer is released
                // and no outbox row removed for an event that was not
                // stored; in `best_effort` mode it is logged and dropped
                // (retried, it would block the queue).
                let refused = format!(
                    "the audit service refused {} of {} audit events: {}",
                    partial.rejected_spans,
                    events.len(),
                    partial.error_message
                );
                if self.mode == AuditMode::Required {
                    return Err(refused);
                }
                tracing::error!("{refused}");
                Ok(())
            }
            Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
            Err(_) => Err("the export timed out".to_owned()),
        }
    }
}

/// What the exporter has done, for metrics and tests.
#[derive(Debug, Default)]
pub struct ExportCounters {
    /// Events the audit service acknowledged.
    pub delivered: AtomicU64,
    /// Events given up: best-effort events of failed exports, and events
    /// dropped because the queue was full.
    pub lost: AtomicU64,
    /// Exports that failed.
    pub failed_exports: AtomicU64,
    /// Exports that left because the gathering time ran out while calls
    /// that were running when it began had not handed over their events.
    pub gathers_timed_out: AtomicU64,
}

struct Entry {
    event: EncodedEvent,
    ack: Option<oneshot::Sender<()>>,
    /// Set by a waiter that gave up: the event is not sent (its failure
    /// version is sent instead).
    withdrawn: Option<Arc<AtomicBool>>,
    outbox: Option<Arc<SqlOutbox>>,
}

impl Entry {
    fn is_withdrawn(&self) -> bool {
        self.withdrawn
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::Acquire))
    }
}

struct Shared {
    queue: Mutex<VecDeque<Entry>>,
    wake: Notify,
    /// Woken after every export attempt, for `flush`.
    progress: Notify,
    mode: AuditMode,
    deadline: Duration,
    queue_limit: usize,
    batch_limit: usize,
    /// Bytes of the records in `queue`; changed only with the queue locked.
    queued_bytes: AtomicUsize,
    healthy: watch::Sender<bool>,
    counters: ExportCounters,
    /// Events taken by the sender and not yet acknowledged or given up.
    in_flight: AtomicU64,
    /// An export is under way, by the sender or by a call exporting its own
    /// event ([`AuditExporter::export_alone`]). Set only with the queue
    /// locked, so there is one export at a time.
    exporting: AtomicBool,
    /// The calls of the services that emit here.
    calls: Arc<CallCounter>,
    /// Longest wait for running calls' events; zero: none.
    gather: Duration,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, entry: Entry) {
        let mut queue = self.lock();
        let refused = self.push_locked(&mut queue, entry);
        drop(queue);
        self.queued_or_refused(refused);
    }

    /// Queues `entry` unless the queue is full; a refused entry is given
    /// back, for [`Self::queued_or_refused`] once the lock is released.
    fn push_locked(&self, queue: &mut VecDeque<Entry>, entry: Entry) -> Option<Entry> {
        if !self.has_room(queue, &entry) {
            return Some(entry);
        }
        self.queued_bytes
            .fetch_add(entry.event.record.len(), Ordering::Relaxed);
        queue.push_back(entry);
        None
    }

    /// Whether the queue (locked by the caller) can take `entry`.
    fn has_room(&self, queue: &VecDeque<Entry>, entry: &Entry) -> bool {
        queue.len() < self.queue_limit
            && self.queued_bytes.load(Ordering::Relaxed) + entry.event.record.len()
                <= MAX_QUEUED_RECORD_BYTES
    }

    /// Puts a failed export's entry back at the front of the queue (locked
    /// by the caller), unless the queue is full; a refused entry is given
    /// back.
    fn requeue_locked(&self, queue: &mut VecDeque<Entry>, entry: Entry) -> Option<Entry> {
        if !self.has_room(queue, &entry) {
            return Some(entry);
        }
        self.queued_bytes
            .fetch_add(entry.event.record.len(), Ordering::Relaxed);
        queue.push_front(entry);
        None
    }

    /// The next entry of the queue (locked by the caller).
    fn pop_locked(&self, queue: &mut VecDeque<Entry>) -> Option<Entry> {
        let entry = queue.pop_front()?;
        self.queued_bytes
            .fetch_sub(entry.event.record.len(), Ordering::Relaxed);
        Some(entry)
    }

    /// Wakes the sender for a queued entry, or accounts for a refused one.
    fn queued_or_refused(&self, refused: Option<Entry>) {
        let Some(entry) = refused else {
            self.wake.notify_one();
            return;
        };
        if entry.outbox.is_none() {
            self.counters.lost.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                event_id = %entry.event.event_id,
                "audit queue full: event dropped"
            );
        }
        leave_to_relay(entry);
    }
}

/// An outboxed event the queue cannot hold is still in its outbox, and the
/// relay sends it: its row is brought up to this, the final event, first.
fn leave_to_relay(entry: Entry) {
    let (Some(outbox), Ok(runtime)) = (entry.outbox, tokio::runtime::Handle::try_current()) else {
        return;
    };
    let event = entry.event;
    runtime.spawn(async move {
        if let Err(error) = outbox.complete(&event.event_id, &event.record).await {
            tracing::warn!(%error, event_id = %event.event_id, "an outbox row could not take its final event");
        }
        outbox.release(std::slice::from_ref(&event.event_id));
    });
}

/// The sink every service's call layer emits to; see the module docs.
pub struct AuditExporter {
    shared: Arc<Shared>,
    transport: Arc<dyn ExportTransport>,
    sender: tokio::task::JoinHandle<()>,
}

/// How the exporter behaves.
#[derive(Debug, Clone, Copy)]
pub struct ExportSettings {
    pub mode: AuditMode,
    pub deadline: Duration,
    pub queue_limit: usize,
    pub batch_limit: usize,
    /// How long an export may wait for running calls' events.
    pub gather: Duration,
}

impl AuditExporter {
    /// Starts the sender task (on the current runtime).
    pub fn start(transport: Arc<dyn ExportTransport>, settings: ExportSettings) -> Arc<Self> {
        let (healthy, _) = watch::channel(true);
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            progress: Notify::new(),
            mode: settings.mode,
            deadline: settings.deadline,
            queue_limit: settings.queue_limit,
            batch_limit: settings.batch_limit,
            queued_bytes: AtomicUsize::new(0),
            healthy,
            counters: ExportCounters::default(),
            in_flight: AtomicU64::new(0),
            exporting: AtomicBool::new(false),
            calls: Arc::new(CallCounter::default()),
            gather: settings.gather,
        });
        let sender = tokio::spawn(send_loop(shared.clone(), transport.clone()));
        Arc::new(Self {
            shared,
            transport,
            sender,
        })
    }

    pub fn counters(&self) -> &ExportCounters {
        &self.shared.counters
    }

    pub fn is_healthy(&self) -> bool {
        *self.shared.healthy.borrow()
    }

    /// Events waiting in the queue (not those of an export under way).
    pub fn queued(&self) -> usize {
        self.shared.lock().len()
    }

    /// Queues an event that is already a record (the outbox relay's rows).
    pub fn enqueue_encoded(&self, event: EncodedEvent, outbox: Option<Arc<SqlOutbox>>) {
        self.shared.push(Entry {
            event,
            ack: None,
            withdrawn: None,
            outbox,
        });
    }

    fn encode(event: &AuditEvent) -> Result<EncodedEvent, AuditDeliveryError> {
        Ok(EncodedEvent {
            event_id: event.event_id.clone(),
            event_name: event.event_name.clone(),
            trace_id: event.trace_id.clone(),
            record: super::caps::capped_record(event)
                .map_err(|error| AuditDeliveryError::Failed(error.to_string()))?,
        })
    }
}

impl AuditExporter {
    /// Queues `entry` for the sender, in one hold of the queue lock, unless
    /// its call is alone: nothing queued, no export under way, no other call
    /// still running. Then the exporter is marked as exporting and the entry
    /// handed back, for the call to export itself ([`Self::export_alone`]).
    fn queue_unless_alone(&self, entry: Entry) -> Option<Entry> {
        let shared = &self.shared;
        let mut queue = shared.lock();
        if queue.is_empty()
            && shared.calls.started() == shared.calls.finished()
            && !shared.exporting.swap(true, Ordering::AcqRel)
        {
            return Some(entry);
        }
        let refused = shared.push_locked(&mut queue, entry);
        drop(queue);
        shared.queued_or_refused(refused);
        None
    }

    /// Exports a lone call's entry from the call's own task. A client
    /// calling in sequence then skips the hand-over to the sender task and
    /// back: two task wake-ups, often on the other worker thread.
    ///
    /// Gives the entry back when the export failed (logged here); the caller
    /// queues it and the sender retries it as it retries any export.
    async fn export_alone(&self, entry: Entry, give_up: tokio::time::Instant) -> Result<(), Entry> {
        let shared = &self.shared;
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        let mut export = AloneExport {
            shared,
            entry,
            settled: false,
        };
        let outcome = tokio::time::timeout_at(
            give_up,
            self.transport
                .export(std::slice::from_ref(&export.entry.event)),
        )
        .await;
        export.settled = true;
        match outcome {
            Ok(Ok(())) => {
                shared.counters.delivered.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(error)) => {
                shared
                    .counters
                    .failed_exports
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, events = 1, "audit export failed; will retry");
                Err(export.entry.take())
            }
            Err(_elapsed) => Err(export.entry.take()),
        }
    }
}

impl Entry {
    /// Moves the entry out, leaving an empty one behind (for a drop guard).
    fn take(&mut self) -> Entry {
        Entry {
            event: std::mem::take(&mut self.event),
            ack: self.ack.take(),
            withdrawn: self.withdrawn.take(),
            outbox: self.outbox.take(),
        }
    }
}

/// An export by the call itself ([`AuditExporter::export_alone`]). Ending it
/// lets the sender export again; a call dropped mid-export (its client went
/// away) leaves its entry to the sender, which delivers it at least once (the
/// audit service de-duplicates by event id).
struct AloneExport<'a> {
    shared: &'a Shared,
    entry: Entry,
    /// The export has an outcome; unset, the call was dropped mid-export.
    settled: bool,
}

impl Drop for AloneExport<'_> {
    fn drop(&mut self) {
        let shared = self.shared;
        shared.exporting.store(false, Ordering::Release);
        if self.settled {
            if !shared.lock().is_empty() {
                shared.wake.notify_one();
            }
        } else {
            shared.push(self.entry.take());
        }
        shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        shared.progress.notify_waiters();
    }
}

impl Drop for AuditExporter {
    fn drop(&mut self) {
        self.sender.abort();
    }
}

#[async_trait::async_trait]
impl AuditSink for AuditExporter {
    async fn emit(&self, event: &AuditEvent, delivery: Delivery) -> Result<(), AuditDeliveryError> {
        let encoded = Self::encode(event)?;
        match delivery {
            Delivery::Background => {
                self.shared.push(Entry {
                    event: encoded,
                    ack: None,
                    withdrawn: None,
                    outbox: None,
                });
                Ok(())
            }
            Delivery::Outboxed(outbox) => {
                // Held here until delivered or left to the relay, which
                // meanwhile does not hand its row over a second time.
                outbox.mark_relayed(&encoded.event_id);
                self.shared.push(Entry {
                    event: encoded,
                    ack: None,
                    withdrawn: None,
                    outbox: Some(outbox),
                });
                Ok(())
            }
            Delivery::Acknowledged { by } => {
                if !self.is_healthy() {
                    return Err(AuditDeliveryError::Unacknowledged);
                }
                let give_up = (tokio::time::Instant::now() + self.shared.deadline).min(by);
                let (ack, acknowledged) = oneshot::channel();
                let withdrawn = Arc::new(AtomicBool::new(false));
                let entry = Entry {
                    event: encoded,
                    ack: Some(ack),
                    withdrawn: Some(withdrawn.clone()),
                    outbox: None,
                };
                if let Some(alone) = self.queue_unless_alone(entry) {
                    match self.export_alone(alone, give_up).await {
                        Ok(()) => return Ok(()),
                        Err(failed) => self.shared.push(failed),
                    }
                }
                match tokio::time::timeout_at(give_up, acknowledged).await {
                    Ok(Ok(())) => Ok(()),
                    // Dropped unacknowledged (the queue was full, or the
                    // exporter stopped), or the deadline passed.
                    Ok(Err(_)) | Err(_) => {
                        withdrawn.store(true, Ordering::Release);
                        Err(AuditDeliveryError::Unacknowledged)
                    }
                }
            }
        }
    }

    fn health(&self) -> Option<watch::Receiver<bool>> {
        Some(self.shared.healthy.subscribe())
    }

    fn calls(&self) -> Option<&Arc<CallCounter>> {
        Some(&self.shared.calls)
    }

    async fn flush(&self, timeout: Duration) -> Result<(), AuditDeliveryError> {
        let give_up = Instant::now() + timeout;
        loop {
            let progressed = self.shared.progress.notified();
            let idle =
                self.shared.lock().is_empty() && self.shared.in_flight.load(Ordering::Acquire) == 0;
            if idle {
                return Ok(());
            }
            let remaining = give_up.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(AuditDeliveryError::Failed(
                    "events are still waiting for the audit service".into(),
                ));
            }
            let _woken =
                tokio::time::timeout(remaining.min(Duration::from_millis(50)), progressed).await;
        }
    }
}

/// Waits, up to `shared.gather`, until the calls running now have handed
/// their events over or [`GATHERED_ENOUGH`] events wait; see the module docs.
async fn gather(shared: &Shared) {
    if shared.gather.is_zero() {
        return;
    }
    let running_now = shared.calls.started();
    let give_up = tokio::time::Instant::now() + shared.gather;
    loop {
        let pushed = shared.wake.notified();
        let queued = shared.lock().len();
        if queued == 0 || queued >= GATHERED_ENOUGH || shared.calls.finished() >= running_now {
            return;
        }
        if tokio::time::timeout_at(give_up, pushed).await.is_err() {
            shared
                .counters
                .gathers_timed_out
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
}

async fn send_loop(shared: Arc<Shared>, transport: Arc<dyn ExportTransport>) {
    let mut backoff = FIRST_BACKOFF;
    let mut failing_since: Option<Instant> = None;
    loop {
        gather(&shared).await;
        let batch: Option<Vec<Entry>> = {
            let mut queue = shared.lock();
            if shared.exporting.load(Ordering::Acquire) {
                // A call exports its own event; it wakes the sender when
                // done if anything waits.
                None
            } else {
                let mut batch = Vec::with_capacity(queue.len().min(shared.batch_limit));
                let mut batch_bytes = 0;
                while batch.len() < shared.batch_limit {
                    let fits = queue.front().is_some_and(|entry| {
                        batch.is_empty()
                            || batch_bytes + entry.event.record.len() <= MAX_EXPORT_RECORD_BYTES
                    });
                    if !fits {
                        break;
                    }
                    let Some(entry) = shared.pop_locked(&mut queue) else {
                        break;
                    };
                    if !entry.is_withdrawn() {
                        batch_bytes += entry.event.record.len();
                        batch.push(entry);
                    }
                }
                if !batch.is_empty() {
                    shared.exporting.store(true, Ordering::Release);
                    // Counted in flight before the queue is unlocked, so
                    // `flush` never sees the batch in neither place.
                    shared
                        .in_flight
                        .fetch_add(batch.len() as u64, Ordering::AcqRel);
                }
                Some(batch)
            }
        };
        let Some(batch) = batch else {
            shared.wake.notified().await;
            continue;
        };
        if batch.is_empty() {
            shared.progress.notify_waiters();
            if failing_since.is_some() {
                // Probe with an empty export so health recovers even when
                // nothing is waiting.
                tokio::select! {
                    () = shared.wake.notified() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                if transport.export(&[]).await.is_ok() {
                    failing_since = None;
                    backoff = FIRST_BACKOFF;
                    shared.healthy.send_replace(true);
                    tracing::info!("the audit service is reachable again");
                } else {
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                continue;
            }
            shared.wake.notified().await;
            continue;
        }
        let count = batch.len() as u64;
        let events: Vec<EncodedEvent> = batch.iter().map(|entry| entry.event.clone()).collect();
        let outcome = transport.export(&events).await;
        match outcome {
            Ok(()) => {
                shared.exporting.store(false, Ordering::Release);
                shared
                    .counters
                    .delivered
                    .fetch_add(count, Ordering::Relaxed);
                let mut cleanups: Vec<(Arc<SqlOutbox>, Vec<String>)> = Vec::new();
                for entry in batch {
                    if let Some(ack) = entry.ack {
                        let _waiter_gone = ack.send(());
                    }
                    if let Some(outbox) = entry.outbox {
                        match cleanups
                            .iter_mut()
                            .find(|(known, _)| Arc::ptr_eq(known, &outbox))
                        {
                            Some((_, ids)) => ids.push(entry.event.event_id),
                            None => cleanups.push((outbox, vec![entry.event.event_id])),
                        }
                    }
                }
                for (outbox, ids) in cleanups {
                    tokio::spawn(async move {
                        if let Err(error) = outbox.remove(&ids).await {
                            // The relay sends them again; the audit service
                            // de-duplicates.
                            tracing::warn!(%error, "delivered outbox rows could not be removed");
                        }
                        outbox.release(&ids);
                    });
                }
                if failing_since.take().is_some() {
                    backoff = FIRST_BACKOFF;
                    shared.healthy.send_replace(true);
                    tracing::info!("the audit service is reachable again");
                }
            }
            Err(error) => {
                shared
                    .counters
                    .failed_exports
                    .fetch_add(1, Ordering::Relaxed);
                let since = *failing_since.get_or_insert_with(Instant::now);
                match shared.mode {
                    AuditMode::BestEffort => {
                        // An event with an outbox row (one a `required` run
                        // left, handed over by the relay) is not lost: its
                        // row goes back to the relay for a later attempt.
                        let mut lost = 0;
                        for entry in batch {
                            if entry.outbox.is_none() {
                                lost += 1;
                            }
                            leave_to_relay(entry);
                        }
                        shared.counters.lost.fetch_add(lost, Ordering::Relaxed);
                        tracing::warn!(%error, events = count, "audit export failed; events dropped (best_effort) or left to the outbox relay");
                    }
                    AuditMode::Required => {
                        tracing::warn!(%error, events = count, "audit export failed; will retry");
                        let mut queue = shared.lock();
                        for entry in batch.into_iter().rev() {
                            if let Some(refused) = shared.requeue_locked(&mut queue, entry) {
                                if refused.outbox.is_none() {
                                    shared.counters.lost.fetch_add(1, Ordering::Relaxed);
                                }
                                leave_to_relay(refused);
                            }
                        }
                    }
                }
                // Only now: with the failed events back in the queue, no call
                // takes itself for alone and overtakes them.
                shared.exporting.store(false, Ordering::Release);
                if since.elapsed() >= shared.deadline && *shared.healthy.borrow() {
                    tracing::error!(
                        deadline = ?shared.deadline,
                        "the audit service has been unreachable past the deadline"
                    );
                    shared.healthy.send_replace(false);
                }
                shared.in_flight.fetch_sub(count, Ordering::AcqRel);
                shared.progress.notify_waiters();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        shared.in_flight.fetch_sub(count, Ordering::AcqRel);
        shared.progress.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::RunningCall;

    /// A transport that records how many events each export carried.
    #[derive(Default)]
    struct Recording {
        batches: Mutex<Vec<usize>>,
    }

    impl Recording {
        fn batches(&self) -> Vec<usize> {
            self.batches
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone()
        }

        /// Waits (in real time, at most `limit`) until `done` holds for the
        /// exports so far, and returns them.
        async fn wait_until(&self, limit: Duration, done: impl Fn(&[usize]) -> bool) -> Vec<usize> {
            let give_up = Instant::now() + limit;
            loop {
                let batches = self.batches();
                if done(&batches) || Instant::now() >= give_up {
                    return batches;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }

    #[async_trait::async_trait]
    impl ExportTransport for Recording {
        async fn export(&self, events: &[EncodedEvent]) -> Result<(), String> {
            if !events.is_empty() {
                self.batches
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(events.len());
            }
            Ok(())
        }
    }

    fn exporter(gather: Duration) -> (Arc<AuditExporter>, Arc<Recording>) {
        let transport = Arc::new(Recording::default());
        let exporter = AuditExporter::start(
            transport.clone(),
            ExportSettings {
                mode: AuditMode::BestEffort,
                deadline: Duration::from_secs(5),
                queue_limit: 1_000,
                batch_limit: 100,
                gather,
            },
        );
        (exporter, transport)
    }

    fn event(index: usize) -> EncodedEvent {
        EncodedEvent {
            event_id: format!("00000000-0000-4000-8000-{index:012}"),
            event_name: "Sign".into(),
            trace_id: String::new(),
            record: "{}".into(),
        }
    }

    const LONG: Duration = Duration::from_secs(30);

    /// An audit service that refuses one span of every export, as one does
    /// every record of a process whose certificate names another service.
    struct Refusing;

    #[tonic::async_trait]
    impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
        for Refusing
    {
        async fn export(
            &self,
            _request: tonic::Request<
                opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
            >,
        ) -> Result<
            tonic::Response<
                opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
            >,
            tonic::Status,
        > {
            use opentelemetry_proto::tonic::collector::trace::v1::{
                ExportTracePartialSuccess, ExportTraceServiceResponse,
            };
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: Some(ExportTracePartialSuccess {
                    rejected_spans: 1,
                    error_message: "a Coffer service's events name its own event source".into(),
                }),
            }))
        }
    }

    /// In `required` mode an export the audit service refused in part is a
    /// failed one (retried; nothing acknowledged); in `best_effort` mode it
    /// is logged and counted delivered. Before, both took it as delivered.
    #[tokio::test]
    async fn a_refused_export_is_a_failure_where_delivery_is_required()
    -> Result<(), Box<dyn std::error::Error>> {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Refusing))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let required = OtlpTransport::new(channel.clone(), "keys", LONG, AuditMode::Required);
        let outcome = required.export(&[event(1), event(2)]).await;
        assert_eq!(
            outcome,
            Err("the audit service refused 1 of 2 audit events: a Coffer service's events name its own event source".to_owned())
        );
        let best_effort = OtlpTransport::new(channel, "keys", LONG, AuditMode::BestEffort);
        assert_eq!(best_effort.export(&[event(1)]).await, Ok(()));
        server.abort();
        Ok(())
    }

    #[tokio::test]
    async fn an_export_waits_for_the_calls_that_were_running_and_carries_their_events() {
        let (exporter, transport) = exporter(LONG);
        let calls = exporter.calls().expect("the exporter counts calls").clone();
        let running: Vec<RunningCall> = (0..3).map(|_| calls.start()).collect();
        let mut running = running.into_iter();

        drop(running.next());
        exporter.enqueue_encoded(event(1), None);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            transport.batches(),
            Vec::<usize>::new(),
            "nothing leaves while two calls run"
        );

        drop(running.next());
        exporter.enqueue_encoded(event(2), None);
        drop(running.next());
        exporter.enqueue_encoded(event(3), None);
        let batches = transport
            .wait_until(Duration::from_secs(5), |batches| !batches.is_empty())
            .await;
        assert_eq!(
            batches,
            [3],
            "the three calls' events leave together, long before the limit"
        );
        assert_eq!(
            exporter
                .counters()
                .gathers_timed_out
                .load(Ordering::Relaxed),
            0
        );
    }

    #[tokio::test]
    async fn with_no_other_call_running_an_event_leaves_at_once() {
        let (exporter, transport) = exporter(LONG);
        exporter.enqueue_encoded(event(1), None);
        let batches = transport
            .wait_until(Duration::from_secs(5), |batches| !batches.is_empty())
            .await;
        assert_eq!(batches, [1]);
    }

    #[tokio::test]
    async fn an_export_carries_at_most_its_share_of_bytes() {
        let (exporter, transport) = exporter(LONG);
        let quarter = MAX_EXPORT_RECORD_BYTES / 4;
        for index in 0..10 {
            exporter.enqueue_encoded(
                EncodedEvent {
                    record: "x".repeat(quarter),
                    ..event(index)
                },
                None,
            );
        }
        let batches = transport
            .wait_until(Duration::from_secs(5), |batches| {
                batches.iter().sum::<usize>() == 10
            })
            .await;
        assert_eq!(batches, [4, 4, 2]);
        assert_eq!(exporter.shared.queued_bytes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn enough_events_leave_without_waiting_for_the_calls_still_running() {
        let (exporter, transport) = exporter(LONG);
        let calls = exporter.calls().expect("the exporter counts calls").clone();
        let _still_running = calls.start();
        for index in 0..GATHERED_ENOUGH {
            exporter.enqueue_encoded(event(index), None);
        }
        let batches = transport
            .wait_until(Duration::from_secs(5), |batches| !batches.is_empty())
            .await;
        assert_eq!(batches, [GATHERED_ENOUGH]);
    }

    #[tokio::test]
    async fn the_wait_for_a_call_that_does_not_end_is_bounded() {
        let gather = Duration::from_millis(200);
        let (exporter, transport) = exporter(gather);
        let calls = exporter.calls().expect("the exporter counts calls").clone();
        let _never_ends = calls.start();
        let queued = Instant::now();
        exporter.enqueue_encoded(event(1), None);
        let batches = transport
            .wait_until(Duration::from_secs(10), |batches| !batches.is_empty())
            .await;
        assert_eq!(batches, [1]);
        assert_eq!(
            exporter
                .counters()
                .gathers_timed_out
                .load(Ordering::Relaxed),
            1
        );
        assert!(
            queued.elapsed() >= gather,
            "left after {:?}, before the gathering time",
            queued.elapsed()
        );
    }

    #[tokio::test]
    async fn a_zero_gathering_time_never_waits() {
        let (exporter, transport) = exporter(Duration::ZERO);
        let calls = exporter.calls().expect("the exporter counts calls").clone();
        let _still_running = calls.start();
        exporter.enqueue_encoded(event(1), None);
        let batches = transport
            .wait_until(Duration::from_secs(5), |batches| !batches.is_empty())
            .await;
        assert_eq!(batches, [1]);
    }
    /// A transport that records the task each export ran in; with `hang`,
    /// the first export never ends.
    #[derive(Default)]
    struct TaskProbe {
        hang: bool,
        exports: Mutex<Vec<(usize, Option<tokio::task::Id>)>>,
    }

    impl TaskProbe {
        fn exports(&self) -> Vec<(usize, Option<tokio::task::Id>)> {
            self.exports
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone()
        }
    }

    #[async_trait::async_trait]
    impl ExportTransport for TaskProbe {
        async fn export(&self, events: &[EncodedEvent]) -> Result<(), String> {
            let first = {
                let mut exports = self
                    .exports
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                exports.push((events.len(), tokio::task::try_id()));
                exports.len() == 1
            };
            if self.hang && first {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
    }

    fn probed(hang: bool) -> (Arc<AuditExporter>, Arc<TaskProbe>) {
        let transport = Arc::new(TaskProbe {
            hang,
            ..TaskProbe::default()
        });
        let exporter = AuditExporter::start(
            transport.clone(),
            ExportSettings {
                mode: AuditMode::Required,
                deadline: Duration::from_secs(5),
                queue_limit: 1_000,
                batch_limit: 100,
                gather: LONG,
            },
        );
        (exporter, transport)
    }

    fn far() -> tokio::time::Instant {
        tokio::time::Instant::now() + LONG
    }

    /// What `emit` does for an acknowledged event up to the wait: `None`
    /// when the event was queued for the sender, else whether the call's own
    /// export succeeded.
    async fn try_alone(exporter: &AuditExporter, index: usize) -> Option<bool> {
        let entry = Entry {
            event: event(index),
            ack: None,
            withdrawn: None,
            outbox: None,
        };
        let alone = exporter.queue_unless_alone(entry)?;
        Some(exporter.export_alone(alone, far()).await.is_ok())
    }

    #[tokio::test]
    async fn a_lone_call_exports_its_event_from_its_own_task() {
        let (exporter, transport) = probed(false);
        let call = {
            let exporter = exporter.clone();
            tokio::spawn(async move {
                let exported = try_alone(&exporter, 1).await;
                (exported, tokio::task::id())
            })
        };
        let (exported, call_task) = call.await.expect("the call's task ends");
        assert_eq!(exported, Some(true), "the lone event was exported");
        assert_eq!(transport.exports(), [(1, Some(call_task))]);
        assert_eq!(exporter.counters().delivered.load(Ordering::Relaxed), 1);
        assert!(!exporter.shared.exporting.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn an_event_is_not_exported_alone_while_another_call_runs() {
        let (exporter, transport) = probed(false);
        let calls = exporter.calls().expect("the exporter counts calls").clone();
        let _other = calls.start();
        assert_eq!(try_alone(&exporter, 1).await, None, "queued for the sender");
        assert_eq!(exporter.shared.lock().len(), 1);
        assert!(transport.exports().is_empty());
    }

    #[tokio::test]
    async fn an_event_is_not_exported_alone_while_an_export_is_under_way() {
        let (exporter, transport) = probed(true);
        // The sender's first export hangs: the event it carries stays in
        // flight, and the next one waits in the queue.
        exporter.enqueue_encoded(event(1), None);
        let give_up = Instant::now() + Duration::from_secs(5);
        while transport.exports().is_empty() && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(
            try_alone(&exporter, 2).await,
            None,
            "an export is under way: queued for the sender"
        );
        assert_eq!(transport.exports().len(), 1);
    }

    #[tokio::test]
    async fn a_call_dropped_mid_export_leaves_its_event_to_the_sender() {
        let (exporter, transport) = probed(true);
        let cut_short =
            tokio::time::timeout(Duration::from_millis(50), try_alone(&exporter, 1)).await;
        assert!(cut_short.is_err(), "the first export hangs");
        let give_up = Instant::now() + Duration::from_secs(5);
        while transport.exports().len() < 2 && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let exports = transport.exports();
        assert_eq!(exports.len(), 2, "the sender exported the event again");
        assert_eq!(exports[1].0, 1);
        assert_ne!(exports[1].1, exports[0].1, "from the sender's task");
        assert_eq!(exporter.counters().delivered.load(Ordering::Relaxed), 1);
    }
}
