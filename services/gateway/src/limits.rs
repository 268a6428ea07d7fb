//! Admission control at the gateway, all of it answering at once when exceeded
//! (RESOURCE_EXHAUSTED with RetryInfo) instead of queueing:
//!
//! - a token bucket per principal (calls started per second);
//! - budgets per principal: unary calls in flight and streaming calls open, counted from the
//!   request's arrival until its response is fully sent, and a share of the adaptive limit, so
//!   one principal's idle streams, stalled uploads or unread responses use up only its own
//!   budget;
//! - global caps on unary calls in flight and on streams open (each `max_concurrent_calls`), and
//!   the adaptive limit on unary calls being served (`adaptive.rs`);
//! - a budget of bytes held in request bodies the gateway reads whole (every RPC whose request
//!   is one message), per principal and in all, reserved as the bytes arrive, so a large body
//!   sent slowly holds only what it has sent, and many large bodies at once cannot hold more
//!   than the budget whatever their count;
//! - failed authentications per source address: beyond a rate they are refused without a key
//!   look-up, and they are logged as one summary per source every 10 seconds instead of lines
//!   per attempt.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::adaptive::{AdaptiveLimit, Slot};
use crate::settings::GatewaySettings;

/// What kind of call a budget counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    Unary,
    /// Client- or server-streaming.
    Stream,
}

/// A principal's use of its budgets.
#[derive(Debug, Default)]
struct Usage {
    calls: usize,
    streams: usize,
    /// Unary calls holding a place in the adaptive limit.
    served: usize,
}

/// The per-principal budgets; an entry lives only while its principal has calls open, so the
/// map holds at most one entry per call in flight.
#[derive(Debug)]
struct Budgets {
    max_calls: usize,
    max_streams: usize,
    usage: Mutex<HashMap<Arc<str>, Usage>>,
}

impl Budgets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Usage>> {
        self.usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn release(&self, principal: &Arc<str>, f: impl FnOnce(&mut Usage)) {
        let mut usage = self.lock();
        if let Some(u) = usage.get_mut(principal) {
            f(u);
            if u.calls == 0 && u.streams == 0 && u.served == 0 {
                usage.remove(principal);
            }
        }
    }
}

/// Whose budget of request-body bytes is used up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteScope {
    Principal,
    All,
}

impl ByteScope {
    pub fn as_str(self) -> &'static str {
        match self {
            ByteScope::Principal => "principal",
            ByteScope::All => "all",
        }
    }
}

/// Why a call was not admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request body's bytes would take the principal, or the gateway, past its budget of
    /// bytes held in request bodies.
    Bytes { scope: ByteScope, limit: usize },
    /// The principal's own budget of calls or streams is used up.
    PrincipalBudget { kind: CallKind, limit: usize },
    /// The principal already holds half of the adaptive limit.
    PrincipalShare { limit: usize },
    /// The platform is at its limit.
    Capacity { retry_after: Duration },
}

/// One call's place in the principal's budget (and the global cap); freed on drop.
#[derive(Debug)]
pub struct CallPermit {
    budgets: Arc<Budgets>,
    principal: Arc<str>,
    kind: CallKind,
    _global: OwnedSemaphorePermit,
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        let kind = self.kind;
        self.budgets.release(&self.principal, |u| match kind {
            CallKind::Unary => u.calls = u.calls.saturating_sub(1),
            CallKind::Stream => u.streams = u.streams.saturating_sub(1),
        });
    }
}

/// A unary call's place in the adaptive limit and in its principal's share of it.
#[derive(Debug)]
pub struct ServePermit {
    budgets: Arc<Budgets>,
    principal: Arc<str>,
    slot: Option<Slot>,
}

impl ServePermit {
    /// The call ended; `overloaded` when it ended DEADLINE_EXCEEDED or UNAVAILABLE.
    pub fn complete(mut self, overloaded: bool) {
        if let Some(slot) = self.slot.take() {
            slot.complete(overloaded);
        }
    }
}

impl Drop for ServePermit {
    fn drop(&mut self) {
        self.budgets
            .release(&self.principal, |u| u.served = u.served.saturating_sub(1));
    }
}

