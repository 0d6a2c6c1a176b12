//! Prometheus metrics: exactly the families of DESIGN.md "Metrics", in a
//! registry owned by the application state (no global default registry).
//!
//! Labels are bounded enums (operation, result, reason, ready); never a
//! resource name or an error string.
//!
//! A leaf: it imports nothing from the crate. The owners of label sets
//! (the KMS layer, the controller) pre-create their series.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub kms_requests: IntCounterVec,
    pub kms_throttled: IntCounterVec,
    pub kms_duration: HistogramVec,
    pub kms_retries: IntCounterVec,
    pub rate_limit_wait: Histogram,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_coalesced: IntCounter,
    pub cache_evictions: IntCounterVec,
    pub cache_entries: IntGauge,
    pub reconcile: IntCounterVec,
    pub reconcile_duration: Histogram,
    pub reconcile_deferred: IntCounter,
    pub rollout_restarts: IntCounterVec,
    pub encryptedsecrets: IntGaugeVec,
    pub build_info: IntGaugeVec,
    /// Per tracked KMS key (bounded by `--max-tracked-keys`).
    pub key_state: IntGaugeVec,
    pub key_dependents: IntGaugeVec,
    pub key_at_risk: IntGaugeVec,
    pub key_deletion_timestamp: IntGaugeVec,
    /// 1 while key health is checked, 0 when DescribeKey is denied for
    /// every key (no `kms:DescribeKey`) or checks are off.
    pub key_health_enabled: IntGauge,
}

// Registration only fails on duplicate or malformed names, which are fixed
// at compile time here; a test renders every family.
#[allow(clippy::expect_used)]
fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

