//! The HTTP surface: routes requests to discovery, OpenAPI, admin and
//! resource handlers; parses query parameters and bodies; counts requests
//! and applies injected faults.
//!
//! Owns the wire format (paths, query parameters, status codes, headers).
//! Object semantics belong to `ops`; it only calls them under the store lock
//! and never holds that lock across an `.await`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::{Value, json};

use crate::admin::lock;
use crate::discovery;
use crate::error::{ApiError, ApiResult};
use crate::ops::{self, DeleteOpts, WriteOpts};
use crate::patch::PatchType;
use crate::render::{self, Format};
use crate::resources::ResourceType;
use crate::selector::Selector;
use crate::server::Shared;
use crate::watch::{self, WatchParams};

/// Largest request body accepted (a kubectl apply of a big CRD is ~100 KB).
const MAX_BODY: usize = 16 * 1024 * 1024;

pub fn json_response(code: u16, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(bytes))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn error_response(e: &ApiError) -> Response {
    let mut resp = json_response(e.code(), &e.to_status());
    if matches!(e, ApiError::TooManyRequests) {
        resp.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    }
    resp
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters; tolerates kube-rs's leading `?&`.
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        Query(
            raw.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (percent_decode(k), percent_decode(v)),
                    None => (percent_decode(p), String::new()),
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1" | ""))
    }
}

#[derive(Debug, PartialEq)]
enum Route {
    Version,
    Api,
    Apis,
    Group(String),
    GroupVersion(String, String),
    OpenApiV3Root,
    OpenApiV3(String, String),
    OpenApiV2,
    Admin(String),
    Resource(ResPath),
    NotFound,
}

#[derive(Debug, PartialEq, Default)]
struct ResPath {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    sub: Option<String>,
}

fn route(path: &str) -> Route {
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["version"] => Route::Version,
        ["api"] => Route::Api,
        ["apis"] => Route::Apis,
        ["apis", g] => Route::Group(g.to_string()),
        ["api", v] => Route::GroupVersion(String::new(), v.to_string()),
        ["apis", g, v] => Route::GroupVersion(g.to_string(), v.to_string()),
        ["openapi", "v3"] => Route::OpenApiV3Root,
        ["openapi", "v3", "api", v] => Route::OpenApiV3(String::new(), v.to_string()),
        ["openapi", "v3", "apis", g, v] => Route::OpenApiV3(g.to_string(), v.to_string()),
        ["openapi", "v2"] => Route::OpenApiV2,
        ["_testserver", rest @ ..] | ["admin", rest @ ..] => Route::Admin(rest.join("/")),
        ["api", v, rest @ ..] => resource_route("", v, rest),
        ["apis", g, v, rest @ ..] => resource_route(g, v, rest),
        _ => Route::NotFound,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Route {
    let base = ResPath {
        group: group.into(),
        version: version.into(),
        ..ResPath::default()
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, r @ ..] if !r.is_empty() && !matches!(r, ["status" | "finalize"]) => {
            (Some(ns.to_string()), r)
        }
        _ => (None, rest),
    };
    let p = match rest {
        [plural] => ResPath {
            plural: plural.to_string(),
            ..base
        },
        [plural, name] => ResPath {
            plural: plural.to_string(),
            name: Some(name.to_string()),
            ..base
        },
        [plural, name, sub] => ResPath {
            plural: plural.to_string(),
            name: Some(name.to_string()),
            sub: Some(sub.to_string()),
            ..base
        },
        _ => return Route::NotFound,
    };
    Route::Resource(ResPath { namespace, ..p })
}

fn not_found() -> Response {
    error_response(&ApiError::NoRoute)
}

