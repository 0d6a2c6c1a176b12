//! What the controller keeps of each watched EncryptedSecret: its metadata,
//! parsed, and its spec and status as compact JSON text, parsed by the
//! reconcile that needs them ([`Watched::parse`]).
//!
//! Why not the typed object: at 10,000 resources the watch store is the
//! controller's largest heap. A typed `EncryptedSecret` spreads one object
//! over dozens of allocations (every string, a B-tree node per map, the
//! conditions) — about 2 KiB each — while its JSON text is about half that
//! in one allocation. A reconcile parses it in microseconds, and most
//! watch events never reach a reconcile (our own writes' echoes, see
//! [`super::State::wrote_status_version`]).
//!
//! It also replaces kube's `DeserializeGuard`: the spec and status are
//! captured as text whatever they hold, so an object that does not match
//! the schema still lands in the store (with its metadata) instead of
//! failing the list or watch, and [`Watched::parse`] says what is wrong —
//! without buffering every object into a generic JSON tree first, as the
//! guard does.
//!
//! # Released resources
//! Once this process has reported a resource Synced for its current
//! generation, the reconciles that follow (resyncs, its own writes'
//! echoes) need none of the ciphertext and none of the status: the
//! generation stands for the spec, and this process's memory for what it
//! wrote. [`Watched::release`] then drops both texts and keeps only the
//! [`Facts`] a reconcile of an unchanged resource reads (the deletion
//! policy, the KMS keys and the `KeysHealthy` condition for their health).
//! A reconcile that finds more to do reads the object again (one GET; see
//! `reconcile::settled`). A spec change raises the generation and arrives
//! with its new text, so released facts are never stale.

use std::borrow::Cow;
use std::fmt;
use std::sync::Mutex;

use kube::Resource;
use kube::core::ObjectMeta;
use kube::runtime::reflector::ObjectRef;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::keys::KEYS_HEALTHY;
use super::status::READY;
use crate::api::{
    DeletionPolicy, EncryptedSecret, EncryptedSecretSpec, EncryptedSecretStatus, Provider,
};
use crate::sync::LockExt;

/// One watched EncryptedSecret (see the module docs).
pub struct Watched {
    metadata: ObjectMeta,
    /// Behind a lock: the store's shared copy is released in place by the
    /// reconcile that finds it synced ([`Watched::release`]).
    body: Mutex<Body>,
    /// The status's Ready condition is True (read once, when the object
    /// arrives: the `kmsecrets_encryptedsecrets{ready}` gauge counts it).
    ready: bool,
}

/// Spec and status as the store holds them.
#[derive(Clone, Debug)]
enum Body {
    /// Compact JSON texts (`None`: absent).
    Text {
        spec: Option<Box<str>>,
        status: Option<Box<str>>,
    },
    /// Released after a sync: what a reconcile of the unchanged resource reads.
    Released(Facts),
}

/// What a reconcile of a synced, unchanged resource needs of its spec and
/// status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    /// `deletionPolicy: Retain` (the finalizer must be present).
    pub retain: bool,
    /// A copy of the data key is under a local key.
    pub local: bool,
    /// The KMS key ids of the copies under KMS keys, sorted, no duplicates.
    pub kms_keys: Box<[Box<str>]>,
    /// The status's `KeysHealthy` condition (most resources have none).
    pub keys_condition: Option<Box<Condition>>,
}

impl Facts {
    /// The facts of a parsed spec and status.
    pub fn of(spec: &EncryptedSecretSpec, status: Option<&EncryptedSecretStatus>) -> Facts {
        let mut keys: Vec<&str> = spec
            .data_keys
            .iter()
            .filter(|d| d.provider == Provider::AwsKms)
            .map(|d| d.key_id.as_str())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        Facts {
            retain: spec.deletion_policy == DeletionPolicy::Retain,
            local: spec.data_keys.iter().any(|d| d.provider == Provider::Local),
            kms_keys: keys.into_iter().map(Box::from).collect(),
            keys_condition: status
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == KEYS_HEALTHY))
                .map(|c| Box::new(c.clone())),
        }
    }
}

impl Clone for Watched {
    fn clone(&self) -> Self {
        Watched {
            metadata: self.metadata.clone(),
            body: Mutex::new(self.body.lock_or_recover().clone()),
            ready: self.ready,
        }
    }
}

/// Why a watched object cannot be opened (never quotes a value: map keys
/// and field names only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The path of the first field that does not match the schema, e.g.
    /// `spec.encryptedData.pin`; `spec` when the spec is missing or not an
    /// object.
    pub path: String,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} has the wrong type or value", self.path)
    }
}