/// Bytes held in request bodies, per principal and in all.
#[derive(Debug)]
struct ByteBudget {
    per_principal: usize,
    total: usize,
    held: Mutex<HeldUse>,
}

/// An entry per principal holding bytes now: at most one per call in flight.
#[derive(Debug, Default)]
struct HeldUse {
    total: usize,
    by_principal: HashMap<Arc<str>, usize>,
}

impl ByteBudget {
    fn lock(&self) -> std::sync::MutexGuard<'_, HeldUse> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The bytes one request body holds in the byte budget; given back when dropped (the service
/// answered, the call was refused, or the caller went away).
#[derive(Debug)]
pub struct HeldBytes {
    budget: Arc<ByteBudget>,
    principal: Arc<str>,
    bytes: usize,
}

impl HeldBytes {
    /// Bytes reserved for this body.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Reserves up to `bytes` for this body in all (call as bytes arrive); the refusal when the
    /// principal's or the gateway's budget cannot take the difference, and then nothing more is
    /// reserved.
    pub fn grow_to(&mut self, bytes: usize) -> Result<(), Refusal> {
        let Some(more) = bytes.checked_sub(self.bytes).filter(|m| *m > 0) else {
            return Ok(());
        };
        let b = &self.budget;
        let mut held = b.lock();
        let mine = held.by_principal.get(&self.principal).copied().unwrap_or(0);
        if mine.saturating_add(more) > b.per_principal {
            return Err(Refusal::Bytes {
                scope: ByteScope::Principal,
                limit: b.per_principal,
            });
        }
        if held.total.saturating_add(more) > b.total {
            return Err(Refusal::Bytes {
                scope: ByteScope::All,
                limit: b.total,
            });
        }
        held.total += more;
        *held
            .by_principal
            .entry(Arc::clone(&self.principal))
            .or_default() += more;
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut held = self.budget.lock();
        held.total = held.total.saturating_sub(self.bytes);
        if let Some(mine) = held.by_principal.get_mut(&self.principal) {
            *mine = mine.saturating_sub(self.bytes);
            if *mine == 0 {
                held.by_principal.remove(&self.principal);
            }
        }
    }
}

/// The gateway's admission state.
pub struct Limits {
    per_principal: DefaultKeyedRateLimiter<String>,
    budgets: Arc<Budgets>,
    /// Unary calls in flight, and streams open, in all (separately: long watches must not
    /// crowd out unary calls, nor the reverse).
    calls: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    adaptive: Arc<AdaptiveLimit>,
    bytes: Arc<ByteBudget>,
    failed_auth: DefaultKeyedRateLimiter<IpAddr>,
    failures: Mutex<FailureLog>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("available_calls", &self.calls.available_permits())
            .field("adaptive_limit", &self.adaptive.limit())
            .finish_non_exhaustive()
    }
}

impl Limits {
    pub fn new(s: &GatewaySettings) -> Limits {
        let rate = NonZeroU32::new(s.per_principal_rate).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(s.per_principal_burst).unwrap_or(NonZeroU32::MIN);
        let auth_rate = NonZeroU32::new(s.failed_auth_per_source_rate).unwrap_or(NonZeroU32::MIN);
        let auth_burst = NonZeroU32::new(s.failed_auth_per_source_burst).unwrap_or(NonZeroU32::MIN);
        Limits {
            per_principal: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            budgets: Arc::new(Budgets {
                max_calls: s.max_calls_per_principal,
                max_streams: s.max_streams_per_principal,
                usage: Mutex::new(HashMap::new()),
            }),
            calls: Arc::new(Semaphore::new(s.max_concurrent_calls)),
            streams: Arc::new(Semaphore::new(s.max_concurrent_calls)),
            adaptive: AdaptiveLimit::new(s.min_concurrent_calls, s.max_concurrent_calls),
            bytes: Arc::new(ByteBudget {
                per_principal: s.max_buffered_request_bytes_per_principal,
                total: s.max_buffered_request_bytes,
                held: Mutex::new(HeldUse::default()),
            }),
            failed_auth: RateLimiter::keyed(Quota::per_second(auth_rate).allow_burst(auth_burst)),
            failures: Mutex::new(FailureLog::default()),
            clock: DefaultClock::default(),
        }
    }