pub async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_string();
    let path = parts.uri.path().to_string();
    let query = Query::parse(parts.uri.query());
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if let Some(want) = &shared.bearer_token {
        let got = header("authorization");
        let ok = got
            .strip_prefix("Bearer ")
            .is_some_and(|t| constant_time_eq(t.as_bytes(), want.as_bytes()));
        if !ok {
            return error_response(&ApiError::Unauthorized);
        }
    }
    let accept = header("accept");
    let content_type = header("content-type");
    let user_agent = header("user-agent");
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::BadRequest(format!("reading body: {e}"))),
    };
    tracing::debug!(%method, %path, query = ?parts.uri.query(), "request");
    let r = route(&path);
    let reg = || lock(&shared.store).registry.clone();
    match (method.as_str(), r) {
        ("GET", Route::Version) => json_response(200, &discovery::version()),
        ("GET", Route::Api) => json_response(
            200,
            &discovery::api_versions(shared.base_url.trim_start_matches("http://")),
        ),
        ("GET", Route::Apis) => json_response(200, &discovery::api_groups(&reg())),
        ("GET", Route::Group(g)) => match discovery::api_group(&reg(), &g) {
            Some(v) => json_response(200, &v),
            None => not_found(),
        },
        ("GET", Route::GroupVersion(g, v)) => match discovery::resource_list(&reg(), &g, &v) {
            Some(v) => json_response(200, &v),
            None => not_found(),
        },
        ("GET", Route::OpenApiV3Root) => json_response(200, &discovery::openapi_root(&reg())),
        ("GET", Route::OpenApiV3(g, v)) => match discovery::openapi_group_version(&reg(), &g, &v) {
            Some(v) => json_response(200, &v),
            None => not_found(),
        },
        ("GET", Route::OpenApiV2) => not_found(),
        (m, Route::Admin(rest)) => {
            let (code, v) = crate::admin::handle(&shared.faults, &shared.counters, m, &rest, &body);
            json_response(code, &v)
        }
        (_, Route::Resource(p)) => {
            let ctx = RequestCtx {
                method,
                query,
                accept,
                content_type,
                user_agent,
                body: body.to_vec(),
            };
            match resource(&shared, p, ctx).await {
                Ok(resp) => resp,
                Err(e) => error_response(&e),
            }
        }
        (_, Route::NotFound) => not_found(),
        _ => error_response(&ApiError::MethodNotAllowed),
    }
}

struct RequestCtx {
    method: String,
    query: Query,
    accept: String,
    content_type: String,
    user_agent: String,
    body: Vec<u8>,
}

impl RequestCtx {
    fn manager(&self) -> String {
        match self.query.get("fieldManager") {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => {
                let ua = self.user_agent.split('/').next().unwrap_or("").trim();
                if ua.is_empty() {
                    "unknown".into()
                } else {
                    ua.to_string()
                }
            }
        }
    }

    fn dry_run(&self) -> bool {
        self.query.get("dryRun").is_some_and(|v| v == "All")
    }

    fn json_body(&self) -> ApiResult<Value> {
        // Protobuf (and CBOR) bodies are answered with 415; client-go then
        // retries the request with JSON.
        let base = self.content_type.split(';').next().unwrap_or("").trim();
        if base == "application/vnd.kubernetes.protobuf" {
            return crate::proto::decode(&self.body);
        }
        if !matches!(base, "" | "application/json" | "application/yaml" | "*/*") {
            return Err(ApiError::UnsupportedMediaType);
        }
        if self.body.is_empty() {
            return Err(ApiError::BadRequest("request body is empty".into()));
        }
        serde_json::from_slice(&self.body).or_else(|_| {
            // kubectl create -f with YAML is converted client side; accept
            // YAML anyway for curl users.
            crate::apply::parse_body(&self.body)
        })
    }
}

fn verb(method: &str, has_name: bool, watch: bool) -> Option<&'static str> {
    Some(match (method, has_name) {
        ("GET", true) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    })
}

fn fault_error(code: u16) -> ApiError {
    match code {
        409 => ApiError::Conflict {
            kind: "fault".into(),
            name: "injected".into(),
        },
        429 => ApiError::TooManyRequests,
        404 => ApiError::not_found("fault", "injected"),
        410 => ApiError::Gone("injected 410 Gone".into()),
        _ => ApiError::Internal(format!("injected fault (HTTP {code})")),
    }
}

