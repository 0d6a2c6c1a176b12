//! The adaptive client-side rate limiter every KMS attempt passes. Owns only
//! the rate; it never sleeps for retries (that is the layer's backoff) and
//! never sees a request's content.
//!
//! # The problem
//! KMS quotas are per account and region, shared with everything else that
//! uses KMS there, so the rate this client may use is unknown and moves.
//! The only signal is `ThrottlingException`, and a quota is a token bucket:
//! a client below the quota refills it, so the first throttle arrives late
//! (after the stored burst is spent) and the success rate just before it
//! overstates the quota by up to that burst.
//!
//! # The algorithm (phases)
//! - **Start**: from a safe rate ([`START_RATE`], never the configured
//!   burst), doubling every 0.4 s while requests wait for tokens (no growth
//!   without demand: an idle client learns nothing about the quota).
//! - First throttle after growing (unless the interval below shows the
//!   quota did not rise, e.g. a probe that spent stored tokens): the
//!   successes of the last second `m`
//!   satisfy `quota ≤ m ≤ quota + burst ≤ 2·quota` (a KMS-style bucket holds
//!   at most a second). So `m/2` is below the quota: the rate drops there
//!   at once (no string of 10% cuts, each paying throttles), and
//!   **Regrow**s linearly to `0.97·m` within a second.
//! - Any later throttle: between two throttles the quota's bucket went from
//!   empty to empty, so every token it handed out was one of our successes:
//!   successes ÷ time since the previous throttle *is* the quota (when the
//!   interval is 0.3–5 s). The rate goes to 97% of that and **Hold**s.
//!   Without a usable interval: 90% of the rate, 70% when the last cut was
//!   less than a second ago (a quota that just dropped).
//! - **Probe**: quotas rise too (the other user stopped), and only
//!   exceeding the old rate can show it. After holding for
//!   [`probe_interval`] (about one probe per 300 requests, 1–3 s), the rate
//!   steps up 20%. A throttle ends the probe at 97% of the measured quota
//!   (one throttle, no cut); half a second without one means the quota
//!   rose: Start again from there.
//! - Each permit carries the *epoch* (number of rate decisions so far);
//!   only a throttle of a request admitted in the current epoch counts, so a
//!   burst of throttles already in flight is one signal (TCP's "one
//!   decrease per window").
//!
//! The token bucket holds at most 5% of a second of tokens (at least one),
//! capped by the configured burst: requests go out evenly, not in bursts
//! into an unknown quota. The configured rate is a ceiling.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::sync::LockExt;

/// Where a new limiter starts (requests/s), below every KMS default quota.
pub const START_RATE: f64 = 10.0;
const MIN_RATE: f64 = 1.0;
/// Start: ×2 per this long while there is demand.
const DOUBLING: Duration = Duration::from_millis(400);
/// Regrow from half the measured rate to 95% of it in this long.
const REGROW: Duration = Duration::from_secs(1);
/// A probe that survives this long means the quota rose.
const PROBE_CONFIRM: Duration = Duration::from_millis(500);
/// A probe's step above the held rate: large enough to spend, within
/// [`PROBE_CONFIRM`], what holding 3% under the quota for a few seconds
/// put back into its bucket (else the probe "succeeds" on stored tokens).
const PROBE_STEP: f64 = 1.2;
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Start,
    Regrow { per_sec: f64, to: f64 },
    Hold,
    Probe { base: f64, since: Instant },
}

/// Adaptive token bucket shared by all workers (see the module docs).
pub struct RateLimiter {
    max_rate: f64,
    burst: f64,
    st: Mutex<LimState>,
}

struct LimState {
    rate: f64,
    tokens: f64,
    last_refill: Instant,
    last_growth: Instant,
    phase: Phase,
    /// When the rate last changed for a reason (cut, probe, revert).
    last_decision: Instant,
    last_cut: Option<Instant>,
    epoch: u64,
    /// Success times of the last [`WINDOW`].
    successes: VecDeque<Instant>,
    /// Acquirers sleeping for a token (demand above the rate).
    waiting: u32,
    /// The last counted throttle, and the successes since: between two
    /// throttles the quota's bucket went from empty to empty, so every
    /// token it received was a success — successes ÷ time is the quota.
    last_throttle: Option<Instant>,
    since_throttle: u64,
}

