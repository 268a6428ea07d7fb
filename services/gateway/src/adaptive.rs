//! An adaptive limit on the unary calls the gateway lets through at once: additive increase,
//! multiplicative decrease (AIMD) on the calls' latency measured against the platform's own
//! no-load latency.
//!
//! A fixed limit is wrong twice: too high and admitted calls queue behind each other in the
//! services and the database (their latency, and every caller's deadline, go with the queue);
//! too low and capacity is left unused. So the limit moves. Calls are measured from admission
//! to the end of their response, in windows of about `limit` calls. A window whose mean latency
//! stays within twice the baseline (plus 2 ms of slack for a busy machine's noise), and that
//! used at least half the limit, raises the limit by log2(limit); a window above it, or any call
//! that ended DEADLINE_EXCEEDED or UNAVAILABLE, lowers it by a tenth.
//!
//! The baseline is the lowest window mean of the last two epochs of 5 s. Under sustained
//! overload every window is queued, so each epoch starts with a probe (as TCP BBR's ProbeRTT
//! does): the limit drops to its floor until 8 calls admitted at the floor have completed, and
//! their mean is a fresh no-load measurement. Without the probe the baseline would creep up
//! with the queue and the limit with it; with it the baseline follows a platform that really
//! became slower (a bigger database) within 10 s. A probe costs about two call times every 5 s.
//!
//! Beyond the limit, calls are refused at once (RESOURCE_EXHAUSTED with RetryInfo): a caller
//! learns in microseconds to come back, instead of waiting in a queue that only grows.
//!
//! Checked before writing this (2026-12): tower's `ConcurrencyLimit` is fixed, and the adaptive
//! tower crates (`tower-acc` 0.1, `tower-resilience-adaptive`) are young, queue in `poll_ready`
//! instead of refusing, and measure the service future (response headers), not the end of the
//! response body that this gateway needs. Integer arithmetic throughout (microseconds).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A window mean within `TOLERANCE` times the baseline ...
const TOLERANCE: u64 = 2;
/// ... plus this slack (microseconds) counts as "no queue".
const SLACK_US: u64 = 2_000;
/// Length of a baseline epoch (microseconds); each starts with a probe.
const EPOCH_US: u64 = 5_000_000;
/// Calls per window: about the limit, within these bounds; a probe measures `MIN_WINDOW`.
const MIN_WINDOW: usize = 8;
const MAX_WINDOW: usize = 256;

/// A probe in progress: the limit it interrupted, and its measurements.
#[derive(Debug)]
struct Probe {
    saved_limit: usize,
    samples: usize,
    sum_us: u64,
}

/// The limit and its measurements. Time is passed in (microseconds on any monotonic clock) so
/// that tests can run it on simulated time.
#[derive(Debug)]
struct State {
    min: usize,
    max: usize,
    limit: usize,
    in_flight: usize,
    // The current window.
    samples: usize,
    sum_us: u64,
    peak_in_flight: usize,
    overloaded: usize,
    probe: Option<Probe>,
    // The baseline: lowest window mean of this epoch and of the previous one.
    epoch_started_us: u64,
    base_now_us: u64,
    base_prev_us: u64,
    last_mean_us: u64,
}

impl State {
    fn new(min: usize, max: usize) -> State {
        State {
            min,
            max,
            limit: min,
            in_flight: 0,
            samples: 0,
            sum_us: 0,
            peak_in_flight: 0,
            overloaded: 0,
            probe: None,
            epoch_started_us: 0,
            base_now_us: u64::MAX,
            base_prev_us: u64::MAX,
            last_mean_us: 0,
        }
    }

    /// A place, and the calls in flight once it is taken; None at the limit.
    fn try_acquire(&mut self) -> Option<usize> {
        if self.in_flight >= self.limit {
            return None;
        }
        self.in_flight += 1;
        self.peak_in_flight = self.peak_in_flight.max(self.in_flight);
        Some(self.in_flight)
    }

    /// One call ended after `rtt_us`; it was admitted with `started_with` calls in flight;
    /// `overloaded` when it ended DEADLINE_EXCEEDED or UNAVAILABLE.
    fn complete(&mut self, rtt_us: u64, started_with: usize, overloaded: bool, now_us: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(p) = self.probe.as_mut() {
            // Only calls admitted at the floor measure the platform without a queue.
            if started_with <= self.min && !overloaded {
                p.samples += 1;
                p.sum_us = p.sum_us.saturating_add(rtt_us);
            }
            if p.samples >= MIN_WINDOW {
                let mean = p.sum_us / u64::try_from(p.samples).unwrap_or(1).max(1);
                self.base_now_us = self.base_now_us.min(mean);
                self.limit = p.saved_limit;
                self.probe = None;
                self.reset_window();
            }
            return;
        }
        self.samples += 1;
        self.sum_us = self.sum_us.saturating_add(rtt_us);
        if overloaded {
            self.overloaded += 1;
        }
        if self.samples >= self.limit.clamp(MIN_WINDOW, MAX_WINDOW) {
            self.close_window(now_us);
        }
    }

