//! Which AWS regions the controller's KMS requests may go to
//! ([`RegionPolicy`]), and the region a key id names ([`region_of`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use crate::sync::LockExt;

/// `arn:aws:kms:REGION:ACCOUNT:key/ID` or `...:alias/NAME` → REGION.
pub fn region_of(key_id: &str) -> Option<&str> {
    let mut parts = key_id.splitn(6, ':');
    if parts.next()? != "arn" {
        return None;
    }
    let _partition = parts.next()?;
    if parts.next()? != "kms" {
        return None;
    }
    parts.next().filter(|r| !r.is_empty())
}

/// Which AWS regions the controller sends KMS requests to. A resource names
/// its keys' regions, and a tenant can name many that do not answer (each
/// copy then costs attempts and a cached client). Allowed are: the regions
/// given with `--kms-region`, the configured region (`--region`,
/// `AWS_REGION`, profile), and regions *learned* per namespace: when a
/// resource's data key unwraps through a copy in a region the operator
/// allowed (explicit or configured), the regions of its other copies
/// (typically a DR region) become allowed for resources of *that
/// namespace*. At most [`MAX_LEARNED_REGIONS`] are learned per namespace, so
/// a tenant that fills its list with junk regions fills only its own: a
/// victim's DR region, learned in the victim's namespace, is never crowded
/// out. (Learning from the unwrapping copy alone would learn nothing: that
/// copy's region was allowed already, or it could not have unwrapped.)
/// Learning is in memory, so list DR regions with `--kms-region` to have
/// them before the first sync after a restart. A refused copy costs no
/// request.
#[derive(Debug, Default)]
pub struct RegionPolicy {
    explicit: BTreeSet<String>,
    learned: Mutex<HashMap<String, BTreeSet<String>>>,
}

/// Regions one namespace may teach: a DR setup needs one or two; 16 leaves
/// room for multi-region estates and bounds a tenant's junk.
pub const MAX_LEARNED_REGIONS: usize = 16;

/// Namespaces whose learned regions are kept (each at most
/// [`MAX_LEARNED_REGIONS`] short strings): bounds memory if namespaces come
/// and go; past it, new namespaces learn nothing (their DR regions need
/// `--kms-region`).
pub const MAX_LEARNING_NAMESPACES: usize = 10_000;

impl RegionPolicy {
    pub fn new(explicit: impl IntoIterator<Item = String>) -> RegionPolicy {
        RegionPolicy {
            explicit: explicit.into_iter().collect(),
            learned: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the operator allowed `region` (explicit or configured).
    pub fn operator_allows(&self, region: &str, configured: Option<&str>) -> bool {
        configured == Some(region) || self.explicit.contains(region)
    }

    /// Whether a request for a resource of `namespace` may go to `region`
    /// (`None`: not for a resource; only what the operator allowed, or any
    /// namespace's learned region for a call already admitted).
    pub fn allows(&self, region: &str, configured: Option<&str>, namespace: Option<&str>) -> bool {
        if self.operator_allows(region, configured) {
            return true;
        }
        let learned = self.learned.lock_or_recover();
        match namespace {
            Some(ns) => learned.get(ns).is_some_and(|r| r.contains(region)),
            None => learned.values().any(|r| r.contains(region)),
        }
    }

    /// Learn, for `namespace`, the regions of a synced resource's copies
    /// (`key_ids`; bounded, names that are not region-shaped ignored) —
    /// only when the copy that unwrapped (`unwrapped`) is in a region the
    /// operator allowed, not one this namespace taught: a learned region
    /// never vouches for more.
    pub fn learn_from<'a>(
        &self,
        namespace: &str,
        unwrapped: &str,
        key_ids: impl IntoIterator<Item = &'a str>,
    ) {
        let taught = region_of(unwrapped).is_some_and(|r| {
            self.learned
                .lock_or_recover()
                .get(namespace)
                .is_some_and(|mine| mine.contains(r))
        });
        if !taught {
            self.learn(namespace, key_ids);
        }
    }

    fn learn<'a>(&self, namespace: &str, key_ids: impl IntoIterator<Item = &'a str>) {
        let mut learned = self.learned.lock_or_recover();
        if !learned.contains_key(namespace) && learned.len() >= MAX_LEARNING_NAMESPACES {
            return;
        }
        let mine = learned.entry(namespace.to_string()).or_default();
        for r in key_ids.into_iter().filter_map(region_of) {
            if mine.len() >= MAX_LEARNED_REGIONS {
                break;
            }
            if region_shaped(r) && !self.explicit.contains(r) {
                mine.insert(r.to_string());
            }
        }
    }

