//! The notifier's settings (`[notify]` in the configuration file).

use serde::{Deserialize, Serialize};

/// `[notify]`: reminders, the delivery worker and the notice stream. Every bound has a number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySettings {
    /// Run the scheduler (producers) and the delivery worker in this process (mode `all`).
    pub enabled: bool,
    /// How often the producers run (deadline reminders, basic indicators, veto risks once a day
    /// per cycle, digests).
    pub scheduler_period_ms: u64,
    /// How often the delivery worker looks for due deliveries when nothing wakes it.
    pub poll_ms: u64,
    /// Days before a deadline on which a reminder is sent (the nearest one that applies).
    pub reminder_days_before: Vec<u32>,
    /// Overdue reminders, one a day, for at most this many days after the deadline.
    pub overdue_days_max: u32,
    /// Attempts per delivery before it is dead (kept, with its last error).
    pub max_attempts: u32,
    /// The first retry's delay; each next one doubles, up to `retry_max_ms`, with jitter.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    /// A claimed delivery not marked within this time (the process died) is attempted again.
    pub claim_lease_ms: u64,
    /// Connecting to a receiver, and the whole request with its response.
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Deliveries sent at once.
    pub max_concurrent_deliveries: usize,
    /// Deliveries claimed per pass.
    pub claim_batch: usize,
    /// Hour of the day (Asia/Shanghai, 0-23) from which the day's digests are sent.
    pub digest_hour: u32,
    /// Notices waiting for one WatchNotices listener; a listener further behind is cut.
    pub watch_buffer: usize,
    /// A listener whose buffer stays full this long (it stopped reading) is cut with
    /// RESOURCE_EXHAUSTED `WATCH_LAGGED`; it resumes from the last notice id it received.
    pub watch_stall_ms: u64,
    /// WatchNotices streams one principal may hold open in this process.
    pub max_watchers_per_principal: usize,
    /// Subscriptions that may exist at once.
    pub max_subscriptions: usize,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            enabled: true,
            scheduler_period_ms: 60_000,
            poll_ms: 1_000,
            reminder_days_before: vec![7, 1],
            overdue_days_max: 30,
            max_attempts: 8,
            retry_min_ms: 30_000,
            retry_max_ms: 3_600_000,
            claim_lease_ms: 60_000,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 15_000,
            max_concurrent_deliveries: 8,
            claim_batch: 64,
            digest_hour: 9,
            watch_buffer: 256,
            watch_stall_ms: 10_000,
            max_watchers_per_principal: 4,
            max_subscriptions: 1_000,
        }
    }
}

impl NotifySettings {
    /// The first setting out of range, as (field, problem).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            ("notify.scheduler_period_ms", self.scheduler_period_ms),
            ("notify.poll_ms", self.poll_ms),
            ("notify.retry_min_ms", self.retry_min_ms),
            ("notify.claim_lease_ms", self.claim_lease_ms),
            ("notify.connect_timeout_ms", self.connect_timeout_ms),
            ("notify.request_timeout_ms", self.request_timeout_ms),
            ("notify.watch_stall_ms", self.watch_stall_ms),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err((field, "must be above 0".into()));
            }
        }
        if self.retry_max_ms < self.retry_min_ms {
            return Err((
                "notify.retry_max_ms",
                "must be at least retry_min_ms".into(),
            ));
        }
        if self.claim_lease_ms <= self.request_timeout_ms {
            return Err((
                "notify.claim_lease_ms",
                "must exceed request_timeout_ms (a delivery still being sent must not be claimed again)".into(),
            ));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(("notify.max_attempts", "1 to 100".into()));
        }
        if self.reminder_days_before.len() > 10
            || self
                .reminder_days_before
                .iter()
                .any(|d| *d == 0 || *d > 366)
        {
            return Err((
                "notify.reminder_days_before",
                "at most 10 days, each 1 to 366".into(),
            ));
        }
        if self.overdue_days_max > 366 {
            return Err(("notify.overdue_days_max", "at most 366".into()));
        }
        if self.digest_hour > 23 {
            return Err(("notify.digest_hour", "0 to 23".into()));
        }
        for (field, v, max) in [
            (
                "notify.max_concurrent_deliveries",
                self.max_concurrent_deliveries,
                256,
            ),
            ("notify.claim_batch", self.claim_batch, 1_000),
            ("notify.watch_buffer", self.watch_buffer, 10_000),
            (
                "notify.max_watchers_per_principal",
                self.max_watchers_per_principal,
                64,
            ),
            ("notify.max_subscriptions", self.max_subscriptions, 100_000),
        ] {
            if v == 0 || v > max {
                return Err((field, format!("1 to {max}")));
            }
        }
        Ok(())
    }
}
