//! Exponential backoff with full jitter, the one delay formula used by the
//! KMS retry loop, the per-object requeue and the watch restarts, and the
//! ±10% jitter of every fixed interval (resync, slow retry, parking
//! backstop). Pure.

use std::time::Duration;

use rand::Rng;

/// Uniform in [0, min(cap, base·2^attempt)] ("full jitter", AWS
/// Architecture Blog, "Exponential Backoff And Jitter").
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration, rng: &mut impl Rng) -> Duration {
    let ceiling = base
        .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .min(cap);
    Duration::from_secs_f64(rng.gen_range(0.0..=ceiling.as_secs_f64()))
}

/// `d` ±10%, so many objects on the same interval (the resync, the slow
/// retry of permanent errors, the parking backstop) do not come back in
/// lockstep.
pub fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.9..1.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn bounded_by_the_doubling_ceiling_and_the_cap() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(10));
        for attempt in 0..40 {
            let ceiling = (base * 2u32.saturating_pow(attempt.min(31))).min(cap);
            for _ in 0..50 {
                assert!(backoff_delay(attempt, base, cap, &mut rng) <= ceiling);
            }
        }
        // full jitter spreads over the whole range, not just near the top
        let draws: Vec<_> = (0..200)
            .map(|_| backoff_delay(10, base, cap, &mut rng))
            .collect();
        assert!(draws.iter().any(|d| *d < Duration::from_secs(2)));
        assert!(draws.iter().any(|d| *d > Duration::from_secs(8)));
    }
}