impl Watched {
    /// From a typed object (tests, and callers that already hold one).
    pub fn new(es: &EncryptedSecret) -> Watched {
        Watched::from_parts(
            es.metadata.clone(),
            Some(to_text(&es.spec)),
            es.status.as_ref().map(to_text),
        )
    }

    fn from_parts(metadata: ObjectMeta, spec: Option<Box<str>>, status: Option<Box<str>>) -> Self {
        let ready = status.as_deref().is_some_and(ready_in);
        Watched {
            metadata,
            body: Mutex::new(Body::Text { spec, status }),
            ready,
        }
    }

    /// A trigger for the stored resource `r` names: name and namespace, no
    /// body. The controller reconciles the store's copy, looked up by
    /// reference, so a trigger needs no copy of the stored object (the feed,
    /// the resync sweep, woken parked reconciles and changed owned Secrets
    /// trigger with this).
    pub fn trigger(r: &ObjectRef<Watched>) -> Watched {
        Watched {
            metadata: ObjectMeta {
                name: Some(r.name.clone()),
                namespace: r.namespace.clone(),
                ..ObjectMeta::default()
            },
            body: Mutex::new(Body::Released(Facts::default())),
            ready: false,
        }
    }

    /// The typed object: metadata, spec and status parsed. `Err` names the
    /// first field that does not match the schema; a released resource
    /// ([`Watched::released`]) cannot be parsed (`Err` naming `spec`).
    pub fn parse(&self) -> Result<EncryptedSecret, Malformed> {
        let body = self.body.lock_or_recover();
        let Body::Text {
            spec: Some(spec),
            status,
        } = &*body
        else {
            return Err(Malformed {
                path: "spec".into(),
            });
        };
        Ok(EncryptedSecret {
            metadata: self.metadata.clone(),
            spec: parse(spec, "spec")?,
            status: status.as_deref().map(|s| parse(s, "status")).transpose()?,
        })
    }

    /// The facts kept of a released resource; `None` while the texts are
    /// held.
    pub fn released(&self) -> Option<Facts> {
        match &*self.body.lock_or_recover() {
            Body::Released(f) => Some(f.clone()),
            Body::Text { .. } => None,
        }
    }

    /// Drop the spec and status texts, keeping `facts` (see the module
    /// docs). Only for a resource this process has reported Synced at this
    /// generation.
    pub fn release(&self, facts: Facts) {
        *self.body.lock_or_recover() = Body::Released(facts);
    }

    /// [`Watched::release`] from the held texts (a watch event's copy,
    /// before it is stored); false when there is no spec or it does not
    /// parse.
    pub fn release_own(&mut self) -> bool {
        if self.released().is_some() {
            return true;
        }
        let Ok(es) = self.parse() else {
            return false;
        };
        self.release(Facts::of(&es.spec, es.status.as_ref()));
        true
    }

    /// The KMS key ids of the copies (sorted, no duplicates), from the
    /// released facts or the spec text; empty when the spec has no
    /// readable `dataKeys`.
    pub fn kms_key_ids(&self) -> Vec<String> {
        self.with_kms_keys(|keys| keys.iter().map(|k| k.to_string()).collect())
    }

