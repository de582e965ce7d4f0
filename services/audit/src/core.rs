//! What happens to an event once it is accepted: it is stored (one
//! transaction per batch: the group commit), published to live
//! subscriptions, and matched against the enabled event rules, whose
//! targets get it by webhook.
//!
//! On SQLite an accepted batch is first appended to the ingest journal
//! ([`crate::journal`]) and the indexer task stores it; on Postgres it is
//! stored before `ingest` returns.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use coffer_platform::background::{every, unwound};
use coffer_platform::clock::Clock;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::domain::pattern::EventPattern;
use crate::journal::{Journal, SYNC_INTERVAL};
use crate::store::{AuditStore, StoreError, StoredEvent, TargetRecord};
use crate::webhook::{DeliveryJob, Dispatcher};

/// Events a slow subscriber may fall behind by before it misses some.
const LIVE_BUFFER: usize = 4096;
/// How often the retention job runs.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
const RETENTION_BATCH: u32 = 10_000;
/// How often the rules are re-read, for changes made through another
/// replica sharing the database (or a change whose call was cut off before
/// it reloaded them).
pub const RULES_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// How long a read waits for the indexer before it reads what is stored.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pauses between the indexer's attempts while the store fails.
const INDEX_RETRY_FIRST: Duration = Duration::from_millis(50);
const INDEX_RETRY_MAX: Duration = Duration::from_secs(2);

/// An event as subscriptions and rules see it.
#[derive(Debug)]
pub struct LiveEvent {
    pub stored: StoredEvent,
    /// The EventBridge envelope patterns are matched against.
    pub envelope: Value,
}

impl LiveEvent {
    /// A read-only management event: what an ENABLED rule leaves out, as
    /// EventBridge does (ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS takes
    /// it). Coffer's cryptographic calls are data events, so rules see them.
    fn read_only_management(&self) -> bool {
        self.stored.read_only && self.envelope["detail"]["eventCategory"] != "Data"
    }
}

struct ActiveRule {
    account_id: String,
    name: String,
    /// ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS: read-only management
    /// events too.
    read_only_events: bool,
    pattern: EventPattern,
    targets: Vec<TargetRecord>,
    /// When the rule was created: a rule deleted and made again under its
    /// name is another rule, whose targets the first's deliveries are not
    /// for.
    created_at_ms: i64,
}

/// Events waiting for the writer, with where to send how many were new.
type PendingWrite = (
    Vec<StoredEvent>,
    tokio::sync::oneshot::Sender<Result<usize, String>>,
);

pub struct AuditCore {
    /// Itself, for the tasks it starts.
    me: Weak<AuditCore>,
    store: Arc<dyn AuditStore>,
    /// Group commit across exports: whoever holds `writer` stores
    /// everything `pending` holds in one transaction.
    pending: std::sync::Mutex<Vec<PendingWrite>>,
    writer: Arc<tokio::sync::Mutex<()>>,
    clock: Arc<dyn Clock>,
    live: broadcast::Sender<Arc<LiveEvent>>,
    /// Set when the service shuts down: open subscriptions end.
    closing: tokio::sync::watch::Sender<bool>,
    rules: RwLock<Arc<Vec<ActiveRule>>>,
    /// One reload at a time, so the last to read the rules is the last to
    /// install them.
    reloading: tokio::sync::Mutex<()>,
    dispatcher: Arc<Dispatcher>,
    retention: Duration,
    /// Where accepted batches wait for the indexer (SQLite).
    journal: Option<Arc<Journal>>,
    /// The tasks that index what the journal holds and sync it.
    journal_tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for AuditCore {
    fn drop(&mut self) {
        for task in self
            .journal_tasks
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl AuditCore {
    /// The core, with its indexer running when there is a journal (on the
    /// current runtime).
    pub fn start(
        store: Arc<dyn AuditStore>,
        clock: Arc<dyn Clock>,
        dispatcher: Arc<Dispatcher>,
        retention: Duration,
        journal: Option<Journal>,
    ) -> Arc<Self> {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let journal = journal.map(Arc::new);
        let core = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            store,
            pending: std::sync::Mutex::new(Vec::new()),
            writer: Arc::new(tokio::sync::Mutex::new(())),
            clock,
            live,
            closing: tokio::sync::watch::Sender::new(false),
            rules: RwLock::new(Arc::new(Vec::new())),
            reloading: tokio::sync::Mutex::new(()),
            dispatcher,
            retention,
            journal: journal.clone(),
            journal_tasks: std::sync::Mutex::new(Vec::new()),
        });
        if let Some(journal) = journal {
            // Separate tasks: a compaction or a long transaction of the
            // indexer does not hold the syncs back.
            let tasks = vec![
                tokio::spawn(run_indexer(Arc::downgrade(&core), journal.clone())),
                tokio::spawn(run_syncer(journal)),
            ];
            *core
                .journal_tasks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = tasks;
        }
        core
    }

    pub fn store(&self) -> &Arc<dyn AuditStore> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// A live feed of every event stored from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.live.subscribe()
    }

