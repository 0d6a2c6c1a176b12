//! The watches: EncryptedSecrets (what a list asks for, what the store
//! keeps) and the owned Secrets (a metadata-only watch of Secrets labelled
//! as ours), the relist repair that turns objects gone during a broken
//! watch into triggers ([`RelistExt`]), and the watches' backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use std::borrow::Cow;

use kube::core::{ObjectMeta, PartialObjectMeta};
use kube::runtime::reflector::{self, Lookup, ObjectRef, Store};
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};

use super::Config;
use super::lean::OwnedSecret;
use super::watched::Watched;
use crate::api::{ADOPT_ANNOTATION, EncryptedSecret};
use crate::backoff::backoff_delay;
use crate::secret;

/// A materialised Secret as the owned-Secret store holds it: from a
/// metadata-only watch (no values), only what reconcile reads — identity,
/// version, the controller owner reference and the two annotations
/// reconcile reads — each in a field of its own ([`SecretMeta::from_meta`]).
///
/// Why not `PartialObjectMeta<Secret>`: an `ObjectMeta` is ~360 bytes
/// before any of its strings, an `OwnerReference` four more strings, and a
/// `BTreeMap` allocates a whole node for even one entry (eleven key/value
/// slots, over 500 bytes): at 100,000 Secrets the one source-hash
/// annotation alone cost ~50 MiB of map nodes. This record is a third of
/// the size. It is no [`Resource`]: the store only needs [`Lookup`], and
/// the owners are triggered by [`SecretMeta::owner`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretMeta {
    pub name: Box<str>,
    pub namespace: Box<str>,
    pub uid: Option<Box<str>>,
    pub resource_version: Option<Box<str>>,
    /// The controller owner reference.
    pub controller: Option<Box<Controller>>,
    /// The `kmsecrets.dev/source-hash` annotation: which source the Secret
    /// was written from (a new leader recognises its predecessor's last
    /// writes by it).
    pub source_hash: Option<Box<str>>,
    /// The `kmsecrets.dev/adopt: "true"` annotation.
    pub adopt: bool,
}

/// A Secret's controller owner reference.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Controller {
    pub uid: Box<str>,
    pub kind: Box<str>,
    pub name: Box<str>,
    /// Kind and API group are an EncryptedSecret's.
    pub encrypted_secret: bool,
}

impl SecretMeta {
    /// The record of a Secret's metadata (see the type's docs).
    pub fn from_meta(m: PartialObjectMeta<Secret>) -> SecretMeta {
        let md = m.metadata;
        let annotation = |k: &str| md.annotations.as_ref().and_then(|a| a.get(k));
        let source_hash = annotation(secret::SOURCE_HASH_ANNOTATION).cloned();
        let adopt = annotation(ADOPT_ANNOTATION).is_some_and(|v| v == "true");
        SecretMeta::record(md, source_hash, adopt)
    }

    /// The record of a Secret as the owned-Secret watch decodes it.
    pub fn from_owned(s: OwnedSecret) -> SecretMeta {
        let (md, source_hash, adopt) = s.into_parts();
        SecretMeta::record(md, source_hash, adopt)
    }

    fn record(md: ObjectMeta, source_hash: Option<String>, adopt: bool) -> SecretMeta {
        let es_api_version = <EncryptedSecret as Resource>::api_version(&());
        let controller = md
            .owner_references
            .into_iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| {
                Box::new(Controller {
                    encrypted_secret: o.kind == <EncryptedSecret as Resource>::kind(&())
                        && o.api_version.split('/').next() == es_api_version.split('/').next(),
                    uid: o.uid.into(),
                    kind: o.kind.into(),
                    name: o.name.into(),
                })
            });
        let text = |s: Option<String>| s.map(String::into_boxed_str);
        SecretMeta {
            name: md.name.unwrap_or_default().into(),
            namespace: md.namespace.unwrap_or_default().into(),
            uid: text(md.uid),
            resource_version: text(md.resource_version),
            controller,
            source_hash: text(source_hash),
            adopt,
        }
    }

    /// Whether the Secret was written from the source with hash `hash`.
    pub fn from_source(&self, hash: &str) -> bool {
        self.source_hash.as_deref() == Some(hash)
    }

    /// The uid of the Secret's controller, if it has one.
    pub fn controller_uid(&self) -> Option<&str> {
        self.controller.as_deref().map(|c| &*c.uid)
    }

    /// The EncryptedSecret controlling this Secret (what its change
    /// triggers), if an EncryptedSecret does.
    pub fn owner(&self) -> Option<ObjectRef<Watched>> {
        let c = self.controller.as_deref().filter(|c| c.encrypted_secret)?;
        Some(ObjectRef::new(&c.name).within(&self.namespace))
    }
}

