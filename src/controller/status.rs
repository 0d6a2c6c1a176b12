//! Status and condition computation. Pure: no IO.
//!
//! Messages are built from bounded error text (KMS codes, key names, key
//! ids); plaintext never reaches them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::EncryptedSecretStatus;
pub use crate::api::Reason;

pub const READY: &str = "Ready";

/// What one reconcile concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub reason: Reason,
    pub message: String,
}

impl Outcome {
    pub fn synced(secret: &str) -> Outcome {
        Outcome {
            reason: Reason::Synced,
            message: format!("Secret {secret} is up to date"),
        }
    }
    pub fn failed(reason: Reason, message: impl Into<String>) -> Outcome {
        let mut message = message.into();
        // Kubernetes caps condition messages at 32 KiB; keep them readable.
        if message.len() > 1024 {
            let mut cut = 1024;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Outcome { reason, message }
    }
    pub fn ready(&self) -> bool {
        self.reason == Reason::Synced
    }
}

pub fn ready_condition(status: Option<&EncryptedSecretStatus>) -> Option<&Condition> {
    status?.conditions.iter().find(|c| c.type_ == READY)
}

/// The Ready condition after `outcome`: lastTransitionTime moves only when
/// the status flips (Kubernetes convention).
pub fn next_condition(
    prev: Option<&Condition>,
    outcome: &Outcome,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    let status = if outcome.ready() { "True" } else { "False" };
    let last_transition_time = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => now,
    };
    Condition {
        type_: READY.into(),
        status: status.into(),
        reason: outcome.reason.as_str().into(),
        message: outcome.message.clone(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// An Event is due when status or reason changes (not on every resync).
pub fn is_transition(prev: Option<&Condition>, next: &Condition) -> bool {
    prev.is_none_or(|p| p.status != next.status || p.reason != next.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Time {
        Time(jiff::Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let ok = Outcome::synced("s");
        let c1 = next_condition(None, &ok, Some(1), t(10));
        assert_eq!(c1.last_transition_time, t(10));
        let c2 = next_condition(Some(&c1), &ok, Some(2), t(20));
        assert_eq!(c2.last_transition_time, t(10));
        assert!(!is_transition(Some(&c1), &c2));
        let bad = Outcome::failed(Reason::KmsThrottled, "slow down");
        let c3 = next_condition(Some(&c2), &bad, Some(2), t(30));
        assert_eq!(c3.last_transition_time, t(30));
        assert!(is_transition(Some(&c2), &c3));
        let worse = Outcome::failed(Reason::KmsAccessDenied, "denied");
        let c4 = next_condition(Some(&c3), &worse, Some(2), t(40));
        assert_eq!(c4.last_transition_time, t(30), "still False");
        assert!(is_transition(Some(&c3), &c4), "reason changed");
    }

    #[test]
    fn long_messages_are_capped() {
        let o = Outcome::failed(Reason::DecryptFailed, "é".repeat(2000));
        assert!(o.message.len() <= 1024);
    }
}