    /// Tells open subscriptions to end: the service is shutting down, and
    /// a subscription never ends by itself.
    pub fn close_subscriptions(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`close_subscriptions`](Self::close_subscriptions)
    /// has been called.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            let _closed_or_gone = closing.wait_for(|closing| *closing).await;
        }
    }

    /// Accepts `events`, with the copies their resources' other owners get
    /// ([`with_owner_copies`](crate::domain::record::with_owner_copies)):
    /// once this returns they are durable (in the journal or the store).
    /// Stored, the new ones are published and routed (a re-delivered event id
    /// is neither).
    pub async fn ingest(&self, events: Vec<StoredEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let events = crate::domain::record::with_owner_copies(events);
        match &self.journal {
            Some(journal) => journal
                .append(events)
                .await
                .map_err(|error| StoreError::Batch(error.to_string())),
            None => self.store_and_route(events).await.map(|_| ()),
        }
    }

    /// The ingest journal, where there is one (SQLite).
    #[cfg(test)]
    pub(crate) fn journal(&self) -> Option<&Journal> {
        self.journal.as_deref()
    }

    /// Waits until every event accepted before this call is in the store
    /// (at most [`SETTLE_TIMEOUT`]; then what is stored is read anyway).
    /// Reads of events call this first.
    pub async fn settled(&self) {
        if let Some(journal) = &self.journal
            && !journal.settled(SETTLE_TIMEOUT).await
        {
            tracing::warn!("the audit indexer is behind; a read may miss the newest events");
        }
    }

    /// Publishes and routes the stored events at the positions `fresh`.
    /// Returns how many those are.
    fn route(&self, events: Vec<StoredEvent>, fresh: Vec<usize>) -> usize {
        let count = fresh.len();
        let rules = self
            .rules
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let mut events: Vec<Option<StoredEvent>> = events.into_iter().map(Some).collect();
        for index in fresh {
            let Some(stored) = events.get_mut(index).and_then(Option::take) else {
                continue;
            };
            if rules.is_empty() && self.live.receiver_count() == 0 {
                continue;
            }
            let live = Arc::new(LiveEvent {
                envelope: envelope(&stored),
                stored,
            });
            self.deliver_to_rules(&live, &rules);
            // No subscriber is not an error.
            let _receivers = self.live.send(live);
        }
        count
    }

    /// Hands `live` to the targets of every rule of its account that matches it.
    fn deliver_to_rules(&self, live: &LiveEvent, rules: &[ActiveRule]) {
        let read_only_management = live.read_only_management();
        // Written once for all the rules that send it, and only if one does.
        let mut body: Option<Arc<str>> = None;
        for rule in rules {
            if !rule.targets.is_empty()
                && live.stored.account_id.as_deref() == Some(rule.account_id.as_str())
                && (rule.read_only_events || !read_only_management)
                && rule_matches(rule, live)
            {
                let body = body
                    .get_or_insert_with(|| Arc::from(live.envelope.to_string()))
                    .clone();
                for target in &rule.targets {
                    self.dispatcher.deliver(DeliveryJob {
                        target: target.clone(),
                        rule_created_at_ms: rule.created_at_ms,
                        event_id: live.stored.event_id.clone(),
                        body: body.clone(),
                    });
                }
            }
        }
    }

    /// Stores `events`, sharing one transaction with whatever other exports
    /// are waiting (one writer at a time: SQLite has one anyway, and a
    /// commit per export would be paid by every waiting call); publishes and
    /// routes the new ones. Returns how many were new.
    async fn store_and_route(&self, events: Vec<StoredEvent>) -> Result<usize, StoreError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((events, done));
        let writer = self.writer.clone().lock_owned().await;
        let batch = self.take_pending();
        if batch.is_empty() {
            // Another writer took these events and has answered already.
            drop(writer);
        } else if let Some(core) = self.me.upgrade() {
            // Written and routed in a task of its own: the caller holding the
            // writer may be dropped (an abandoned call exporting its own
            // event), and the batch carries other callers' events too. The
            // task also writes what arrived meanwhile, so nothing is left
            // waiting for a writer that no one is going to be.
            tokio::spawn(async move {
                let _writer = writer;
                let mut batch = batch;
                while !batch.is_empty() {
                    core.write_batch(batch).await;
                    batch = core.take_pending();
                }
            });
        }
        match outcome.await {
            Ok(Ok(count)) => Ok(count),
            Ok(Err(message)) => Err(StoreError::Batch(message)),
            Err(_) => Err(StoreError::Batch("the writer went away".into())),
        }
    }

    fn take_pending(&self) -> Vec<PendingWrite> {
        std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Stores one group-commit batch in one transaction, routes each
    /// waiter's new events and tells it how many those were.
    async fn write_batch(&self, batch: Vec<PendingWrite>) {
        let mut all = Vec::new();
        let mut spans = Vec::with_capacity(batch.len());
        let mut senders = Vec::with_capacity(batch.len());
        for (events, sender) in batch {
            spans.push((all.len(), events.len()));
            all.extend(events);
            senders.push(sender);
        }
        let result = self
            .store
            .insert_events(&all, self.clock.now_millis())
            .await;
        let shared_by_several = senders.len() > 1;
        let mut remaining = all.into_iter();
        for ((start, length), sender) in spans.into_iter().zip(senders) {
            let own: Vec<StoredEvent> = remaining.by_ref().take(length).collect();
            if result.is_err() && shared_by_several {
                // An export the store refuses (a fault of one event, a
                // constraint) must not fail the others that shared its
                // write: each is written again on its own.
                let alone = self
                    .store
                    .insert_events(&own, self.clock.now_millis())
                    .await
                    .map(|fresh| self.route(own, fresh))
                    .map_err(|error| error.to_string());
                let _waiter_gone = sender.send(alone);
                continue;
            }
            let share = match &result {
                Ok(fresh) => {
                    let own_fresh = fresh
                        .iter()
                        .filter(|index| (start..start + length).contains(*index))
                        .map(|index| index - start)
                        .collect();
                    Ok(self.route(own, own_fresh))
                }
                Err(error) => Err(error.to_string()),
            };
            let _waiter_gone = sender.send(share);
        }
    }

    /// Re-reads the enabled rules and their targets (after any change, and
    /// every [`RULES_REFRESH_INTERVAL`] for changes other replicas made).
    pub async fn reload_rules(&self) -> Result<(), StoreError> {
        let _reloading = self.reloading.lock().await;
        let mut active = Vec::new();
        for (rule, targets) in self.store.enabled_rules().await? {
            match EventPattern::parse(&rule.event_pattern) {
                Ok(pattern) => active.push(ActiveRule {
                    account_id: rule.account_id,
                    name: rule.name,
                    read_only_events: rule.read_only_events,
                    pattern,
                    targets,
                    created_at_ms: rule.created_at_ms,
                }),
                Err(error) => {
                    tracing::error!(rule = %rule.name, %error, "a stored event pattern no longer parses; rule skipped");
                }
            }
        }
        *self
            .rules
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(active);
        Ok(())
    }

    /// Removes events older than the retention period, and the failed
    /// deliveries recorded before it. Returns how many events.
    pub async fn enforce_retention(&self) -> Result<usize, StoreError> {
        let cutoff =
            self.clock.now_millis() - i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        while self
            .store
            .delete_failures_before(cutoff, RETENTION_BATCH)
            .await?
            >= RETENTION_BATCH as usize
        {}
        let mut removed = 0;
        loop {
            let batch = self
                .store
                .delete_older_than(cutoff, RETENTION_BATCH)
                .await?;
            removed += batch;
            if batch < RETENTION_BATCH as usize {
                return Ok(removed);
            }
        }
    }
}

