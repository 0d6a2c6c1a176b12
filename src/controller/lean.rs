//! Lean decoding of what the API server sends back: metadata without its
//! `managedFields`, and write answers reduced to their resourceVersion.
//!
//! Every object the API server returns carries `metadata.managedFields`: one
//! entry per field manager, each a JSON tree of the fields it owns. Decoded
//! through k8s-openapi's `ObjectMeta` it is built as a `serde_json::Value`
//! tree — maps, strings, allocations — and thrown away at once (the watch
//! store trims it). A profile of a 20,000-resource cold start put
//! `ObjectMeta` decoding at 8 % of the controller's CPU, mostly these
//! trees: in the EncryptedSecret watch, the status write's answer, the
//! Secret create's answer and the owned-Secret watch. Here it is skipped
//! by the JSON reader instead (never built).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, OwnerReference, Time};
use kube::Resource;
use kube::core::ObjectMeta;
use serde::{Deserialize, Deserializer};

use crate::api::ADOPT_ANNOTATION;
use crate::secret::SOURCE_HASH_ANNOTATION;

/// `ObjectMeta` as the API server sends it, less `managedFields` (skipped
/// unread, like any field not named here).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Wire {
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    name: Option<String>,
    namespace: Option<String>,
    owner_references: Option<Vec<OwnerReference>>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

/// Decode an object's `metadata` without its `managedFields` (for
/// `#[serde(deserialize_with)]`; `null` is empty metadata).
pub fn meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let w = Option::<Wire>::deserialize(d)?.unwrap_or_default();
    Ok(ObjectMeta {
        annotations: w.annotations,
        creation_timestamp: w.creation_timestamp,
        deletion_grace_period_seconds: w.deletion_grace_period_seconds,
        deletion_timestamp: w.deletion_timestamp,
        finalizers: w.finalizers,
        generate_name: w.generate_name,
        generation: w.generation,
        labels: w.labels,
        managed_fields: None,
        name: w.name,
        namespace: w.namespace,
        owner_references: w.owner_references,
        resource_version: w.resource_version,
        self_link: w.self_link,
        uid: w.uid,
    })
}

/// The answer to a write of a `K`, decoded for its `metadata.uid` and
/// `metadata.resourceVersion` alone: the rest of the object (spec, status,
/// data, managed fields) is skipped unread. Use it as the type of an
/// `Api<Written<K>>` for writes whose answer only confirms the version.
pub struct Written<K> {
    metadata: ObjectMeta,
    kind: PhantomData<fn() -> K>,
}

impl<K> Written<K> {
    /// The object's resourceVersion after the write.
    pub fn resource_version(self) -> Option<String> {
        self.metadata.resource_version
    }
}

impl<K> Clone for Written<K> {
    fn clone(&self) -> Self {
        Written {
            metadata: self.metadata.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> fmt::Debug for Written<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Written")
            .field("resourceVersion", &self.metadata.resource_version)
            .finish()
    }
}

impl<'de, K> Deserialize<'de> for Written<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Meta {
            uid: Option<String>,
            #[serde(rename = "resourceVersion")]
            resource_version: Option<String>,
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            metadata: Meta,
        }
        let a = Answer::deserialize(d)?;
        Ok(Written {
            metadata: ObjectMeta {
                uid: a.metadata.uid,
                resource_version: a.metadata.resource_version,
                ..ObjectMeta::default()
            },
            kind: PhantomData,
        })
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Written<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> std::borrow::Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> std::borrow::Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The answer to a write of one of our Secrets (create, server-side
/// apply): its resourceVersion, the keys of its `data` — the values, the
/// plaintext, are skipped unread, so the answer puts no second copy of them
/// in memory — and its managed fields as unparsed JSON text, parsed only
/// when a key is left over (see `reconcile::keys_left_by_create`).
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct SecretWritten {
    metadata: SecretWrittenMeta,
    #[serde(deserialize_with = "map_keys")]
    data: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct SecretWrittenMeta {
    resource_version: Option<String>,
    managed_fields: Option<Box<serde_json::value::RawValue>>,
}

impl SecretWritten {
    /// The Secret's resourceVersion after the write.
    pub fn resource_version(&self) -> Option<&str> {
        self.metadata.resource_version.as_deref()
    }

    /// The keys of `data`, in the order the API server sent them.
    pub fn data_keys(&self) -> &[String] {
        &self.data
    }

    /// The managed fields, parsed now (empty when absent or unreadable).
    pub fn managed_fields(&self) -> Vec<ManagedFieldsEntry> {
        self.metadata
            .managed_fields
            .as_deref()
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or_default()
    }
}

impl fmt::Debug for SecretWritten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretWritten")
            .field("resourceVersion", &self.metadata.resource_version)
            .field("dataKeys", &self.data)
            .finish()
    }
}

/// A JSON object's keys, its values skipped unread (`null`: none).
fn map_keys<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let m = Option::<BTreeMap<String, serde::de::IgnoredAny>>::deserialize(d)?;
    Ok(m.map(|m| m.into_keys().collect()).unwrap_or_default())
}

