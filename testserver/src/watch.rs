//! Watch streams: chunked JSON lines, resume from a resourceVersion through
//! the bounded event log, bookmarks, `timeoutSeconds`, `sendInitialEvents`,
//! selector transitions, and in-stream `ERROR 410 Expired`.
//!
//! # Guarantees
//! - The initial events and the live subscription are taken under one store
//!   lock, so no change is missed or duplicated.
//! - An expired resourceVersion is reported *in-stream* on a 200 response
//!   (an HTTP 410 makes kube-runtime retry the same version forever).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::builtins;
use crate::render::{self, Format};
use crate::resources::ResourceType;
use crate::selector::Selector;
use crate::server::Shared;
use crate::store::{EventType, Signal, WatchEvent};

/// Default watch lifetime when the client sends no `timeoutSeconds`
/// (the apiserver picks 30-60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often an idle watch that asked for bookmarks gets one. The real
/// apiserver sends them about once a minute; faster keeps tests quick.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);
/// Lines buffered per watch before the writer waits for the client.
const LINE_BUFFER: usize = 1024;

pub struct WatchParams {
    pub namespace: Option<String>,
    pub resource_version: Option<String>,
    pub selector: Selector,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    pub send_initial_events: bool,
    pub format: Format,
}

type Line = Result<Bytes, std::io::Error>;

struct Watcher {
    rt: Arc<ResourceType>,
    params: WatchParams,
    tx: mpsc::Sender<Line>,
    last_rv: u64,
}

/// One watch event line, `type` before `object` as kube-apiserver writes it
/// (Go encodes the struct's fields in order). A `json!` map would sort the
/// keys and put `object` first, which forces a serde client to buffer the
/// whole object before it knows the event's type — a cost the real server
/// does not impose.
fn line(kind: &str, object: Value) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"{\"type\":");
    buf.extend_from_slice(&serde_json::to_vec(kind).unwrap_or_default());
    buf.extend_from_slice(b",\"object\":");
    buf.extend_from_slice(&serde_json::to_vec(&object).unwrap_or_default());
    buf.extend_from_slice(b"}\n");
    Bytes::from(buf)
}

pub fn expired_status(rv: &str, floor: u64) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("too old resource version: {rv} ({floor})"),
        "reason": "Expired",
        "code": 410,
    })
}

impl Watcher {
    fn render(&self, obj: &Value) -> Value {
        let served = builtins::to_served(&self.rt, obj);
        render::object(&self.rt, self.params.format, served)
    }

    fn in_scope(&self, obj: &Value) -> bool {
        let ns_ok = self
            .params
            .namespace
            .as_deref()
            .is_none_or(|ns| crate::meta::namespace(obj) == ns);
        ns_ok
            && self
                .params
                .selector
                .matches(&builtins::to_served(&self.rt, obj))
    }

    /// The line for a change, after selector transitions; None = not visible.
    fn event_line(&self, ev: &WatchEvent) -> Option<Bytes> {
        let now = self.in_scope(&ev.object);
        let before = ev.prev.as_deref().is_some_and(|p| self.in_scope(p));
        let kind = match (ev.kind, before, now) {
            (EventType::Added, _, true) => "ADDED",
            (EventType::Modified, true, true) => "MODIFIED",
            (EventType::Modified, false, true) => "ADDED",
            (EventType::Modified, true, false) => "DELETED",
            (EventType::Deleted, true, _) => "DELETED",
            _ => return None,
        };
        Some(line(kind, self.render(&ev.object)))
    }

    fn bookmark(&self, initial_end: bool) -> Bytes {
        let (kind, api_version) = match self.params.format {
            Format::Metadata => (
                "PartialObjectMetadata".to_string(),
                "meta.k8s.io/v1".to_string(),
            ),
            _ => (self.rt.kind.clone(), self.rt.api_version()),
        };
        let mut md = json!({"resourceVersion": self.last_rv.to_string()});
        if initial_end && let Some(m) = md.as_object_mut() {
            m.insert(
                "annotations".into(),
                json!({"k8s.io/initial-events-end": "true"}),
            );
        }
        line(
            "BOOKMARK",
            json!({"kind": kind, "apiVersion": api_version, "metadata": md}),
        )
    }
}

