//! Faults during a cold start at scale, on the real control plane: N
//! EncryptedSecrets over D data keys exist before two controller replicas
//! (leader election) start; while they sync, the kube-apiserver is
//! SIGKILLed (and restarted) at ~30 % of Secrets present, etcd is frozen
//! (SIGSTOP) for 10 s at ~60 %, and the leader is SIGKILLed at ~80 % (a
//! replica that exits is restarted, as the kubelet would). Every Secret is
//! watched from the start.
//!
//! What [`cold_start`] measures and returns: converge time, KMS Decrypts
//! (summed over every replica process), leadership terms, Secret writes and
//! deletes (from the apiserver's audit log, which survives its restarts),
//! and Secrets ever seen emptied. The CI test (`tests/real_cluster.rs`)
//! asserts on them at 1,000 resources; `examples/faults_at_scale.rs` prints
//! them at 10,000 beside a no-fault run of the same size.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::cluster::{Cluster, Controller, eventually};

/// Writes `N` EncryptedSecrets over `deks` data keys as one `List`: `deks`
/// resources encrypted with `--scope namespace` (one wrapped DEK may be
/// used under any name in its namespace), copied under the names
/// `PREFIX-i`. Resource i holds `k=value-(i % deks)`.
pub fn bulk_manifest(c: &Cluster, ns: &str, prefix: &str, n: usize, deks: usize) -> PathBuf {
    let key = format!("file:{}", c.key.display());
    let templates: Vec<Value> = (0..deks)
        .map(|d| {
            let lit = format!("k=value-{d}");
            let out = c.kmsecrets(&[
                "encrypt",
                "--key",
                &key,
                "--scope",
                "namespace",
                "--from-literal",
                &lit,
                "--name",
                "template",
                "--namespace",
                ns,
                "-o",
                "json",
            ]);
            serde_json::from_str(&out).unwrap()
        })
        .collect();
    let items: Vec<Value> = (0..n)
        .map(|i| {
            let mut es = templates[i % deks].clone();
            es["metadata"]["name"] = json!(format!("{prefix}-{i}"));
            es
        })
        .collect();
    let out = c.path(&format!("{ns}-{prefix}-all.json"));
    std::fs::write(
        &out,
        json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    )
    .unwrap();
    out
}

/// Whether every `PREFIX-i` Secret holds `k=value-(i % deks)`.
pub async fn all_synced(c: &Cluster, ns: &str, prefix: &str, n: usize, deks: usize) -> bool {
    let Ok(list) = Api::<Secret>::namespaced(c.client.clone(), ns)
        .list(&Default::default())
        .await
    else {
        return false;
    };
    let ok = list
        .items
        .iter()
        .filter(|s| {
            let name = s.metadata.name.clone().unwrap_or_default();
            let Some(i) = name.strip_prefix(&format!("{prefix}-")) else {
                return false;
            };
            let Ok(i) = i.parse::<usize>() else {
                return false;
            };
            s.data
                .as_ref()
                .and_then(|d| d.get("k"))
                .is_some_and(|v| v.0 == format!("value-{}", i % deks).as_bytes())
        })
        .count();
    ok == n
}