/// One of our Secrets as the owned-Secret watch decodes it (metadata-only
/// requests): name, namespace, uid, resourceVersion, owner references and
/// the two annotations reconcile reads. Labels, every other annotation and
/// the managed fields are skipped unread (see the module docs; the
/// managed fields were 2.2 % of a cold start's CPU in this watch). The
/// store keeps the smaller `SecretMeta` made from it
/// (`watch::SecretMeta::from_owned`).
#[derive(Clone, Debug, Default)]
pub struct OwnedSecret {
    metadata: ObjectMeta,
    source_hash: Option<String>,
    adopt: Option<String>,
}

impl OwnedSecret {
    /// Its metadata: name, namespace, uid, resourceVersion and owner
    /// references (nothing else is decoded).
    pub fn into_parts(self) -> (ObjectMeta, Option<String>, bool) {
        let adopt = self.adopt.as_deref() == Some("true");
        (self.metadata, self.source_hash, adopt)
    }
}

impl<'de> Deserialize<'de> for OwnedSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase", default)]
        struct Meta {
            name: Option<String>,
            namespace: Option<String>,
            uid: Option<String>,
            resource_version: Option<String>,
            owner_references: Option<Vec<OwnerReference>>,
            annotations: Option<Ours>,
        }
        #[derive(Deserialize)]
        struct Object {
            #[serde(default)]
            metadata: Option<Meta>,
        }
        let m = Object::deserialize(d)?.metadata.unwrap_or_default();
        let ours = m.annotations.unwrap_or_default();
        Ok(OwnedSecret {
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                owner_references: m.owner_references,
                ..ObjectMeta::default()
            },
            source_hash: ours.source_hash,
            adopt: ours.adopt,
        })
    }
}

/// The two annotations of ours in an annotation map; every other value is
/// skipped unread.
#[derive(Default)]
struct Ours {
    source_hash: Option<String>,
    adopt: Option<String>,
}

impl<'de> Deserialize<'de> for Ours {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ours;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an annotation map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Ours, A::Error> {
                let mut ours = Ours::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::SourceHash => ours.source_hash = Some(map.next_value()?),
                        Key::Adopt => ours.adopt = Some(map.next_value()?),
                        Key::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(ours)
            }
        }
        d.deserialize_map(V)
    }
}