    /// The regions `namespace` has taught.
    pub fn learned(&self, namespace: &str) -> Vec<String> {
        self.learned
            .lock_or_recover()
            .get(namespace)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// `eu-west-1`, `us-gov-west-1`, `cn-north-1`: lowercase words and a
/// number, dash-separated, at most 32 characters.
pub fn region_shaped(r: &str) -> bool {
    r.len() <= 32
        && r.split('-').count() >= 3
        && r.split('-').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_policy_allows_configured_explicit_and_learned_regions_only() {
        let p = RegionPolicy::new(["us-west-2".to_string()]);
        assert!(
            p.allows("eu-west-1", Some("eu-west-1"), Some("a")),
            "configured"
        );
        assert!(
            p.allows("us-west-2", Some("eu-west-1"), Some("a")),
            "explicit"
        );
        assert!(!p.allows("ap-south-1", Some("eu-west-1"), Some("a")));
        p.learn(
            "a",
            [
                "arn:aws:kms:ap-south-1:1:key/a",
                "alias/x",
                "arn:aws:kms:NOT_A_REGION:1:key/b",
            ],
        );
        assert!(
            p.allows("ap-south-1", None, Some("a")),
            "learned from a synced resource of the namespace"
        );
        assert!(
            !p.allows("ap-south-1", None, Some("b")),
            "another namespace did not learn it"
        );
        assert!(
            !p.allows("NOT_A_REGION", None, Some("a")),
            "only region-shaped names are learned"
        );
        assert!(region_shaped("us-gov-west-1") && region_shaped("cn-north-1"));
        assert!(!region_shaped("eu") && !region_shaped("EU-WEST-1") && !region_shaped("eu--1"));
    }

    /// A tenant filling the learned list with
    /// junk regions fills only its own namespace's; a victim's DR region is
    /// still learned and allowed.
    #[test]
    fn region_poisoning_stays_in_the_poisoners_namespace() {
        let p = RegionPolicy::new([]);
        let junk: Vec<String> = (0..40)
            .map(|i| format!("arn:aws:kms:xx-junk-{i}:1:key/k"))
            .collect();
        p.learn("attacker", junk.iter().map(String::as_str));
        assert_eq!(p.learned("attacker").len(), MAX_LEARNED_REGIONS, "bounded");
        p.learn_from(
            "victim",
            "arn:aws:kms:us-east-1:1:key/main",
            [
                "arn:aws:kms:us-east-1:1:key/main",
                "arn:aws:kms:eu-west-1:1:key/dr",
            ],
        );
        assert!(p.allows("eu-west-1", Some("us-east-1"), Some("victim")));
        // a copy that unwrapped in a learned region vouches for nothing more
        p.learn_from(
            "victim",
            "arn:aws:kms:eu-west-1:1:key/dr",
            ["arn:aws:kms:ap-east-1:1:key/x"],
        );
        assert!(!p.allows("ap-east-1", Some("us-east-1"), Some("victim")));
        assert!(!p.allows("xx-junk-0", Some("us-east-1"), Some("victim")));
        assert!(!p.allows("eu-west-1", Some("us-east-1"), Some("attacker")));
    }

    #[test]
    fn region_from_arn() {
        assert_eq!(
            region_of("arn:aws:kms:eu-west-1:111122223333:key/abc"),
            Some("eu-west-1")
        );
        assert_eq!(
            region_of("arn:aws-cn:kms:cn-north-1:1:alias/x"),
            Some("cn-north-1")
        );
        assert_eq!(region_of("alias/x"), None);
        assert_eq!(region_of("1234abcd-12ab"), None);
    }
}
