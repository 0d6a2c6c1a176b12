//! The adaptive client-side rate limiter every KMS attempt passes (AIMD
//! token bucket). Owns only the rate; it never sleeps for retries (that is
//! the layer's backoff) and never sees a request's content.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Adaptive token bucket shared by all workers.
///
/// Additive-increase / multiplicative-decrease around the rate at which KMS
/// last throttled. Each permit carries the limiter's *epoch* (number of cuts
/// so far); only a throttle of a request admitted in the current epoch cuts
/// the rate again, so a burst of throttles already in flight counts as one
/// signal (TCP's "one decrease per window"). A cut is ×0.9, or ×0.7 when the
/// previous cut was less than a second ago (still far too fast); the
/// accumulated burst is dropped. Afterwards the rate climbs back quickly to
/// 90% of the rate that was throttled, then probes slowly (1%/s) above it.
/// Waiters re-check the bucket when they wake, so a cut slows everyone at
/// once. The aim is to sit just under a quota shared with other KMS users,
/// not to bounce off it.
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
    last_cut: Option<Instant>,
    throttled_at: Option<f64>,
    epoch: u64,
}

/// Proof of admission; hand it back on throttle.
#[derive(Clone, Copy, Debug)]
pub struct Permit {
    epoch: u64,
    pub waited: Duration,
}

const MIN_RATE: f64 = 1.0;

impl RateLimiter {
    pub fn new(qps: f64, burst: u32) -> RateLimiter {
        let now = Instant::now();
        let qps = qps.max(0.1);
        let burst = f64::from(burst.max(1));
        RateLimiter {
            max_rate: qps,
            burst,
            st: Mutex::new(LimState {
                rate: qps,
                tokens: burst,
                last_refill: now,
                last_growth: now,
                last_cut: None,
                throttled_at: None,
                epoch: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current allowed rate (requests/s).
    pub fn rate(&self) -> f64 {
        self.lock().rate
    }

    /// Take a token now, or say how long until one is due.
    fn try_take(&self) -> Result<u64, Duration> {
        let mut st = self.lock();
        let now = Instant::now();
        let dt = now.saturating_duration_since(st.last_refill).as_secs_f64();
        st.last_refill = now;
        st.tokens = (st.tokens + dt * st.rate).min(self.burst);
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
        loop {
            match self.try_take() {
                Ok(epoch) => {
                    return Permit {
                        epoch,
                        waited: start.elapsed(),
                    };
                }
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    pub fn on_throttle(&self, permit: Permit) {
        let mut st = self.lock();
        if permit.epoch != st.epoch {
            return; // admitted before the last cut: already accounted for
        }
        let now = Instant::now();
        let recent = st
            .last_cut
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
        let factor = if recent { 0.7 } else { 0.9 };
        st.throttled_at = Some(st.rate);
        st.rate = (st.rate * factor).max(MIN_RATE);
        st.tokens = st.tokens.min(0.0);
        st.last_cut = Some(now);
        st.last_growth = now;
        st.epoch += 1;
    }

    pub fn on_success(&self) {
        let mut st = self.lock();
        let now = Instant::now();
        let dt = now.saturating_duration_since(st.last_growth).as_secs_f64();
        st.last_growth = now;
        if st.rate >= self.max_rate {
            return;
        }
        let growth = match st.throttled_at {
            // Fast back to 90% of the throttled rate, then probe gently.
            Some(t) if st.rate < 0.9 * t => 0.5 * t,
            Some(t) => (0.01 * t).max(0.5),
            None => 0.1 * self.max_rate,
        };
        st.rate = (st.rate + growth * dt).min(self.max_rate);
    }
}