/// How long the indexer lets exports gather before storing them.
const INDEX_LINGER: Duration = Duration::from_millis(20);

/// Whether `rule`'s pattern matches `live`. A panic of the pattern code (a
/// fault) is logged and counts as no match: one faulty rule costs the event
/// that rule's deliveries only, not its other rules' nor the caller (the
/// indexer, a group commit) its task.
fn rule_matches(rule: &ActiveRule, live: &LiveEvent) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rule.pattern.matches(&live.envelope)
    }))
    .unwrap_or_else(|_panic| {
        tracing::error!(rule = %rule.name, event_id = %live.stored.event_id, "matching an audit event against an event rule panicked; that rule does not deliver it");
        false
    })
}

/// Stores what the journal holds, oldest first, until the core is gone. A
/// batch the store refuses is retried, never dropped: it was acknowledged.
/// So is one whose storing panics: a panic would otherwise end this task
/// and leave the batch taken but unstored, and with the indexer gone the
/// journal would fill until every export was refused.
async fn run_indexer(core: Weak<AuditCore>, journal: Arc<Journal>) {
    loop {
        journal.linger(INDEX_LINGER).await;
        let Some(taken) = journal.take() else {
            journal.wait_for_work().await;
            continue;
        };
        let mut pause = INDEX_RETRY_FIRST;
        loop {
            let Some(core) = core.upgrade() else {
                return;
            };
            // The indexer is the store's only writer here: no group commit
            // to share.
            let stored = unwound(async {
                core.store
                    .insert_events(&taken.events, core.clock.now_millis())
                    .await
            })
            .await;
            match stored {
                Ok(Ok(fresh)) => {
                    core.route(taken.events, fresh);
                    break;
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, events = taken.events.len(), "journaled audit events could not be stored; retrying");
                }
                Err(_panic) => {
                    tracing::error!(
                        events = taken.events.len(),
                        "storing journaled audit events panicked; retrying"
                    );
                }
            }
            drop(core);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(INDEX_RETRY_MAX);
        }
        journal.stored(taken.through).await;
    }
}

