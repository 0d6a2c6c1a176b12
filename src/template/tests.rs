//! The template sandbox, table-driven: what renders, what is refused and
//! why, and that no error quotes or locates a value.
use super::*;

fn vals(kv: &[(&str, &[u8])]) -> Values {
    kv.iter()
        .map(|(k, v)| (k.to_string(), Zeroizing::new(v.to_vec())))
        .collect()
}

fn one(src: &str, values: &Values) -> Result<String, TemplateError> {
    let t: BTreeMap<String, String> = [("out".to_string(), src.to_string())].into();
    render(&t, values).map(|m| String::from_utf8(m["out"].to_vec()).unwrap())
}

#[test]
fn renders_table() {
    let v = vals(&[
        ("username", b"ci-bot"),
        ("password", b"p@ss/w:rd \"x\""),
        ("registry", b"ghcr.io"),
        ("tls.crt", b"CERT"),
        ("blob", &[0xff, 0x00, 0x80]),
        ("encoded", b"aGVsbG8="),
    ]);
    let cases: &[(&str, &str)] = &[
        ("plain {{ username }}", "plain ci-bot"),
        ("{{ values[\"tls.crt\"] }}", "CERT"),
        ("{{ username | b64encode }}", "Y2ktYm90"),
        (
            "{{ (username ~ \":\" ~ password) | b64encode }}",
            "Y2ktYm90OnBAc3MvdzpyZCAieCI=",
        ),
        ("{{ encoded | b64decode }}", "hello"),
        ("{{ blob | b64encode }}", "/wCA"),
        ("{{ password | urlencode }}", "p%40ss%2Fw%3Ard%20%22x%22"),
        ("{{ password | tojson }}", "\"p@ss/w:rd \\\"x\\\"\""),
        ("{{ missing | default(\"d\") }}", "d"),
        ("{{ username | upper }}", "CI-BOT"),
        ("{% if username %}y{% endif %}", "y"),
        ("no variables", "no variables"),
        ("trailing\n", "trailing\n"),
    ];
    for (src, want) in cases {
        assert_eq!(one(src, &v).unwrap(), *want, "template {src:?}");
    }
}

#[test]
fn json_named_keys_are_not_escaped() {
    let v = vals(&[("password", b"a\"b<c>")]);
    let t: BTreeMap<String, String> = [
        (
            "config.json".to_string(),
            "{\"p\": {{ password | tojson }}}".to_string(),
        ),
        ("page.html".to_string(), "{{ password }}".to_string()),
    ]
    .into();
    let out = render(&t, &v).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out["config.json"]).unwrap();
    assert_eq!(json["p"], "a\"b<c>");
    assert_eq!(&out["page.html"][..], b"a\"b<c>");
}

#[test]
fn errors_name_the_key_and_never_quote_a_value() {
    let canary = "CANARY-7f3a91";
    let v = vals(&[
        ("password", canary.as_bytes()),
        ("blob", &[0xfe, 0xff, b'C', b'A']),
    ]);
    let cases: &[(&str, &str)] = &[
        ("{{ password ", "syntax error"),
        ("{% for %}", "syntax error"),
        ("{{ pasword }}", "undefined"),
        ("{{ values[password] }}", "undefined"),
        ("{{ password.x.y }}", "undefined"),
        ("{{ password | nosuch }}", "unknown filter"),
        ("{{ password | b64decode }}", "not valid base64"),
        ("{{ blob }}", "binary"),
        ("{{ blob | tojson }}", "binary"),
        ("{{ password | int }}", "unknown filter (line 1)"),
        ("{{ password + 1 }}", "arithmetic is not allowed"),
        ("{{ password / 0 }}", "arithmetic is not allowed"),
        ("{{ password[99] }}", "undefined"),
        ("{{ password | b64encode(1) }}", "arguments"),
        (
            "{% for i in range(100000) %}{{ password }}{% endfor %}",
            "loops are not allowed (line 1)",
        ),
        ("{% include password %}", "syntax error"),
        ("{{ 42 | b64encode }}", "string or bytes"),
        ("{{ password | round }}", "unknown filter"),
        ("{{ password[1:2] ~ password.x }}", "undefined"),
        ("{{ password is nosuchtest }}", "unknown test (line 1)"),
        ("{{ nosuchfn(password) }}", "calls are not allowed (line 1)"),
        ("{{ password.upper() }}", "calls are not allowed"),
        ("{% set x = password %}{{ x }}", "set is not allowed"),
        ("{{ {'a': password} }}", "map literals are not allowed"),
        ("{{ -password }}", "arithmetic"),
        (
            "{% filter upper %}{{ password }}{% endfilter %}",
            "filter blocks",
        ),
        (
            "{% with x = password %}{{ x }}{% endwith %}",
            "with is not allowed",
        ),
        ("{{ password | b64decode }}", "not valid base64"),
    ];
    for (src, want) in cases {
        let e = one(src, &v).expect_err(src);
        let text = e.to_string();
        assert!(
            text.starts_with("spec.template.data[out]: "),
            "{src}: {text}"
        );
        assert!(text.contains(want), "{src}: {text} (want {want:?})");
        assert!(!text.contains("CANARY"), "{src} leaked a value: {text}");
        assert!(
            !format!("{e:?}").contains("CANARY"),
            "{src} leaked in Debug"
        );
    }
}