    /// Calls `f` with the KMS key ids of the copies (sorted, no
    /// duplicates), borrowed: from the released facts, or from the spec
    /// text read for its `dataKeys` alone (nothing else of the spec is
    /// parsed, nothing is copied). The key check walks every stored object
    /// with this, so it costs no memory per resource.
    pub fn with_kms_keys<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        #[derive(Deserialize)]
        struct Copy<'a> {
            #[serde(borrow)]
            provider: Cow<'a, str>,
            #[serde(rename = "keyId", borrow)]
            key_id: Cow<'a, str>,
        }
        #[derive(Deserialize)]
        struct Spec<'a> {
            #[serde(rename = "dataKeys", borrow)]
            data_keys: Vec<Copy<'a>>,
        }
        let body = self.body.lock_or_recover();
        match &*body {
            Body::Released(facts) => {
                let keys: Vec<&str> = facts.kms_keys.iter().map(|k| &**k).collect();
                f(&keys)
            }
            Body::Text {
                spec: Some(spec), ..
            } => {
                let parsed = serde_json::from_str::<Spec<'_>>(spec).ok();
                let mut keys: Vec<&str> = parsed
                    .iter()
                    .flat_map(|s| &s.data_keys)
                    .filter(|c| c.provider == Provider::AwsKms.as_str())
                    .map(|c| &*c.key_id)
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                f(&keys)
            }
            Body::Text { spec: None, .. } => f(&[]),
        }
    }

    /// A number shared by resources whose first data-key copy is the same
    /// wrapped key in the same namespace (so, in practice, one data key):
    /// the feed orders a listed store by it (see [`super::feed`]). A hash of
    /// the namespace and the copy's ciphertext (public, committed in git),
    /// read from the spec text alone; 0 for a released resource (its data
    /// key is not needed again) or a spec without readable `dataKeys`.
    pub fn data_key_group(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        #[derive(Deserialize)]
        struct Copy<'a> {
            #[serde(borrow)]
            ciphertext: Cow<'a, str>,
        }
        #[derive(Deserialize)]
        struct Spec<'a> {
            #[serde(rename = "dataKeys", borrow)]
            data_keys: Vec<Copy<'a>>,
        }
        let body = self.body.lock_or_recover();
        let Body::Text {
            spec: Some(spec), ..
        } = &*body
        else {
            return 0;
        };
        let Some(first) = serde_json::from_str::<Spec<'_>>(spec)
            .ok()
            .and_then(|s| s.data_keys.into_iter().next())
        else {
            return 0;
        };
        // fixed keys: the same store feeds in the same order every run
        let mut h = std::hash::DefaultHasher::new();
        self.metadata.namespace.hash(&mut h);
        first.ciphertext.hash(&mut h);
        h.finish()
    }

    /// Whether the status's Ready condition is True.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Bytes held beyond the metadata (spec and status text).
    pub fn text_len(&self) -> usize {
        match &*self.body.lock_or_recover() {
            Body::Text { spec, status } => {
                spec.as_deref().map_or(0, str::len) + status.as_deref().map_or(0, str::len)
            }
            Body::Released(_) => 0,
        }
    }
}

/// Parse `text` as `T`; the error names the failing field under `root`.
fn parse<T: serde::de::DeserializeOwned>(text: &str, root: &str) -> Result<T, Malformed> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        Malformed {
            path: if path == "." || path.is_empty() {
                root.to_string()
            } else {
                format!("{root}.{path}")
            },
        }
    })
}

/// Whether a status text has a Ready condition with status True (a status
/// that does not parse has none).
fn ready_in(status: &str) -> bool {
    #[derive(Deserialize)]
    struct Cond<'a> {
        #[serde(rename = "type", borrow)]
        type_: Cow<'a, str>,
        #[serde(borrow)]
        status: Cow<'a, str>,
    }
    #[derive(Deserialize)]
    struct Status<'a> {
        #[serde(default, borrow)]
        conditions: Vec<Cond<'a>>,
    }
    serde_json::from_str::<Status<'_>>(status).is_ok_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == READY && c.status == "True")
    })
}

/// A typed part as JSON text (for [`Watched::new`]).
fn to_text<T: serde::Serialize>(v: &T) -> Box<str> {
    // a derived Serialize of plain data into a String cannot fail
    serde_json::to_string(v)
        .unwrap_or_else(|_| "null".into())
        .into_boxed_str()
}

/// Any JSON value, re-written as compact text. Works on every
/// deserializer (kube decodes a watch event through serde's buffered
/// content when `object` precedes `type`, where a borrowed raw value could
/// not be taken). `null` is absent.
fn compact<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<str>>, D::Error> {
    // Written into a scratch buffer, then copied into an allocation of
    // exactly its size: shrinking the buffer in place would leave a free
    // tail behind every stored object (heap fragmentation at 10,000s).
    let mut out = Vec::with_capacity(2048);
    serde_transcode::transcode(d, &mut serde_json::Serializer::new(&mut out))
        .map_err(D::Error::custom)?;
    if out == b"null" {
        return Ok(None);
    }
    let text = std::str::from_utf8(&out).map_err(D::Error::custom)?;
    Ok(Some(Box::from(text)))
}

impl<'de> Deserialize<'de> for Watched {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            // without managedFields, skipped unread (see `super::lean`)
            #[serde(default, deserialize_with = "super::lean::meta")]
            metadata: ObjectMeta,
            #[serde(default, deserialize_with = "compact")]
            spec: Option<Box<str>>,
            #[serde(default, deserialize_with = "compact")]
            status: Option<Box<str>>,
        }
        let w = Wire::deserialize(d)?;
        Ok(Watched::from_parts(w.metadata, w.spec, w.status))
    }
}

/// Names and sizes only: the spec holds ciphertext, but nothing of it needs
/// to reach a log.
impl fmt::Debug for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("namespace", &self.metadata.namespace)
            .field("name", &self.metadata.name)
            .field("resourceVersion", &self.metadata.resource_version)
            .field("ready", &self.ready)
            .field("released", &self.released().is_some())
            .field("bytes", &self.text_len())
            .finish()
    }
}