/// What one cold start did.
#[derive(Debug, Default)]
pub struct Report {
    pub n: usize,
    pub deks: usize,
    pub converge: Duration,
    /// Where each fault hit: (what, Secrets present, seconds since start).
    pub faults: Vec<(&'static str, usize, f64)>,
    /// KMS Decrypt calls of every replica process (killed ones included,
    /// as last scraped).
    pub decrypts: f64,
    /// Leadership terms seen on the Lease (the first included).
    pub terms: usize,
    /// Replica processes started (2 + restarts).
    pub processes: usize,
    /// Successful Secret creates/patches/updates in the namespace.
    pub writes: usize,
    pub deletes: usize,
    /// Secrets the watch saw without data, or deleted.
    pub emptied: BTreeSet<String>,
    /// Successful writes beyond the first per Secret, by the phase they
    /// fell in (before the first fault, after each).
    pub extra_writes_by_phase: Vec<usize>,
}

impl Report {
    pub fn line(&self, label: &str) -> String {
        format!(
            "{label}: {} resources / {} DEKs converged in {:.1} s; Decrypts {} (≤ {} = DEKs × terms {}); Secret writes {} (N + {:.2} %; extra by phase {:?}), deletes {}, emptied {}; replica processes {}; faults {:?}",
            self.n,
            self.deks,
            self.converge.as_secs_f64(),
            self.decrypts,
            self.deks * self.terms,
            self.terms,
            self.writes,
            (self.writes as f64 / self.n as f64 - 1.0) * 100.0,
            self.extra_writes_by_phase,
            self.deletes,
            self.emptied.len(),
            self.processes,
            self.faults
        )
    }
}

/// Watches the namespace's Secrets from before the start: counts those
/// present with data, remembers any seen deleted or empty.
fn watch_secrets(
    c: &Cluster,
    ns: &str,
    present: Arc<AtomicUsize>,
    emptied: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let api = Api::<Secret>::namespaced(c.client.clone(), ns);
    tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        let mut w = std::pin::pin!(watcher(api, watcher::Config::default()));
        while !stop.load(Ordering::SeqCst) {
            let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), w.next()).await
            else {
                continue;
            };
            let Ok(ev) = ev else {
                // the apiserver is restarting or etcd is frozen: the
                // watcher resumes by itself, after a pause
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            match ev {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                    let name = s.metadata.name.clone().unwrap_or_default();
                    if s.data.as_ref().is_none_or(|d| d.is_empty()) {
                        emptied.lock().unwrap().insert(name);
                    } else if seen.insert(name) {
                        present.fetch_add(1, Ordering::SeqCst);
                    }
                }
                watcher::Event::Delete(s) => {
                    let name = s.metadata.name.clone().unwrap_or_default();
                    emptied.lock().unwrap().insert(format!("{name} (deleted)"));
                }
                _ => {}
            }
        }
    })
}

/// One replica; restarted as a new process with a new identity (a new
/// pod name, as a Deployment's replacement pod has).
struct Replica {
    id: String,
    ctl: Controller,
    /// Decrypts of earlier incarnations of this replica.
    past: f64,
    last: f64,
}

impl Replica {
    fn scrape(&mut self) {
        if let Some(v) = self
            .ctl
            .try_metric("kmsecrets_kms_requests_total", &[("operation", "decrypt")])
        {
            self.last = v;
        }
    }
    fn total(&self) -> f64 {
        self.past + self.last
    }
}

