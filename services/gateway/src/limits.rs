//! Admission control at the gateway: a token bucket per principal and a global limit on calls in
//! flight. Both answer at once when exceeded (RESOURCE_EXHAUSTED with RetryInfo): overload sheds
//! the excess quickly instead of queueing it.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::GatewaySettings;

/// The gateway's admission state.
pub struct Limits {
    per_principal: DefaultKeyedRateLimiter<String>,
    calls: Arc<Semaphore>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("available_calls", &self.calls.available_permits())
            .finish_non_exhaustive()
    }
}

impl Limits {
    pub fn new(s: &GatewaySettings) -> Limits {
        let rate = NonZeroU32::new(s.per_principal_rate).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(s.per_principal_burst).unwrap_or(NonZeroU32::MIN);
        Limits {
            per_principal: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            calls: Arc::new(Semaphore::new(s.max_concurrent_calls)),
            clock: DefaultClock::default(),
        }
    }

    /// Ok, or how long the principal should wait.
    pub fn check_rate(&self, principal: &str) -> Result<(), Duration> {
        self.per_principal
            .check_key(&principal.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// A slot for one call in flight, or None when the gateway is full.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.calls).try_acquire_owned().ok()
    }

    /// Forgets idle principals' buckets (call now and then).
    pub fn forget_idle(&self) {
        self.per_principal.retain_recent();
        self.per_principal.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_waits_per_principal() {
        let limits = Limits::new(&GatewaySettings {
            per_principal_rate: 10,
            per_principal_burst: 3,
            max_concurrent_calls: 2,
            ..GatewaySettings::default()
        });
        for _ in 0..3 {
            assert!(limits.check_rate("a").is_ok());
        }
        let wait = limits.check_rate("a").err().unwrap_or_default();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(limits.check_rate("b").is_ok(), "buckets are per principal");
        let one = limits.admit();
        let two = limits.admit();
        assert!(one.is_some() && two.is_some() && limits.admit().is_none());
        drop(one);
        assert!(limits.admit().is_some());
    }
}
