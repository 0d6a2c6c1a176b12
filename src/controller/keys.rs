//! The life of the KMS keys the watched resources depend on: every
//! `--key-check-interval` (jittered) one `DescribeKey` per distinct KMS key
//! a resource has a copy under — never one per resource — through the KMS
//! layer (limiter, metrics, retries).
//!
//! What a check does:
//! - records each key's [`KeyHealth`] in [`KeyHealthTable`], which the
//!   status writer reads for the `KeysHealthy` condition (present once a
//!   key of the resource is unhealthy: `False` when no copy is usable,
//!   `True` naming the unhealthy copy when another still is);
//! - on a change of a key's state, triggers the resources with a copy under
//!   it (one status write and one Event each per change, not per check);
//! - revokes: the cached data keys unwrapped under a key found disabled,
//!   pending deletion or gone are evicted, so the key stops working within
//!   one interval instead of at the cache TTL;
//! - exports `kmsecrets_kms_key_state{key,state}`, `…_dependents{key}`,
//!   `…_at_risk{key}` and `…_deletion_timestamp_seconds{key}`, bounded by
//!   `--max-tracked-keys` (keys no resource references are dropped).
//!
//! Without `kms:DescribeKey` (every key's check denied) the controller
//! works as before, says so once, and `kmsecrets_kms_key_health_enabled` is
//! 0. Local keys are never checked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::{info, warn};

use super::State;
use super::watched::{Facts, Watched};
use crate::api::{EncryptedSecret, Provider};
use crate::kms::health::KeyHealth;
use crate::sync::LockExt;

/// The `KeysHealthy` condition type.
pub const KEYS_HEALTHY: &str = "KeysHealthy";

/// What the last check found, per tracked key id.
#[derive(Default)]
pub struct KeyHealthTable {
    states: Mutex<HashMap<String, KeyHealth>>,
    /// Said once: DescribeKey is denied for every key.
    off_reported: AtomicBool,
}

impl KeyHealthTable {
    pub fn health(&self, key_id: &str) -> Option<KeyHealth> {
        self.states.lock_or_recover().get(key_id).cloned()
    }
}

/// One check over every scope's store. Returns the resources to reconcile
/// (those with a copy under a key whose state changed).
///
/// Costs no memory per resource: the stores are walked once for the
/// distinct keys and their dependents' count, and a second time — only
/// when a key changed state or is unhealthy — for the resources to trigger
/// and those at risk. (A first version kept every resource's reference and
/// key set for the whole check: about 800 bytes a resource, 15 MiB of the peak at
/// 20,000 resources, because the first check runs right after the list.)
pub async fn check_keys(stores: &[Store<Watched>], state: &State) -> Vec<ObjectRef<Watched>> {
    let cap = state.cfg.max_tracked_keys;
    // key → how many resources have a copy under it
    let mut dependents: BTreeMap<String, i64> = BTreeMap::new();
    for_each_keys(stores, |_, keys| {
        for k in keys {
            match dependents.get_mut(*k) {
                Some(n) => *n += 1,
                None => {
                    dependents.insert(k.to_string(), 1);
                }
            }
        }
    });
    if dependents.len() > cap {
        warn!(
            keys = dependents.len(),
            tracked = cap,
            "more KMS keys than --max-tracked-keys: the rest are not checked"
        );
        let keep: BTreeSet<String> = dependents.keys().take(cap).cloned().collect();
        dependents.retain(|k, _| keep.contains(k));
    }
    let mut found: HashMap<String, KeyHealth> = HashMap::new();
    let mut denied = 0usize;
    for key in dependents.keys() {
        let h = match state.kms.describe_key(Provider::AwsKms, key).await {
            Ok(info) => KeyHealth::of(&info),
            Err(e) => KeyHealth::of_error(&e),
        };
        denied += usize::from(h == KeyHealth::AccessDenied);
        found.insert(key.clone(), h);
    }
    let m = &state.metrics;
    if !found.is_empty() && denied == found.len() {
        if !state.keys.off_reported.swap(true, Ordering::SeqCst) {
            warn!(
                "DescribeKey is denied for every KMS key: key health is off (grant kms:DescribeKey, see docs/iam.md)"
            );
        }
        m.key_health_enabled.set(0);
        return Vec::new();
    }
    m.key_health_enabled.set(1);
    // the keys whose change of state triggers their dependents
    let mut changed: BTreeSet<&str> = BTreeSet::new();
    {
        let mut table = state.keys.states.lock_or_recover();
        for (key, h) in &found {
            let before = table.insert(key.clone(), h.clone());
            if before.as_ref() != Some(h) {
                if before.is_some() || !h.is_healthy() {
                    info!(key = %key, state = h.as_str(), "KMS key state changed");
                    changed.insert(key);
                }
                if h.revokes() {
                    let n = state.kms.revoke(key);
                    info!(key = %key, state = h.as_str(), evicted = n, "cached data keys revoked");
                }
            }
        }
        let gone: Vec<String> = table
            .keys()
            .filter(|k| !found.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            table.remove(&k);
            let _ = m.key_dependents.remove_label_values(&[&k]);
            let _ = m.key_at_risk.remove_label_values(&[&k]);
            let _ = m.key_deletion_timestamp.remove_label_values(&[&k]);
            for s in KeyHealth::ALL {
                let _ = m.key_state.remove_label_values(&[&k, s]);
            }
        }
    }
    let unhealthy = |k: &str| found.get(k).is_some_and(|h| !h.is_healthy());
    let mut at_risk: HashMap<String, i64> = HashMap::new();
    let mut triggers = Vec::new();
    if !changed.is_empty() || found.values().any(|h| !h.is_healthy()) {
        for_each_keys(stores, |obj, keys| {
            if !keys.is_empty() && keys.iter().all(|k| unhealthy(k)) {
                for k in keys {
                    match at_risk.get_mut(*k) {
                        Some(n) => *n += 1,
                        None => {
                            at_risk.insert(k.to_string(), 1);
                        }
                    }
                }
            }
            if keys.iter().any(|k| changed.contains(k)) {
                triggers.extend(super::feed::reference(obj));
            }
        });
    }
    for (key, h) in &found {
        for s in KeyHealth::ALL {
            m.key_state
                .with_label_values(&[key, s])
                .set(i64::from(s == h.as_str()));
        }
        m.key_dependents
            .with_label_values(&[key])
            .set(dependents.get(key).copied().unwrap_or(0));
        m.key_at_risk
            .with_label_values(&[key])
            .set(at_risk.get(key).copied().unwrap_or(0));
        match h
            .deletion_date()
            .and_then(|d| d.parse::<jiff::Timestamp>().ok())
        {
            Some(t) => m
                .key_deletion_timestamp
                .with_label_values(&[key])
                .set(t.as_second()),
            None => {
                let _ = m.key_deletion_timestamp.remove_label_values(&[key]);
            }
        }
    }
    triggers.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    triggers.dedup();
    triggers
}

