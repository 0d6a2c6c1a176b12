//! Templates from the CLI: `--template`, `--template-file`, the
//! `kmsecrets.dev/template.KEY` annotation, `--rollout-restart`; `decrypt`
//! renders; `--merge-into` and `edit` keep and change templates; every
//! mistake is found before anything is written, without quoting a value.

use crate::support::*;

const CANARY: &str = "CANARY-tmpl-5e1f";

#[test]
fn flags_and_annotations_become_templates_and_decrypt_renders_them() {
    let t = T::new();
    let key = t.keygen("k.key");
    let keyarg = format!("file:{key}");
    let cfg = t.write("cfg.j2", "password: {{ password | tojson }}\n");
    let out = ok(kms([
        "encrypt",
        "--key",
        &keyarg,
        "--name",
        "db",
        "--namespace",
        "app",
        "--from-literal",
        "password=p@ss/1",
        "--template",
        "url=pg://app:{{ password | urlencode }}@db/app",
        "--template-file",
        &format!("config.yaml={cfg}"),
        "--rollout-restart",
        "Deployment/api",
        "--rollout-restart",
        "sts/worker",
    ])
    .run());
    let es = yaml(&out.stdout());
    let data = &es["spec"]["template"]["data"];
    assert_eq!(data["url"], "pg://app:{{ password | urlencode }}@db/app");
    assert_eq!(data["config.yaml"], "password: {{ password | tojson }}\n");
    assert_eq!(
        es["spec"]["rolloutRestartTargets"],
        serde_json::json!([{"kind": "Deployment", "name": "api"}, {"kind": "StatefulSet", "name": "worker"}])
    );
    let f = t.write("db.yaml", out.stdout());
    let shown = ok(kms(["decrypt", "-f", &f, "--local-key", &key]).run());
    let got = secret_data(&yaml(&shown.stdout()));
    assert_eq!(
        got,
        strs(&[
            ("config.yaml", "password: \"p@ss/1\"\n"),
            ("password", "p@ss/1"),
            ("url", "pg://app:p%40ss%2F1@db/app"),
        ])
    );

    // from a Secret manifest: the annotation moves into template.data
    let manifest = t.write(
        "s.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: reg\n  namespace: app\n  annotations:\n    team: a\n    kmsecrets.dev/template..dockerconfigjson: '{\"auths\":{\"r\":{\"auth\":\"{{ (u ~ \":\" ~ p) | b64encode }}\"}}}'\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  u: bot\n  p: pw\n",
    );
    let out = ok(kms(["encrypt", "--key", &keyarg, "-f", &manifest]).run());
    let es = yaml(&out.stdout());
    assert!(es["spec"]["template"]["data"][".dockerconfigjson"].is_string());
    let ann = &es["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["team"], "a");
    assert!(
        ann.as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("kmsecrets.dev/")),
        "{ann}"
    );
    let f2 = t.write("reg.yaml", out.stdout());
    let got = secret_data(&yaml(
        &ok(kms(["decrypt", "-f", &f2, "--local-key", &key]).run()).stdout(),
    ));
    assert_eq!(
        String::from_utf8(got[".dockerconfigjson"].clone()).unwrap(),
        r#"{"auths":{"r":{"auth":"Ym90OnB3"}}}"#
    );

    // --merge-into: a new value re-renders; a new template joins; targets merge
    ok(kms([
        "encrypt",
        "--merge-into",
        &f,
        "--local-key",
        &key,
        "--from-literal",
        "password=two",
        "--template",
        "user=app",
        "--rollout-restart",
        "Deployment/api",
    ])
    .run());
    let es = yaml(&t.read_str("db.yaml"));
    assert_eq!(
        es["spec"]["rolloutRestartTargets"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let got = secret_data(&yaml(
        &ok(kms(["decrypt", "-f", &f, "--local-key", &key]).run()).stdout(),
    ));
    assert_eq!(got["url"], b"pg://app:two@db/app");
    assert_eq!(got["user"], b"app");
}

#[test]
fn template_mistakes_fail_before_writing_and_never_quote_a_value() {
    let t = T::new();
    let key = t.keygen("k.key");
    let keyarg = format!("file:{key}");
    let lit = format!("password={CANARY}");
    for (tmpl, fragment) in [
        ("x={{ password | int }}", "spec.template.data[x]"),
        ("x={{ pasword }}", "undefined"),
        ("x={{ password ", "syntax error"),
        ("x={{ password | b64decode }}", "not valid base64"),
        ("password={{ password }}", "both a value and a template"),
        ("bad/key={{ password }}", "invalid key name"),
    ] {
        let out = kms([
            "encrypt",
            "--key",
            &keyarg,
            "--name",
            "db",
            "--namespace",
            "app",
            "--from-literal",
            &lit,
            "--template",
            tmpl,
        ])
        .run();
        fails(&out, fragment);
        assert!(!out.stderr.contains("CANARY"), "{tmpl}: {}", out.stderr);
    }
    // --merge-into with a broken template leaves the file byte-identical
    let f = t.write("es.yaml", encrypt_fixture(&key, &[]));
    let before = t.read("es.yaml");
    let out = kms([
        "encrypt",
        "--merge-into",
        &f,
        "--local-key",
        &key,
        "--template",
        "x={{ password | int }}",
    ])
    .run();
    fails(&out, "spec.template.data[x]");
    assert_eq!(t.read("es.yaml"), before);
    // an invalid restart target is a usage error naming the kinds
    let out = kms([
        "encrypt",
        "--key",
        &keyarg,
        "--name",
        "db",
        "--namespace",
        "app",
        "--from-literal",
        "a=b",
        "--rollout-restart",
        "Pod/x",
    ])
    .run();
    usage_error(&out, "Deployment, StatefulSet or DaemonSet");
}

#[test]
fn edit_shows_templates_as_annotations_and_saves_their_changes() {
    let t = T::new();
    let key = t.keygen("k.key");
    let keyarg = format!("file:{key}");
    let out = ok(kms([
        "encrypt",
        "--key",
        &keyarg,
        "--name",
        "db",
        "--namespace",
        "app",
        "--from-literal",
        "password=pw",
        "--template",
        "url=a:{{ password }}",
    ])
    .run());
    let f = t.write("es.yaml", out.stdout());
    let ed = t.write(
        "ed.sh",
        "#!/bin/sh\nset -e\ngrep -q 'kmsecrets.dev/template.url' \"$1\"\nsed 's/a:{{ password }}/b:{{ password | upper }}/' \"$1\" > \"$1.new\"\nmv \"$1.new\" \"$1\"\n",
    );
    ok(kms(["edit", &f, "--local-key", &key])
        .env("EDITOR", format!("sh {ed}"))
        .run());
    let es = yaml(&t.read_str("es.yaml"));
    assert_eq!(
        es["spec"]["template"]["data"]["url"],
        "b:{{ password | upper }}"
    );
    assert!(
        es["spec"]["template"]["metadata"].is_null(),
        "no template annotation leaks into metadata: {es}"
    );
    let got = secret_data(&yaml(
        &ok(kms(["decrypt", "-f", &f, "--local-key", &key]).run()).stdout(),
    ));
    assert_eq!(got["url"], b"b:PW");
}
