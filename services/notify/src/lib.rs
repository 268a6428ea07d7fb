//! Reminders and notifications (issue 13, point 5).
//!
//! - `store.rs` — the outbox (migration 0320): notices with a unique dedupe key (enqueueing one
//!   twice does nothing), deliveries (notice × subscription: attempts, next attempt, delivered,
//!   dead with the last error), digest items, the last outcome per basic indicator;
//! - `delivery.rs` — messages (signed JSON, DingTalk markdown), the HTTP client, the backoff;
//! - `signing.rs` — the signatures, and how a receiver verifies one;
//! - `producers.rs` — deadline reminders, basic indicators turning FAIL, daily digests;
//! - `veto_risk.rs` — veto-risk notices from the early warning (issue 13, point 6);
//! - `changes.rs` — which (region, period) pairs the change feed says to score again;
//! - `service.rs` — `NotificationService`.
//!
//! [`Notifier`] is the handle: [`Notifier::enqueue`] for any producer, [`Notifier::spawn`] for
//! the scheduler and the delivery worker.

pub mod changes;
pub mod delivery;
pub mod error;
pub mod producers;
pub mod service;
pub mod settings;
pub mod signing;
pub mod store;
pub mod veto_risk;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast, watch};
use tokio::task::JoinHandle;

use citycredit::aggregates::Change;
use citycredit::org::OrgView;
use citycredit_core::catalog::Catalog;
use citycredit_core::clock::now_micros;
use citycredit_store::Db;

pub use changes::Changed;
pub use error::NotifyError;
pub use producers::{BasicOutcome, Outcome, OutcomeSource};
pub use service::NotificationApi;
pub use settings::NotifySettings;
pub use store::NewNotice;
pub use veto_risk::{DepartmentShortfall, VetoRisk, WarningQuery, WarningSource};

/// The recipient string of the credit office (a role another part of the platform adds; until
/// then operators and administrators read its notices).
pub const CREDIT_OFFICE: &str = "credit_office";

/// The least time between two producer passes started by changes of figures.
const CHANGE_GAP: Duration = Duration::from_secs(5);

/// Microseconds in a day.
pub const DAY_MICROS: i64 = 86_400_000_000;
/// Asia/Shanghai is UTC+8 all year.
const SHANGHAI_OFFSET_MICROS: i64 = 8 * 3_600_000_000;

/// The notifier: the outbox, its producers and its delivery worker.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    catalog: Arc<Catalog>,
    org: OrgView,
    settings: NotifySettings,
    client: delivery::WebhookClient,
    outcomes: Option<Arc<dyn OutcomeSource>>,
    /// The highest notice id enqueued by this process: wakes listeners and the worker.
    last_notice: watch::Sender<i64>,
    /// Open WatchNotices streams per principal.
    watchers: Mutex<HashMap<String, usize>>,
    /// One producer pass at a time in this process.
    producing: tokio::sync::Mutex<()>,
    /// Bounds the deliveries sent at once.
    sending: Arc<Semaphore>,
    /// Whether a caller's API key still stands (open WatchNotices streams end when it does not).
    credentials: std::sync::OnceLock<Arc<dyn citycredit_core::auth::CredentialCheck>>,
    /// Where veto-risk warnings come from (none: no veto-risk notices).
    warnings: std::sync::OnceLock<Arc<dyn WarningSource>>,
    /// What the change feed says to score again on the next scheduled pass; everything at
    /// start.
    changed: Mutex<Changed>,
    /// Cycle id -> the Shanghai day its veto risks were last looked at by this process (at most
    /// `veto_risk::MAX_WARNING_CYCLES` entries: cycles no longer ahead are forgotten).
    warned: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

/// What one delivery pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassCounts {
    pub attempted: u64,
    pub delivered: u64,
}

