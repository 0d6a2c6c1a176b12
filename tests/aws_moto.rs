//! Wire compatibility: the real aws-sdk-kms client (through our `aws-kms`
//! provider, the resilience layer and the CLI) against a real moto server the
//! harness starts, plus a fault-injecting proxy for throttling and outages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{KmsProxy, Moto, aws_test_env, create_key, sdk_client, test_credentials};
use kmsecrets::kms::aws::{AwsKms, AwsOptions};
use kmsecrets::kms::layer::{Kms, LayerConfig, Providers};
use kmsecrets::kms::{EncryptionContext, KmsError, KmsProvider};
use kmsecrets::metrics::Metrics;

fn opts(endpoint: &str, region: &str) -> AwsOptions {
    AwsOptions {
        region: Some(region.into()),
        endpoint: Some(endpoint.into()),
        static_credentials: Some(test_credentials()),
        ..Default::default()
    }
}

fn ctx(ns: &str) -> EncryptionContext {
    [
        ("kmsecrets.dev/scope".to_string(), "namespace".to_string()),
        ("kmsecrets.dev/namespace".to_string(), ns.to_string()),
    ]
    .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kms_operation_against_moto() {
    let moto = Moto::start();
    let raw = sdk_client(&moto.url()).await;
    let key1 = create_key(&raw, "alias/kmsecrets-one").await;
    let key2 = create_key(&raw, "alias/kmsecrets-two").await;
    assert!(key1.starts_with("arn:aws:kms:us-east-1:"), "{key1}");

    // Configured region differs from the key's: the ARN's region must win
    // (moto keeps keys per region, so a wrong region would not find them).
    let aws = AwsKms::new(opts(&moto.url(), "eu-west-1")).await;
    let c = ctx("payments");

    // GenerateDataKey (by alias ARN? by ARN) + Decrypt
    let (dek, w) = aws.generate_data_key(&key1, &c).await.unwrap();
    assert_eq!(w.key_id, key1);
    let back = aws.decrypt(&w.key_id, &w.ciphertext, &c).await.unwrap();
    assert_eq!(back.expose(), dek.expose());

    // Encryption-context mismatch → InvalidCiphertext (bounded reason DecryptFailed)
    let err = aws
        .decrypt(&w.key_id, &w.ciphertext, &ctx("elsewhere"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, KmsError::InvalidCiphertext(_)), "{err:?}");
    assert_eq!(err.reason().as_str(), "DecryptFailed");
    let mut extra = c.clone();
    extra.insert("team".into(), "x".into());
    assert!(matches!(
        aws.decrypt(&w.key_id, &w.ciphertext, &extra).await,
        Err(KmsError::InvalidCiphertext(_))
    ));

    // A flipped bit in the CiphertextBlob
    let mut bad = w.ciphertext.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    assert!(aws.decrypt(&w.key_id, &bad, &c).await.is_err());

    // Encrypt: 4096 bytes pass, 4097 are refused before the wire, naming envelope encryption
    let w4096 = aws.encrypt(&key2, &[7u8; 4096], &c).await.unwrap();
    assert_eq!(w4096.key_id, key2);
    let err = aws.encrypt(&key2, &[7u8; 4097], &c).await.err().unwrap();
    assert!(err.to_string().contains("envelope encryption"), "{err}");
    // ...and moto itself enforces the real limit
    let raw_err = raw
        .encrypt()
        .key_id(&key2)
        .plaintext(aws_sdk_kms::primitives::Blob::new(vec![0u8; 4097]))
        .send()
        .await
        .err()
        .unwrap();
    assert_eq!(
        kmsecrets::kms::aws::classify(raw_err).metric_result(),
        "error"
    );

    // Encrypt the same DEK under a second key (multi-key dataKeys)
    let w2 = aws.encrypt(&key2, dek.expose(), &c).await.unwrap();
    assert_eq!(
        aws.decrypt(&w2.key_id, &w2.ciphertext, &c)
            .await
            .unwrap()
            .expose(),
        dek.expose()
    );

    // GenerateDataKeyWithoutPlaintext (alias accepted) → decrypts to a 32-byte key
    let wp = aws
        .generate_data_key_without_plaintext("alias/kmsecrets-one", &c)
        .await;
    // moto's alias support in crypto calls needs the region: the alias is
    // resolved in the configured region (eu-west-1 has none) → not found.
    assert!(wp.is_err());
    let wp = aws
        .generate_data_key_without_plaintext(&key1, &c)
        .await
        .unwrap();
    aws.decrypt(&wp.key_id, &wp.ciphertext, &c).await.unwrap();

    // ReEncrypt: moves the DEK under key2 without exposing it
    let re = aws.re_encrypt(&w, &key2, &c).await.unwrap();
    assert_eq!(re.key_id, key2);
    assert_ne!(re.ciphertext, w.ciphertext);
    assert_eq!(
        aws.decrypt(&key2, &re.ciphertext, &c)
            .await
            .unwrap()
            .expose(),
        dek.expose()
    );

    // GenerateRandom and DescribeKey (us-east-1 client for region-less calls)
    let aws_east = AwsKms::new(opts(&moto.url(), "us-east-1")).await;
    let r = aws_east.generate_random(32).await.unwrap();
    assert_eq!(r.len(), 32);
    assert!(matches!(
        aws_east.generate_random(0).await,
        Err(KmsError::Invalid(_))
    ));
    let info = aws_east.describe_key("alias/kmsecrets-one").await.unwrap();
    assert_eq!(info.arn, key1);
    assert!(info.enabled);
    let (_, via_alias) = aws_east
        .generate_data_key("alias/kmsecrets-two", &c)
        .await
        .unwrap();
    assert_eq!(
        via_alias.key_id, key2,
        "KMS reports the key ARN behind an alias"
    );

    // Unknown key → NotFound (permanent)
    let err = aws_east
        .describe_key("alias/does-not-exist")
        .await
        .err()
        .unwrap();
    assert!(!err.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_through_the_layer_is_retried_and_counted() {
    let moto = Moto::start();
    let raw = sdk_client(&moto.url()).await;
    let key = create_key(&raw, "alias/throttle").await;
    let proxy = KmsProxy::start(moto.port);
    let c = ctx("payments");
    let aws: Arc<dyn KmsProvider> = Arc::new(AwsKms::new(opts(&proxy.url(), "us-east-1")).await);
    let (dek, w) = aws.generate_data_key(&key, &c).await.unwrap();

    let metrics = Arc::new(Metrics::new());
    let kms = Kms::new(
        Providers::new(Default::default()).with(aws.clone()),
        LayerConfig::default(),
        metrics.clone(),
    );
    proxy.throttle_next(3);
    let got = kms.unwrap(&w, &c).await.unwrap();
    assert_eq!(got.expose(), dek.expose());
    assert_eq!(proxy.injected(), 3);
    let text = metrics.render();
    assert!(
        text.contains("kmsecrets_kms_throttled_total{operation=\"decrypt\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("kmsecrets_kms_retries_total{operation=\"decrypt\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("kmsecrets_kms_requests_total{operation=\"decrypt\",result=\"throttled\"} 3")
    );
    assert!(
        text.contains("kmsecrets_kms_requests_total{operation=\"decrypt\",result=\"success\"} 1")
    );

    // Throttled beyond the attempt budget → KmsThrottled, every attempt counted
    let small = Kms::new(
        Providers::new(Default::default()).with(aws.clone()),
        LayerConfig {
            max_attempts: 3,
            cache_ttl: std::time::Duration::ZERO,
            ..LayerConfig::default()
        },
        Arc::new(Metrics::new()),
    );
    proxy.throttle_next(10);
    let err = small.unwrap(&w, &c).await.err().unwrap();
    assert_eq!(err.reason().as_str(), "KmsThrottled");
    assert_eq!(proxy.injected(), 6);
    assert!(
        small
            .metrics()
            .render()
            .contains("kmsecrets_kms_throttled_total{operation=\"decrypt\"} 3")
    );

    // KMS unreachable → KmsUnavailable after bounded attempts
    proxy.throttle_next(0);
    proxy.set_down(true);
    let err = small.unwrap(&w, &c).await.err().unwrap();
    assert_eq!(err.reason().as_str(), "KmsUnavailable", "{err}");
    assert_eq!(proxy.refused(), 3);
    proxy.set_down(false);
    assert!(
        small.unwrap(&w, &c).await.is_ok(),
        "recovers when KMS is back"
    );
}

fn kmsecrets(endpoint: &str, dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kmsecrets"));
    c.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in aws_test_env() {
        c.env(k, v);
    }
    c.args(["--kms-endpoint", endpoint]);
    c
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        c,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_round_trip_with_aws_kms() {
    let moto = Moto::start();
    let raw = sdk_client(&moto.url()).await;
    let k1 = create_key(&raw, "alias/app").await;
    let k2 = create_key(&raw, "alias/dr").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // encrypt with two keys (GenerateDataKey + Encrypt) and a generated value
    let es = run_ok(kmsecrets(&moto.url(), d).args([
        "encrypt",
        "--key",
        "alias/app",
        "--key",
        &k2,
        "--name",
        "db",
        "-n",
        "payments",
        "--from-literal",
        "password=hunter2",
        "--generate",
        "token=32",
        "--context",
        "team=payments",
    ]));
    assert!(!es.contains("hunter2"));
    assert!(
        es.contains(&k1) && es.contains(&k2),
        "both ARNs recorded:\n{es}"
    );
    std::fs::write(d.join("es.yaml"), &es).unwrap();

    let secret = run_ok(kmsecrets(&moto.url(), d).args(["decrypt", "-f", "es.yaml"]));
    assert!(secret.contains("password: aHVudGVyMg=="), "{secret}");
    let v: serde_json::Value = serde_saphyr::from_str(&secret).unwrap();
    let token = v["data"]["token"].as_str().unwrap();
    assert_eq!(kmsecrets::envelope::unb64(token).unwrap().len(), 32);

    // moved to another namespace → KMS rejects the context
    let moved = es.replace("namespace: payments", "namespace: attacker");
    std::fs::write(d.join("moved.yaml"), &moved).unwrap();
    let out = kmsecrets(&moto.url(), d)
        .args(["decrypt", "-f", "moved.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("InvalidCiphertextException") || err.contains("rejected the ciphertext"),
        "{err}"
    );

    // rotate --rewrap to the DR key only: values untouched, still decrypts
    let before: serde_json::Value = serde_saphyr::from_str(&es).unwrap();
    run_ok(kmsecrets(&moto.url(), d).args(["rotate", "es.yaml", "--rewrap", "--key", &k2]));
    let after_text = std::fs::read_to_string(d.join("es.yaml")).unwrap();
    let after: serde_json::Value = serde_saphyr::from_str(&after_text).unwrap();
    assert_eq!(
        before["spec"]["encryptedData"],
        after["spec"]["encryptedData"]
    );
    assert_eq!(after["spec"]["dataKeys"].as_array().unwrap().len(), 1);
    assert_eq!(after["spec"]["dataKeys"][0]["keyId"], k2.as_str());
    assert!(
        run_ok(kmsecrets(&moto.url(), d).args(["decrypt", "-f", "es.yaml"]))
            .contains("aHVudGVyMg==")
    );

    // rotate: new DEK, every value changes
    run_ok(kmsecrets(&moto.url(), d).args(["rotate", "es.yaml", "--key", &k2]));
    let rotated: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(d.join("es.yaml")).unwrap()).unwrap();
    assert_ne!(
        rotated["spec"]["encryptedData"]["password"],
        after["spec"]["encryptedData"]["password"]
    );
    assert!(
        run_ok(kmsecrets(&moto.url(), d).args(["verify", "--decrypt", "es.yaml"]))
            .contains("2 values decrypt")
    );

    // init (GenerateDataKeyWithoutPlaintext) then merge values in
    let init = run_ok(kmsecrets(&moto.url(), d).args([
        "init", "empty", "-n", "payments", "--key", &k1, "--key", &k2,
    ]));
    std::fs::write(d.join("init.yaml"), &init).unwrap();
    run_ok(kmsecrets(&moto.url(), d).args([
        "encrypt",
        "--merge-into",
        "init.yaml",
        "--from-literal",
        "a=b",
        "--key",
        &k1,
        "--key",
        "alias/dr",
    ]));
    let s = run_ok(kmsecrets(&moto.url(), d).args(["decrypt", "-f", "init.yaml"]));
    assert!(s.contains("a: Yg=="), "{s}");

    // unknown KMS key → one-line error, nothing written
    let out = kmsecrets(&moto.url(), d)
        .args([
            "encrypt",
            "--key",
            "alias/nope",
            "--name",
            "x",
            "-n",
            "y",
            "--from-literal",
            "a=b",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

/// A git writer's two ways to the plaintext:
/// a copy planted under their key, which `rotate` would wrap the new data
/// key for, and a swapped-in data key they generated, which `--merge-into`
/// and `edit` would seal new values with. Both are refused, naming the
/// copy, before the attacker's key sees any request; `--trust-file-keys`
/// shows what the refusal prevents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_copies_and_swapped_data_keys_are_refused() {
    let moto = Moto::start();
    let proxy = KmsProxy::start(moto.port);
    let raw = sdk_client(&moto.url()).await;
    let mine = create_key(&raw, "alias/mine").await;
    let evil = create_key(&raw, "alias/evil").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ks = || kmsecrets(&proxy.url(), d);
    let es = run_ok(ks().args([
        "encrypt",
        "--key",
        &mine,
        "--name",
        "db",
        "-n",
        "payments",
        "--from-literal",
        "password=hunter2",
    ]));
    let mut doc: serde_json::Value = serde_saphyr::from_str(&es).unwrap();
    doc["spec"]["dataKeys"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "provider": "aws-kms", "keyId": evil, "ciphertext": "AAAAAAAAAAAAAAAAAAAAAAAA"
        }));
    let planted = serde_json::to_string(&doc).unwrap();
    std::fs::write(d.join("es.json"), &planted).unwrap();
    let before = proxy.requests().len();
    let touched_evil = |p: &KmsProxy| {
        p.requests()
            .into_iter()
            .filter(|(op, key)| key == &evil && op != "DescribeKey")
            .collect::<Vec<_>>()
    };
    for args in [
        vec!["rotate", "es.json"],
        vec!["rotate", "es.json", "--key", &mine],
        vec!["rotate", "es.json", "--key", "alias/mine"],
        vec!["edit", "es.json", "--key", &mine],
        vec![
            "encrypt",
            "--merge-into",
            "es.json",
            "--from-literal",
            "x=y",
        ],
    ] {
        let out = ks().env("EDITOR", "true").args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted a planted copy");
        assert!(
            (err.contains("spec.dataKeys[1]") && err.contains(evil.as_str()))
                || err.contains("which keys do you trust"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert_eq!(std::fs::read_to_string(d.join("es.json")).unwrap(), planted);
        assert_eq!(touched_evil(&proxy), vec![], "{args:?}");
    }
    assert!(
        !proxy.requests()[before..]
            .iter()
            .any(|(op, _)| op.starts_with("GenerateDataKey") || op == "Encrypt"),
        "no data key was made or wrapped: {:?}",
        proxy.requests()
    );
    // what the refusal prevents: trusting the file wraps the new DEK for them
    run_ok(ks().args(["rotate", "es.json", "--trust-file-keys"]));
    assert!(
        touched_evil(&proxy).iter().any(|(op, _)| op == "Encrypt"),
        "{:?}",
        proxy.requests()
    );

    // a swapped data key: `init`, then the attacker replaces the copy with
    // a data key they generated under their own key
    let init = run_ok(ks().args(["init", "empty", "-n", "payments", "--key", &mine]));
    let mut doc: serde_json::Value = serde_saphyr::from_str(&init).unwrap();
    let theirs = raw
        .generate_data_key()
        .key_id(&evil)
        .number_of_bytes(32)
        .encryption_context("kmsecrets.dev/scope", "strict")
        .encryption_context("kmsecrets.dev/namespace", "payments")
        .encryption_context("kmsecrets.dev/name", "empty")
        .send()
        .await
        .unwrap();
    doc["spec"]["dataKeys"] = serde_json::json!([{
        "provider": "aws-kms",
        "keyId": evil,
        "ciphertext": STANDARD.encode(theirs.ciphertext_blob.unwrap().as_ref()),
    }]);
    let swapped = serde_json::to_string(&doc).unwrap();
    std::fs::write(d.join("init.json"), &swapped).unwrap();
    for args in [
        vec![
            "encrypt",
            "--merge-into",
            "init.json",
            "--from-literal",
            "a=b",
        ],
        vec![
            "encrypt",
            "--merge-into",
            "init.json",
            "--from-literal",
            "a=b",
            "--key",
            &mine,
        ],
        vec!["edit", "init.json", "--key", &mine],
    ] {
        let out = ks().env("EDITOR", "true").args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} sealed under a swapped data key"
        );
        assert!(err.contains(evil.as_str()), "{args:?}: {err}");
        assert_eq!(
            std::fs::read_to_string(d.join("init.json")).unwrap(),
            swapped
        );
    }
    // (before trusted keys this went through, sealing under their data key)
    run_ok(ks().args([
        "encrypt",
        "--merge-into",
        "init.json",
        "--from-literal",
        "a=b",
        "--trust-file-keys",
    ]));
}

/// `kmsecrets keys` as a CI gate: a repository whose key is scheduled for
/// deletion fails, naming the files whose every copy is under that key; a
/// file with a second, healthy copy is not at risk; `--offline` lists keys
/// and dependents without a single request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_gate_fails_on_a_key_pending_deletion() {
    let moto = Moto::start();
    let proxy = KmsProxy::start(moto.port);
    let raw = sdk_client(&moto.url()).await;
    let doomed = create_key(&raw, "alias/doomed").await;
    let other = create_key(&raw, "alias/other").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("repo/sub")).unwrap();
    let ks = || kmsecrets(&proxy.url(), d);
    for (file, keys) in [
        ("repo/only-doomed.yaml", vec![doomed.as_str()]),
        ("repo/sub/both.yaml", vec![doomed.as_str(), other.as_str()]),
        ("repo/only-other.yaml", vec![other.as_str()]),
    ] {
        let mut args = vec![
            "encrypt",
            "--name",
            "x",
            "-n",
            "app",
            "--from-literal",
            "a=b",
        ];
        for k in &keys {
            args.extend(["--key", k]);
        }
        std::fs::write(d.join(file), run_ok(ks().args(&args))).unwrap();
    }
    // healthy: exit 0, one row per key
    let out = run_ok(ks().args(["keys", "-R", "repo"]));
    assert!(
        out.contains("Enabled") && !out.contains("PendingDeletion"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 3, "{out}");

    let bare = doomed.rsplit('/').next().unwrap();
    raw.schedule_key_deletion()
        .key_id(bare)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    let before = proxy.requests().len();
    let out = ks()
        .args(["keys", "-R", "repo", "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("only-doomed.yaml") && !err.contains("both.yaml"),
        "{err}"
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["keyId"] == doomed.as_str())
        .unwrap();
    assert_eq!(row["state"], "PendingDeletion");
    assert!(
        row["deletionDate"]
            .as_str()
            .is_some_and(|d| d.starts_with("20")),
        "{row}"
    );
    assert_eq!(row["resources"].as_array().unwrap().len(), 2);
    assert_eq!(row["atRisk"].as_array().unwrap().len(), 1);
    let describes = proxy.requests()[before..]
        .iter()
        .filter(|(op, _)| op == "DescribeKey")
        .count();
    assert_eq!(
        describes, 2,
        "one DescribeKey per distinct key, not per resource"
    );

    // offline: the same keys and dependents, no request at all
    let before = proxy.requests().len();
    let out = run_ok(ks().args(["keys", "-R", "repo", "--offline"]));
    assert!(out.contains(&doomed) && out.contains(&other), "{out}");
    assert_eq!(proxy.requests().len(), before, "--offline made a request");
}

/// Review makes no KMS request (textconv, diff, guard) and `diff --decrypt`
/// only Decrypts; a creation-rule change moves a repository with one
/// command: `rotate --rewrap -R` with no `--key`, one ReEncrypt per file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_calls_no_kms_and_a_rule_change_moves_every_file_to_the_new_key() {
    let moto = Moto::start();
    let proxy = KmsProxy::start(moto.port);
    let raw = sdk_client(&moto.url()).await;
    let old = create_key(&raw, "alias/old").await;
    let new = create_key(&raw, "alias/new").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join(".git")).unwrap(); // the repository root
    std::fs::create_dir_all(d.join("secrets/prod/deep")).unwrap();
    let rules = |key: &str| {
        format!(
            "rules:\n  - path: secrets/**\n    keys: [{key}]\n    context: {{team: payments}}\n"
        )
    };
    std::fs::write(d.join(".kmsecrets.yaml"), rules(&old)).unwrap();
    let ks = || kmsecrets(&proxy.url(), d);
    let files = [
        "secrets/prod/a.yaml",
        "secrets/prod/b.yaml",
        "secrets/prod/deep/c.yaml",
    ];
    for (i, f) in files.iter().enumerate() {
        let es = run_ok(ks().args([
            "encrypt",
            "--rules-path",
            f,
            "--name",
            &format!("s{i}"),
            "-n",
            "payments",
            "--from-literal",
            &format!("password=pw-{i}"),
        ]));
        assert!(es.contains(&old) && es.contains("team: payments"), "{es}");
        std::fs::write(d.join(f), es).unwrap();
    }
    std::fs::copy(d.join(files[0]), d.join("a-v1.yaml")).unwrap();
    run_ok(ks().args([
        "encrypt",
        "--merge-into",
        files[0],
        "--key",
        &old,
        "--from-literal",
        "password=a-longer-password",
    ]));

    // no KMS request to review
    let before = proxy.requests().len();
    for args in [
        vec!["textconv", files[0]],
        vec!["diff", "a-v1.yaml", files[0]],
        vec!["guard", "-R", "secrets"],
    ] {
        let out = ks().args(&args).output().unwrap();
        assert!(
            out.status.code().is_some_and(|c| c < 2),
            "{args:?}: {out:?}"
        );
    }
    assert_eq!(proxy.requests()[before..].to_vec(), vec![]);
    // --decrypt: Decrypt only, and it says what changed without the value
    let out = ks()
        .args(["diff", "--decrypt", "a-v1.yaml", files[0]])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("password: changed (plaintext changed, 4 bytes → 17 bytes)"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("a-longer-password") && !text.contains("pw-0"));
    let ops: Vec<String> = proxy.requests()[before..]
        .iter()
        .map(|(op, _)| op.clone())
        .collect();
    assert!(
        !ops.is_empty() && ops.iter().all(|op| op == "Decrypt"),
        "{ops:?}"
    );

    // the team moves to the new key: edit the rule, run one command
    std::fs::write(d.join(".kmsecrets.yaml"), rules(&new)).unwrap();
    let out = ks().args(["guard", "-R", "secrets"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    let before = proxy.requests().len();
    let out = ks()
        .args(["rotate", "--rewrap", "-R", "secrets"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("move to {new}")), "{err}");
    let reqs = proxy.requests()[before..].to_vec();
    let re: Vec<_> = reqs.iter().filter(|(op, _)| op == "ReEncrypt").collect();
    assert_eq!(re.len(), files.len(), "one ReEncrypt per file: {reqs:?}");
    assert!(
        !reqs
            .iter()
            .any(|(op, _)| op.starts_with("GenerateDataKey") || op == "Encrypt"),
        "{reqs:?}"
    );
    for (i, f) in files.iter().enumerate() {
        let text = std::fs::read_to_string(d.join(f)).unwrap();
        assert!(text.contains(&new) && !text.contains(&old), "{text}");
        let plain = run_ok(ks().args(["decrypt", "-f", f]));
        let want = if i == 0 {
            "a-longer-password".to_string()
        } else {
            format!("pw-{i}")
        };
        assert!(plain.contains(&STANDARD.encode(want)), "{plain}");
    }
    let out = ks().args(["guard", "-R", "secrets"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // once more: every file already under the rule's key, nothing re-wrapped
    let before = proxy.requests().len();
    run_ok(ks().args(["rotate", "--rewrap", "-R", "secrets"]));
    assert!(
        !proxy.requests()[before..]
            .iter()
            .any(|(op, _)| op == "ReEncrypt"),
        "{:?}",
        proxy.requests()
    );
}