/// Continue tokens: the hex of `namespace \0 name` of the last item served.
fn encode_continue(ns: &str, name: &str) -> String {
    format!("{ns}\u{0}{name}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_continue(token: &str) -> ApiResult<(String, String)> {
    let bad = || ApiError::BadRequest("invalid continue token".into());
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let s = String::from_utf8(bytes).map_err(|_| bad())?;
    let (ns, name) = s.split_once('\u{0}').ok_or_else(bad)?;
    Ok((ns.to_string(), name.to_string()))
}

async fn resource(shared: &Arc<Shared>, p: ResPath, ctx: RequestCtx) -> ApiResult<Response> {
    let rt = lock(&shared.store)
        .registry
        .get(&p.group, &p.version, &p.plural)
        .ok_or(ApiError::NoRoute)?;
    if p.namespace.is_some() && !rt.namespaced {
        return Err(ApiError::NoRoute);
    }
    if p.name.is_some() && rt.namespaced && p.namespace.is_none() {
        return Err(ApiError::NoRoute);
    }
    let watch = ctx.query.flag("watch");
    let verb = verb(&ctx.method, p.name.is_some(), watch).ok_or(ApiError::MethodNotAllowed)?;
    let counted = match &p.sub {
        Some(sub) => format!("{}/{sub}", rt.plural),
        None => rt.plural.clone(),
    };
    shared.counters.bump(verb, &counted);
    let verdict = shared.faults.check(verb, &counted);
    if let Some(d) = verdict.delay {
        tokio::time::sleep(d).await;
    }
    if let Some(code) = verdict.fail {
        return Err(fault_error(code));
    }
    let format = render::format_from_accept(&ctx.accept);
    let ns = p.namespace.clone().unwrap_or_default();
    let scope = ops::scope_for(&rt, p.sub.as_deref())?;
    let name = p.name.clone().unwrap_or_default();
    let selector = Selector::parse(
        ctx.query.get("labelSelector"),
        ctx.query.get("fieldSelector"),
    )?;
    let result: ApiResult<(u16, Value)> = match verb {
        "watch" => {
            let mut selector = selector;
            if p.name.is_some() {
                selector = Selector::parse(
                    ctx.query.get("labelSelector"),
                    Some(&format!("metadata.name={name}")),
                )?;
            }
            let params = WatchParams {
                namespace: p.namespace.clone(),
                resource_version: ctx.query.get("resourceVersion").map(str::to_string),
                selector,
                bookmarks: ctx.query.flag("allowWatchBookmarks"),
                timeout: ctx
                    .query
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(Duration::from_secs),
                send_initial_events: ctx.query.get("sendInitialEvents") == Some("true"),
                format,
            };
            return Ok(watch::start(shared, rt, params));
        }
        "get" => {
            let store = lock(&shared.store);
            ops::get(&store, &rt, &ns, &name).map(|o| (200, render::object(&rt, format, o)))
        }
        "list" => return list(shared, &rt, p.namespace.as_deref(), &selector, &ctx, format),
        "create" => {
            let body = ctx.json_body()?;
            let opts = WriteOpts {
                manager: ctx.manager(),
                force: false,
                dry_run: ctx.dry_run(),
            };
            let mut store = lock(&shared.store);
            ops::create(&mut store, &rt, &ns, body, &opts)
                .map(|o| (201, render::object(&rt, format, o)))
        }
        "update" => {
            let body = ctx.json_body()?;
            let opts = WriteOpts {
                manager: ctx.manager(),
                force: false,
                dry_run: ctx.dry_run(),
            };
            let mut store = lock(&shared.store);
            ops::replace(&mut store, &rt, &ns, &name, scope, body, &opts)
                .map(|o| (200, render::object(&rt, format, o)))
        }
        "patch" => {
            let kind = PatchType::from_content_type(&ctx.content_type)?;
            if kind == PatchType::Apply && ctx.query.get("fieldManager").is_none_or(str::is_empty) {
                return Err(ApiError::BadRequest(
                    "PATCH: fieldManager is required for apply requests".into(),
                ));
            }
            let opts = WriteOpts {
                manager: ctx.manager(),
                force: ctx.query.flag("force"),
                dry_run: ctx.dry_run(),
            };
            let mut store = lock(&shared.store);
            ops::patch(&mut store, &rt, &ns, &name, scope, kind, &ctx.body, &opts).map(
                |(o, created)| {
                    (
                        if created { 201 } else { 200 },
                        render::object(&rt, format, o),
                    )
                },
            )
        }
        "delete" => {
            let opts = delete_opts(&ctx)?;
            let mut store = lock(&shared.store);
            ops::delete(&mut store, &rt, &ns, &name, &opts)
                .map(|(o, gone)| (if gone { 200 } else { 202 }, render::object(&rt, format, o)))
        }
        "deletecollection" => {
            let opts = delete_opts(&ctx)?;
            let mut store = lock(&shared.store);
            let targets: Vec<String> = store
                .list(&rt.storage, p.namespace.as_deref(), None)
                .into_iter()
                .filter(|o| selector.matches(&crate::builtins::to_served(&rt, o)))
                .map(|o| {
                    format!(
                        "{}\u{0}{}",
                        crate::meta::namespace(&o),
                        crate::meta::name(&o)
                    )
                })
                .collect();
            let mut items = Vec::new();
            for t in targets {
                let (ons, oname) = t.split_once('\u{0}').unwrap_or(("", ""));
                if let Ok((o, _)) = ops::delete(&mut store, &rt, ons, oname, &opts) {
                    items.push(o);
                }
            }
            let rv = store.current_rv();
            Ok((200, render::list(&rt, format, items, rv, None)))
        }
        _ => Err(ApiError::MethodNotAllowed),
    };
    {
        let store = lock(&shared.store);
        if store.gc_dirty || !store.gc_created.is_empty() {
            shared.gc_notify.notify_one();
        }
    }
    let (code, v) = result?;
    Ok(json_response(code, &v))
}

fn delete_opts(ctx: &RequestCtx) -> ApiResult<DeleteOpts> {
    let body: Value = if ctx.body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&ctx.body)
            .map_err(|e| ApiError::BadRequest(format!("decoding DeleteOptions: {e}")))?
    };
    let mut propagation = body
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .or(ctx.query.get("propagationPolicy"))
        .map(str::to_string);
    let orphan = body.get("orphanDependents").and_then(Value::as_bool) == Some(true)
        || ctx.query.get("orphanDependents") == Some("true");
    if propagation.is_none() && orphan {
        propagation = Some("Orphan".into());
    }
    let dry_run = ctx.dry_run()
        || body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    Ok(DeleteOpts {
        propagation,
        precondition_uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        precondition_rv: body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        dry_run,
    })
}