impl Resource for Watched {
    type DynamicType = ();
    type Scope = <EncryptedSecret as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        EncryptedSecret::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        EncryptedSecret::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        EncryptedSecret::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        EncryptedSecret::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn object(spec: serde_json::Value, status: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "kmsecrets.dev/v1alpha1", "kind": "EncryptedSecret",
            "metadata": {"name": "db", "namespace": "ns", "uid": "u1", "resourceVersion": "7", "generation": 2},
            "spec": spec, "status": status,
        })
    }

    fn spec() -> serde_json::Value {
        json!({
            "scope": "strict",
            "dataKeys": [{"provider": "local", "keyId": "local:0011", "ciphertext": "AAAA"}],
            "encryptedData": {"password": "v1:BBBB"},
        })
    }

    fn ready_status(s: &str) -> serde_json::Value {
        json!({"sourceHash": "h", "conditions": [{"type": "Ready", "status": s, "reason": "Synced",
               "message": "", "lastTransitionTime": "2026-12-01T00:00:00Z"}]})
    }

    /// Both paths kube takes: straight from the text, and through a
    /// buffered value (what a watch event whose `object` comes first gets).
    fn both(v: &serde_json::Value) -> [Watched; 2] {
        let text = serde_json::to_string(v).unwrap();
        [
            serde_json::from_str(&text).unwrap(),
            serde_json::from_value(v.clone()).unwrap(),
        ]
    }

    #[test]
    fn opens_to_the_typed_object_it_came_from() {
        let v = object(spec(), ready_status("True"));
        let typed: EncryptedSecret = serde_json::from_value(v.clone()).unwrap();
        for w in both(&v) {
            let json = |es: &EncryptedSecret| serde_json::to_value(es).unwrap();
            assert_eq!(json(&w.parse().unwrap()), json(&typed));
            assert!(w.ready());
            assert_eq!(w.meta().name.as_deref(), Some("db"));
            assert_eq!(json(&Watched::new(&typed).parse().unwrap()), json(&typed));
        }
    }

    #[test]
    fn a_trigger_names_the_stored_object_and_holds_nothing_else() {
        let [w, _] = both(&object(spec(), ready_status("True")));
        let r = ObjectRef::from_obj(&w);
        let t = Watched::trigger(&r);
        assert_eq!(
            ObjectRef::from_obj(&t),
            r,
            "same reference as the stored object"
        );
        assert_eq!(t.meta().name.as_deref(), Some("db"));
        assert_eq!(t.meta().namespace, w.meta().namespace);
        assert_eq!((t.text_len(), t.meta().uid.as_ref()), (0, None));
        assert!(t.meta().annotations.is_none() && t.meta().labels.is_none());
    }

    #[test]
    fn a_watch_event_parses_whichever_key_comes_first() {
        let v = object(spec(), json!(null));
        let obj = serde_json::to_string(&v).unwrap();
        for line in [
            format!(r#"{{"type":"ADDED","object":{obj}}}"#),
            format!(r#"{{"object":{obj},"type":"MODIFIED"}}"#),
        ] {
            let ev: kube::core::WatchEvent<Watched> = serde_json::from_str(&line).unwrap();
            let (kube::core::WatchEvent::Added(w) | kube::core::WatchEvent::Modified(w)) = ev
            else {
                panic!("not an object event");
            };
            assert!(w.parse().unwrap().status.is_none());
            assert!(!w.ready());
        }
    }

    #[test]
    fn ready_only_when_the_ready_condition_is_true() {
        for (status, ready) in [
            (ready_status("True"), true),
            (ready_status("False"), false),
            (json!({}), false),
            (json!(null), false),
            (json!({"conditions": "nonsense"}), false),
        ] {
            for w in both(&object(spec(), status.clone())) {
                assert_eq!(w.ready(), ready, "{status}");
            }
        }
    }

    #[test]
    fn a_malformed_object_keeps_its_metadata_and_names_the_field_not_the_value() {
        let mut bad = spec();
        bad["encryptedData"]["pin"] = json!(["hunter2-secret"]);
        for (spec, path) in [
            (bad, "spec.encryptedData.pin"),
            (json!("a string"), "spec"),
            (json!(null), "spec"),
        ] {
            for w in both(&object(spec.clone(), json!(null))) {
                assert_eq!(w.meta().uid.as_deref(), Some("u1"));
                let err = w.parse().unwrap_err();
                assert_eq!(err.path, path);
                assert!(!err.to_string().contains("hunter2"), "{err}");
                assert!(!format!("{w:?}").contains("hunter2"));
            }
        }
        // a status that does not match is reported too (and is not ready)
        let w = &both(&object(spec(), json!({"conditions": 5})))[0];
        assert_eq!(w.parse().unwrap_err().path, "status.conditions");
        assert!(!w.ready());
    }

    #[test]
    fn a_released_resource_keeps_metadata_ready_and_facts_only() {
        let mut spec = spec();
        spec["deletionPolicy"] = json!("Retain");
        spec["dataKeys"] = json!([
            {"provider": "aws-kms", "keyId": "arn:b", "ciphertext": "AAAA"},
            {"provider": "local", "keyId": "local:0011", "ciphertext": "AAAA"},
            {"provider": "aws-kms", "keyId": "arn:a", "ciphertext": "AAAA"},
            {"provider": "aws-kms", "keyId": "arn:b", "ciphertext": "BBBB"},
        ]);
        let v = object(spec, ready_status("True"));
        let want = Facts {
            retain: true,
            local: true,
            kms_keys: vec!["arn:a".into(), "arn:b".into()].into(),
            keys_condition: None,
        };
        for mut w in both(&v) {
            let held = w.text_len();
            assert_eq!(w.released(), None);
            assert_eq!(w.kms_key_ids(), ["arn:a", "arn:b"]);
            let copy = w.clone();
            assert!(w.release_own());
            assert_eq!(w.released().as_ref(), Some(&want));
            assert_eq!(w.kms_key_ids(), ["arn:a", "arn:b"], "from the facts");
            assert!(held > 0 && w.text_len() == 0, "both texts are gone");
            assert_eq!(w.parse().unwrap_err().path, "spec");
            assert!(w.ready());
            assert_eq!(w.meta().uid.as_deref(), Some("u1"));
            // a clone keeps the released state; the earlier copy its text
            assert_eq!(w.clone().released().as_ref(), Some(&want));
            assert!(copy.parse().is_ok());
            // in place, through a shared reference (the store's copy)
            copy.release(want.clone());
            assert_eq!(copy.released().as_ref(), Some(&want));
            assert!(!format!("{copy:?}").contains("AAAA"));
        }
        // nothing to release: no spec, or one that does not parse
        let mut none = both(&object(json!(null), json!(null)))[0].clone();
        assert!(!none.release_own());
        let mut bad = both(&object(json!({"dataKeys": 5}), json!(null)))[0].clone();
        assert!(!bad.release_own());
        assert_eq!(bad.released(), None);
        assert!(bad.kms_key_ids().is_empty() && none.kms_key_ids().is_empty());
    }

    /// The key check's reader: the same keys as the full parse, from the
    /// `dataKeys` alone (escaped ids included), and none from a spec whose
    /// `dataKeys` cannot be read.
    #[test]
    fn kms_keys_are_read_from_the_data_keys_alone() {
        let mut spec = spec();
        spec["dataKeys"] = json!([
            {"provider": "aws-kms", "keyId": "arn:z", "ciphertext": "AAAA", "algorithm": "RSAES_OAEP_SHA_256"},
            {"provider": "aws-kms", "keyId": "arn:\"a", "ciphertext": "AAAA"},
            {"provider": "local", "keyId": "local:0011", "ciphertext": "AAAA"},
            {"provider": "aws-kms", "keyId": "arn:z", "ciphertext": "BBBB"},
        ]);
        for w in both(&object(spec.clone(), ready_status("True"))) {
            let full = Facts::of(&w.parse().unwrap().spec, None).kms_keys;
            let read = w.with_kms_keys(|k| k.iter().map(|k| Box::from(*k)).collect::<Vec<_>>());
            assert_eq!(read, full.to_vec());
            assert_eq!(w.kms_key_ids(), ["arn:\"a", "arn:z"]);
        }
        for data_keys in [json!(5), json!([{"provider": 1}]), json!(null)] {
            spec["dataKeys"] = data_keys;
            let w = &both(&object(spec.clone(), json!(null)))[0];
            assert_eq!(w.with_kms_keys(|k| k.len()), 0);
        }
    }

    #[test]
    fn compact_text_is_smaller_than_the_pretty_source() {
        let v = object(spec(), ready_status("True"));
        let w = &both(&v)[0];
        let pretty = serde_json::to_string_pretty(&v["spec"]).unwrap().len()
            + serde_json::to_string_pretty(&v["status"]).unwrap().len();
        assert!(w.text_len() < pretty, "{} vs {pretty}", w.text_len());
    }
}