impl Lookup for SecretMeta {
    type DynamicType = ();

    fn kind(dt: &()) -> Cow<'_, str> {
        <Secret as Resource>::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        <Secret as Resource>::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        <Secret as Resource>::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        <Secret as Resource>::plural(dt)
    }
    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }
    fn namespace(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.namespace))
    }
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        self.resource_version.as_deref().map(Cow::Borrowed)
    }
    fn uid(&self) -> Option<Cow<'_, str>> {
        self.uid.as_deref().map(Cow::Borrowed)
    }
    /// The store's key: name and namespace only (the default copies the
    /// uid and resourceVersion into every key as well, which nothing reads:
    /// keys compare by name and namespace).
    fn to_object_ref(&self, _: ()) -> ObjectRef<Self> {
        ObjectRef::new(&self.name).within(&self.namespace)
    }
}

/// Objects per page of the watches' lists (kube-runtime's default). A
/// page's whole answer is buffered and decoded before its objects reach the
/// store, so smaller pages lower a small cold start's peak (100 per page:
/// −0.25 MiB at 1,000 resources) — but they cost time out of proportion
/// at scale: a plain client read 100,000 EncryptedSecrets from
/// kube-apiserver v1.37.2 in 29.9 s at 100 per page and in 10.6 s at 500
/// (`examples/scale_real`, SCALE_LIST_PROBE; a streaming list took 5.8 s,
/// but kube-runtime starts it at resourceVersion 0, which the watch cache
/// may serve stale — see [`watcher_config`]).
pub(super) const LIST_PAGE_SIZE: u32 = 500;

/// Lists use the default (most recent, consistent) semantic, not
/// `any_semantic()` (resourceVersion=0): an RV=0 list may be served from a
/// lagging watch cache (stale reads, kubernetes/kubernetes#59848), and after
/// a `410 too old resource version` client-go's reflector relists with
/// RV="" for the same reason. Consistent lists are served from the watch
/// cache since Kubernetes 1.34, so this costs etcd nothing extra.
pub(super) fn watcher_config(cfg: &Config) -> watcher::Config {
    let mut wc = watcher::Config::default().page_size(LIST_PAGE_SIZE);
    if let Some(sel) = &cfg.label_selector {
        wc = wc.labels(sel);
    }
    wc
}

/// Backoff of the watches after an error: 0.5 s doubling to 5 s (jittered),
/// reset after 30 s without errors. kube-runtime's default (0.8 s to 30 s,
/// reset after 120 s) was measured on a real kube-apiserver: a graceful
/// restart refuses connections for ~18 s, the first watch afterwards is a
/// `410 Expired` (the new watch cache starts at etcd's current revision),
/// and by then the backoff had reached 30–50 s, so the controller missed
/// changes for close to a minute after the apiserver was back. With a 5 s
/// cap it resumes within seconds; a relist every 5 s per watch during an
/// outage is no load for an apiserver.
pub(super) fn watch_backoff() -> ResetTimerBackoff<WatchBackoff> {
    ResetTimerBackoff::new(WatchBackoff::default(), Duration::from_secs(30))
}