/// Calls `f` with every stored resource and its KMS key ids (see
/// [`Watched::with_kms_keys`]).
fn for_each_keys(stores: &[Store<Watched>], mut f: impl FnMut(&Watched, &[&str])) {
    for store in stores {
        for obj in store.state() {
            obj.with_kms_keys(|keys| f(&obj, keys));
        }
    }
}

/// The `KeysHealthy` condition `es` should carry, given `prev` (its current
/// one): absent while every key is healthy and it never had one; `False`
/// when no copy is under a usable key; `True` naming the unhealthy copies
/// when another copy is usable, or once all are healthy again.
pub fn keys_condition(
    es: &EncryptedSecret,
    table: &KeyHealthTable,
    prev: Option<&Condition>,
    generation: Option<i64>,
    now: Time,
) -> Option<Condition> {
    keys_condition_for(&Facts::of(&es.spec, None), table, prev, generation, now)
}

/// [`keys_condition`] from a spec's [`Facts`] (a released spec keeps them).
pub fn keys_condition_for(
    facts: &Facts,
    table: &KeyHealthTable,
    prev: Option<&Condition>,
    generation: Option<i64>,
    now: Time,
) -> Option<Condition> {
    let keys = &facts.kms_keys;
    let bad: Vec<(&str, KeyHealth)> = keys
        .iter()
        .filter_map(|k| {
            table
                .health(k)
                .filter(|h| !h.is_healthy())
                .map(|h| (&**k, h))
        })
        .collect();
    let (status, reason, message) = if bad.is_empty() {
        prev?;
        (
            "True",
            "KeysHealthy",
            "every data-key copy is under a usable KMS key".to_string(),
        )
    } else {
        let what: Vec<String> = bad
            .iter()
            .map(|(k, h)| match h.deletion_date() {
                Some(d) => format!("{k} is {} (deleted on {d})", h.as_str()),
                None => format!("{k} is {}", h.as_str()),
            })
            .collect();
        if bad.len() == keys.len() && !facts.local {
            (
                "False",
                bad[0].1.reason(),
                format!(
                    "no copy of the data key is under a usable KMS key: {}; the Secret stays as it is, but once the key is gone the values cannot be decrypted. Re-wrap under a healthy key now: kmsecrets rotate --rewrap --key NEW FILE (or cancel the deletion / enable the key)",
                    what.join("; ")
                ),
            )
        } else {
            (
                "True",
                "RedundancyLost",
                format!(
                    "a copy of the data key is under an unusable KMS key: {}; another copy is still usable",
                    what.join("; ")
                ),
            )
        }
    };
    let last_transition_time = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => now,
    };
    Some(Condition {
        type_: KEYS_HEALTHY.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    })
}