    /// A call that ended without telling anything about the platform (the caller went away).
    fn abandon(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    fn reset_window(&mut self) {
        self.samples = 0;
        self.sum_us = 0;
        self.peak_in_flight = self.in_flight;
        self.overloaded = 0;
    }

    fn close_window(&mut self, now_us: u64) {
        let samples = u64::try_from(self.samples).unwrap_or(u64::MAX).max(1);
        let mean = self.sum_us / samples;
        self.last_mean_us = mean;
        let base = self.base_now_us.min(self.base_prev_us).min(mean);
        self.base_now_us = self.base_now_us.min(mean);
        let target = base.saturating_mul(TOLERANCE).saturating_add(SLACK_US);
        if self.overloaded > 0 || mean > target {
            let cut = (self.limit / 10).max(1);
            self.limit = self.limit.saturating_sub(cut).max(self.min);
        } else if self.peak_in_flight * 2 >= self.limit {
            // Only a window that used the limit says anything about a higher one.
            let step = usize::try_from(self.limit.max(2).ilog2()).unwrap_or(1);
            self.limit = (self.limit + step).min(self.max);
        }
        self.reset_window();
        if now_us.saturating_sub(self.epoch_started_us) >= EPOCH_US {
            self.epoch_started_us = now_us;
            self.base_prev_us = self.base_now_us;
            self.base_now_us = u64::MAX;
            if self.limit > self.min {
                self.probe = Some(Probe {
                    saved_limit: self.limit,
                    samples: 0,
                    sum_us: 0,
                });
                self.limit = self.min;
            }
        }
    }

    /// How long a refused caller should wait: about two mean call times, 20 ms to 1 s.
    fn retry_after(&self) -> Duration {
        Duration::from_micros(self.last_mean_us.saturating_mul(2))
            .clamp(Duration::from_millis(20), Duration::from_secs(1))
    }
}

/// The shared limit.
#[derive(Debug)]
pub struct AdaptiveLimit {
    state: Mutex<State>,
    clock: Instant,
}

impl AdaptiveLimit {
    /// A limit between `min` and `max` (equal: a fixed limit), starting at `min`.
    pub fn new(min: usize, max: usize) -> Arc<AdaptiveLimit> {
        let min = min.max(1);
        Arc::new(AdaptiveLimit {
            state: Mutex::new(State::new(min, max.max(min))),
            clock: Instant::now(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// A slot, or how long to wait before trying again.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Slot, Duration> {
        let mut s = self.lock();
        match s.try_acquire() {
            Some(started_with) => Ok(Slot {
                limit: Some(Arc::clone(self)),
                started: Instant::now(),
                started_with,
            }),
            None => Err(s.retry_after()),
        }
    }
}

/// One admitted call. Report how it ended with [`Slot::complete`]; dropped without it, the call
/// frees its place and is not measured.
#[derive(Debug)]
pub struct Slot {
    limit: Option<Arc<AdaptiveLimit>>,
    started: Instant,
    started_with: usize,
}

impl Slot {
    /// The call ended; `overloaded` when it ended DEADLINE_EXCEEDED or UNAVAILABLE.
    pub fn complete(mut self, overloaded: bool) {
        if let Some(limit) = self.limit.take() {
            let rtt = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let now = u64::try_from(limit.clock.elapsed().as_micros()).unwrap_or(u64::MAX);
            limit
                .lock()
                .complete(rtt, self.started_with, overloaded, now);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(limit) = self.limit.take() {
            limit.lock().abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    /// A platform that serves `capacity` calls at once in `base_us` each: a call admitted
    /// with more in flight shares it, so its latency grows with them (throughput stays at
    /// capacity / base, as a saturated server's does).
    fn latency(in_flight: usize, capacity: usize, base_us: u64) -> u64 {
        let share = u64::try_from(in_flight.max(capacity)).unwrap_or(u64::MAX);
        base_us * share / u64::try_from(capacity).unwrap_or(1).max(1)
    }

    /// Simulated time from `now`: callers that always want more than the limit admits
    /// (overload) for `secs` seconds; returns the limits seen at each completion and the calls
    /// completed.
    fn overload(
        s: &mut State,
        now: &mut u64,
        capacity: usize,
        base_us: u64,
        secs: u64,
    ) -> (Vec<usize>, u64) {
        let end = *now + secs * 1_000_000;
        let mut running: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
        let mut limits = Vec::new();
        let mut done = 0;
        let mut now_us = *now;
        while now_us < end {
            while let Some(started_with) = s.try_acquire() {
                running.push(Reverse((
                    now_us + latency(started_with, capacity, base_us),
                    started_with,
                )));
            }
            let Some(Reverse((at, started_with))) = running.pop() else {
                break;
            };
            // A call admitted at `at - latency` ends now.
            let rtt = latency(started_with, capacity, base_us);
            now_us = at;
            s.complete(rtt, started_with, false, now_us);
            limits.push(s.limit);
            done += 1;
        }
        // Calls still running end without being measured.
        for _ in running.drain() {
            s.abandon();
        }
        *now = now_us;
        (limits, done)
    }

    #[test]
    fn under_overload_the_limit_settles_near_the_platforms_capacity() {
        // Capacity 40 at 5 ms (8,000 calls/s): beyond 40 in flight, latency doubles, triples...
        let mut s = State::new(4, 512);
        let (limits, done) = overload(&mut s, &mut 0, 40, 5_000, 60);
        // The last 30 s: the limit stays where latency is within the tolerance (twice the
        // baseline and 2 ms: 48 to 96 calls at once), except during the short probes at the
        // floor.
        let tail = &limits[limits.len() / 2..];
        let above_floor: Vec<usize> = tail.iter().copied().filter(|l| *l > 4).collect();
        assert!(
            above_floor.iter().all(|l| (40..=110).contains(l)),
            "limits outside 40..=110: {:?}",
            above_floor
                .iter()
                .filter(|l| !(40..=110).contains(*l))
                .take(20)
                .collect::<Vec<_>>()
        );
        assert!(
            above_floor.len() * 100 >= tail.len() * 97,
            "probes took {} of {} completions",
            tail.len() - above_floor.len(),
            tail.len()
        );
        // Goodput: at least 90% of the capacity's 8,000 calls/s over the minute.
        assert!(done >= 60 * 8_000 * 9 / 10, "{done} calls in 60 s");
    }

    #[test]
    fn grows_from_the_floor_when_latency_stays_flat() {
        let mut s = State::new(8, 300);
        let (limits, _) = overload(&mut s, &mut 0, 10_000, 1_000, 10);
        assert_eq!(limits.iter().max().copied(), Some(300));
    }

    #[test]
    fn deadlines_and_unavailable_cut_the_limit_but_never_below_the_floor() {
        let mut s = State::new(10, 100);
        s.limit = 100;
        for i in 0..2_000 {
            let started = s.try_acquire();
            assert!(started.is_some());
            s.complete(1_000, started.unwrap_or(0), true, i);
        }
        assert_eq!(s.limit, 10);
        for _ in 0..10 {
            assert!(s.try_acquire().is_some());
        }
        assert!(
            s.try_acquire().is_none(),
            "the limit admits no more than itself"
        );
    }

    #[test]
    fn an_idle_platform_does_not_raise_the_limit() {
        let mut s = State::new(16, 512);
        for i in 0..10_000 {
            let started = s.try_acquire().unwrap_or(0);
            s.complete(1_000, started, false, i * 1_000);
        }
        assert_eq!(s.limit, 16, "one call at a time says nothing about 17");
    }

    #[test]
    fn a_platform_that_became_slower_gets_a_new_baseline() {
        // Fast at first (capacity 40 at 1 ms), then every call takes 4 ms: the limit must not
        // collapse to the floor because of the old baseline.
        let mut s = State::new(4, 512);
        let mut now = 0;
        let _ = overload(&mut s, &mut now, 40, 1_000, 20);
        let (limits, _) = overload(&mut s, &mut now, 40, 4_000, 40);
        let tail = &limits[limits.len() / 2..];
        let typical = {
            let mut t = tail.to_vec();
            t.sort_unstable();
            t[t.len() / 2]
        };
        assert!((40..=110).contains(&typical), "median limit {typical}");
    }

    #[test]
    fn a_fixed_limit_stays_fixed_and_slots_free_their_place() {
        let limit = AdaptiveLimit::new(3, 3);
        let slots: Vec<Slot> = (0..3).filter_map(|_| limit.try_acquire().ok()).collect();
        assert_eq!(slots.len(), 3);
        let wait = limit.try_acquire().err().unwrap_or_default();
        assert!(wait >= Duration::from_millis(20) && wait <= Duration::from_secs(1));
        let mut slots = slots.into_iter();
        if let Some(s) = slots.next() {
            s.complete(false);
        }
        drop(slots);
        assert_eq!(limit.lock().in_flight, 0);
        assert_eq!(limit.limit(), 3);
    }
}
