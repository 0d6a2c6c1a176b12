//! What only a real control plane can show (etcd + kube-apiserver +
//! kube-controller-manager v1.37.2, helm v4.3, local-kms; all built once by
//! scripts/ensure-k8s-tools.sh and started per test on free loopback ports):
//!
//! - the chart installed with the real `helm install`, upgraded, uninstalled;
//!   `kubectl apply -k deploy/`; the controller binary running with a
//!   TokenRequest token of the installed ServiceAccount, i.e. with exactly
//!   the shipped RBAC, and that RBAC's permission matrix equal to the one in
//!   docs/rbac.md;
//! - the CRD's OpenAPI and CEL validation evaluated by the apiserver;
//! - KMS key states (disabled, pending deletion) through local-kms;
//! - faults: apiserver restart mid-sync, etcd down, leader killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{Backend, Cluster, check, eventually};
use common::faults::{self, all_synced, bulk_manifest};
use common::{LocalKms, aws_test_env, free_port, repo_root, wait_for_port};
use serde_json::{Value, json};

const SECOND: Duration = Duration::from_secs(1);
const RELEASE_NS: &str = "kmsecrets-system";

/// The pinned helm, with its state dirs inside the test's temp dir.
fn helm(c: &Cluster, args: &[&str]) -> Output {
    let home = c.path("helm-home");
    Command::new(kmsecrets_envtest::tool("helm"))
        .args(args)
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .expect("run helm")
}

fn helm_ok(c: &Cluster, args: &[&str]) -> String {
    check(helm(c, args), &format!("helm {}", args.join(" ")))
}

async fn json_of(c: &Cluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&c.kubectl(&all).await).unwrap()
}

/// `kubectl auth can-i --list` for a subject in a namespace, as a set of
/// normalised rows "resources | non-resource URLs | resource names | verbs".
async fn can_i_list(c: &Cluster, subject: &str, ns: &str) -> BTreeSet<String> {
    let out = c
        .kubectl(&["auth", "can-i", "--list", "--as", subject, "-n", ns])
        .await;
    normalise_matrix(&out)
}

fn normalise_matrix(text: &str) -> BTreeSet<String> {
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("Resources"))
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

/// The fenced block after the line `<!-- matrix: NAME -->` in docs/rbac.md.
fn documented_matrix(name: &str) -> BTreeSet<String> {
    let doc = std::fs::read_to_string(repo_root().join("docs/rbac.md")).unwrap();
    let marker = format!("<!-- matrix: {name} -->");
    let at = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/rbac.md has no {marker}"));
    let rest = &doc[at..];
    let start = rest.find("```text\n").expect("fenced block") + "```text\n".len();
    let end = rest[start..].find("```").expect("closing fence");
    normalise_matrix(&rest[start..start + end])
}

fn assert_matrix(got: &BTreeSet<String>, name: &str) {
    let want = documented_matrix(name);
    let missing: Vec<_> = want.difference(got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "permission matrix `{name}` differs from docs/rbac.md\n  documented but not granted: {missing:#?}\n  granted but not documented: {extra:#?}\nactual:\n{}",
        got.iter().cloned().collect::<Vec<_>>().join("\n")
    );
}

/// A controller process run as a ServiceAccount (TokenRequest token), with
/// the args of the Deployment the API server holds.
struct SaController {
    child: std::process::Child,
    log: PathBuf,
    /// The HTTPS /metrics port, when the Deployment serves one.
    metrics_port: Option<u16>,
    /// The plain HTTP port (probes; /metrics too without HTTPS metrics).
    http_port: u16,
}

