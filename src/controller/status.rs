//! Status and condition computation. Pure: no IO.
//!
//! Messages are built from bounded error text (KMS codes, key names, key
//! ids); plaintext never reaches them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::EncryptedSecretStatus;
pub use crate::api::Reason;

pub const READY: &str = "Ready";
/// kstatus' "abnormal-true" conditions (sigs.k8s.io/cli-utils kstatus,
/// read by Flux, `kubectl wait`-alikes and Argo CD's generic health): a
/// resource not yet `Synced` carries `Reconciling=True` while the failure
/// is retried with backoff (kstatus: InProgress) and `Stalled=True` when
/// it waits for a change (kstatus: Failed). Neither is present once Ready.
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

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

/// `Reconciling` or `Stalled` after `outcome` (`None` when Synced); the
/// reason and message are Ready's. lastTransitionTime is kept while the
/// same condition stays.
pub fn progress_condition(
    prev: &[Condition],
    outcome: &Outcome,
    generation: Option<i64>,
    now: Time,
) -> Option<Condition> {
    if outcome.ready() {
        return None;
    }
    let type_ = if outcome.reason.is_transient() {
        RECONCILING
    } else {
        STALLED
    };
    let last_transition_time = prev
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map_or(now, |c| c.last_transition_time.clone());
    Some(Condition {
        type_: type_.into(),
        status: "True".into(),
        reason: outcome.reason.as_str().into(),
        message: outcome.message.clone(),
        observed_generation: generation,
        last_transition_time,
    })
}

/// The condition changed status or reason (not on every resync).
pub fn is_transition(prev: Option<&Condition>, next: &Condition) -> bool {
    prev.is_none_or(|p| p.status != next.status || p.reason != next.reason)
}

/// An Event is due on a transition, except a new resource's first
/// `Synced`: syncing is the normal case and its Secret is the evidence, and
/// at 10,000 resources those would be 10,000 Event writes on a cold start
/// (plus the recorder's in-memory copy of each for 6 minutes). Failures and
/// the recovery from one always get an Event.
pub fn event_due(prev: Option<&Condition>, next: &Condition) -> bool {
    is_transition(prev, next) && !(prev.is_none() && next.status == "True")
}

/// The reason table of `docs/troubleshooting.md` (between the `reasons`
/// markers), rendered from [`Reason::ALL`].
pub fn reason_table() -> String {
    let mut t = String::from("| reason | retried | meaning |\n|---|---|---|\n");
    for r in Reason::ALL {
        let retried = match r {
            Reason::Synced => "—",
            r if r.is_transient() => "backoff",
            _ => "slow",
        };
        t.push_str(&format!("| `{r}` | {retried} | {} |\n", r.summary()));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_reason_table_is_the_enum() {
        let doc = include_str!("../../docs/troubleshooting.md");
        let start = doc
            .find("<!-- reasons:")
            .and_then(|i| doc[i..].find('\n').map(|j| i + j + 1))
            .expect("reasons marker in docs/troubleshooting.md");
        let end = doc.find("<!-- /reasons -->").expect("end marker");
        assert_eq!(
            &doc[start..end],
            reason_table(),
            "docs/troubleshooting.md reason table differs from Reason::ALL"
        );
        for r in Reason::ALL {
            assert!(
                doc.contains(&format!("\n## {r}\n")),
                "docs/troubleshooting.md has no section for {r}"
            );
        }
    }

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
    fn events_on_failures_and_recoveries_not_on_first_sync() {
        let ok = Outcome::synced("s");
        let first = next_condition(None, &ok, Some(1), t(1));
        assert!(!event_due(None, &first), "first Synced: no event");
        let bad = Outcome::failed(Reason::DecryptFailed, "x");
        let failed = next_condition(Some(&first), &bad, Some(2), t(2));
        assert!(event_due(Some(&first), &failed));
        let healed = next_condition(Some(&failed), &ok, Some(3), t(3));
        assert!(event_due(Some(&failed), &healed), "recovery: event");
        assert!(!event_due(Some(&healed), &healed.clone()), "resync: none");
        let new_bad = next_condition(None, &bad, Some(1), t(1));
        assert!(event_due(None, &new_bad), "a new resource failing: event");
    }

    #[test]
    fn kstatus_conditions_follow_the_outcome() {
        let ok = Outcome::synced("s");
        assert!(progress_condition(&[], &ok, Some(1), t(1)).is_none());
        let slow = Outcome::failed(Reason::KmsThrottled, "slow down");
        let r = progress_condition(&[], &slow, Some(1), t(1)).unwrap();
        assert_eq!(
            (r.type_.as_str(), r.reason.as_str()),
            (RECONCILING, "KmsThrottled")
        );
        let r2 = progress_condition(std::slice::from_ref(&r), &slow, Some(1), t(5)).unwrap();
        assert_eq!(r2.last_transition_time, t(1));
        let bad = Outcome::failed(Reason::DecryptFailed, "x");
        let s = progress_condition(&[r], &bad, Some(2), t(9)).unwrap();
        assert_eq!((s.type_.as_str(), s.status.as_str()), (STALLED, "True"));
        assert_eq!(s.last_transition_time, t(9));
    }

    #[test]
    fn long_messages_are_capped() {
        let o = Outcome::failed(Reason::DecryptFailed, "é".repeat(2000));
        assert!(o.message.len() <= 1024);
    }
}