/// Known template bombs: refused before anything is built, in time that
/// does not depend on what they would have built.
#[test]
fn bombs_are_refused_before_rendering() {
    let v = vals(&[("user", b"admin"), ("big", &[b'x'; 200 * 1024])]);
    let chain = format!("{{{{ big{} }}}}", " ~ big".repeat(200));
    let replaces = format!("{{{{ user{} }}}}", " | replace('', user)".repeat(40));
    let b64s = format!("{{{{ big{} }}}}", " | b64encode".repeat(60));
    let cases: Vec<(String, &str)> = vec![
        (
            "{% for i in range(600) %}{% set x = (user ~ (i % 10)) * 25000000 %}{% endfor %}{{ nope }}".into(),
            "loops are not allowed",
        ),
        ("{{ user * 25000000 }}".into(), "arithmetic is not allowed"),
        ("{{ 'x' * 250000000 }}".into(), "arithmetic is not allowed"),
        (chain, "could build more than 16 MiB"),
        (replaces, "could build more than 16 MiB"),
        (b64s, "could build more than 16 MiB"),
    ];
    for (src, want) in &cases {
        let started = std::time::Instant::now();
        let e = one(src, &v).expect_err(src);
        assert!(
            e.message.contains(want),
            "{}: {e}",
            &src[..40.min(src.len())]
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{e}");
    }
    // a shape check needs no values: verify refuses loops and arithmetic offline
    let t: BTreeMap<String, String> = [("k".into(), cases[0].0.clone())].into();
    assert!(check(&t).unwrap_err().message.contains("loops"));
}

/// `(line N)` of an error raised while rendering would say which branch
/// a value took: every first letter must give the same error.
#[test]
fn render_errors_do_not_say_where_a_value_steered_them() {
    let src: String = ('a'..='z')
        .map(|c| format!("{{% if password[0] == \"{c}\" %}}{{{{ nope }}}}{{% endif %}}\n"))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for c in 'a'..='z' {
        let pw = format!("{c}secret");
        let e = one(&src, &vals(&[("password", pw.as_bytes())])).unwrap_err();
        assert!(!e.message.contains("line"), "{e}");
        seen.insert(e.to_string());
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    // the same for a value-dependent invalid operation and for output size
    for (src, big) in [
        (
            "{% if password[0] == 'q' %}\n\n{{ password | b64decode }}{% endif %}",
            10,
        ),
        (
            "{% if password[0] == 'q' %}\n\n{{ password }}{{ password }}{% endif %}",
            600 * 1024,
        ),
    ] {
        let pw = format!("q{}", "x".repeat(big));
        let e = one(src, &vals(&[("password", pw.as_bytes())])).unwrap_err();
        assert!(!e.message.contains("line"), "{e}");
    }
}

/// The bound is an upper bound: what renders never exceeds it, and a
/// realistic template over large values stays far under MAX_WORK.
#[test]
fn realistic_templates_fit_the_bound() {
    let cert = "C".repeat(300 * 1024);
    let v = vals(&[
        ("tls.crt", cert.as_bytes()),
        ("password", b"pw"),
        ("username", b"u"),
    ]);
    let t: BTreeMap<String, String> = [
        (
            "bundle".to_string(),
            "{{ values[\"tls.crt\"] }}\n{{ values[\"tls.crt\"] | b64encode }}".to_string(),
        ),
        (
            "auth".to_string(),
            "{{ (username ~ \":\" ~ password) | b64encode }}".to_string(),
        ),
    ]
    .into();
    let out = render(&t, &v).unwrap();
    assert_eq!(out["auth"].as_slice(), b"dTpwdw==");
    assert!(out["bundle"].len() > 700 * 1024);
}

#[test]
fn output_is_bounded() {
    let big = vec![b'x'; 600 * 1024];
    let v = vals(&[("big", &big)]);
    let t: BTreeMap<String, String> = [
        ("a".to_string(), "{{ big }}".to_string()),
        ("b".to_string(), "{{ big }}".to_string()),
    ]
    .into();
    let e = render(&t, &v).unwrap_err();
    assert_eq!(e.key, "b");
    assert!(e.message.contains("size limit"), "{e}");
}

#[test]
fn check_finds_syntax_errors_without_values() {
    let ok: BTreeMap<String, String> = [("a".into(), "{{ x | b64encode }}".into())].into();
    assert!(check(&ok).is_ok());
    let bad: BTreeMap<String, String> = [("a".into(), "{{ x ".into())].into();
    let e = check(&bad).unwrap_err();
    assert_eq!(e.key, "a");
}

#[test]
fn urlencode_is_rfc3986() {
    assert_eq!(urlencode_bytes(b"AZaz09-._~"), "AZaz09-._~");
    assert_eq!(urlencode_bytes("é/ +".as_bytes()), "%C3%A9%2F%20%2B");
}