/// The cold start of `n` resources over `deks` data keys in `ns`, with the
/// three faults when `faults`.
pub async fn cold_start(c: &Cluster, ns: &str, n: usize, deks: usize, faults: bool) -> Report {
    let cp = c.real().expect("faults need the real control plane");
    c.kubectl(&["create", "namespace", ns]).await;
    let file = bulk_manifest(c, ns, "s", n, deks);
    c.kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()])
        .await;
    let writes_before = cp.secret_writes().len();

    let present = Arc::new(AtomicUsize::new(0));
    let emptied = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let watch = watch_secrets(c, ns, present.clone(), emptied.clone(), stop.clone());
    let lease_name = format!("kmsecrets-{ns}");
    let flags: Vec<String> = [
        "--namespace",
        ns,
        "--leader-elect",
        "--leader-election-namespace",
        "default",
        "--leader-election-name",
        &lease_name,
        "--leader-election-lease-duration",
        "15s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let start = |id: &str| {
        let f: Vec<&str> = flags.iter().map(String::as_str).collect();
        c.controller_env(&f, &[("POD_NAME", id.to_string())])
    };
    let t0 = Instant::now();
    let mut replicas: Vec<Replica> = ["ctl-a", "ctl-b"]
        .into_iter()
        .map(|id| Replica {
            id: id.to_string(),
            ctl: start(id),
            past: 0.0,
            last: 0.0,
        })
        .collect();
    let mut report = Report {
        n,
        deks,
        processes: 2,
        ..Default::default()
    };
    let leases = Api::<Lease>::namespaced(c.client.clone(), "default");
    let mut holders: Vec<String> = Vec::new();
    let mut next_fault = if faults { 0 } else { 3 };
    let mut fault_times: Vec<jiff::Timestamp> = Vec::new();
    let deadline = Duration::from_secs(120 + n as u64 / 20);
    loop {
        // leadership terms, as the Lease records them
        if let Ok(Some(l)) = leases.get_opt(&lease_name).await
            && let Some(h) = l.spec.and_then(|s| s.holder_identity)
            && !h.is_empty()
            && holders.last() != Some(&h)
        {
            holders.push(h);
        }
        for r in &mut replicas {
            r.scrape();
            if !r.ctl.is_running() {
                // lost the lease (or killed): the kubelet would restart it
                r.past += r.last;
                r.last = 0.0;
                report.processes += 1;
                r.id = format!("{}-{}", &r.id[..5], report.processes);
                r.ctl = start(&r.id);
            }
        }
        let p = present.load(Ordering::SeqCst);
        let at = t0.elapsed().as_secs_f64();
        match next_fault {
            0 if p * 10 >= n * 3 => {
                report.faults.push(("apiserver SIGKILL", p, at));
                fault_times.push(jiff::Timestamp::now());
                cp.restart_apiserver(true).await.unwrap();
                next_fault = 1;
            }
            1 if p * 10 >= n * 6 => {
                report.faults.push(("etcd SIGSTOP 10 s", p, at));
                fault_times.push(jiff::Timestamp::now());
                cp.pause_etcd();
                tokio::time::sleep(Duration::from_secs(10)).await; // the fault itself
                cp.resume_etcd();
                next_fault = 2;
            }
            2 if p * 10 >= n * 8 => {
                let leader = holders.last().cloned().unwrap_or_default();
                if let Some(r) = replicas.iter_mut().find(|r| r.id == leader) {
                    report.faults.push(("leader SIGKILL", p, at));
                    fault_times.push(jiff::Timestamp::now());
                    r.scrape();
                    r.ctl.kill();
                    next_fault = 3;
                }
            }
            _ => {}
        }
        if next_fault == 3 && p >= n && all_synced(c, ns, "s", n, deks).await {
            break;
        }
        assert!(
            t0.elapsed() < deadline,
            "{ns}: not converged within {deadline:?}: {p}/{n} Secrets present, faults {:?}",
            report.faults
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.converge = t0.elapsed();
    // every resource Ready too (status writes may trail the Secrets)
    eventually(Duration::from_secs(60), "every resource Ready", async || {
        let out = c
            .kubectl_raw(&[
                "get",
                "esec",
                "-n",
                ns,
                "-o",
                "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ])
            .await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().filter(|l| *l == "True").count() == n
    })
    .await;
    for r in &mut replicas {
        r.scrape();
    }
    report.decrypts = replicas.iter().map(Replica::total).sum();
    report.terms = holders.len().max(1);
    stop.store(true, Ordering::SeqCst);
    let _ = watch.await;
    report.emptied = emptied.lock().unwrap().clone();
    let mut by_verb: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_secret: BTreeMap<String, usize> = BTreeMap::new();
    report.extra_writes_by_phase = vec![0; fault_times.len() + 1];
    for (verb, wns, name, code, at) in &cp.secret_writes_at()[writes_before..] {
        if wns == ns && *code < 300 {
            *by_verb.entry(verb.clone()).or_default() += 1;
            let n = per_secret.entry(name.clone()).or_default();
            *n += 1;
            if *n > 1 {
                let at: jiff::Timestamp = at.parse().unwrap_or_default();
                let phase = fault_times.iter().filter(|t| **t <= at).count();
                report.extra_writes_by_phase[phase] += 1;
            }
        }
    }
    report.deletes = by_verb.get("delete").copied().unwrap_or(0)
        + by_verb.get("deletecollection").copied().unwrap_or(0);
    report.writes = ["create", "patch", "update"]
        .iter()
        .map(|v| by_verb.get(*v).copied().unwrap_or(0))
        .sum();
    drop(replicas);
    report
}