impl SaController {
    async fn start(c: &Cluster, ns: &str, deployment: &str, extra: &[&str]) -> SaController {
        let dep = json_of(c, &["get", "deployment", deployment, "-n", ns]).await;
        let pod = &dep["spec"]["template"]["spec"];
        let sa = pod["serviceAccountName"]
            .as_str()
            .expect("serviceAccountName");
        let container = &pod["containers"][0];
        assert!(
            container.get("command").is_none(),
            "the Deployment must not override the entrypoint"
        );
        let args: Vec<String> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(args[0], "controller", "{args:?}");
        let token = c
            .kubectl(&["create", "token", sa, "-n", ns, "--duration=1h"])
            .await;
        let kubeconfig = c.path(&format!("sa-{deployment}.kubeconfig"));
        c.real()
            .unwrap()
            .write_token_kubeconfig(&kubeconfig, token.trim())
            .unwrap();
        // In-pod paths and addresses are replaced; every other flag is the
        // Deployment's own.
        let secure_metrics = args.iter().any(|a| a.starts_with("--metrics-addr"));
        let mut argv: Vec<String> = args
            .into_iter()
            .filter(|a| {
                !a.starts_with("--http-addr")
                    && !a.starts_with("--local-key")
                    && !a.starts_with("--metrics-addr")
            })
            .collect();
        let metrics_port = secure_metrics.then(free_port);
        match metrics_port {
            Some(p) => argv.push(format!("--metrics-addr=127.0.0.1:{p}")),
            // a Deployment from before HTTPS metrics ran a binary that served
            // /metrics in plain HTTP on the http port: this binary does so
            // when told
            None => argv.push("--metrics-secure=false".into()),
        }
        let port = free_port();
        argv.push(format!("--kubeconfig={}", kubeconfig.display()));
        argv.push(format!("--http-addr=127.0.0.1:{port}"));
        argv.push(format!("--local-key={}", c.key.display()));
        argv.extend(extra.iter().map(|s| s.to_string()));
        let log = c.path(&format!("controller-{deployment}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(common::cluster::kmsecrets_bin())
            .args(&argv)
            .env("POD_NAMESPACE", ns)
            .env("POD_NAME", format!("{deployment}-0"))
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let ctl = SaController {
            child,
            log,
            metrics_port,
            http_port: port,
        };
        assert!(
            wait_for_port(port, 30 * SECOND),
            "controller did not serve: {}",
            ctl.logs()
        );
        ctl
    }

    fn logs(&self) -> String {
        common::cluster::strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// A metric's sum, scraped the way the Deployment serves it: HTTPS with
    /// `token`, or plain HTTP on the http port. `None`: no answer yet.
    fn metric(&self, name: &str, token: &str) -> Option<f64> {
        let body = if self.metrics_port.is_some() {
            let (code, body) = self.metrics(Some(token));
            (code == 200).then_some(body)?
        } else {
            let out = Command::new("curl")
                .args(["-sf", "--max-time", "10"])
                .arg(format!("http://127.0.0.1:{}/metrics", self.http_port))
                .output()
                .expect("curl is needed (apt-get install curl)");
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())?
        };
        Some(common::cluster::metric_sum(&body, name, &[]))
    }

    /// GET https://…/metrics (the self-signed certificate is not verified,
    /// as the shipped ServiceMonitor does); (status code, body).
    fn metrics(&self, token: Option<&str>) -> (u16, String) {
        let port = self
            .metrics_port
            .expect("the Deployment serves HTTPS metrics");
        let mut cmd = Command::new("curl");
        cmd.args(["-sk", "--max-time", "20", "-w", "\n%{http_code}"]);
        if let Some(t) = token {
            cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        let out = cmd
            .arg(format!("https://127.0.0.1:{port}/metrics"))
            .output()
            .expect("curl is needed for the HTTPS metrics test (apt-get install curl)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

impl Drop for SaController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- SA controller log ----\n{}", self.logs());
        }
    }
}

/// The release namespace with the local key's Secret; the values every
/// chart install here sets to use it.
async fn release_prereqs(c: &Cluster) -> [&'static str; 4] {
    create_ns(c, RELEASE_NS).await;
    c.kubectl(&[
        "create",
        "secret",
        "generic",
        "kmsecrets-local-key",
        "-n",
        RELEASE_NS,
        &format!("--from-file=local.key={}", c.key.display()),
    ])
    .await;
    [
        "--set",
        "localKey.enabled=true",
        "--set",
        "localKey.existingSecret=kmsecrets-local-key",
    ]
}

async fn create_ns(c: &Cluster, ns: &str) {
    c.kubectl(&["create", "namespace", ns]).await;
}

/// Applies an EncryptedSecret (local key) and waits for its Secret.
async fn sync_one(c: &Cluster, ns: &str, name: &str, value: &str, retain: bool) {
    let lit = format!("k={value}");
    let mut doc = c.encrypt(&["--from-literal", &lit, "--name", name, "--namespace", ns]);
    if retain {
        doc = doc.replacen("\nspec:\n", "\nspec:\n  deletionPolicy: Retain\n", 1);
    }
    c.apply(&doc).await;
    c.wait_ready_within(ns, name, "True", "Synced", 60 * SECOND)
        .await;
    c.wait_secret_data(ns, name, &[("k", value)]).await;
}

/// `kubectl explain WHAT`, once the apiserver publishes the CRD's OpenAPI
/// (a few seconds after it is Established).
async fn explain(c: &Cluster, what: &str) -> String {
    let mut text = String::new();
    eventually(30 * SECOND, "the CRD's OpenAPI published", async || {
        let out = c.kubectl_raw(&["explain", what]).await;
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success()
    })
    .await;
    text
}

fn assert_no_forbidden(log: &str) {
    for l in log.lines() {
        assert!(
            !l.contains("forbidden") && !l.contains("Forbidden"),
            "the controller hit an RBAC denial: {l}"
        );
    }
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_rbac_upgrade_uninstall_on_the_real_apiserver() {
    let c = Cluster::start_with(Backend::Real, false).await;

    // lint --strict, as CI of a chart repository runs it
    let lint = helm_ok(&c, &["lint", "--strict", "charts/kmsecrets"]);
    assert!(
        lint.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{lint}"
    );

    let base = release_prereqs(&c).await;
    let mut install = vec!["install", "kmsecrets", "charts/kmsecrets", "-n", RELEASE_NS];
    install.extend(base);
    let out = helm_ok(&c, &install);
    assert!(out.contains("STATUS: deployed"), "{out}");

    // the chart's CRD is installed and served, with its schema explained
    c.wait_crd().await;
    let explain = explain(&c, "esec.spec").await;
    for field in [
        "dataKeys",
        "encryptedData",
        "deletionPolicy",
        "scope",
        "template",
    ] {
        assert!(explain.contains(field), "explain lacks {field}:\n{explain}");
    }

    // the permission matrix of the installed ServiceAccount
    let sa = format!("system:serviceaccount:{RELEASE_NS}:kmsecrets");
    create_ns(&c, "apps").await;
    assert_matrix(
        &can_i_list(&c, &sa, "apps").await,
        "cluster-wide, any namespace",
    );
    assert_matrix(
        &can_i_list(&c, &sa, RELEASE_NS).await,
        "cluster-wide, release namespace",
    );

    // the controller with exactly these permissions materialises Secrets
    let ctl = SaController::start(&c, RELEASE_NS, "kmsecrets", &[]).await;
    sync_one(&c, "apps", "web", "v1", false).await;
    sync_one(&c, "apps", "kept", "v1", true).await;
    // leader election used the release namespace's Lease
    let lease = json_of(
        &c,
        &["get", "lease", "kmsecrets-controller", "-n", RELEASE_NS],
    )
    .await;
    assert_eq!(lease["spec"]["holderIdentity"], "kmsecrets-0");
    // events reach the API (events.k8s.io/v1 create is granted). A first
    // Synced records no Event, so make a Warning: a Secret that is not ours.
    c.kubectl(&[
        "create",
        "secret",
        "generic",
        "taken",
        "-n",
        "apps",
        "--from-literal=k=theirs",
    ])
    .await;
    let doc = c.encrypt(&[
        "--from-literal",
        "k=ours",
        "--name",
        "taken",
        "--namespace",
        "apps",
    ]);
    c.apply(&doc).await;
    c.wait_ready_within("apps", "taken", "False", "SecretConflict", 60 * SECOND)
        .await;
    eventually(20 * SECOND, "a SecretConflict event", async || {
        c.kubectl(&["get", "events", "-n", "apps", "-o", "yaml"])
            .await
            .contains("SecretConflict")
    })
    .await;
    assert_no_forbidden(&ctl.logs());
    let web_uid = c.secret("apps", "web").await.unwrap().metadata.uid;
    drop(ctl);

    // upgrade with changed values: the Deployment changes, the Secrets stay
    let dep0 = json_of(&c, &["get", "deployment", "kmsecrets", "-n", RELEASE_NS]).await;
    let mut upgrade = vec!["upgrade", "kmsecrets", "charts/kmsecrets", "-n", RELEASE_NS];
    upgrade.extend(base);
    upgrade.extend([
        "--set",
        "controller.concurrency=3",
        "--set",
        "cache.ttl=10m",
    ]);
    let out = helm_ok(&c, &upgrade);
    assert!(out.contains("REVISION: 2"), "{out}");
    let dep1 = json_of(&c, &["get", "deployment", "kmsecrets", "-n", RELEASE_NS]).await;
    let args1 = dep1["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert_ne!(
        dep0["spec"]["template"], dep1["spec"]["template"],
        "upgrade did not change the pod template"
    );
    assert!(args1.contains("--concurrency=3"), "{args1}");
    assert!(args1.contains("--dek-cache-ttl=10m"), "{args1}");
    assert_eq!(
        c.secret("apps", "web").await.unwrap().metadata.uid,
        web_uid,
        "upgrade replaced a Secret"
    );
    // the upgraded controller still works with the (unchanged) RBAC
    let ctl = SaController::start(&c, RELEASE_NS, "kmsecrets", &[]).await;
    sync_one(&c, "apps", "after-upgrade", "v2", false).await;
    assert_no_forbidden(&ctl.logs());
    drop(ctl);

    // uninstall: the controller's objects go; the CRD, every
    // EncryptedSecret and every Secret stay (docs/install.md "Uninstall")
    helm_ok(&c, &["uninstall", "kmsecrets", "-n", RELEASE_NS, "--wait"]);
    let gone = c
        .kubectl_raw(&["get", "deployment", "kmsecrets", "-n", RELEASE_NS])
        .await;
    assert!(!gone.status.success(), "Deployment survived uninstall");
    let crb = c
        .kubectl_raw(&["get", "clusterrolebinding", "kmsecrets"])
        .await;
    assert!(
        !crb.status.success(),
        "ClusterRoleBinding survived uninstall"
    );
    c.kubectl(&["get", "crd", "encryptedsecrets.kmsecrets.dev"])
        .await;
    for name in ["web", "kept", "after-upgrade"] {
        assert!(
            c.esec("apps", name).await.is_some(),
            "{name} EncryptedSecret gone"
        );
        assert!(c.secret("apps", name).await.is_some(), "{name} Secret gone");
    }

    // Removing the CRD last, with a controller running, as documented: every
    // EncryptedSecret goes, and the Retain one's finalizer orphans its
    // Secret first. (What the garbage collector then does with the Delete
    // ones' Secrets is its business: kube-controller-manager v1.37.2 left
    // them in place for over a minute once the owner type was gone; see
    // docs/install.md "Uninstall".)
    let _admin_ctl = c.controller(&[]);
    c.kubectl(&[
        "delete",
        "crd",
        "encryptedsecrets.kmsecrets.dev",
        "--timeout=60s",
    ])
    .await;
    let kept = c.secret("apps", "kept").await.expect("Retain Secret kept");
    assert!(
        kept.metadata
            .owner_references
            .unwrap_or_default()
            .is_empty(),
        "Retain Secret still owned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kustomize_deploy_rbac_is_exactly_enough() {
    let c = Cluster::start_with(Backend::Real, false).await;
    let deploy = repo_root().join("deploy");
    c.kubectl(&["apply", "-k", deploy.to_str().unwrap()]).await;
    c.wait_crd().await;
    let sa = format!("system:serviceaccount:{RELEASE_NS}:kmsecrets");
    create_ns(&c, "apps").await;
    assert_matrix(
        &can_i_list(&c, &sa, "apps").await,
        "cluster-wide, any namespace",
    );
    assert_matrix(
        &can_i_list(&c, &sa, RELEASE_NS).await,
        "cluster-wide, release namespace",
    );
    let dep = json_of(&c, &["get", "deployments", "-n", RELEASE_NS]).await;
    let name = dep["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let ctl = SaController::start(&c, RELEASE_NS, &name, &["--log-format=text"]).await;
    sync_one(&c, "apps", "web", "v1", false).await;

    // /metrics over HTTPS: no token 401, a ServiceAccount without the
    // metrics-reader role 403, with it 200 and the families there
    let (code, _) = ctl.metrics(None);
    assert_eq!(code, 401);
    let (code, _) = ctl.metrics(Some("not-a-token"));
    assert_eq!(code, 401);
    create_ns(&c, "monitoring").await;
    for sa in ["nosy", "prometheus"] {
        c.kubectl(&["create", "serviceaccount", sa, "-n", "monitoring"])
            .await;
    }
    let token = |sa: &'static str| {
        let c = &c;
        async move {
            c.kubectl(&["create", "token", sa, "-n", "monitoring"])
                .await
                .trim()
                .to_string()
        }
    };
    let nosy = token("nosy").await;
    let (code, body) = ctl.metrics(Some(&nosy));
    assert_eq!(code, 403, "{body}");
    c.kubectl(&[
        "create",
        "clusterrolebinding",
        "prometheus-kmsecrets-metrics",
        "--clusterrole=kmsecrets-metrics-reader",
        "--serviceaccount=monitoring:prometheus",
    ])
    .await;
    let prom = token("prometheus").await;
    let (code, body) = ctl.metrics(Some(&prom));
    assert_eq!(code, 200, "{body}");
    for family in [
        "kmsecrets_reconcile_total",
        "kmsecrets_dek_cache_entries",
        "kmsecrets_build_info",
    ] {
        assert!(body.contains(family), "{family} missing:\n{body}");
    }
    // a refusal is not cached past its short life, an allowance is reused
    let (code, _) = ctl.metrics(Some(&nosy));
    assert_eq!(code, 403);
    // the probes stay plain HTTP and open, for the kubelet
    let logs = ctl.logs();
    assert!(logs.contains("serving /metrics over HTTPS"), "{logs}");
    assert!(
        !logs.contains(&prom) && !logs.contains(&nosy),
        "a token in the log"
    );
    // drift repair and immutable replacement use get/patch/delete
    c.kubectl(&["delete", "secret", "web", "-n", "apps"]).await;
    c.wait_secret_data("apps", "web", &[("k", "v1")]).await;
    // the ServiceAccount cannot read Secrets' values through anything else:
    // (it can `get` Secrets, which is what the matrix documents)
    let denied = c
        .kubectl_raw(&[
            "auth", "can-i", "update", "secrets", "-n", "apps", "--as", &sa,
        ])
        .await;
    assert_eq!(String::from_utf8_lossy(&denied.stdout).trim(), "no");
    assert_no_forbidden(&ctl.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_validation_is_enforced_by_the_apiserver() {
    let c = Cluster::start_with(Backend::Real, false).await;
    let crds = repo_root().join("crds");
    c.kubectl(&["apply", "-f", crds.to_str().unwrap()]).await;
    c.wait_crd().await;
    let explain = explain(&c, "esec.spec.dataKeys").await;
    assert!(explain.contains("keyId"), "{explain}");

    let good: Value = serde_json::from_str(&c.encrypt(&[
        "--from-literal",
        "k=v",
        "--name",
        "ok",
        "--namespace",
        "default",
        "-o",
        "json",
    ]))
    .unwrap();
    c.apply(&good.to_string()).await;

    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "zero dataKeys",
            Box::new(|v| v["spec"]["dataKeys"] = json!([])),
            "spec.dataKeys: Invalid value: 0: spec.dataKeys in body should have at least 1 items",
        ),
        (
            "invalid data key name",
            Box::new(|v| {
                let val = v["spec"]["encryptedData"]["k"].clone();
                v["spec"]["encryptedData"]["bad/key"] = val;
            }),
            "encryptedData keys must match ^[-._a-zA-Z0-9]+$",
        ),
        (
            "reserved encryption-context key",
            Box::new(|v| {
                v["spec"]["encryptionContext"] = json!({"kmsecrets.dev/namespace": "x"});
            }),
            "encryptionContext keys may not use the reserved kmsecrets.dev/ prefix",
        ),
        (
            "reserved encryption-context key, other letter case",
            Box::new(|v| {
                v["spec"]["encryptionContext"] = json!({"KMSecrets.DEV/namespace": "x"});
            }),
            "encryptionContext keys may not use the reserved kmsecrets.dev/ prefix",
        ),
        (
            "bad scope",
            Box::new(|v| v["spec"]["scope"] = json!("galaxy")),
            "spec.scope: Unsupported value: \"galaxy\": supported values: \"strict\", \"namespace\", \"cluster\"",
        ),
    ];
    for (i, (what, mutate, message)) in cases.iter().enumerate() {
        let mut doc = good.clone();
        doc["metadata"]["name"] = json!(format!("bad-{i}"));
        mutate(&mut doc);
        let file = c.path(&format!("bad-{i}.json"));
        std::fs::write(&file, doc.to_string()).unwrap();
        let out = c
            .kubectl_raw(&["apply", "-f", file.to_str().unwrap()])
            .await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(
            err.contains(message),
            "{what}: rejected without the rule's message {message:?}:\n{err}"
        );
        assert!(c.esec("default", &format!("bad-{i}")).await.is_none());
    }
}

// ---------------------------------------------------------------------------
// KMS key states through local-kms

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_key_states_through_local_kms() {
    let c = Cluster::start_on(Backend::Real).await;
    let (kms, sdk, key_id, arn) = local_kms_key().await;
    let env = aws_test_env();
    let url = kms.url();
    // A disabled key is a permanent error, retried every
    // --permanent-error-retry (default 5m): shortened so re-enabling is
    // noticed within the test.
    let _ctl = c.controller_env(
        &["--kms-endpoint", &url, "--permanent-error-retry", "2s"],
        &env,
    );
    let file = c.path("db.yaml");
    let f = file.to_str().unwrap().to_string();
    let enc = |lit: &str| {
        let out = c.kmsecrets_env(
            &[
                "encrypt",
                "--key",
                &arn,
                "--kms-endpoint",
                &url,
                "--from-literal",
                lit,
                "--name",
                "db",
                "--namespace",
                "default",
            ],
            &env,
        );
        std::fs::write(&file, out).unwrap();
    };
    enc("pw=v1");
    c.kubectl(&["apply", "-f", &f]).await;
    c.wait_ready_within("default", "db", "True", "Synced", 30 * SECOND)
        .await;
    c.wait_secret_data("default", "db", &[("pw", "v1")]).await;
    let mut rv0 = c
        .secret("default", "db")
        .await
        .unwrap()
        .metadata
        .resource_version;

    // Each state: a new version of the resource (a fresh DEK, so nothing
    // cached can help) must fail closed with KmsKeyDisabled and leave the
    // existing Secret exactly as it was.
    let cases: [(&str, &str); 2] = [("disabled", "v2"), ("pending deletion", "v3")];
    for (state, value) in cases {
        put_in_state(&sdk, &key_id, state).await;
        // encrypt with the key usable from a break-glass identity is not the
        // point here: the CLI itself must also refuse a disabled key
        let refused = Command::new(common::cluster::kmsecrets_bin())
            .args(["encrypt", "--key", &arn, "--kms-endpoint", &url])
            .args([
                "--from-literal",
                "x=y",
                "--name",
                "n",
                "--namespace",
                "default",
            ])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert!(
            !refused.status.success(),
            "encrypt with a {state} key succeeded"
        );
        // so re-enable for the encrypt, then put the key back in the state
        reenable(&sdk, &key_id, state).await;
        enc(&format!("pw={value}"));
        put_in_state(&sdk, &key_id, state).await;
        c.kubectl(&["apply", "-f", &f]).await;
        c.wait_ready_within("default", "db", "False", "KmsKeyDisabled", 30 * SECOND)
            .await;
        let s = c.secret("default", "db").await.expect("Secret kept");
        assert_eq!(
            s.metadata.resource_version, rv0,
            "Secret touched while the key is {state}"
        );
        // re-enabled → converges to the new value
        reenable(&sdk, &key_id, state).await;
        c.wait_ready_within("default", "db", "True", "Synced", 60 * SECOND)
            .await;
        c.wait_secret_data("default", "db", &[("pw", value)]).await;
        // the next round compares against this version
        rv0 = c
            .secret("default", "db")
            .await
            .unwrap()
            .metadata
            .resource_version;
        eprintln!("key {state}: KmsKeyDisabled, Secret untouched, converged after re-enable");
    }
    drop(kms.proc);
}

/// Disable the key, or schedule its deletion (7 days, the minimum).
/// local-kms with one symmetric key: (server, SDK client, key id, ARN).
async fn local_kms_key() -> (LocalKms, aws_sdk_kms::Client, String, String) {
    let kms = LocalKms::start();
    let sdk = common::sdk_client(&kms.url()).await;
    let key = sdk
        .create_key()
        .send()
        .await
        .expect("CreateKey on local-kms")
        .key_metadata
        .unwrap();
    let (key_id, arn) = (key.key_id.clone(), key.arn.clone().unwrap());
    (kms, sdk, key_id, arn)
}

async fn put_in_state(sdk: &aws_sdk_kms::Client, key_id: &str, state: &str) {
    if state == "disabled" {
        sdk.disable_key().key_id(key_id).send().await.unwrap();
    } else {
        sdk.schedule_key_deletion()
            .key_id(key_id)
            .pending_window_in_days(7)
            .send()
            .await
            .unwrap();
    }
}

/// Back to Enabled from `state` (pending deletion: cancel → Disabled → enable).
async fn reenable(sdk: &aws_sdk_kms::Client, key_id: &str, state: &str) {
    if state != "disabled" {
        sdk.cancel_key_deletion()
            .key_id(key_id)
            .send()
            .await
            .unwrap();
    }
    sdk.enable_key().key_id(key_id).send().await.unwrap();
}

/// Revocation through local-kms (which enforces key states): a key
/// disabled during an incident stops working within one key check, not at
/// the DEK cache TTL — a resource edited afterwards (its data key cached)
/// fails with `KmsKeyDisabled`, while an untouched synced resource keeps
/// its Secret; both show `KeysHealthy=False` (`KeyDisabled`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_key_revokes_cached_data_keys_within_one_check() {
    let c = Cluster::start_on(Backend::Real).await;
    let kms = LocalKms::start();
    let sdk = common::sdk_client(&kms.url()).await;
    let key = sdk.create_key().send().await.unwrap().key_metadata.unwrap();
    let (key_id, arn) = (key.key_id.clone(), key.arn.clone().unwrap());
    let env = aws_test_env();
    let url = kms.url();
    let ctl = c.controller_env(
        &["--kms-endpoint", &url, "--key-check-interval", "2s"],
        &env,
    );
    for name in ["kept", "edited"] {
        let doc = c.kmsecrets_env(
            &[
                "encrypt",
                "--key",
                &arn,
                "--kms-endpoint",
                &url,
                "--from-literal",
                "pw=v1",
                "--name",
                name,
                "--namespace",
                "default",
            ],
            &env,
        );
        c.apply(&doc).await;
        c.wait_ready_within("default", name, "True", "Synced", 30 * SECOND)
            .await;
    }
    sdk.disable_key().key_id(&key_id).send().await.unwrap();
    let disabled = Instant::now();
    let keys_reason = async |name: &str| {
        c.esec("default", name)
            .await
            .and_then(|es| es.status)
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "KeysHealthy"))
            .map(|c| c.reason)
    };
    eventually(
        c.patience(),
        "both show KeysHealthy=False KeyDisabled",
        async || {
            keys_reason("kept").await.as_deref() == Some("KeyDisabled")
                && keys_reason("edited").await.as_deref() == Some("KeyDisabled")
        },
    )
    .await;
    let flagged = disabled.elapsed();
    assert!(
        ctl.metric(
            "kmsecrets_dek_cache_evictions_total",
            &[("reason", "revoked")]
        ) >= 2.0,
        "the cached data keys were revoked"
    );
    // an edit that keeps the data key (a new template) needs it again
    c.kubectl(&[
        "patch",
        "esec",
        "edited",
        "-n",
        "default",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"template":{"data":{"url":"x={{ pw }}"}}}}"#,
    ])
    .await;
    c.wait_ready_within("default", "edited", "False", "KmsKeyDisabled", 30 * SECOND)
        .await;
    let refused = disabled.elapsed();
    assert_eq!(
        c.secret_data("default", "edited").await.unwrap()["pw"],
        "v1"
    );
    assert!(
        !c.secret_data("default", "edited")
            .await
            .unwrap()
            .contains_key("url")
    );
    c.wait_ready_within("default", "kept", "True", "Synced", 5 * SECOND)
        .await;
    assert_eq!(c.secret_data("default", "kept").await.unwrap()["pw"], "v1");
    eprintln!(
        "revocation (local-kms): KeysHealthy=False {flagged:?} after DisableKey, the edited resource refused {refused:?} after it (interval 2 s, DEK cache TTL 1 h)"
    );
}