impl Notifier {
    pub fn new(
        db: Db,
        catalog: Arc<Catalog>,
        org: OrgView,
        settings: NotifySettings,
        outcomes: Option<Arc<dyn OutcomeSource>>,
    ) -> Notifier {
        let client = delivery::WebhookClient::new(&settings);
        let sending = Arc::new(Semaphore::new(settings.max_concurrent_deliveries));
        Notifier {
            inner: Arc::new(Inner {
                db,
                catalog,
                org,
                client,
                outcomes,
                last_notice: watch::channel(0).0,
                watchers: Mutex::new(HashMap::new()),
                producing: tokio::sync::Mutex::new(()),
                sending,
                settings,
                credentials: std::sync::OnceLock::new(),
                warnings: std::sync::OnceLock::new(),
                changed: Mutex::new(Changed::everything()),
                warned: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Ends WatchNotices streams whose caller's API key is revoked or expires (asked every
    /// `poll_ms` and before every notice sent).
    pub fn with_credentials(
        self,
        credentials: Arc<dyn citycredit_core::auth::CredentialCheck>,
    ) -> Self {
        let _ = self.inner.credentials.set(credentials);
        self
    }

    /// Sends veto-risk notices from these warnings (`veto_risk.rs`).
    pub fn with_warnings(self, warnings: Arc<dyn WarningSource>) -> Self {
        let _ = self.inner.warnings.set(warnings);
        self
    }

    fn credential_stands(&self, p: &citycredit_core::auth::Principal) -> bool {
        self.inner
            .credentials
            .get()
            .is_none_or(|c| c.still_valid(p, now_micros()))
    }

    pub fn settings(&self) -> &NotifySettings {
        &self.inner.settings
    }

    /// The gRPC service over this notifier.
    pub fn service(&self) -> NotificationApi {
        NotificationApi::new(self.clone())
    }

    /// Puts a notice in the outbox (with its deliveries) unless its dedupe key was enqueued
    /// before. Returns the new notice's id, or None for a duplicate.
    pub async fn enqueue(&self, notice: NewNotice) -> Result<Option<i64>, NotifyError> {
        let now = now_micros();
        let row = store::enqueue(&self.inner.db, &notice, &shanghai_day(now), now).await?;
        Ok(row.map(|r| {
            self.inner.last_notice.send_if_modified(|last| {
                let newer = r.id > *last;
                if newer {
                    *last = r.id;
                }
                newer
            });
            r.id
        }))
    }

    /// Runs every producer once over everything (RunNotifierPass): deadline reminders, basic
    /// indicators turning FAIL for every cycle period and region, veto risks for every cycle
    /// ahead, due daily digests. Returns how many notices were enqueued.
    pub async fn run_producers(&self) -> Result<u64, NotifyError> {
        self.pass(true).await
    }

    /// The scheduler's pass: basic indicators only where a change of figures reached since the
    /// last pass (everything at start and after lost events), veto risks once a day per cycle.
    pub async fn run_scheduled(&self) -> Result<u64, NotifyError> {
        self.pass(false).await
    }

    async fn pass(&self, full: bool) -> Result<u64, NotifyError> {
        let _one = self.inner.producing.lock().await;
        let now = now_micros();
        // Taken now: changes recorded while the pass runs wait for the next one.
        let mut changed = std::mem::take(&mut *self.changed());
        if full {
            changed.lost();
        }
        let scored = async {
            let mut n = producers::deadline_reminders(self, now).await?;
            let (failures, retry) = producers::basic_failures(self, now, &changed).await?;
            self.changed().merge(retry);
            n += failures;
            n += veto_risk::veto_risks(self, now, full).await?;
            n += producers::digests(self, now).await?;
            Ok(n)
        }
        .await;
        if scored.is_err() {
            // Nothing is missed: the next pass scores these again.
            self.changed().merge(changed);
        }
        scored
    }

    /// Records a change of figures for the next scheduled pass.
    pub fn record_change(&self, change: &Change) {
        let org = self.org();
        self.changed().record(change, &org.city);
    }

    /// Records that change events were lost: the next scheduled pass scores everything.
    pub fn record_lost_changes(&self) {
        self.changed().lost();
    }

    fn changed(&self) -> std::sync::MutexGuard<'_, Changed> {
        self.inner
            .changed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn warned(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.inner
            .warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn warned_on(&self, cycle: &str, day: &str) -> bool {
        self.warned().get(cycle).is_some_and(|d| d == day)
    }

    fn set_warned(&self, cycle: &str, day: &str) {
        self.warned().insert(cycle.to_owned(), day.to_owned());
    }

    fn forget_warned_except(&self, cycles: &[store::CycleRow]) {
        self.warned()
            .retain(|id, _| cycles.iter().any(|c| &c.id == id));
    }

    fn warnings(&self) -> Option<&Arc<dyn WarningSource>> {
        self.inner.warnings.get()
    }

    /// Claims and sends the due deliveries (at most `claim_batch`, at most
    /// `max_concurrent_deliveries` at once) and records each outcome.
    pub async fn deliver_due(&self) -> Result<PassCounts, NotifyError> {
        let s = &self.inner.settings;
        let now = now_micros();
        let lease = i64::try_from(s.claim_lease_ms).unwrap_or(i64::MAX / 1_000) * 1_000;
        let claimed = store::claim_due(&self.inner.db, now, lease, s.claim_batch).await?;
        let mut tasks = tokio::task::JoinSet::new();
        let mut counts = PassCounts::default();
        for c in claimed {
            counts.attempted += 1;
            let permit = Arc::clone(&self.inner.sending)
                .acquire_owned()
                .await
                .map_err(|_| NotifyError::Unavailable("notifier stopping"))?;
            let me = self.clone();
            tasks.spawn(async move {
                let _permit = permit;
                me.deliver_one(c).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(true)) => counts.delivered += 1,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "recording a delivery failed"),
                Err(e) => tracing::error!(error = %e, "delivery task failed"),
            }
        }
        Ok(counts)
    }

    async fn deliver_one(&self, c: store::Claimed) -> Result<bool, NotifyError> {
        let s = &self.inner.settings;
        let db = &self.inner.db;
        let notice = c.notice.clone();
        let sent = match delivery::message(&c.format, &c.url, &c.secret, &notice, now_micros()) {
            Ok(m) => self.inner.client.send(m).await,
            Err(e) => Err(e),
        };
        let now = now_micros();
        match sent {
            Ok(()) => {
                store::mark_delivered(db, c.delivery_id, now).await?;
                tracing::info!(
                    delivery = c.delivery_id,
                    notice = c.notice.id,
                    attempts = c.attempts,
                    "notice delivered"
                );
                Ok(true)
            }
            Err(error) => {
                let attempts = u32::try_from(c.attempts).unwrap_or(u32::MAX);
                let next = (attempts < s.max_attempts).then(|| {
                    let wait = delivery::retry_delay(s, attempts);
                    now.saturating_add(i64::try_from(wait.as_micros()).unwrap_or(i64::MAX))
                });
                tracing::warn!(delivery = c.delivery_id, notice = c.notice.id, attempts, dead = next.is_none(), %error, "delivery failed");
                store::mark_failed(db, c.delivery_id, &error, next, now).await?;
                Ok(false)
            }
        }
    }

    /// Starts the scheduler (producers every `scheduler_period_ms`, and soon after a change of
    /// figures) and the delivery worker (every `poll_ms`, and at once after an enqueue).
    pub fn spawn(&self, changes: Option<broadcast::Receiver<Change>>) -> Vec<JoinHandle<()>> {
        let s = &self.inner.settings;
        let me = self.clone();
        let period = Duration::from_millis(s.scheduler_period_ms);
        let scheduler = tokio::spawn(async move {
            let mut changes = changes;
            let mut tick = tokio::time::interval(period);
            let mut last_pass = tokio::time::Instant::now();
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    got = async {
                        match changes.as_mut() {
                            Some(rx) => rx.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        me.follow(got, &mut changes);
                        // Coalesce a burst of commits into one pass, and passes started by
                        // changes at most one per CHANGE_GAP under steady ingestion.
                        let wait = CHANGE_GAP
                            .saturating_sub(last_pass.elapsed())
                            .max(Duration::from_millis(200));
                        tokio::time::sleep(wait).await;
                        while let Some(rx) = changes.as_mut() {
                            let got = match rx.try_recv() {
                                Ok(c) => Ok(c),
                                Err(broadcast::error::TryRecvError::Empty) => break,
                                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                    Err(broadcast::error::RecvError::Lagged(n))
                                }
                                Err(broadcast::error::TryRecvError::Closed) => {
                                    Err(broadcast::error::RecvError::Closed)
                                }
                            };
                            me.follow(got, &mut changes);
                        }
                    }
                }
                if changes.is_none() {
                    // No feed: any figure may have changed since the last pass.
                    me.record_lost_changes();
                }
                last_pass = tokio::time::Instant::now();
                if let Err(e) = me.run_scheduled().await {
                    tracing::warn!(error = %e, "notifier producers failed; next pass retries");
                }
            }
        });
        let me = self.clone();
        let poll = Duration::from_millis(s.poll_ms);
        let worker = tokio::spawn(async move {
            let mut woken = me.inner.last_notice.subscribe();
            loop {
                match me.deliver_due().await {
                    // A full batch: there may be more due at once.
                    Ok(c)
                        if c.attempted
                            >= u64::try_from(me.inner.settings.claim_batch).unwrap_or(u64::MAX) =>
                    {
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "delivery pass failed; retrying"),
                }
                let _ = tokio::time::timeout(poll, woken.changed()).await;
            }
        });
        vec![scheduler, worker]
    }

    /// Takes one result of the change feed: a change is recorded; lost events mean
    /// everything; a closed feed is dropped (every pass is then a full one).
    fn follow(
        &self,
        got: Result<Change, broadcast::error::RecvError>,
        changes: &mut Option<broadcast::Receiver<Change>>,
    ) {
        match got {
            Ok(c) => self.record_change(&c),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::info!(
                    missed,
                    "notifier fell behind the change feed; the next pass scores everything"
                );
                self.record_lost_changes();
            }
            Err(broadcast::error::RecvError::Closed) => {
                self.record_lost_changes();
                *changes = None;
            }
        }
    }

    fn db(&self) -> &Db {
        &self.inner.db
    }

    fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    fn org(&self) -> Arc<citycredit_core::org::Org> {
        self.inner.org.borrow().clone()
    }

    fn outcomes(&self) -> Option<&Arc<dyn OutcomeSource>> {
        self.inner.outcomes.as_ref()
    }

    fn subscribe_notices(&self) -> watch::Receiver<i64> {
        self.inner.last_notice.subscribe()
    }

    /// Counts one more WatchNotices stream for `principal`; None when it holds the maximum.
    fn watch_slot(&self, principal: &str) -> Option<WatchSlot> {
        let mut w = self
            .inner
            .watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = w.entry(principal.to_owned()).or_default();
        if *n >= self.inner.settings.max_watchers_per_principal {
            return None;
        }
        *n += 1;
        Some(WatchSlot {
            notifier: self.clone(),
            principal: principal.to_owned(),
        })
    }
}

/// One open WatchNotices stream; released when the stream ends.
struct WatchSlot {
    notifier: Notifier,
    principal: String,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut w = self
            .notifier
            .inner
            .watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = w.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.remove(&self.principal);
            }
        }
    }
}

/// The day (YYYY-MM-DD) of `micros` in Asia/Shanghai.
pub fn shanghai_day(micros: i64) -> String {
    let days = (micros + SHANGHAI_OFFSET_MICROS).div_euclid(DAY_MICROS);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The hour (0-23) of `micros` in Asia/Shanghai.
pub fn shanghai_hour(micros: i64) -> u32 {
    let in_day = (micros + SHANGHAI_OFFSET_MICROS).rem_euclid(DAY_MICROS);
    u32::try_from(in_day / 3_600_000_000).unwrap_or(0)
}

/// Days since 1970-01-01 as a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_hours_are_those_of_shanghai() {
        // 2026-11-30T16:00:00Z is 2026-12-01 00:00 in Shanghai.
        let t = 1_796_054_400_000_000;
        assert_eq!(shanghai_day(t), "2026-12-01");
        assert_eq!(shanghai_hour(t), 0);
        assert_eq!(shanghai_day(t - 1), "2026-11-30");
        assert_eq!(shanghai_day(0), "1970-01-01");
        assert_eq!(
            shanghai_day(951_782_400_000_000 - SHANGHAI_OFFSET_MICROS),
            "2000-02-29"
        );
    }
}