/// Full-jitter exponential delays, 0.5 s doubling to a 5 s cap (see
/// [`watch_backoff`]).
#[derive(Default)]
pub(super) struct WatchBackoff {
    attempt: u32,
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = backoff_delay(
            self.attempt,
            Duration::from_millis(500),
            Duration::from_secs(5),
            &mut rand::thread_rng(),
        );
        self.attempt = self.attempt.saturating_add(1);
        // full jitter can draw ~0: keep a floor so a flapping apiserver is
        // not hammered
        Some(d.max(Duration::from_millis(200)))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// What reconcile never reads from an EncryptedSecret: managedFields and
/// kubectl's last-applied copy (a second copy of every ciphertext).
pub fn trim_watched(w: &mut Watched) {
    let md = w.meta_mut();
    md.managed_fields = None;
    if let Some(a) = md.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// The owned-Secret store of one scope and the stream that fills it (and
/// triggers owners): a metadata-only watch of Secrets labelled as ours.
/// A changed Secret for which `echo` holds (our own write, see
/// [`super::State::is_own_secret_write`]) updates the store but triggers
/// nothing.
pub fn owned_secrets(
    client: Client,
    ns: Option<&str>,
    echo: impl Fn(&SecretMeta) -> bool + Send + 'static,
) -> (
    Store<SecretMeta>,
    impl futures::Stream<Item = Result<SecretMeta, watcher::Error>> + Send + 'static,
) {
    let api: Api<OwnedSecret> = match ns {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let cfg = watcher::Config::default()
        .page_size(LIST_PAGE_SIZE)
        .labels(&format!(
            "{}={}",
            secret::MANAGED_BY_LABEL,
            secret::MANAGED_BY_VALUE
        ));
    let (store, writer) = reflector::store();
    // `OwnedSecret` lists and watches metadata only, decoded lean
    let stream = reflector::reflector(
        writer,
        watcher(api, cfg).map(|ev| ev.map(|ev| map_event(ev, SecretMeta::from_owned))),
    );
    let stream = stream.touched_and_vanished(store.clone(), echo);
    (store, stream)
}

/// A watch event with its object(s) converted by `f`.
pub fn map_event<A, B>(ev: watcher::Event<A>, f: impl Fn(A) -> B) -> watcher::Event<B> {
    use watcher::Event::*;
    match ev {
        Apply(o) => Apply(f(o)),
        Delete(o) => Delete(f(o)),
        Init => Init,
        InitApply(o) => InitApply(f(o)),
        InitDone => InitDone,
    }
}

/// Relist repair for a reflected watch stream (kube-runtime's
/// `WatchStreamExt` style): see [`RelistExt::touched_and_vanished`].
pub trait RelistExt<K>:
    futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Sized
where
    K: Lookup + Clone + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    /// The objects a watch event touches, plus what a relist shows changed.
    ///
    /// A first list yields nothing: every owner is reconciled anyway when
    /// its own store has listed (paced, see [`super::feed`]), and yielding
    /// N listed objects at once would make the controller's scheduler hold
    /// N entries. After it, each `Apply` and `Delete` is yielded.
    ///
    /// `touched_objects()` also yields nothing for an object deleted or
    /// changed while the watch was broken: after a `410 Expired` or a
    /// dropped stream the watcher relists (`Init` … `InitApply` …
    /// `InitDone`), and an object missing from the new list simply never
    /// appears. For the owned Secrets that is a deletion the controller
    /// would not repair until the next resync. So at a relist's `Init` the
    /// store (the reflector fills a side buffer until `InitDone`, so it
    /// still holds the pre-relist state) is snapshotted; a relisted object
    /// whose resourceVersion differs from the snapshot's is yielded, and at
    /// `InitDone` every snapshotted object the relist did not return is
    /// yielded like a `Delete`, which triggers its owner.
    ///
    /// A listed or changed object for which `quiet` holds is not yielded
    /// (deletions always are).
    fn touched_and_vanished(
        self,
        store: Store<K>,
        quiet: impl Fn(&K) -> bool + Send + 'static,
    ) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
    where
        Self: Send + 'static,
    {
        /// (listed once, the pre-relist snapshot not yet relisted)
        type Relist<K> = (bool, Option<HashMap<ObjectRef<K>, Arc<K>>>);
        self.scan(
            (false, None),
            move |(listed, relist): &mut Relist<K>, ev| {
                let out: Vec<Result<K, watcher::Error>> = match ev {
                    Err(e) => vec![Err(e)],
                    Ok(watcher::Event::Init) => {
                        *relist = listed.then(|| {
                            store
                                .state()
                                .into_iter()
                                .map(|o| (ObjectRef::from_obj(o.as_ref()), o))
                                .collect()
                        });
                        Vec::new()
                    }
                    Ok(watcher::Event::InitApply(o)) => match relist.as_mut() {
                        // a first list
                        None => Vec::new(),
                        Some(before) => {
                            let prev = before.remove(&ObjectRef::from_obj(&o));
                            let same =
                                prev.is_some_and(|p| p.resource_version() == o.resource_version());
                            if same || quiet(&o) {
                                Vec::new()
                            } else {
                                vec![Ok(o)]
                            }
                        }
                    },
                    Ok(watcher::Event::InitDone) => {
                        *listed = true;
                        match relist.take() {
                            Some(before) => before
                                .into_values()
                                .map(|o| Ok(o.as_ref().clone()))
                                .collect(),
                            None => Vec::new(),
                        }
                    }
                    Ok(watcher::Event::Apply(o)) if quiet(&o) => Vec::new(),
                    Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => vec![Ok(o)],
                };
                futures::future::ready(Some(futures::stream::iter(out)))
            },
        )
        .flatten()
    }
}

impl<K, S> RelistExt<K> for S
where
    K: Lookup + Clone + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Sized,
{
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use kube::runtime::WatchStreamExt;

    fn cm(name: &str, rv: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(items: &[Result<ConfigMap, watcher::Error>]) -> Vec<String> {
        items
            .iter()
            .map(|r| r.as_ref().map(|o| o.name_any()).unwrap_or_default())
            .collect()
    }

    use kube::ResourceExt;

    /// The record of a Secret's metadata, made both ways (a GET's
    /// `PartialObjectMeta`, the watch's lean `OwnedSecret` from text and
    /// from a buffered watch event), which must agree.
    fn secret_meta(owner: serde_json::Value, annotations: serde_json::Value) -> SecretMeta {
        let object = serde_json::json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {
                "name": "db", "namespace": "app", "uid": "s-1", "resourceVersion": "9",
                "labels": {"app.kubernetes.io/managed-by": "kmsecrets"},
                "annotations": annotations,
                "ownerReferences": owner,
                "managedFields": [{"manager": "kmsecrets", "operation": "Apply",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:a": {}}}}],
            },
        });
        let full = SecretMeta::from_meta(
            serde_json::from_value(object.clone()).unwrap_or_else(|e| panic!("{e}")),
        );
        let text = object.to_string();
        let lean: OwnedSecret = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(SecretMeta::from_owned(lean), full);
        let event = serde_json::json!({"type": "MODIFIED", "object": object}).to_string();
        match serde_json::from_str::<kube::api::WatchEvent<OwnedSecret>>(&event) {
            Ok(kube::api::WatchEvent::Modified(o)) => assert_eq!(SecretMeta::from_owned(o), full),
            other => panic!("{other:?}"),
        }
        full
    }

    /// The watch asks for metadata only and skips what it does not keep:
    /// any annotation value of another name, whatever its type, is skipped
    /// unread; ours must be strings.
    #[test]
    fn the_owned_secret_watch_decodes_metadata_only_and_lean() {
        assert!(OwnedSecret::metadata_api());
        assert_eq!(<OwnedSecret as Resource>::plural(&()), "secrets");
        let m: OwnedSecret = serde_json::from_str(
            r#"{"metadata":{"name":"s","annotations":{"x":{"deep":[1,2]},"kmsecrets.dev/adopt":"true"},
                "labels":null,"managedFields":[{"fieldsV1":{"f:x":{}}}]},"data":{"k":"dg=="}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let r = SecretMeta::from_owned(m);
        assert!(r.adopt && r.source_hash.is_none() && &*r.name == "s");
        let bad = r#"{"metadata":{"annotations":{"kmsecrets.dev/source-hash":7}}}"#;
        assert!(serde_json::from_str::<OwnedSecret>(bad).is_err());
        let empty: OwnedSecret =
            serde_json::from_str(r#"{"metadata":null}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(SecretMeta::from_owned(empty), SecretMeta::default());
    }

    #[test]
    fn the_secret_record_keeps_what_reconcile_reads_and_names_its_owner() {
        let es_ref = |kind: &str, api: &str, controller: bool| {
            serde_json::json!([
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d-1"},
                {"apiVersion": api, "kind": kind, "name": "db", "uid": "e-1", "controller": controller},
            ])
        };
        let m = secret_meta(
            es_ref("EncryptedSecret", "kmsecrets.dev/v1alpha1", true),
            serde_json::json!({
                "kmsecrets.dev/source-hash": "sha256:ab",
                "kmsecrets.dev/adopt": "true",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
            }),
        );
        assert_eq!((&*m.name, &*m.namespace), ("db", "app"));
        assert_eq!(m.uid.as_deref(), Some("s-1"));
        assert_eq!(m.resource_version.as_deref(), Some("9"));
        assert_eq!(m.controller_uid(), Some("e-1"));
        assert!(m.from_source("sha256:ab") && !m.from_source("sha256:cd"));
        assert!(m.adopt);
        assert_eq!(m.owner(), Some(ObjectRef::new("db").within("app")));
        let key = ObjectRef::from_obj(&m);
        assert_eq!(key, ObjectRef::<SecretMeta>::new("db").within("app"));
        assert_eq!((key.extra.uid, key.extra.resource_version), (None, None));
        // not ours to trigger: another kind, another group, no controller
        for (kind, api, controller) in [
            ("Deployment", "kmsecrets.dev/v1alpha1", true),
            ("EncryptedSecret", "example.com/v1", true),
            ("EncryptedSecret", "kmsecrets.dev/v1alpha1", false),
        ] {
            let m = secret_meta(es_ref(kind, api, controller), serde_json::json!({}));
            assert_eq!(m.owner(), None, "{kind} {api} {controller}");
            assert_eq!(m.controller_uid().is_some(), controller);
            assert!(!m.adopt && m.source_hash.is_none());
        }
        let adopt_false = secret_meta(
            serde_json::json!(null),
            serde_json::json!({"kmsecrets.dev/adopt": "yes"}),
        );
        assert!(!adopt_false.adopt && adopt_false.controller.is_none());
    }

    /// A first list triggers nothing (the owners are fed from their own
    /// store); after it, watch events do, and a relist yields what changed
    /// or vanished during the gap — as a Delete would have — and nothing
    /// that stayed the same.
    #[tokio::test]
    async fn a_relist_yields_what_changed_or_vanished_during_the_gap() {
        use watcher::Event::*;
        let (store, writer) = reflector::store::<ConfigMap>();
        let events = vec![
            Ok(Init),
            Ok(InitApply(cm("a", "1"))),
            Ok(InitApply(cm("b", "2"))),
            Ok(InitApply(cm("s", "3"))),
            Ok(InitDone),
            Ok(Apply(cm("c", "4"))),
            // the watch broke; b and c were deleted meanwhile, a changed,
            // s stayed, n is new
            Ok(Init),
            Ok(InitApply(cm("a", "5"))),
            Ok(InitApply(cm("s", "3"))),
            Ok(InitApply(cm("n", "6"))),
            Ok(InitDone),
            Ok(Delete(cm("a", "7"))),
        ];
        let out: Vec<_> = stream::iter(events)
            .reflect(writer)
            .touched_and_vanished(store.clone(), |_| false)
            .collect()
            .await;
        let got = names(&out);
        assert_eq!(got[..3], ["c", "a", "n"], "{got:?}");
        // the vanished ones, in the snapshot's (hash) order
        let mut vanished = got[3..5].to_vec();
        vanished.sort();
        assert_eq!(vanished, ["b", "c"]);
        assert_eq!(got[5..], ["a"]);
        assert_eq!(got.len(), 6, "s never: it did not change");
        assert!(
            store
                .get(&reflector::ObjectRef::new("b").within("ns"))
                .is_none()
        );
    }

    /// Quiet objects (our own writes' echoes) update the store but are not
    /// yielded; deletions and objects a relist shows gone always are.
    #[tokio::test]
    async fn quiet_changes_update_the_store_and_trigger_nothing() {
        use watcher::Event::*;
        let (store, writer) = reflector::store::<ConfigMap>();
        let events = vec![
            Ok(Init),
            Ok(InitApply(cm("a", "1"))),
            Ok(InitApply(cm("q", "2"))),
            Ok(InitDone),
            Ok(Apply(cm("b", "3"))),
            Ok(Apply(cm("q", "4"))),
            Ok(Init),
            Ok(InitApply(cm("b", "5"))),
            Ok(InitApply(cm("q", "8"))),
            Ok(InitDone),
            Ok(Delete(cm("q", "9"))),
            Ok(Delete(cm("b", "6"))),
        ];
        let quiet = |c: &ConfigMap| c.metadata.name.as_deref() == Some("q");
        let out: Vec<_> = stream::iter(events)
            .reflect(writer)
            .touched_and_vanished(store.clone(), quiet)
            .collect()
            .await;
        // b (the first list yields nothing, q's change is quiet); after the
        // relist b changed, q changed quietly, a vanished; then the
        // deletions, the quiet q's too
        assert_eq!(names(&out), ["b", "b", "a", "q", "b"]);
    }
}