fn list(
    shared: &Arc<Shared>,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    selector: &Selector,
    ctx: &RequestCtx,
    format: Format,
) -> ApiResult<Response> {
    let after = ctx
        .query
        .get("continue")
        .filter(|c| !c.is_empty())
        .map(decode_continue)
        .transpose()?;
    let limit = ctx
        .query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    // Take the snapshot under the lock (cheap Arc clones); filter and
    // serialize outside it.
    let (rv, snapshot) = {
        let store = lock(&shared.store);
        (
            store.current_rv(),
            store.list(&rt.storage, ns, after.as_ref()),
        )
    };
    let plain = rt.conversion == crate::resources::Conversion::None;
    let mut items: Vec<Arc<Value>> = Vec::new();
    let mut cont = None;
    for obj in snapshot {
        let matches = if plain {
            selector.matches(&obj)
        } else {
            selector.matches(&crate::builtins::to_served(rt, &obj))
        };
        if !matches {
            continue;
        }
        if limit.is_some_and(|l| items.len() >= l) {
            cont = items
                .last()
                .map(|last| encode_continue(crate::meta::namespace(last), crate::meta::name(last)));
            break;
        }
        items.push(obj);
    }
    if plain && format != Format::Table {
        return Ok(fast_list(rt, format, &items, rv, cont));
    }
    let served = items
        .iter()
        .map(|o| crate::builtins::to_served(rt, o))
        .collect();
    Ok(json_response(
        200,
        &render::list(rt, format, served, rv, cont),
    ))
}

