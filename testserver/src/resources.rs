//! The registry of served resource types: the built-ins and those defined by
//! CustomResourceDefinitions.
//!
//! Owns the mapping `group/version/plural → ResourceType`. It never stores
//! objects; the store consults it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

/// Where objects of a type live. Several served types may share one storage
/// (core/v1 and events.k8s.io/v1 events; several versions of one CRD).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorageKey {
    pub group: String,
    pub plural: String,
}

/// One `additionalPrinterColumns` entry.
#[derive(Debug, Clone)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub json_path: String,
    pub description: String,
    pub priority: i64,
}

/// How objects of a type are converted between their stored and served form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// Stored as served; only `apiVersion` is rewritten.
    None,
    /// core/v1 Event served from events.k8s.io/v1 storage.
    CoreEvent,
}

#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status_subresource: bool,
    /// `Some` for CRD types: their printer columns (possibly empty).
    pub printer_columns: Option<Vec<PrinterColumn>>,
    pub storage: StorageKey,
    /// Defined by a CRD: generation is tracked, `spec` vs `status` semantics.
    pub custom: bool,
    pub conversion: Conversion,
    /// A CRD version's `schema.openAPIV3Schema`, published in OpenAPI v3
    /// (what `kubectl explain` reads).
    pub schema: Option<Value>,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `kind` used in NotFound/Conflict messages: `secrets`, `encryptedsecrets.kmsecrets.dev`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether objects carry `metadata.generation`.
    pub fn tracks_generation(&self) -> bool {
        self.custom || self.group == "apiextensions.k8s.io" || self.group == "apps"
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    singular: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: singular.into(),
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: vec![],
        status_subresource: status,
        printer_columns: None,
        storage: StorageKey {
            group: group.into(),
            plural: plural.into(),
        },
        custom: false,
        conversion: Conversion::None,
        schema: None,
    }
}

