//! Objects every cluster starts with: the `default`, `kube-system`,
//! `kube-public` and `kube-node-lease` namespaces.

use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::admin::lock;
use crate::ops::{self, WriteOpts};

pub fn seed(store: &Arc<Mutex<Store>>) {
    let mut store = lock(store);
    let Some(rt) = store.registry.get("", "v1", "namespaces") else {
        return;
    };
    let opts = WriteOpts {
        manager: "kube-apiserver".into(),
        ..WriteOpts::default()
    };
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        if let Err(e) = ops::create(&mut store, &rt, "", body, &opts) {
            tracing::error!(namespace = ns, error = %e, "could not seed namespace");
        }
    }
}

use crate::store::Store;