/// Serializes a list straight from the stored objects, without deep copies
/// (a 10,000-object list is otherwise dominated by cloning).
fn fast_list(
    rt: &ResourceType,
    format: Format,
    items: &[Arc<Value>],
    rv: u64,
    cont: Option<String>,
) -> Response {
    #[derive(serde::Serialize)]
    struct Partial<'a> {
        kind: &'static str,
        #[serde(rename = "apiVersion")]
        api_version: &'static str,
        metadata: &'a Value,
    }
    let api_version = rt.api_version();
    let (kind, list_api_version) = match format {
        Format::Metadata => (
            "PartialObjectMetadataList".to_string(),
            "meta.k8s.io/v1".to_string(),
        ),
        _ => (rt.list_kind.clone(), api_version.clone()),
    };
    let mut md = json!({"resourceVersion": rv.to_string()});
    if let (Some(c), Some(m)) = (cont, md.as_object_mut()) {
        m.insert("continue".into(), c.into());
    }
    let mut buf = Vec::with_capacity(items.len() * 512 + 256);
    let head = json!({"kind": kind, "apiVersion": list_api_version, "metadata": md});
    // Cannot fail: serializing a Value into a Vec.
    let _ = serde_json::to_writer(&mut buf, &head);
    buf.pop();
    buf.extend_from_slice(b",\"items\":[");
    let empty = json!({});
    for (i, obj) in items.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        let _ = match format {
            Format::Metadata => serde_json::to_writer(
                &mut buf,
                &Partial {
                    kind: "PartialObjectMetadata",
                    api_version: "meta.k8s.io/v1",
                    metadata: obj.get("metadata").unwrap_or(&empty),
                },
            ),
            _ if obj.get("apiVersion").and_then(Value::as_str) == Some(api_version.as_str()) => {
                serde_json::to_writer(&mut buf, &**obj)
            }
            _ => serde_json::to_writer(&mut buf, &crate::builtins::to_served(rt, obj)),
        };
    }
    buf.extend_from_slice(b"]}");
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from(buf))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// Token comparison whose time does not depend on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/version"), Route::Version);
        assert_eq!(
            route("/api/v1/namespaces/default/secrets/x"),
            Route::Resource(ResPath {
                group: String::new(),
                version: "v1".into(),
                namespace: Some("default".into()),
                plural: "secrets".into(),
                name: Some("x".into()),
                sub: None,
            })
        );
        assert_eq!(
            route("/api/v1/namespaces/default"),
            Route::Resource(ResPath {
                version: "v1".into(),
                plural: "namespaces".into(),
                name: Some("default".into()),
                ..ResPath::default()
            })
        );
        assert_eq!(
            route("/api/v1/namespaces/default/status"),
            Route::Resource(ResPath {
                version: "v1".into(),
                plural: "namespaces".into(),
                name: Some("default".into()),
                sub: Some("status".into()),
                ..ResPath::default()
            })
        );
        assert_eq!(
            route("/apis/kmsecrets.dev/v1alpha1/namespaces/n/encryptedsecrets/e/status"),
            Route::Resource(ResPath {
                group: "kmsecrets.dev".into(),
                version: "v1alpha1".into(),
                namespace: Some("n".into()),
                plural: "encryptedsecrets".into(),
                name: Some("e".into()),
                sub: Some("status".into()),
            })
        );
        assert_eq!(
            route("/openapi/v3/apis/a.b/v1"),
            Route::OpenApiV3("a.b".into(), "v1".into())
        );
    }

    #[test]
    fn query_parsing() {
        let q = Query::parse(Some("&labelSelector=a%3Db%2Cc+in+%28x%29&watch=true"));
        assert_eq!(q.get("labelSelector"), Some("a=b,c in (x)"));
        assert!(q.flag("watch"));
        let tok = encode_continue("ns", "name");
        assert_eq!(
            decode_continue(&tok).expect("valid"),
            ("ns".into(), "name".into())
        );
    }
}