// ---------------------------------------------------------------------------
// Faults on the real control plane

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_restart_etcd_outage_and_leader_kill_converge() {
    let c = Cluster::start_on(Backend::Real).await;
    let cp = c.real().unwrap();
    let ns = "bulk";
    create_ns(&c, ns).await;
    const N: usize = 200;
    const DEKS: usize = 20;
    let file = bulk_manifest(&c, ns, "s", N, DEKS);
    let flags = [
        "--leader-elect",
        "--leader-election-namespace",
        "default",
        // the chart's default: a 3 s apiserver restart must not cost the
        // lease; the 10 s etcd outage may (then the replica exits and is
        // restarted below, as the kubelet would)
        "--leader-election-lease-duration",
        "15s",
    ];
    let a = c.controller_env(&flags, &[("POD_NAME", "ctl-a".into())]);
    let b = c.controller_env(&flags, &[("POD_NAME", "ctl-b".into())]);
    let unwraps = |ctl: &common::cluster::Controller| {
        ctl.metric("kmsecrets_kms_requests_total", &[("operation", "decrypt")])
    };

    // 1. kube-apiserver restarted (SIGKILL) in the middle of syncing 200
    c.kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()])
        .await;
    let t0 = Instant::now();
    eventually(60 * SECOND, "some Secrets written", async || {
        c.kubectl(&["get", "secrets", "-n", ns, "-o", "name"])
            .await
            .lines()
            .count()
            >= 20
    })
    .await;
    let took = cp.restart_apiserver(true).await.unwrap();
    eventually(
        120 * SECOND,
        "all 200 Secrets correct after apiserver restart",
        async || all_synced(&c, ns, "s", N, DEKS).await,
    )
    .await;
    let calls1 = unwraps(&a) + unwraps(&b);
    eprintln!(
        "apiserver SIGKILL+restart ({took:?}) mid-sync: 200 converged in {:?}, {calls1} unwraps for {DEKS} DEKs",
        t0.elapsed()
    );
    assert!(
        calls1 <= (2 * DEKS) as f64,
        "{calls1} unwraps for {DEKS} DEKs: the cache did not hold across the restart"
    );

    // 2. etcd down for 10 s: nothing deleted or emptied, converges after
    let uids: Vec<_> = secret_uids(&c, ns).await;
    let stopping = Instant::now();
    cp.stop_etcd();
    let down = Instant::now();
    tokio::time::sleep(10 * SECOND).await; // the outage itself, on purpose
    cp.start_etcd().unwrap();
    cp.wait_ready(60 * SECOND).await.unwrap();
    eprintln!(
        "etcd stopped (SIGTERM took {:?}), down 10 s; apiserver ready again {:?} after the stop",
        down - stopping,
        down.elapsed()
    );
    // a change made after the outage still reaches its Secret
    let lit = "k=value-after-etcd";
    let doc = c.encrypt(&[
        "--from-literal",
        lit,
        "--name",
        "post-etcd",
        "--namespace",
        ns,
    ]);
    c.apply(&doc).await;
    c.wait_ready_within(ns, "post-etcd", "True", "Synced", 60 * SECOND)
        .await;
    assert!(
        all_synced(&c, ns, "s", N, DEKS).await,
        "a Secret changed during the etcd outage"
    );
    assert_eq!(
        secret_uids(&c, ns).await[..N],
        uids[..N],
        "a Secret was replaced"
    );

    // A replica that lost the lease while etcd was down stops its
    // controllers and exits (so that a fresh start competes again); the
    // kubelet would restart it, and so does this test.
    let (mut a, mut b) = (a, b);
    eventually(
        30 * SECOND,
        "no replica left stopped but running",
        async || {
            [&mut a, &mut b]
                .into_iter()
                .all(|ctl| !ctl.is_running() || !ctl.logs().contains("controller stopped"))
        },
    )
    .await;
    // A stale leader may notice the lost lease only seconds after etcd is
    // back (seen in CI: 12 s later, after it had synced post-etcd), so the
    // restart and the lease read are one poll: both replicas running and the
    // lease held by one of them, read in the same pass.
    let mut holder = String::new();
    eventually(
        60 * SECOND,
        "both replicas running, one holding the lease",
        async || {
            for (ctl, id) in [(&mut a, "ctl-a"), (&mut b, "ctl-b")] {
                if !ctl.is_running() {
                    assert!(
                        ctl.logs().contains("lost leadership"),
                        "{id} exited:\n{}",
                        ctl.logs()
                    );
                    eprintln!("{id} lost the lease during the etcd outage and exited; restarted");
                    *ctl = c.controller_env(&flags, &[("POD_NAME", id.into())]);
                }
            }
            let v = json_of(
                &c,
                &["get", "lease", "kmsecrets-controller", "-n", "default"],
            )
            .await;
            holder = v["spec"]["holderIdentity"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            matches!(holder.as_str(), "ctl-a" | "ctl-b") && a.is_running() && b.is_running()
        },
    )
    .await;

    // 3. kill -9 the leader: the standby takes over, nothing is lost
    let (mut leader, standby) = if holder == "ctl-a" { (a, b) } else { (b, a) };
    // (the leader may exit on its own right now, see above: read it softly)
    let soft = |ctl: &common::cluster::Controller| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unwraps(ctl))).unwrap_or(0.0)
    };
    let before = soft(&leader) + unwraps(&standby);
    leader.kill();
    let killed = Instant::now();
    let doc = c.encrypt(&[
        "--from-literal",
        "k=value-after-kill",
        "--name",
        "post-kill",
        "--namespace",
        ns,
    ]);
    c.apply(&doc).await;
    c.wait_ready_within(ns, "post-kill", "True", "Synced", 60 * SECOND)
        .await;
    eventually(
        60 * SECOND,
        "all 200 still correct after failover",
        async || all_synced(&c, ns, "s", N, DEKS).await,
    )
    .await;
    let standby_calls = unwraps(&standby);
    eprintln!(
        "leader kill -9: standby synced a new resource {:?} after; standby unwraps {standby_calls} (before kill total {before})",
        killed.elapsed()
    );
    // the standby unwraps each distinct DEK at most once (+2 new resources)
    assert!(
        standby_calls <= (DEKS + 2 + 2) as f64,
        "standby made {standby_calls} unwraps for {DEKS} DEKs"
    );
}

