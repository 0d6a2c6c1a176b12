//! Request counters and fault injection, via the Rust API and the
//! `/_testserver/...` admin endpoints.
//!
//! Owns the fault rules and counts. Faults act only on Kubernetes API
//! requests (never on discovery or admin requests); the HTTP layer asks
//! `Faults::check` before serving.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::store::{Signal, Store};

/// Locks a mutex, recovering from poisoning (a panicked request must not
/// take the whole test server down with it).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A snapshot of request counts by (verb, resource).
///
/// `verb` is one of get, list, watch, create, update, patch, delete,
/// deletecollection; `resource` is the plural, with `/status` appended for
/// the status subresource (`encryptedsecrets/status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    counts: BTreeMap<(String, String), u64>,
}

const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

impl Counters {
    pub fn get(&self, verb: &str, resource: &str) -> u64 {
        self.counts
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// All requests with this verb, any resource.
    pub fn verb_total(&self, verb: &str) -> u64 {
        self.counts
            .iter()
            .filter(|((v, _), _)| v == verb)
            .map(|(_, n)| n)
            .sum()
    }

    /// Writes (create, update, patch, delete) to a resource, including its
    /// subresources.
    pub fn writes(&self, resource: &str) -> u64 {
        self.counts
            .iter()
            .filter(|((v, r), _)| {
                WRITE_VERBS.contains(&v.as_str())
                    && (r == resource || r.starts_with(&format!("{resource}/")))
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Writes to any resource.
    pub fn total_writes(&self) -> u64 {
        self.counts
            .iter()
            .filter(|((v, _), _)| WRITE_VERBS.contains(&v.as_str()))
            .map(|(_, n)| n)
            .sum()
    }

    /// Counts accumulated after `earlier` was taken.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let counts = self
            .counts
            .iter()
            .map(|(k, n)| (k.clone(), n - earlier.counts.get(k).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        Counters { counts }
    }

    /// Counts from (verb, resource) pairs, summing repeats: how the test
    /// suite reads a real kube-apiserver's `apiserver_request_total` into
    /// the same shape.
    pub fn from_counts(counts: impl IntoIterator<Item = ((String, String), u64)>) -> Counters {
        let mut out = BTreeMap::new();
        for (k, n) in counts {
            *out.entry(k).or_insert(0) += n;
        }
        Counters { counts: out }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.counts
            .iter()
            .map(|((v, r), n)| (v.as_str(), r.as_str(), *n))
    }

    pub fn to_json(&self) -> Value {
        Value::Array(
            self.iter()
                .map(|(v, r, n)| json!({"verb": v, "resource": r, "count": n}))
                .collect(),
        )
    }
}

#[derive(Debug, Default)]
pub(crate) struct CounterState(Mutex<BTreeMap<(String, String), u64>>);

impl CounterState {
    pub fn bump(&self, verb: &str, resource: &str) {
        *lock(&self.0)
            .entry((verb.to_string(), resource.to_string()))
            .or_default() += 1;
    }

    pub fn snapshot(&self) -> Counters {
        Counters {
            counts: lock(&self.0).clone(),
        }
    }

    pub fn reset(&self) {
        lock(&self.0).clear();
    }
}

#[derive(Debug, Clone)]
struct FailRule {
    verb: Option<String>,
    resource: Option<String>,
    code: u16,
    remaining: u32,
}

#[derive(Debug, Clone)]
struct LatencyRule {
    verb: Option<String>,
    resource: Option<String>,
    delay: Duration,
}

fn matches(rule_verb: &Option<String>, rule_res: &Option<String>, verb: &str, res: &str) -> bool {
    rule_verb.as_deref().is_none_or(|v| v == verb)
        && rule_res
            .as_deref()
            .is_none_or(|r| r == res || res.strip_suffix("/status") == Some(r))
}

#[derive(Debug, Default)]
struct FaultRules {
    fail: Vec<FailRule>,
    latency: Vec<LatencyRule>,
}

/// Handle to inject faults; cheap to clone. Same effects as the admin
/// endpoints.
#[derive(Clone)]
pub struct Faults {
    rules: Arc<Mutex<FaultRules>>,
    store: Arc<Mutex<Store>>,
}

/// What `check` decided for one request.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    pub delay: Option<Duration>,
    pub fail: Option<u16>,
}

impl Faults {
    pub(crate) fn new(store: Arc<Mutex<Store>>) -> Self {
        Faults {
            rules: Arc::default(),
            store,
        }
    }

    /// Ends every open watch with an in-stream `410 Expired` and compacts
    /// the event log, so resuming from any earlier resourceVersion also
    /// gets 410 and clients must re-list.
    pub fn expire_watches(&self) {
        let mut store = lock(&self.store);
        store.compact();
        store.signal(Signal::Expire);
    }

    /// Aborts every open watch connection mid-stream (no final chunk), as a
    /// network failure would. Clients resume from their last resourceVersion.
    pub fn drop_streams(&self) {
        lock(&self.store).signal(Signal::Drop);
    }

    /// Fails the next `count` requests matching `verb` and `resource` (None:
    /// any) with `code` (409, 429, 500, ... ; anything >= 400).
    pub fn fail_next(&self, verb: Option<&str>, resource: Option<&str>, code: u16, count: u32) {
        lock(&self.rules).fail.push(FailRule {
            verb: verb.map(str::to_string),
            resource: resource.map(str::to_string),
            code,
            remaining: count,
        });
    }

    /// Delays every matching request by `delay` (zero removes the rule for
    /// that verb/resource pair).
    pub fn set_latency(&self, delay: Duration, verb: Option<&str>, resource: Option<&str>) {
        let mut rules = lock(&self.rules);
        let (verb, resource) = (verb.map(str::to_string), resource.map(str::to_string));
        rules
            .latency
            .retain(|r| !(r.verb == verb && r.resource == resource));
        if !delay.is_zero() {
            rules.latency.push(LatencyRule {
                verb,
                resource,
                delay,
            });
        }
    }

    /// Removes every failure and latency rule.
    pub fn clear(&self) {
        *lock(&self.rules) = FaultRules::default();
    }

    /// Pending failures (for tests that want to know a fault fired).
    pub fn pending_failures(&self) -> u32 {
        lock(&self.rules).fail.iter().map(|r| r.remaining).sum()
    }

    pub(crate) fn check(&self, verb: &str, resource: &str) -> Verdict {
        let mut rules = lock(&self.rules);
        let delay = rules
            .latency
            .iter()
            .filter(|r| matches(&r.verb, &r.resource, verb, resource))
            .map(|r| r.delay)
            .max();
        let mut fail = None;
        if let Some(rule) = rules
            .fail
            .iter_mut()
            .find(|r| r.remaining > 0 && matches(&r.verb, &r.resource, verb, resource))
        {
            rule.remaining -= 1;
            fail = Some(rule.code);
        }
        rules.fail.retain(|r| r.remaining > 0);
        Verdict { delay, fail }
    }
}

#[derive(Debug, Deserialize)]
struct FailBody {
    verb: Option<String>,
    resource: Option<String>,
    code: u16,
    #[serde(default = "one")]
    count: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
struct LatencyBody {
    verb: Option<String>,
    resource: Option<String>,
    ms: u64,
}

/// Handles `/_testserver/<rest>`. Returns (status, JSON body).
pub(crate) fn handle(
    faults: &Faults,
    counters: &CounterState,
    method: &str,
    rest: &str,
    body: &[u8],
) -> (u16, Value) {
    let parse_err = |e: serde_json::Error| (400, json!({"error": e.to_string()}));
    match (method, rest) {
        ("GET", "counters") => (200, counters.snapshot().to_json()),
        ("POST", "counters/reset") | ("DELETE", "counters") => {
            counters.reset();
            (200, json!({}))
        }
        ("POST", "faults/expire-watches") => {
            faults.expire_watches();
            (200, json!({}))
        }
        ("POST", "faults/drop-streams") => {
            faults.drop_streams();
            (200, json!({}))
        }
        ("POST", "faults/fail") => match serde_json::from_slice::<FailBody>(body) {
            Ok(b) if b.code >= 400 => {
                faults.fail_next(b.verb.as_deref(), b.resource.as_deref(), b.code, b.count);
                (200, json!({}))
            }
            Ok(_) => (400, json!({"error": "code must be >= 400"})),
            Err(e) => parse_err(e),
        },
        ("POST", "faults/latency") => match serde_json::from_slice::<LatencyBody>(body) {
            Ok(b) => {
                faults.set_latency(
                    Duration::from_millis(b.ms),
                    b.verb.as_deref(),
                    b.resource.as_deref(),
                );
                (200, json!({}))
            }
            Err(e) => parse_err(e),
        },
        ("DELETE", "faults") | ("POST", "faults/clear") => {
            faults.clear();
            (200, json!({}))
        }
        _ => (
            404,
            json!({"error": format!("no admin endpoint {method} /_testserver/{rest}")}),
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn counters_since_and_writes() {
        let c = CounterState::default();
        c.bump("patch", "secrets");
        let before = c.snapshot();
        c.bump("patch", "secrets");
        c.bump("get", "secrets");
        c.bump("update", "encryptedsecrets/status");
        let now = c.snapshot();
        assert_eq!(now.get("patch", "secrets"), 2);
        assert_eq!(now.since(&before).get("patch", "secrets"), 1);
        assert_eq!(now.writes("secrets"), 2);
        assert_eq!(now.writes("encryptedsecrets"), 1);
        assert_eq!(now.total_writes(), 3);
    }

    #[test]
    fn fail_rules_count_down() {
        let f = Faults::new(Arc::new(Mutex::new(Store::new(10))));
        f.fail_next(Some("patch"), Some("secrets"), 500, 2);
        assert_eq!(f.check("get", "secrets").fail, None);
        assert_eq!(f.check("patch", "secrets").fail, Some(500));
        assert_eq!(f.check("patch", "secrets/status").fail, Some(500));
        assert_eq!(f.check("patch", "secrets").fail, None);
        f.set_latency(Duration::from_millis(5), None, None);
        assert_eq!(f.check("get", "x").delay, Some(Duration::from_millis(5)));
        f.clear();
        assert_eq!(f.check("get", "x").delay, None);
    }
}