/// The set of served types.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: BTreeMap<(String, String, String), Arc<ResourceType>>,
    /// Groups in registration order, with their versions in preference order.
    groups: Vec<(String, Vec<String>)>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let mut r = Registry::default();
        r.add(builtin(
            "",
            "v1",
            "namespaces",
            "namespace",
            "Namespace",
            false,
            &["ns"],
            true,
        ));
        r.add(builtin(
            "",
            "v1",
            "secrets",
            "secret",
            "Secret",
            true,
            &[],
            false,
        ));
        r.add(builtin(
            "",
            "v1",
            "configmaps",
            "configmap",
            "ConfigMap",
            true,
            &["cm"],
            false,
        ));
        r.add(builtin(
            "",
            "v1",
            "serviceaccounts",
            "serviceaccount",
            "ServiceAccount",
            true,
            &["sa"],
            false,
        ));
        let mut core_events = builtin("", "v1", "events", "event", "Event", true, &["ev"], false);
        core_events.storage = StorageKey {
            group: "events.k8s.io".into(),
            plural: "events".into(),
        };
        core_events.conversion = Conversion::CoreEvent;
        r.add(core_events);
        r.add(builtin(
            "events.k8s.io",
            "v1",
            "events",
            "event",
            "Event",
            true,
            &["ev"],
            false,
        ));
        r.add(builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "lease",
            "Lease",
            true,
            &[],
            false,
        ));
        r.add(builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "customresourcedefinition",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
        ));
        // Workloads, stored only (no controller runs them): enough for a
        // client that patches their pod template (rollout restarts).
        for (plural, singular, kind, short) in [
            ("deployments", "deployment", "Deployment", "deploy"),
            ("statefulsets", "statefulset", "StatefulSet", "sts"),
            ("daemonsets", "daemonset", "DaemonSet", "ds"),
        ] {
            r.add(builtin(
                "apps",
                "v1",
                plural,
                singular,
                kind,
                true,
                &[short],
                true,
            ));
        }
        r
    }

    pub fn add(&mut self, rt: ResourceType) {
        match self.groups.iter_mut().find(|(g, _)| *g == rt.group) {
            Some((_, versions)) => {
                if !versions.contains(&rt.version) {
                    versions.push(rt.version.clone());
                }
            }
            None => self
                .groups
                .push((rt.group.clone(), vec![rt.version.clone()])),
        }
        self.types.insert(
            (rt.group.clone(), rt.version.clone(), rt.plural.clone()),
            Arc::new(rt),
        );
    }

    /// Removes every type stored under `storage` (a CRD was deleted).
    pub fn remove_storage(&mut self, storage: &StorageKey) {
        self.types.retain(|_, rt| rt.storage != *storage);
        let live: Vec<(String, String)> = self
            .types
            .values()
            .map(|rt| (rt.group.clone(), rt.version.clone()))
            .collect();
        for (g, versions) in &mut self.groups {
            versions.retain(|v| live.contains(&(g.clone(), v.clone())));
        }
        self.groups.retain(|(_, v)| !v.is_empty());
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    pub fn groups(&self) -> &[(String, Vec<String>)] {
        &self.groups
    }

    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<Arc<ResourceType>> {
        self.types
            .values()
            .filter(|rt| rt.group == group && rt.version == version)
            .cloned()
            .collect()
    }

    pub fn has_group_version(&self, group: &str, version: &str) -> bool {
        self.groups
            .iter()
            .any(|(g, v)| g == group && v.iter().any(|x| x == version))
    }

    /// Registers (or re-registers) the types a CRD defines. Returns the
    /// accepted names on success, an error message otherwise.
    pub fn register_crd(&mut self, crd: &Value) -> Result<Value, String> {
        let types = crd_types(crd)?;
        let storage = types
            .first()
            .map(|t| t.storage.clone())
            .ok_or("spec.versions: at least one version must be served")?;
        self.remove_storage(&storage);
        for t in types {
            self.add(t);
        }
        Ok(crd.pointer("/spec/names").cloned().unwrap_or(Value::Null))
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn str_list(v: &Value, ptr: &str) -> Vec<String> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The served types of a CRD, in spec order.
pub fn crd_types(crd: &Value) -> Result<Vec<ResourceType>, String> {
    let group = str_at(crd, "/spec/group").ok_or("spec.group: Required value")?;
    let plural = str_at(crd, "/spec/names/plural").ok_or("spec.names.plural: Required value")?;
    let kind = str_at(crd, "/spec/names/kind").ok_or("spec.names.kind: Required value")?;
    let expected_name = format!("{plural}.{group}");
    if crate::meta::name(crd) != expected_name {
        return Err(format!(
            "metadata.name: Invalid value: \"{}\": must be spec.names.plural+\".\"+spec.group",
            crate::meta::name(crd)
        ));
    }
    let singular = str_at(crd, "/spec/names/singular")
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let list_kind = str_at(crd, "/spec/names/listKind")
        .map(str::to_string)
        .unwrap_or_else(|| format!("{kind}List"));
    let namespaced = str_at(crd, "/spec/scope") != Some("Cluster");
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .ok_or("spec.versions: Required value")?;
    let mut out = Vec::new();
    for v in versions {
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let version = str_at(v, "/name").ok_or("spec.versions[].name: Required value")?;
        let printer_columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: str_at(c, "/name").unwrap_or("").to_string(),
                        type_: str_at(c, "/type").unwrap_or("string").to_string(),
                        format: str_at(c, "/format").unwrap_or("").to_string(),
                        json_path: str_at(c, "/jsonPath").unwrap_or("").to_string(),
                        description: str_at(c, "/description").unwrap_or("").to_string(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(ResourceType {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: singular.clone(),
            kind: kind.into(),
            list_kind: list_kind.clone(),
            namespaced,
            short_names: str_list(crd, "/spec/names/shortNames"),
            categories: str_list(crd, "/spec/names/categories"),
            status_subresource: v.pointer("/subresources/status").is_some(),
            printer_columns: Some(printer_columns),
            storage: StorageKey {
                group: group.into(),
                plural: plural.into(),
            },
            custom: true,
            conversion: Conversion::None,
            schema: v.pointer("/schema/openAPIV3Schema").cloned(),
        });
    }
    if out.is_empty() {
        return Err("spec.versions: at least one version must be served".into());
    }
    Ok(out)
}