async fn secret_uids(c: &Cluster, ns: &str) -> Vec<String> {
    let list = kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c.client.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap();
    let mut v: Vec<(String, String)> = list
        .items
        .into_iter()
        .filter(|s| {
            s.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("s-"))
        })
        .map(|s| (s.metadata.name.unwrap(), s.metadata.uid.unwrap()))
        .collect();
    v.sort();
    v.into_iter().map(|(_, u)| u).collect()
}

// ---------------------------------------------------------------------------
// Offline sealing to an RSA KMS key, through local-kms (real RSA-OAEP)

/// `kmsecrets` with NO AWS environment at all: no credentials, region,
/// endpoint, profile or config file, and an empty HOME.
fn kmsecrets_offline(c: &Cluster, args: &[&str]) -> Output {
    let home = c.path("offline-home");
    std::fs::create_dir_all(&home).unwrap();
    Command::new(common::cluster::kmsecrets_bin())
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &home)
        .current_dir(c.path(""))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_sealing_through_local_kms() {
    let c = Cluster::start_on(Backend::Real).await;
    let kms = LocalKms::start();
    let sdk = common::sdk_client(&kms.url()).await;
    let rsa_arn = sdk
        .create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::Rsa2048)
        .key_usage(aws_sdk_kms::types::KeyUsageType::EncryptDecrypt)
        .send()
        .await
        .expect("CreateKey RSA_2048 on local-kms")
        .key_metadata
        .unwrap()
        .arn
        .unwrap();
    let sym_arn = sdk
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .arn
        .unwrap();
    let sign_arn = sdk
        .create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::EccNistP256)
        .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .arn
        .unwrap();
    let env = aws_test_env();
    let url = kms.url();
    let with_env = |args: &[&str]| -> Output {
        Command::new(common::cluster::kmsecrets_bin())
            .args(args)
            .args(["--kms-endpoint", &url])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(c.path(""))
            .output()
            .unwrap()
    };

    // pubkey: the SealingKey file; keys that cannot seal are refused in one line
    let sk = c.path("sealing-key.yaml");
    let sk_s = sk.to_str().unwrap().to_string();
    check(
        with_env(&["pubkey", "--key", &rsa_arn, "-o", &sk_s]),
        "pubkey",
    );
    let text = std::fs::read_to_string(&sk).unwrap();
    assert!(
        text.contains("kind: SealingKey") && text.contains(&rsa_arn),
        "{text}"
    );
    assert!(text.contains("BEGIN PUBLIC KEY"), "{text}");
    for (arn, what) in [(&sym_arn, "SYMMETRIC_DEFAULT"), (&sign_arn, "SIGN_VERIFY")] {
        let out = with_env(&["pubkey", "--key", arn]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "pubkey of a {what} key succeeded");
        assert!(
            err.contains("offline sealing needs an RSA") && err.trim().lines().count() == 1,
            "pubkey {what}: {err}"
        );
    }

    // encrypt with no AWS environment at all
    let key = format!("pub:{sk_s}");
    let sealed = kmsecrets_offline(
        &c,
        &[
            "encrypt",
            "--key",
            &key,
            "--name",
            "db",
            "--namespace",
            "default",
            "--from-literal",
            "password=offline-s3cret",
            "--generate",
            "token=16",
        ],
    );
    let doc = check(sealed, "offline encrypt (no AWS environment)");
    assert!(doc.contains("algorithm: RSAES_OAEP_SHA_256"), "{doc}");
    assert!(!doc.contains("offline-s3cret"));
    let file = c.path("db.yaml");
    std::fs::write(&file, &doc).unwrap();
    // verify is offline too
    check(
        kmsecrets_offline(&c, &["verify", file.to_str().unwrap()]),
        "offline verify",
    );

    // the controller unwraps through KMS Decrypt(RSAES_OAEP_SHA_256)
    let ctl = c.controller_env(&["--kms-endpoint", &url], &env);
    c.kubectl(&["apply", "-f", file.to_str().unwrap()]).await;
    c.wait_ready_within("default", "db", "True", "Synced", 30 * SECOND)
        .await;
    let data = c.secret_data("default", "db").await.unwrap();
    assert_eq!(data["password"], "offline-s3cret");
    let raw = c.secret("default", "db").await.unwrap().data.unwrap();
    assert_eq!(raw["token"].0.len(), 16, "generated offline: 16 bytes");
    let es = c.esec("default", "db").await.unwrap();
    assert_eq!(es.status.unwrap().key_id.as_deref(), Some(rsa_arn.as_str()));
    // and the CLI decrypts it with KMS access
    let out = check(
        with_env(&["decrypt", "-f", file.to_str().unwrap()]),
        "decrypt",
    );
    assert!(out.contains("kind: Secret"), "{out}");

    // mixed: the offline-sealed copy plus a symmetric break-glass copy of
    // the same DEK (`--key RSA-ARN` is covered against the fake in
    // tests/layer.rs: local-kms answers GenerateDataKey on an RSA key with
    // InternalFailure where KMS says InvalidKeyUsage)
    let mixed = check(
        with_env(&[
            "encrypt",
            "--key",
            &key,
            "--key",
            &sym_arn,
            "--name",
            "mixed",
            "--namespace",
            "default",
            "--from-literal",
            "k=v",
            "-o",
            "json",
        ]),
        "encrypt --key pub:FILE --key SYMMETRIC-ARN",
    );
    let mut mixed: Value = serde_json::from_str(&mixed).unwrap();
    let keys = mixed["spec"]["dataKeys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["algorithm"], "RSAES_OAEP_SHA_256");
    assert!(keys[1].get("algorithm").is_none(), "{}", keys[1]);
    for (i, only) in keys.iter().enumerate() {
        mixed["spec"]["dataKeys"] = json!([only]);
        let f = c.path(&format!("mixed-{i}.json"));
        std::fs::write(&f, mixed.to_string()).unwrap();
        let out = check(
            with_env(&["decrypt", "-f", f.to_str().unwrap(), "-o", "json"]),
            &format!("decrypt with copy {i} only"),
        );
        let s: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(s["data"]["k"], "dg==", "copy {i}");
    }

    // Binding: the offline-sealed resource moved to another namespace, and a
    // wrapped DEK transplanted from another resource: DecryptFailed with the
    // binding message, no Secret.
    c.kubectl(&["create", "namespace", "other"]).await;
    let moved = doc.replace("namespace: default", "namespace: other");
    c.kubectl_stdin(&["apply", "-f", "-"], &moved).await;
    let other = kmsecrets_offline(
        &c,
        &[
            "encrypt",
            "--key",
            &key,
            "--name",
            "other-app",
            "--namespace",
            "default",
            "--from-literal",
            "x=y",
            "-o",
            "json",
        ],
    );
    let other: Value = serde_json::from_str(&check(other, "offline encrypt 2")).unwrap();
    let mut es_json: Value = serde_json::from_str(&check(
        kmsecrets_offline(
            &c,
            &[
                "encrypt",
                "--key",
                &key,
                "--name",
                "victim",
                "--namespace",
                "default",
                "--from-literal",
                "x=z",
                "-o",
                "json",
            ],
        ),
        "offline encrypt 3",
    ))
    .unwrap();
    es_json["spec"]["dataKeys"] = other["spec"]["dataKeys"].clone();
    c.kubectl_stdin(&["apply", "-f", "-"], &es_json.to_string())
        .await;
    for (ns, name) in [("other", "db"), ("default", "victim")] {
        c.wait_ready_within(ns, name, "False", "DecryptFailed", 30 * SECOND)
            .await;
        let es = c.esec(ns, name).await.unwrap();
        let cond = kmsecrets::controller::status::ready_condition(es.status.as_ref())
            .unwrap()
            .message
            .clone();
        assert!(
            cond.contains("bound to another namespace/name/scope"),
            "{ns}/{name}: {cond}"
        );
        assert!(
            c.secret(ns, name).await.is_none(),
            "{ns}/{name}: a Secret appeared"
        );
    }
    // renamed, scope widened, context added: the CLI says the same
    type Edit = Box<dyn Fn(&mut Value)>;
    let edits: [(&str, Edit); 3] = [
        (
            "renamed",
            Box::new(|v: &mut Value| v["metadata"]["name"] = json!("db2")),
        ),
        (
            "scope widened",
            Box::new(|v: &mut Value| v["spec"]["scope"] = json!("namespace")),
        ),
        (
            "context added",
            Box::new(|v: &mut Value| v["spec"]["encryptionContext"] = json!({"team": "x"})),
        ),
    ];
    let base: Value = serde_json::from_str(&check(
        kmsecrets_offline(
            &c,
            &[
                "encrypt",
                "--key",
                &key,
                "--name",
                "db",
                "--namespace",
                "default",
                "--from-literal",
                "a=b",
                "-o",
                "json",
            ],
        ),
        "offline encrypt 4",
    ))
    .unwrap();
    for (what, edit) in edits {
        let mut v = base.clone();
        edit(&mut v);
        let f = c.path(&format!("edited-{}.json", what.replace(' ', "-")));
        std::fs::write(&f, v.to_string()).unwrap();
        let out = with_env(&["decrypt", "-f", f.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: decrypted");
        assert!(
            err.contains("bound to another namespace/name/scope"),
            "{what}: {err}"
        );
    }
    // changing values needs kms:Decrypt: offline, edit-like commands say so
    let out = kmsecrets_offline(
        &c,
        &[
            "encrypt",
            "--key",
            &key,
            "--from-literal",
            "extra=1",
            "--merge-into",
            file.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("only kms:Decrypt") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), doc, "file touched");
    drop(ctl);
    drop(kms.proc);
}

// ---------------------------------------------------------------------------
// GitOps health: Argo CD's Lua, kstatus, kubectl wait

/// Runs tools/helpers/gitops-checks (gopher-lua set up as Argo CD does, and
/// sigs.k8s.io/cli-utils kstatus) on an object; its JSON answer.
fn gitops_check(obj: &Value, args: &[&str]) -> Value {
    use std::io::Write as _;
    let mut child = Command::new(kmsecrets_envtest::go_helper("gitops-checks"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gitops-checks");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(obj.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "gitops-checks {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn argo_file(name: &str) -> String {
    repo_root()
        .join("charts/kmsecrets/files/argocd")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// (Argo CD health status, message), kstatus status.
fn health_of(obj: &Value) -> (String, String, String) {
    let h = gitops_check(obj, &["argocd-health", &argo_file("health.lua")]);
    let k = gitops_check(obj, &["kstatus"]);
    (
        h["status"].as_str().unwrap_or_default().to_string(),
        h["message"].as_str().unwrap_or_default().to_string(),
        k["status"].as_str().unwrap_or_default().to_string(),
    )
}

/// The shipped Argo CD health check and resync action, kstatus and `kubectl
/// wait`, each on status objects the real controller wrote on the real
/// apiserver: not yet observed, Synced, a permanent error, and a synced
/// Secret whose KMS key is pending deletion (local-kms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_cd_health_kstatus_and_kubectl_wait_read_what_the_controller_wrote() {
    let c = Cluster::start_on(Backend::Real).await;
    let (kms, sdk, key_id, arn) = local_kms_key().await;
    let env = aws_test_env();
    let url = kms.url();
    let get = async |name: &str| json_of(&c, &["get", "esec", name, "-n", "default"]).await;

    // three resources before any controller runs
    let web = c.encrypt(&[
        "--from-literal",
        "k=v",
        "--name",
        "web",
        "--namespace",
        "default",
    ]);
    c.apply(&web).await;
    // sealed for another namespace, applied here: the binding refuses it
    let mut broken: Value = serde_json::from_str(&c.encrypt(&[
        "--from-literal",
        "k=v",
        "--name",
        "broken",
        "--namespace",
        "elsewhere",
        "-o",
        "json",
    ]))
    .unwrap();
    broken["metadata"]["namespace"] = json!("default");
    c.apply(&broken.to_string()).await;
    let kept = c.kmsecrets_env(
        &[
            "encrypt",
            "--key",
            &arn,
            "--kms-endpoint",
            &url,
            "--from-literal",
            "k=v",
            "--name",
            "kept",
            "--namespace",
            "default",
        ],
        &env,
    );
    c.apply(&kept).await;

    // not yet observed: the CRD defaults status.observedGeneration to 0
    let obj = get("web").await;
    assert_eq!(obj["status"]["observedGeneration"], json!(0), "{obj}");
    let (h, msg, k) = health_of(&obj);
    assert_eq!(
        (h.as_str(), k.as_str()),
        ("Progressing", "InProgress"),
        "{msg}"
    );
    let early = c
        .kubectl_raw(&[
            "wait",
            "--for=condition=Ready",
            "esec/web",
            "-n",
            "default",
            "--timeout=2s",
        ])
        .await;
    assert!(
        !early.status.success(),
        "kubectl wait passed before any controller"
    );

    let ctl = c.controller_env(
        &["--kms-endpoint", &url, "--key-check-interval", "2s"],
        &env,
    );
    let waited = c
        .kubectl_raw(&[
            "wait",
            "--for=condition=Ready",
            "esec/web",
            "esec/kept",
            "-n",
            "default",
            "--timeout=60s",
        ])
        .await;
    assert!(
        waited.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&waited.stderr)
    );
    let (h, msg, k) = health_of(&get("web").await);
    assert_eq!((h.as_str(), k.as_str()), ("Healthy", "Current"));
    assert!(msg.contains("up to date"), "{msg}");

    // a permanent error: Degraded with reason and message; kstatus Failed
    c.wait_ready_within("default", "broken", "False", "DecryptFailed", 60 * SECOND)
        .await;
    let obj = get("broken").await;
    let (h, msg, k) = health_of(&obj);
    assert_eq!((h.as_str(), k.as_str()), ("Degraded", "Failed"), "{obj}");
    assert!(msg.starts_with("DecryptFailed: "), "{msg}");

    // the resync action: an annotation, nothing else; applied, it makes the
    // controller reconcile at once (not after --permanent-error-retry)
    let acted = gitops_check(&obj, &["argocd-action", &argo_file("resync-action.lua")]);
    let stamp = acted["metadata"]["annotations"]["kmsecrets.dev/resync-requested-at"]
        .as_str()
        .expect("the action stamps its annotation");
    assert!(stamp.ends_with('Z') && stamp.len() == 20, "{stamp}");
    assert_eq!(acted["spec"], obj["spec"], "the action changed the spec");
    let actions = gitops_check(&obj, &["argocd-action", &argo_file("resync-discovery.lua")]);
    assert_eq!(actions["resync"]["disabled"], json!(false), "{actions}");
    let reconciles = || ctl.metric("kmsecrets_reconcile_total", &[]);
    // quiet first: no reconcile runs on its own in 3 s (the failed one
    // waits --permanent-error-retry, 5 min), so the next one is the action's
    let before = reconciles();
    tokio::time::sleep(3 * SECOND).await;
    assert_eq!(reconciles(), before, "reconciles without a change");
    let file = c.path("acted.json");
    let mut acted = acted;
    acted.as_object_mut().unwrap().remove("status");
    std::fs::write(&file, acted.to_string()).unwrap();
    c.kubectl(&["replace", "-f", file.to_str().unwrap()]).await;
    eventually(
        20 * SECOND,
        "a reconcile after the resync action",
        async || reconciles() > before,
    )
    .await;

    // the key of a synced resource scheduled for deletion: still Ready,
    // Degraded in Argo CD with the KeysHealthy reason
    put_in_state(&sdk, &key_id, "pending deletion").await;
    let obj = eventually(30 * SECOND, "KeysHealthy=False on kept", async || {
        let obj = get("kept").await;
        let conds = obj["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conds
            .iter()
            .any(|c| c["type"] == "KeysHealthy" && c["status"] == "False")
            .then_some(obj)
    })
    .await;
    let (h, msg, k) = health_of(&obj);
    assert_eq!(h, "Degraded", "{obj}");
    assert!(
        msg.contains("KeysHealthy=False (KeyPendingDeletion"),
        "{msg}"
    );
    assert_eq!(k, "Current", "Ready=True: kstatus knows no KeysHealthy");
    reenable(&sdk, &key_id, "pending deletion").await;
    assert_no_forbidden(&ctl.logs());
}

/// Faults during a cold start at scale (tests/common/faults.rs): 1,000
/// resources over 100 data keys, two replicas with leader election; the
/// kube-apiserver SIGKILLed at ~30 % of Secrets present, etcd frozen 10 s at
/// ~60 %, the leader SIGKILLed at ~80 %. Every Secret ends correct, none
/// was ever deleted or emptied, KMS Decrypts stay within data keys ×
/// leadership terms, Secret writes within N + 1 %; the converge time is
/// reported beside a no-fault run of the same size on the same cluster.
/// (10,000: `cargo run --release --example faults_at_scale`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_during_a_cold_start_at_scale() {
    let c = Cluster::start_on(Backend::Real).await;
    const N: usize = 1000;
    const DEKS: usize = 100;
    let calm = faults::cold_start(&c, "calm", N, DEKS, false).await;
    eprintln!("{}", calm.line("no faults"));
    let storm = faults::cold_start(&c, "storm", N, DEKS, true).await;
    eprintln!("{}", storm.line("faults"));
    for r in [&calm, &storm] {
        assert!(
            r.emptied.is_empty(),
            "Secrets deleted or emptied: {:?}",
            r.emptied
        );
        assert_eq!(r.deletes, 0, "Secret deletes");
        assert!(
            r.decrypts <= (DEKS * r.terms) as f64,
            "{} Decrypts for {DEKS} DEKs over {} leadership terms",
            r.decrypts,
            r.terms
        );
        // (the audit log can miss the last writes before a SIGKILL of
        // the apiserver: a bound from above, and exact without faults)
        let extra: usize = r.extra_writes_by_phase.iter().sum();
        assert!(
            r.writes as f64 <= N as f64 * 1.01 && extra * 100 <= N,
            "{} Secret writes for {N} resources, {extra} beyond the first per Secret",
            r.writes
        );
    }
    assert_eq!(calm.writes, N, "one write per Secret without faults");
    assert_eq!(
        storm.faults.iter().map(|f| f.0).collect::<Vec<_>>(),
        ["apiserver SIGKILL", "etcd SIGSTOP 10 s", "leader SIGKILL"]
    );
    assert!(storm.terms >= 2, "the leader was killed: a second term");
    assert_eq!(calm.terms, 1);
}

/// The chart of the commit before the production-posture work (metrics
/// behind authn/authz, kstatus conditions, CRD status default): what a
/// user upgrades from.
const PREVIOUS_CHART_REV: &str = "047cf7ac93d6acf0c5feb47f2922040344ea94e4";

/// `helm upgrade` from the previous chart (packaged from git) to the
/// working tree's, with 1,000 live resources, then `helm rollback`: no
/// Secret's resourceVersion changes, no resource leaves Ready, the CRD
/// (applied first, as docs/install.md says) keeps every stored object, and
/// each release's controller — with exactly its own RBAC — takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_and_rollback_with_live_resources_rewrite_no_secret() {
    const N: usize = 1000;
    const DEKS: usize = 50;
    let c = Cluster::start_with(Backend::Real, false).await;
    // the previous release's chart, packaged from git
    let old_src = c.path("old-src");
    std::fs::create_dir_all(&old_src).unwrap();
    let archive = Command::new("git")
        .args([
            "archive",
            "--format=tar",
            PREVIOUS_CHART_REV,
            "charts/kmsecrets",
        ])
        .current_dir(repo_root())
        .output()
        .expect("git is needed to package the previous chart");
    assert!(
        archive.status.success(),
        "git archive {PREVIOUS_CHART_REV}: {} (the upgrade test needs the repository's history: a full clone, not a shallow one)",
        String::from_utf8_lossy(&archive.stderr)
    );
    let mut tar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(&old_src)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(tar.stdin.as_mut().unwrap(), &archive.stdout).unwrap();
    drop(tar.stdin.take());
    assert!(tar.wait().unwrap().success());
    let pkg_dir = c.path("old-pkg");
    let out = helm_ok(
        &c,
        &[
            "package",
            old_src.join("charts/kmsecrets").to_str().unwrap(),
            "-d",
            pkg_dir.to_str().unwrap(),
        ],
    );
    let old_tgz = out
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(old_tgz.ends_with(".tgz"), "{out}");

    let base = release_prereqs(&c).await;
    let mut install = vec!["install", "kmsecrets", old_tgz.as_str(), "-n", RELEASE_NS];
    install.extend(base);
    helm_ok(&c, &install);
    c.wait_crd().await;
    let old_ctl = SaController::start(&c, RELEASE_NS, "kmsecrets", &[]).await;
    create_ns(&c, "apps").await;
    let file = bulk_manifest(&c, "apps", "s", N, DEKS);
    c.kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()])
        .await;
    eventually(
        180 * SECOND,
        "1,000 Secrets from the previous release",
        async || all_synced(&c, "apps", "s", N, DEKS).await,
    )
    .await;
    let ready = async || {
        let out = c
            .kubectl_raw(&[
                "get",
                "esec",
                "-n",
                "apps",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ])
            .await;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.ends_with("=True"))
            .count()
    };
    eventually(60 * SECOND, "all Ready", async || ready().await == N).await;
    let versions = async || -> BTreeMap<String, String> {
        kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c.client.clone(), "apps")
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|s| {
                (
                    s.metadata.name.unwrap(),
                    s.metadata.resource_version.unwrap(),
                )
            })
            .collect()
    };
    let v0 = versions().await;
    assert_eq!(v0.len(), N);
    let writes0 = c.real().unwrap().secret_writes().len();
    // a scraper's token, for the upgraded release's HTTPS metrics
    create_ns(&c, "monitoring").await;
    c.kubectl(&["create", "serviceaccount", "prometheus", "-n", "monitoring"])
        .await;
    let token = c
        .kubectl(&["create", "token", "prometheus", "-n", "monitoring"])
        .await
        .trim()
        .to_string();
    // the new controller has reconciled every resource once it started
    let caught_up = async |ctl: &SaController| {
        let mut last = None;
        let start = Instant::now();
        while !last.is_some_and(|v| v >= N as f64) {
            assert!(
                start.elapsed() < 120 * SECOND,
                "the new controller did not reconcile everything: kmsecrets_reconcile_total {last:?}; https {:?}\n{}",
                ctl.metrics_port.map(|_| ctl.metrics(Some(&token)).0),
                ctl.logs()
            );
            last = ctl.metric("kmsecrets_reconcile_total", &token);
            tokio::time::sleep(SECOND / 5).await;
        }
    };

    // upgrade: the new CRD first (as documented), then the chart; the
    // Deployment's new pod (this process) replaces the old one
    c.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        repo_root().join("crds").to_str().unwrap(),
    ])
    .await;
    let mut upgrade = vec!["upgrade", "kmsecrets", "charts/kmsecrets", "-n", RELEASE_NS];
    upgrade.extend(base);
    upgrade.extend([
        "--set",
        "metrics.readers[0].kind=ServiceAccount",
        "--set",
        "metrics.readers[0].name=prometheus",
        "--set",
        "metrics.readers[0].namespace=monitoring",
    ]);
    let out = helm_ok(&c, &upgrade);
    assert!(out.contains("REVISION: 2"), "{out}");
    drop(old_ctl);
    let new_ctl = SaController::start(&c, RELEASE_NS, "kmsecrets", &[]).await;
    assert!(
        new_ctl.metrics_port.is_some(),
        "the upgraded release serves HTTPS metrics"
    );
    caught_up(&new_ctl).await;
    assert_eq!(ready().await, N, "a resource left Ready after the upgrade");
    assert_eq!(versions().await, v0, "the upgrade rewrote a Secret");
    let esecs = c
        .kubectl(&["get", "esec", "-n", "apps", "-o", "name"])
        .await;
    assert_eq!(esecs.lines().count(), N, "the CRD lost stored objects");
    assert_no_forbidden(&new_ctl.logs());

    // rollback: the previous release's Deployment and RBAC again
    helm_ok(&c, &["rollback", "kmsecrets", "1", "-n", RELEASE_NS]);
    let history = helm_ok(&c, &["history", "kmsecrets", "-n", RELEASE_NS]);
    assert!(history.contains("Rollback to 1"), "{history}");
    drop(new_ctl);
    let back = SaController::start(&c, RELEASE_NS, "kmsecrets", &[]).await;
    assert!(back.metrics_port.is_none(), "rolled back to plain metrics");
    caught_up(&back).await;
    assert_eq!(ready().await, N, "a resource left Ready after the rollback");
    assert_eq!(versions().await, v0, "the rollback rewrote a Secret");
    assert_no_forbidden(&back.logs());
    let writes = c.real().unwrap().secret_writes()[writes0..]
        .iter()
        .filter(|(_, ns, _, _)| ns == "apps")
        .count();
    assert_eq!(
        writes, 0,
        "Secret writes during upgrade and rollback (audit log)"
    );
}
