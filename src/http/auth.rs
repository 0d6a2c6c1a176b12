//! Who may read `/metrics`: every request's bearer token is authenticated
//! with a TokenReview and authorized with a SubjectAccessReview (`get` on
//! the non-resource URL `/metrics`), as controller-runtime's
//! `WithAuthenticationAndAuthorization` filter does. Decisions are cached
//! briefly (allowed for `ttl`, refused for a tenth of it) under a SHA-256
//! of the token, in memory only; the token itself is never stored, logged
//! or echoed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;
use sha2::{Digest, Sha256};

/// What a request may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// No token, or one the API server does not accept: 401.
    Unauthenticated,
    /// A valid identity without `get` on `/metrics`: 403.
    Forbidden,
}

/// At most this many cached decisions (one per distinct token).
const CACHE_CAP: usize = 1024;

pub struct Authorizer {
    client: kube::Client,
    ttl: Duration,
    path: String,
    cache: Mutex<HashMap<[u8; 32], (Instant, Decision)>>,
}

impl Authorizer {
    pub fn new(client: kube::Client, ttl: Duration) -> Authorizer {
        Authorizer {
            client,
            ttl,
            path: "/metrics".into(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Decision> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key)
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, d)| *d)
    }

    fn remember(&self, key: [u8; 32], d: Decision) {
        let ttl = if d == Decision::Allowed {
            self.ttl
        } else {
            self.ttl / 10
        };
        if ttl.is_zero() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAP {
            let now = Instant::now();
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= CACHE_CAP {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now() + ttl, d));
    }

    /// The decision for an `Authorization` header value. `Err`: the API
    /// server could not answer (the request gets 500, nothing is cached).
    pub async fn check(&self, authorization: Option<&str>) -> Result<Decision, kube::Error> {
        let Some(token) = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return Ok(Decision::Unauthenticated);
        };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(d) = self.cached(&key) {
            return Ok(d);
        }
        let d = self.review(token).await?;
        self.remember(key, d);
        Ok(d)
    }

    async fn review(&self, token: &str) -> Result<Decision, kube::Error> {
        let tr = Api::<TokenReview>::all(self.client.clone())
            .create(
                &PostParams::default(),
                &TokenReview {
                    spec: TokenReviewSpec {
                        token: token.to_string(),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await?;
        let Some(status) = tr.status.filter(|s| s.authenticated == Some(true)) else {
            return Ok(Decision::Unauthenticated);
        };
        let user = status.user.unwrap_or_default();
        let sar = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(
                &PostParams::default(),
                &SubjectAccessReview {
                    spec: SubjectAccessReviewSpec {
                        user: user.username,
                        groups: user.groups,
                        uid: user.uid,
                        extra: user.extra,
                        non_resource_attributes: Some(NonResourceAttributes {
                            path: Some(self.path.clone()),
                            verb: Some("get".into()),
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await?;
        Ok(if sar.status.is_some_and(|s| s.allowed) {
            Decision::Allowed
        } else {
            Decision::Forbidden
        })
    }
}