/// Proof of admission; hand it back on throttle.
#[derive(Clone, Copy, Debug)]
pub struct Permit {
    epoch: u64,
    pub waited: Duration,
}

/// How long to hold a rate before probing above it: about one probe (so
/// at most one throttle) per 300 requests, between 1 and 3 s (so a quota
/// that rises is found within a few seconds).
pub fn probe_interval(rate: f64) -> Duration {
    Duration::from_secs_f64((300.0 / rate.max(MIN_RATE)).clamp(1.0, 3.0))
}

impl RateLimiter {
    pub fn new(qps: f64, burst: u32) -> RateLimiter {
        let now = Instant::now();
        let qps = qps.max(0.1);
        RateLimiter {
            max_rate: qps,
            burst: f64::from(burst.max(1)),
            st: Mutex::new(LimState {
                rate: qps.min(START_RATE),
                tokens: 1.0,
                last_refill: now,
                last_growth: now,
                phase: Phase::Start,
                last_decision: now,
                last_cut: None,
                epoch: 0,
                successes: VecDeque::new(),
                waiting: 0,
                last_throttle: None,
                since_throttle: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimState> {
        self.st.lock_or_recover()
    }

    /// Current allowed rate (requests/s).
    pub fn rate(&self) -> f64 {
        self.lock().rate
    }

    fn cap(&self, rate: f64) -> f64 {
        (rate * 0.05).clamp(1.0, self.burst)
    }

    /// Take a token now, or say how long until one is due.
    fn try_take(&self) -> Result<u64, Duration> {
        let mut st = self.lock();
        let now = Instant::now();
        self.grow(&mut st, now);
        let dt = now.saturating_duration_since(st.last_refill).as_secs_f64();
        st.last_refill = now;
        st.tokens = (st.tokens + dt * st.rate).min(self.cap(st.rate));
        if st.tokens >= 1.0 {
            st.tokens -= 1.0;
            Ok(st.epoch)
        } else {
            Err(Duration::from_secs_f64((1.0 - st.tokens) / st.rate)
                .max(Duration::from_micros(100)))
        }
    }

    pub async fn acquire(&self) -> Permit {
        let start = Instant::now();
        let mut counted = false;
        let permit = loop {
            match self.try_take() {
                Ok(epoch) => {
                    break Permit {
                        epoch,
                        waited: start.elapsed(),
                    };
                }
                Err(wait) => {
                    if !counted {
                        self.lock().waiting += 1;
                        counted = true;
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        };
        if counted {
            let mut st = self.lock();
            st.waiting = st.waiting.saturating_sub(1);
        }
        permit
    }

    /// Phase-driven growth up to `now` (only with demand).
    fn grow(&self, st: &mut LimState, now: Instant) {
        let dt = now.saturating_duration_since(st.last_growth);
        st.last_growth = now;
        let busy = st.waiting > 0;
        match st.phase {
            Phase::Start if busy => {
                st.rate *= 2f64.powf(dt.as_secs_f64() / DOUBLING.as_secs_f64());
            }
            Phase::Regrow { per_sec, to } => {
                st.rate += per_sec * dt.as_secs_f64();
                if st.rate >= to {
                    st.rate = to;
                    st.phase = Phase::Hold;
                    st.last_decision = now;
                }
            }
            Phase::Hold
                if busy
                    && now.saturating_duration_since(st.last_decision)
                        >= probe_interval(st.rate) =>
            {
                let base = st.rate;
                st.rate = base * PROBE_STEP;
                st.phase = Phase::Probe { base, since: now };
                st.last_decision = now;
                st.epoch += 1;
            }
            Phase::Probe { since, .. } if now.saturating_duration_since(since) >= PROBE_CONFIRM => {
                // no throttle at the higher rate: the quota rose
                st.phase = Phase::Start;
                st.last_decision = now;
            }
            _ => {}
        }
        st.rate = st.rate.clamp(MIN_RATE, self.max_rate);
    }

    pub fn on_throttle(&self, permit: Permit) {
        let mut st = self.lock();
        if permit.epoch != st.epoch {
            return; // admitted before the last decision: already accounted for
        }
        let now = Instant::now();
        let measured = {
            while st
                .successes
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > WINDOW)
            {
                st.successes.pop_front();
            }
            st.successes.len() as f64
        };
        // the quota, measured between two throttles (see `last_throttle`);
        // too short an interval is noise, too long a stale mix
        let quota = st.last_throttle.and_then(|t| {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            (0.3..=5.0)
                .contains(&dt)
                .then(|| st.since_throttle as f64 / dt)
        });
        match st.phase {
            Phase::Start => {
                // quota ≤ m ≤ 2·quota: half is safe, 97% is close
                let m = measured.min(st.rate).max(2.0 * MIN_RATE);
                match quota {
                    // a probe spent tokens the hold had left in the bucket:
                    // the quota did not rise, and the interval measured it
                    Some(q) if 0.97 * q >= m / 2.0 => {
                        st.rate = (0.97 * q).min(st.rate);
                        st.phase = Phase::Hold;
                    }
                    _ => {
                        st.rate = m / 2.0;
                        let to = 0.97 * m;
                        st.phase = Phase::Regrow {
                            per_sec: (to - st.rate) / REGROW.as_secs_f64(),
                            to,
                        };
                    }
                }
            }
            Phase::Probe { base, .. } => {
                // the quota did not rise: sit just under it
                st.rate = match quota {
                    Some(q) => (0.97 * q).min(st.rate),
                    None => base,
                };
                st.phase = Phase::Hold;
            }
            Phase::Regrow { .. } | Phase::Hold => {
                st.rate = match quota {
                    Some(q) => (0.97 * q).min(st.rate),
                    None => {
                        let recent = st
                            .last_cut
                            .is_some_and(|t| now.saturating_duration_since(t) < WINDOW);
                        st.rate * if recent { 0.7 } else { 0.9 }
                    }
                };
                st.phase = Phase::Hold;
            }
        }
        st.last_throttle = Some(now);
        st.since_throttle = 0;
        st.rate = st.rate.clamp(MIN_RATE, self.max_rate);
        st.tokens = st.tokens.min(0.0);
        st.last_cut = Some(now);
        st.last_decision = now;
        st.last_growth = now;
        st.epoch += 1;
    }

    pub fn on_success(&self) {
        let mut st = self.lock();
        let now = Instant::now();
        st.successes.push_back(now);
        st.since_throttle += 1;
        while st
            .successes
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > WINDOW)
        {
            st.successes.pop_front();
        }
        self.grow(&mut st, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_interval_is_one_probe_per_hundred_requests_within_bounds() {
        assert_eq!(probe_interval(20.0), Duration::from_secs(3));
        assert_eq!(probe_interval(150.0), Duration::from_secs(2));
        assert_eq!(probe_interval(50.0), Duration::from_secs(3));
        assert_eq!(probe_interval(1000.0), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn starts_slow_and_never_bursts() {
        let l = RateLimiter::new(1000.0, 100);
        assert_eq!(l.rate(), START_RATE);
        let t = Instant::now();
        for _ in 0..5 {
            l.acquire().await;
        }
        // one token to start, then 10/s (doubling every 0.4 s while
        // waited for): 5 permits take ~0.3 s, not the 0 s a full burst of
        // 100 would
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn first_throttle_halves_to_below_the_quota_and_regrows() {
        let l = RateLimiter::new(1000.0, 100);
        // 40 successes in the last second, then a throttle
        let mut last = None;
        for _ in 0..40 {
            let p = l.acquire().await;
            l.on_success();
            last = Some(p);
        }
        let before = l.rate();
        let p = l.acquire().await;
        l.on_throttle(p);
        let after = l.rate();
        assert!(after <= 20.0 + 1e-9 && after < before, "{before} → {after}");
        // a throttle of an older permit is the same episode
        l.on_throttle(last.unwrap());
        assert_eq!(l.rate(), after);
    }
}