/// Starts a watch and returns the streaming response.
pub fn start(shared: &Arc<Shared>, rt: Arc<ResourceType>, params: WatchParams) -> Response {
    let (tx, mut rx) = mpsc::channel::<Line>(LINE_BUFFER);
    let mut initial: Vec<Bytes> = Vec::new();
    let mut expired = false;
    let (sub, last_rv) = {
        let store = crate::admin::lock(&shared.store);
        let mut w = Watcher {
            rt: rt.clone(),
            params,
            tx: tx.clone(),
            last_rv: store.current_rv(),
        };
        let rv = w.params.resource_version.clone().unwrap_or_default();
        let from_state = rv.is_empty() || rv == "0" || w.params.send_initial_events;
        if from_state {
            let ns = w.params.namespace.clone();
            for obj in store.list(&rt.storage, ns.as_deref(), None) {
                if w.in_scope(&obj) {
                    initial.push(line("ADDED", w.render(&obj)));
                }
            }
            if w.params.send_initial_events {
                initial.push(w.bookmark(true));
            }
        } else {
            match rv
                .parse::<u64>()
                .ok()
                .and_then(|n| store.events_since(&rt.storage, n).map(|e| (n, e)))
            {
                Some((n, events)) => {
                    w.last_rv = n.max(store.floor());
                    for ev in events {
                        if let Some(l) = w.event_line(&ev) {
                            initial.push(l);
                        }
                    }
                    w.last_rv = store.current_rv();
                }
                None => {
                    initial.push(line("ERROR", expired_status(&rv, store.floor())));
                    expired = true;
                }
            }
        }
        let sub = store.subscribe();
        let last = store.current_rv();
        (Some((w, sub)), last)
    };
    let shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        for l in initial {
            if tx.send(Ok(l)).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        if let Some((mut w, sub)) = sub {
            w.last_rv = last_rv;
            run(w, sub, shutdown).await;
        }
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let body = Body::from_stream(stream);
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(body)
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

async fn run(
    mut w: Watcher,
    mut sub: broadcast::Receiver<Signal>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let deadline = tokio::time::sleep(w.params.timeout.unwrap_or(DEFAULT_TIMEOUT));
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
    ticker.tick().await;
    loop {
        let out: Option<Line> = tokio::select! {
            _ = &mut deadline => return,
            _ = shutdown.changed() => return,
            _ = w.tx.closed() => return,
            _ = ticker.tick(), if w.params.bookmarks => Some(Ok(w.bookmark(false))),
            sig = sub.recv() => match sig {
                Ok(Signal::Event(ev)) => {
                    if ev.rv <= w.last_rv {
                        None
                    } else {
                        w.last_rv = ev.rv;
                        if ev.storage == w.rt.storage { w.event_line(&ev).map(Ok) } else { None }
                    }
                }
                Ok(Signal::Expire) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = w.tx.send(Ok(line("ERROR", expired_status(&w.last_rv.to_string(), w.last_rv)))).await;
                    return;
                }
                Ok(Signal::Drop) => {
                    let _ = w.tx.send(Err(std::io::Error::other("stream dropped by fault injection"))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if let Some(l) = out
            && w.tx.send(l).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_event_line_names_its_type_before_its_object() {
        let l = line(
            "MODIFIED",
            json!({"metadata": {"name": "a\"b"}, "kind": "X"}),
        );
        let text = std::str::from_utf8(&l).unwrap();
        assert!(
            text.starts_with(r#"{"type":"MODIFIED","object":{"#),
            "{text}"
        );
        assert!(text.ends_with("}\n"));
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["type"], "MODIFIED");
        assert_eq!(v["object"]["metadata"]["name"], "a\"b");
    }
}
