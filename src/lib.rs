//! kmsecrets: Kubernetes secrets in git as ciphertext, materialised in the
//! cluster as native Secrets, with AWS KMS envelope encryption.
//!
//! Layers (dependencies point down only):
//! `cli` → `controller` → `secret`, `wrap` → `resource` → `kms` (layer, providers) → `envelope`
//! → `api`; `manifest`, `metrics`, `fsutil`, `sync`, `backoff` are leaves.

pub mod api;
pub mod backoff;
pub mod cli;
pub mod controller;
pub mod envelope;
pub mod fsutil;
pub mod http;
pub mod kms;
pub mod kubeclient;
pub mod manifest;
pub mod metrics;
pub mod resource;
pub mod secret;
pub mod sync;
pub mod template;
pub mod wrap;