#[allow(clippy::expect_used)]
impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        // KMS latencies run ~5 ms (same region) to seconds (throttled/remote).
        let kms_buckets = vec![
            0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let m = Metrics {
            kms_requests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "kmsecrets_kms_requests_total",
                        "KMS request attempts by operation and result",
                    ),
                    &["operation", "result"],
                )
                .expect("valid"),
            ),
            kms_throttled: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "kmsecrets_kms_throttled_total",
                        "KMS attempts rejected with ThrottlingException",
                    ),
                    &["operation"],
                )
                .expect("valid"),
            ),
            kms_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "kmsecrets_kms_request_duration_seconds",
                        "Duration of one KMS attempt",
                    )
                    .buckets(kms_buckets),
                    &["operation"],
                )
                .expect("valid"),
            ),
            kms_retries: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "kmsecrets_kms_retries_total",
                        "KMS attempts that were retries",
                    ),
                    &["operation"],
                )
                .expect("valid"),
            ),
            rate_limit_wait: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "kmsecrets_kms_rate_limit_wait_seconds",
                        "Time spent waiting for the client-side KMS rate limiter",
                    )
                    .buckets(vec![
                        0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ]),
                )
                .expect("valid"),
            ),
            cache_hits: reg(
                &r,
                IntCounter::new(
                    "kmsecrets_dek_cache_hits_total",
                    "DEK unwraps served from the cache",
                )
                .expect("valid"),
            ),
            cache_misses: reg(
                &r,
                IntCounter::new(
                    "kmsecrets_dek_cache_misses_total",
                    "DEK unwraps that called KMS",
                )
                .expect("valid"),
            ),
            cache_coalesced: reg(
                &r,
                IntCounter::new(
                    "kmsecrets_dek_cache_coalesced_total",
                    "DEK unwraps served by another caller's in-flight KMS call",
                )
                .expect("valid"),
            ),
            cache_evictions: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("kmsecrets_dek_cache_evictions_total", "DEK cache evictions"),
                    &["reason"],
                )
                .expect("valid"),
            ),
            cache_entries: reg(
                &r,
                IntGauge::new("kmsecrets_dek_cache_entries", "DEKs currently cached")
                    .expect("valid"),
            ),
            reconcile: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "kmsecrets_reconcile_total",
                        "Reconciles by result (success or the Ready reason)",
                    ),
                    &["result"],
                )
                .expect("valid"),
            ),
            reconcile_duration: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "kmsecrets_reconcile_duration_seconds",
                        "Reconcile duration",
                    )
                    .buckets(vec![
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                )
                .expect("valid"),
            ),
            reconcile_deferred: reg(
                &r,
                IntCounter::new(
                    "kmsecrets_reconcile_deferred_total",
                    "Reconciles deferred because their namespace held its share of the workers (--max-workers-per-namespace)",
                )
                .expect("valid"),
            ),
            rollout_restarts: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "kmsecrets_rollout_restarts_total",
                        "Workload restarts requested after a Secret's content changed (spec.rolloutRestartTargets)",
                    ),
                    &["kind", "result"],
                )
                .expect("valid"),
            ),
            encryptedsecrets: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "kmsecrets_encryptedsecrets",
                        "EncryptedSecrets by readiness",
                    ),
                    &["ready"],
                )
                .expect("valid"),
            ),
            build_info: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("kmsecrets_build_info", "Build information"),
                    &["version"],
                )
                .expect("valid"),
            ),
            key_state: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "kmsecrets_kms_key_state",
                        "1 for the state each tracked KMS key is in (DescribeKey)",
                    ),
                    &["key", "state"],
                )
                .expect("valid"),
            ),
            key_dependents: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "kmsecrets_kms_key_dependents",
                        "EncryptedSecrets with a data-key copy under the key",
                    ),
                    &["key"],
                )
                .expect("valid"),
            ),
            key_at_risk: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "kmsecrets_kms_key_at_risk",
                        "EncryptedSecrets with a copy under the key whose every copy is under an unhealthy key",
                    ),
                    &["key"],
                )
                .expect("valid"),
            ),
            key_deletion_timestamp: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "kmsecrets_kms_key_deletion_timestamp_seconds",
                        "When a key pending deletion will be deleted (Unix seconds)",
                    ),
                    &["key"],
                )
                .expect("valid"),
            ),
            key_health_enabled: reg(
                &r,
                IntGauge::new(
                    "kmsecrets_kms_key_health_enabled",
                    "1 while KMS key health is checked (DescribeKey allowed)",
                )
                .expect("valid"),
            ),
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Pre-create label-free-looking series so dashboards see zeros, not
        // gaps (the KMS and reconcile series are pre-created by their owners).
        for reason in ["expired", "capacity", "revoked"] {
            m.cache_evictions.with_label_values(&[reason]);
        }
        for ready in ["true", "false"] {
            m.encryptedsecrets.with_label_values(&[ready]);
        }
        m
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_design_family_with_its_type() {
        let m = Metrics::new();
        // vec families render once they have a series
        m.kms_requests.with_label_values(&["decrypt", "success"]);
        m.kms_throttled.with_label_values(&["decrypt"]);
        m.kms_duration.with_label_values(&["decrypt"]);
        m.kms_retries.with_label_values(&["decrypt"]);
        m.reconcile.with_label_values(&["success"]);
        let text = m.render();
        let want = [
            ("kmsecrets_kms_requests_total", "counter"),
            ("kmsecrets_kms_throttled_total", "counter"),
            ("kmsecrets_kms_request_duration_seconds", "histogram"),
            ("kmsecrets_kms_retries_total", "counter"),
            ("kmsecrets_kms_rate_limit_wait_seconds", "histogram"),
            ("kmsecrets_dek_cache_hits_total", "counter"),
            ("kmsecrets_dek_cache_misses_total", "counter"),
            ("kmsecrets_dek_cache_coalesced_total", "counter"),
            ("kmsecrets_dek_cache_evictions_total", "counter"),
            ("kmsecrets_dek_cache_entries", "gauge"),
            ("kmsecrets_reconcile_total", "counter"),
            ("kmsecrets_reconcile_duration_seconds", "histogram"),
            ("kmsecrets_encryptedsecrets", "gauge"),
            ("kmsecrets_build_info", "gauge"),
        ];
        for (name, ty) in want {
            assert!(
                text.contains(&format!("# TYPE {name} {ty}\n")),
                "{name} {ty} missing in\n{text}"
            );
        }
        assert!(text.contains("kmsecrets_build_info{version=\""));
    }
}