impl Resource for OwnedSecret {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
        Secret::kind(dt)
    }
    fn group(dt: &()) -> std::borrow::Cow<'_, str> {
        Secret::group(dt)
    }
    fn version(dt: &()) -> std::borrow::Cow<'_, str> {
        Secret::version(dt)
    }
    fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
        Secret::plural(dt)
    }
    /// Lists, watches and GETs ask for metadata only
    /// (`PartialObjectMetadata`): the values never leave the API server.
    fn metadata_api() -> bool {
        true
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// An annotation's name, compared where it lies (not copied).
enum Key {
    SourceHash,
    Adopt,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an annotation name")
            }
            fn visit_str<E: serde::de::Error>(self, k: &str) -> Result<Key, E> {
                Ok(match k {
                    SOURCE_HASH_ANNOTATION => Key::SourceHash,
                    ADOPT_ANNOTATION => Key::Adopt,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::api::EncryptedSecret;
    use serde_json::json;

    fn answer() -> serde_json::Value {
        json!({
            "apiVersion": "kmsecrets.io/v1alpha1", "kind": "EncryptedSecret",
            "metadata": {
                "name": "db", "namespace": "team-a", "uid": "u1", "resourceVersion": "42",
                "generation": 3, "creationTimestamp": "2026-12-01T00:00:00Z",
                "deletionTimestamp": null, "finalizers": ["kmsecrets.io/finalizer"],
                "labels": {"app": "db"}, "annotations": {"a": "b"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u0"}],
                "managedFields": [{"manager": "kmsecrets", "operation": "Update",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {}}}}],
            },
            "spec": {"encryptedData": {"password": "v1:AAAA"}},
            "status": {"conditions": []},
        })
    }

    #[derive(Deserialize)]
    struct Lean {
        #[serde(deserialize_with = "meta")]
        metadata: ObjectMeta,
    }

    #[test]
    fn metadata_is_everything_but_the_managed_fields() {
        let v = answer();
        let mut full: ObjectMeta = serde_json::from_value(v["metadata"].clone()).unwrap();
        assert!(full.managed_fields.is_some());
        full.managed_fields = None;
        let text = serde_json::to_string(&v).unwrap();
        let lean: Lean = serde_json::from_str(&text).unwrap();
        assert_eq!(lean.metadata, full);
        // and through a buffered value (kube's watch-event path)
        let lean: Lean = serde_json::from_value(v).unwrap();
        assert_eq!(lean.metadata, full);
        let empty: Lean = serde_json::from_value(json!({"metadata": null})).unwrap();
        assert_eq!(empty.metadata, ObjectMeta::default());
        // a wrongly typed field is still an error, not silently dropped
        let bad = json!({"metadata": {"generation": "three"}});
        assert!(serde_json::from_value::<Lean>(bad).is_err());
    }

    #[test]
    fn a_secret_answer_keeps_keys_version_and_managed_fields_never_values() {
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "resourceVersion": "7",
                "managedFields": [{"manager": "kmsecrets", "operation": "Update",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:b": {}, "f:a": {}}}}]},
            "data": {"password": "aHVudGVyMg==", "a": "eA=="},
            "type": "Opaque",
        });
        let text = serde_json::to_string(&secret).unwrap();
        let w: SecretWritten = serde_json::from_str(&text).unwrap();
        assert_eq!(w.resource_version(), Some("7"));
        assert_eq!(w.data_keys(), ["a", "password"]);
        let mf = w.managed_fields();
        assert_eq!(mf.len(), 1);
        assert_eq!(mf[0].manager.as_deref(), Some("kmsecrets"));
        let dbg = format!("{w:?}");
        assert!(
            !dbg.contains("aHVudGVy") && !dbg.contains("hunter2"),
            "{dbg}"
        );
        // no data, no managed fields: empty, not an error
        let bare: SecretWritten = serde_json::from_str(r#"{"metadata":{},"data":null}"#).unwrap();
        assert!(bare.data_keys().is_empty() && bare.managed_fields().is_empty());
        assert_eq!(bare.resource_version(), None);
    }

    #[test]
    fn a_write_answer_keeps_its_version_and_nothing_else() {
        let w: Written<EncryptedSecret> = serde_json::from_value(answer()).unwrap();
        assert_eq!(w.meta().uid.as_deref(), Some("u1"));
        assert_eq!(w.meta().name, None, "nothing else is kept");
        assert!(!format!("{w:?}").contains("AAAA"));
        assert_eq!(w.resource_version().as_deref(), Some("42"));
        assert_eq!(Written::<EncryptedSecret>::plural(&()), "encryptedsecrets");
    }
}