    /// Ok, or how long the principal should wait.
    pub fn check_rate(&self, principal: &str) -> Result<(), Duration> {
        self.per_principal
            .check_key(&principal.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// A place for one call of `principal` in its budget and in the global cap.
    pub fn admit(&self, principal: &Arc<str>, kind: CallKind) -> Result<CallPermit, Refusal> {
        {
            let mut usage = self.budgets.lock();
            let u = usage.entry(Arc::clone(principal)).or_default();
            let (used, limit) = match kind {
                CallKind::Unary => (&mut u.calls, self.budgets.max_calls),
                CallKind::Stream => (&mut u.streams, self.budgets.max_streams),
            };
            if *used >= limit {
                return Err(Refusal::PrincipalBudget { kind, limit });
            }
            *used += 1;
        }
        let global = match kind {
            CallKind::Unary => &self.calls,
            CallKind::Stream => &self.streams,
        };
        match Arc::clone(global).try_acquire_owned() {
            Ok(global) => Ok(CallPermit {
                budgets: Arc::clone(&self.budgets),
                principal: Arc::clone(principal),
                kind,
                _global: global,
            }),
            Err(_) => {
                self.budgets.release(principal, |u| match kind {
                    CallKind::Unary => u.calls = u.calls.saturating_sub(1),
                    CallKind::Stream => u.streams = u.streams.saturating_sub(1),
                });
                Err(Refusal::Capacity {
                    retry_after: Duration::from_millis(100),
                })
            }
        }
    }

    /// A place in the adaptive limit for a unary call whose request has arrived whole. One
    /// principal may hold at most half the limit (at least one place), so the others keep the
    /// rest whatever it sends.
    pub fn serve(&self, principal: &Arc<str>) -> Result<ServePermit, Refusal> {
        let share = (self.adaptive.limit() / 2).max(1);
        {
            let mut usage = self.budgets.lock();
            let u = usage.entry(Arc::clone(principal)).or_default();
            if u.served >= share {
                return Err(Refusal::PrincipalShare { limit: share });
            }
            u.served += 1;
        }
        let mut permit = ServePermit {
            budgets: Arc::clone(&self.budgets),
            principal: Arc::clone(principal),
            slot: None,
        };
        match self.adaptive.try_acquire() {
            Ok(slot) => {
                permit.slot = Some(slot);
                Ok(permit)
            }
            // Dropping `permit` gives the share back.
            Err(retry_after) => Err(Refusal::Capacity { retry_after }),
        }
    }

    /// An empty reservation in the byte budget for one request body of `principal`, grown as
    /// its bytes arrive ([`HeldBytes::grow_to`]).
    pub fn hold_bytes(&self, principal: &Arc<str>) -> HeldBytes {
        HeldBytes {
            budget: Arc::clone(&self.bytes),
            principal: Arc::clone(principal),
            bytes: 0,
        }
    }

    /// Bytes held in request bodies now, in all (for the metrics and tests).
    pub fn bytes_held(&self) -> usize {
        self.bytes.lock().total
    }

    /// The adaptive limit now (for tests and logs).
    pub fn adaptive_limit(&self) -> usize {
        self.adaptive.limit()
    }

    /// Counts a failed authentication from `source` with the key prefix it sent; Ok while the
    /// source is within its rate (the caller is told UNAUTHENTICATED and the key cache may be
    /// refreshed), else how long it should wait (it is refused without a look-up).
    pub fn failed_auth(
        &self,
        source: Option<IpAddr>,
        prefix: Option<&str>,
    ) -> Result<(), Duration> {
        let verdict = match source {
            Some(ip) => self
                .failed_auth
                .check_key(&ip)
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
            None => Ok(()),
        };
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(source, prefix, verdict.is_err());
        verdict.map_err(|d| d.max(Duration::from_millis(1)))
    }

    /// Logs the failed authentications since the last call, one line per source, and forgets
    /// them (call every [`FAILURE_SUMMARY_EVERY`]).
    pub fn log_failed_auth(&self) {
        let log = std::mem::take(
            &mut *self
                .failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        log.emit();
    }

    /// Forgets idle principals' and sources' buckets (call now and then).
    pub fn forget_idle(&self) {
        self.per_principal.retain_recent();
        self.per_principal.shrink_to_fit();
        self.failed_auth.retain_recent();
        self.failed_auth.shrink_to_fit();
    }
}

/// How often failed authentications are summarised in the log.
pub const FAILURE_SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// Sources remembered between summaries; failures from more are counted together.
const MAX_SOURCES: usize = 1_000;
/// Sources named in one summary (the most failing); the rest are one line.
const SOURCES_LOGGED: usize = 20;
/// Distinct key prefixes remembered per source.
const PREFIXES_PER_SOURCE: usize = 5;

#[derive(Debug, Default)]
struct SourceFailures {
    failures: u64,
    refused: u64,
    prefixes: BTreeSet<String>,
}

/// Failed authentications since the last summary, bounded: `MAX_SOURCES` sources of
/// `PREFIXES_PER_SOURCE` prefixes each, the rest counted in `other`.
#[derive(Debug, Default)]
struct FailureLog {
    sources: HashMap<Option<IpAddr>, SourceFailures>,
    /// Failures from sources beyond `MAX_SOURCES`.
    other_failures: u64,
}

impl FailureLog {
    fn record(&mut self, source: Option<IpAddr>, prefix: Option<&str>, refused: bool) {
        if !self.sources.contains_key(&source) && self.sources.len() >= MAX_SOURCES {
            self.other_failures += 1;
            return;
        }
        let s = self.sources.entry(source).or_default();
        s.failures += 1;
        if refused {
            s.refused += 1;
        }
        if let Some(p) = prefix
            && s.prefixes.len() < PREFIXES_PER_SOURCE
        {
            s.prefixes.insert(p.to_owned());
        }
    }

    fn emit(self) {
        let mut sources: Vec<(Option<IpAddr>, SourceFailures)> = self.sources.into_iter().collect();
        sources.sort_by_key(|s| std::cmp::Reverse(s.1.failures));
        let mut rest_sources = 0u64;
        let mut rest_failures = self.other_failures;
        for (i, (source, f)) in sources.into_iter().enumerate() {
            if i >= SOURCES_LOGGED {
                rest_sources += 1;
                rest_failures += f.failures;
                continue;
            }
            let source = source.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
            let prefixes: Vec<String> = f.prefixes.into_iter().collect();
            tracing::warn!(
                source,
                failures = f.failures,
                refused_without_lookup = f.refused,
                key_prefixes = ?prefixes,
                window_secs = FAILURE_SUMMARY_EVERY.as_secs(),
                "failed authentications"
            );
        }
        if rest_failures > 0 {
            tracing::warn!(
                named_sources = rest_sources,
                failures = rest_failures,
                window_secs = FAILURE_SUMMARY_EVERY.as_secs(),
                "failed authentications from further sources"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GatewaySettings {
        GatewaySettings {
            per_principal_rate: 10,
            per_principal_burst: 3,
            max_concurrent_calls: 4,
            min_concurrent_calls: 4,
            max_calls_per_principal: 2,
            max_streams_per_principal: 1,
            failed_auth_per_source_rate: 1,
            failed_auth_per_source_burst: 2,
            ..GatewaySettings::default()
        }
    }

    #[test]
    fn bursts_then_waits_per_principal() {
        let limits = Limits::new(&settings());
        for _ in 0..3 {
            assert!(limits.check_rate("a").is_ok());
        }
        let wait = limits.check_rate("a").err().unwrap_or_default();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(limits.check_rate("b").is_ok(), "buckets are per principal");
    }

    #[test]
    fn budgets_are_per_principal_and_per_kind() {
        let limits = Limits::new(&settings());
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let one = limits.admit(&a, CallKind::Unary);
        let two = limits.admit(&a, CallKind::Unary);
        assert!(one.is_ok() && two.is_ok());
        assert_eq!(
            limits.admit(&a, CallKind::Unary).err(),
            Some(Refusal::PrincipalBudget {
                kind: CallKind::Unary,
                limit: 2
            })
        );
        let stream = limits.admit(&a, CallKind::Stream);
        assert!(stream.is_ok(), "streams have their own budget");
        assert!(limits.admit(&a, CallKind::Stream).is_err());
        // b has its own budget, but the global cap on unary calls (4) fills up; streams have
        // their own global cap.
        let b1 = limits.admit(&b, CallKind::Unary);
        let b2 = limits.admit(&b, CallKind::Unary);
        assert!(b1.is_ok() && b2.is_ok());
        let c: Arc<str> = "c".into();
        assert!(matches!(
            limits.admit(&c, CallKind::Unary),
            Err(Refusal::Capacity { .. })
        ));
        assert!(limits.admit(&c, CallKind::Stream).is_ok());
        drop(one);
        assert!(limits.admit(&c, CallKind::Unary).is_ok());
        drop((two, stream, b1, b2));
        assert!(
            limits.budgets.lock().is_empty(),
            "idle principals are forgotten"
        );
    }

    #[test]
    fn one_principal_holds_at_most_half_the_adaptive_limit() {
        let limits = Limits::new(&settings());
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let held: Vec<ServePermit> = (0..2).filter_map(|_| limits.serve(&a).ok()).collect();
        assert_eq!(held.len(), 2);
        assert_eq!(
            limits.serve(&a).err(),
            Some(Refusal::PrincipalShare { limit: 2 })
        );
        let others: Vec<ServePermit> = (0..2).filter_map(|_| limits.serve(&b).ok()).collect();
        assert_eq!(others.len(), 2, "the other half stays for the others");
        let c: Arc<str> = "c".into();
        assert!(matches!(limits.serve(&c), Err(Refusal::Capacity { .. })));
        drop((held, others));
        assert!(limits.budgets.lock().is_empty());
    }

    #[test]
    fn request_bytes_are_held_per_principal_and_in_all() {
        let limits = Limits::new(&GatewaySettings {
            max_buffered_request_bytes_per_principal: 100,
            max_buffered_request_bytes: 150,
            ..settings()
        });
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut a1 = limits.hold_bytes(&a);
        let mut a2 = limits.hold_bytes(&a);
        assert_eq!(a1.grow_to(60), Ok(()));
        assert_eq!(a2.grow_to(40), Ok(()), "exactly at the principal's budget");
        assert_eq!(
            a2.grow_to(41),
            Err(Refusal::Bytes {
                scope: ByteScope::Principal,
                limit: 100
            })
        );
        assert_eq!(a2.bytes(), 40, "a refusal reserves nothing more");
        let mut b1 = limits.hold_bytes(&b);
        assert_eq!(b1.grow_to(50), Ok(()), "exactly at the gateway's budget");
        assert_eq!(
            b1.grow_to(51),
            Err(Refusal::Bytes {
                scope: ByteScope::All,
                limit: 150
            })
        );
        assert_eq!(limits.bytes_held(), 150);
        drop(a1);
        assert_eq!(b1.grow_to(100), Ok(()), "bytes given back are free again");
        drop((a2, b1));
        assert_eq!(limits.bytes_held(), 0);
        assert!(limits.bytes.lock().by_principal.is_empty());
    }

    #[test]
    fn failed_authentications_are_limited_per_source() {
        let limits = Limits::new(&settings());
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert!(limits.failed_auth(Some(ip), Some("cc_0000000a")).is_ok());
        assert!(limits.failed_auth(Some(ip), Some("cc_0000000b")).is_ok());
        let wait = limits.failed_auth(Some(ip), None).err().unwrap_or_default();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limits.failed_auth(Some([10, 0, 0, 2].into()), None).is_ok());
        let log = limits
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = &log.sources[&Some(ip)];
        assert_eq!((s.failures, s.refused, s.prefixes.len()), (3, 1, 2));
    }

    #[test]
    fn the_failure_log_is_bounded() {
        let mut log = FailureLog::default();
        for i in 0..(MAX_SOURCES as u32 + 10) {
            for p in 0..10 {
                log.record(
                    Some(IpAddr::from(i.to_be_bytes())),
                    Some(&format!("cc_{p:08x}")),
                    false,
                );
            }
        }
        assert_eq!(log.sources.len(), MAX_SOURCES);
        assert_eq!(log.other_failures, 100);
        assert!(
            log.sources
                .values()
                .all(|s| s.prefixes.len() == PREFIXES_PER_SOURCE)
        );
    }
}