/// Puts what the journal takes on the disk every [`SYNC_INTERVAL`], until
/// the core is gone or a sync fails (the journal is then broken, and the
/// service must be restarted: see [`Journal::sync`]).
async fn run_syncer(journal: Arc<Journal>) {
    let mut ticks = tokio::time::interval(SYNC_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = journal.sync().await {
            tracing::error!(%error, "the ingest journal could not be synced; it takes no more exports until the audit service restarts");
            return;
        }
    }
}

/// The EventBridge envelope of an event: what rule and subscription
/// patterns match and what webhooks receive.
pub fn envelope(stored: &StoredEvent) -> Value {
    let record: Value = serde_json::from_str(&stored.record).unwrap_or(Value::Null);
    let source = if stored.trusted {
        let prefix = stored
            .event_source
            .split('.')
            .next()
            .unwrap_or(&stored.event_source);
        format!("coffer.{prefix}")
    } else {
        crate::domain::record::UNTRUSTED.to_owned()
    };
    let resources: Vec<Value> = stored
        .resources
        .iter()
        .map(|(_, name)| Value::String(name.clone()))
        .collect();
    json!({
        "version": "0",
        "id": stored.event_id,
        "detail-type": if stored.trusted && record["eventType"] == "AwsServiceEvent" {
            "AWS Service Event via CloudTrail"
        } else {
            "AWS API Call via CloudTrail"
        },
        "source": source,
        "account": stored.account_id,
        "time": record.get("eventTime").cloned().unwrap_or(Value::Null),
        "region": record.get("awsRegion").cloned().unwrap_or(Value::Null),
        "resources": resources,
        "detail": record,
    })
}

/// Runs the retention job every [`RETENTION_INTERVAL`] and, in a task of
/// its own (a long purge must not hold it up), re-reads the rules every
/// [`RULES_REFRESH_INTERVAL`]. Each starts again, an interval later,
/// should it panic ([`every`]).
pub fn spawn_upkeep(core: Arc<AuditCore>) -> [tokio::task::JoinHandle<()>; 2] {
    let refreshing = core.clone();
    let refresh = every("event rule refresh", RULES_REFRESH_INTERVAL, move || {
        let core = refreshing.clone();
        async move {
            if let Err(error) = core.reload_rules().await {
                tracing::error!(%error, "the event rules could not be re-read");
            }
        }
    });
    let retention = every("audit retention", RETENTION_INTERVAL, move || {
        let core = core.clone();
        async move {
            match core.enforce_retention().await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "audit retention removed old events"),
                Err(error) => tracing::error!(%error, "audit retention failed"),
            }
        }
    });
    [retention, refresh]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(record: &str) -> StoredEvent {
        StoredEvent {
            seq: 0,
            event_id: "e".into(),
            event_time_ms: 0,
            event_source: "kms.coffer.internal".into(),
            event_name: "RotateKey".into(),
            read_only: false,
            username: None,
            account_id: Some("111122223333".into()),
            trusted: true,
            corrects: false,
            trace_id: None,
            received_at_ms: 0,
            record: record.to_owned(),
            resources: Vec::new(),
        }
    }

    #[test]
    fn service_events_and_api_calls_have_eventbridges_detail_types() {
        let service = envelope(&stored(r#"{"eventType":"AwsServiceEvent"}"#));
        assert_eq!(service["detail-type"], "AWS Service Event via CloudTrail");
        assert_eq!(service["source"], "coffer.kms");
        let call = envelope(&stored(r#"{"eventType":"AwsApiCall"}"#));
        assert_eq!(call["detail-type"], "AWS API Call via CloudTrail");
    }
}
