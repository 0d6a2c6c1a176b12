//! Discovery (`/version`, `/api`, `/apis`, per group-version resource
//! lists) and a minimal OpenAPI v3 (enough for `kubectl apply` with its
//! default validation: one `patch` operation per resource carrying
//! `x-kubernetes-group-version-kind` and a `fieldValidation` parameter).
//!
//! Pure functions of the registry; never touches objects.

use serde_json::{Map, Value, json};

use crate::resources::{Registry, ResourceType};

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-kmsecrets-testserver",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

pub fn api_groups(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(reg: &Registry, group: &str) -> Option<Value> {
    reg.groups()
        .iter()
        .find(|(g, _)| g == group)
        .map(|(g, vs)| {
            let mut v = group_json(g, vs);
            if let Some(m) = v.as_object_mut() {
                m.insert("kind".into(), "APIGroup".into());
                m.insert("apiVersion".into(), "v1".into());
            }
            v
        })
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn resource_json(rt: &ResourceType) -> Value {
    let mut v = json!({
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": VERBS,
        "storageVersionHash": "",
    });
    if let Some(m) = v.as_object_mut() {
        if !rt.short_names.is_empty() {
            m.insert("shortNames".into(), json!(rt.short_names));
        }
        if !rt.categories.is_empty() {
            m.insert("categories".into(), json!(rt.categories));
        }
    }
    v
}

pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    if !reg.has_group_version(group, version) {
        return None;
    }
    let mut resources = Vec::new();
    for rt in reg.in_group_version(group, version) {
        resources.push(resource_json(&rt));
        if rt.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", rt.plural),
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A stable-enough hash of what a group-version serves, so kubectl's
/// OpenAPI cache notices new CRDs.
fn gv_hash(reg: &Registry, group: &str, version: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for rt in reg.in_group_version(group, version) {
        for b in rt.plural.bytes().chain(rt.kind.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016X}")
}

pub fn openapi_root(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (g, vs) in reg.groups() {
        for v in vs {
            let p = gv_path(g, v);
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", gv_hash(reg, g, v))}),
            );
        }
    }
    json!({"paths": paths})
}

pub fn openapi_group_version(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    if !reg.has_group_version(group, version) {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let prefix = format!("/{}", gv_path(group, version));
    for rt in reg.in_group_version(group, version) {
        if let Some(schema) = &rt.schema {
            // as kube-apiserver publishes a CRD: its schema under the
            // reversed-group name, tagged with its GVK (what `kubectl
            // explain` looks the kind up by)
            let mut s = schema.clone();
            if let Some(o) = s.as_object_mut() {
                o.insert(
                    "x-kubernetes-group-version-kind".into(),
                    json!([{"group": rt.group, "version": rt.version, "kind": rt.kind}]),
                );
            }
            let reversed: Vec<&str> = rt.group.split('.').rev().collect();
            schemas.insert(
                format!("{}.{}.{}", reversed.join("."), rt.version, rt.kind),
                s,
            );
        }
        let path = if rt.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", rt.plural)
        } else {
            format!("{prefix}/{}/{{name}}", rt.plural)
        };
        let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
        let op = json!({
            "operationId": format!("patch{}", rt.kind),
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
            "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
            ],
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(path, json!({"patch": op}));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn builtin_discovery() {
        let reg = Registry::with_builtins();
        let core = resource_list(&reg, "", "v1").expect("core");
        let names: Vec<&str> = core["resources"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(names.contains(&"secrets"));
        assert!(names.contains(&"namespaces/status"));
        let groups = api_groups(&reg);
        assert!(
            groups["groups"]
                .as_array()
                .expect("groups")
                .iter()
                .any(|g| g["name"] == "coordination.k8s.io")
        );
        let root = openapi_root(&reg);
        assert!(
            root["paths"]["apis/events.k8s.io/v1"]["serverRelativeURL"]
                .as_str()
                .is_some_and(|u| u.starts_with("/openapi/v3/apis/events.k8s.io/v1?hash="))
        );
        assert!(openapi_group_version(&reg, "coordination.k8s.io", "v1").is_some());
    }
}
