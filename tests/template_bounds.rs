//! What one template render may cost, measured: peak heap allocation and
//! time per render, for known template bombs and for templates
//! generated from every construct the sandbox allows over values up to
//! 100 KB. A test binary of its own: the counting allocator is global, and
//! this binary runs one test at a time on purpose (one `#[test]`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kmsecrets::template;
use peak_alloc::PeakAlloc;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use zeroize::Zeroizing;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

type Values = BTreeMap<String, Zeroizing<Vec<u8>>>;

/// Peak bytes above what was live before, and the time, of one render.
fn measure(templates: &BTreeMap<String, String>, values: &Values) -> (usize, Duration, bool) {
    let before = ALLOC.current_usage();
    ALLOC.reset_peak_usage();
    let t = Instant::now();
    let ok = template::render(templates, values).is_ok();
    let took = t.elapsed();
    (ALLOC.peak_usage().saturating_sub(before), took, ok)
}

/// What a render may allocate: a small multiple of the work bound it was
/// checked against, plus the values it copies in.
fn allowed(values: &Values) -> usize {
    let copies: usize = values.values().map(|v| v.len()).sum();
    4 * template::MAX_WORK as usize + 4 * copies + (1 << 20)
}

/// Generous for a debug build on a busy 2-core machine; the bombs this
/// guards against took minutes.
const MAX_TIME: Duration = Duration::from_secs(3);

fn expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("user".to_string()),
        Just("big".to_string()),
        Just("values['big']".to_string()),
        Just("'lit'".to_string()),
        Just("blob".to_string()),
    ];
    leaf.prop_recursive(6, 64, 4, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} ~ {b})")),
            inner.clone().prop_map(|a| format!("({a} | b64encode)")),
            inner.clone().prop_map(|a| format!("({a} | urlencode)")),
            inner.clone().prop_map(|a| format!("({a} | tojson)")),
            inner.clone().prop_map(|a| format!("({a} | upper)")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} | replace('', {b}))")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} | default({b}))")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(c, a, b)| format!("({a} if {c} else {b})")),
        ]
    })
}

fn template_src() -> impl Strategy<Value = String> {
    prop_oneof![
        expr().prop_map(|e| format!("{{{{ {e} }}}}")),
        (expr(), expr(), expr()).prop_map(|(c, a, b)| format!(
            "{{% if {c} %}}{{{{ {a} }}}}{{% else %}}{{{{ {b} }}}}{{% endif %}}"
        )),
        (expr(), expr()).prop_map(|(a, b)| format!("x={{{{ {a} }}}}\ny={{{{ {b} }}}}\n")),
    ]
}

#[test]
fn every_render_is_bounded_in_memory_and_time() {
    // known bombs, and the shapes the size bound exists for
    let big = "x".repeat(100 * 1024);
    let values: Values = [
        ("user".to_string(), Zeroizing::new(b"admin".to_vec())),
        ("big".to_string(), Zeroizing::new(big.into_bytes())),
        ("blob".to_string(), Zeroizing::new(vec![0xff, 0xfe, 0x00])),
    ]
    .into();
    let bombs = [
        "{% for i in range(600) %}{% set x = (user ~ (i % 10)) * 25000000 %}{% endfor %}{{ nope }}"
            .to_string(),
        "{{ user * 25000000 }}".to_string(),
        format!("{{{{ big{} }}}}", " ~ big".repeat(200)),
        format!("{{{{ user{} }}}}", " | replace('', big)".repeat(8)),
        format!("{{{{ big{} }}}}", " | b64encode".repeat(60)),
        format!("{{{{ big{} }}}}", " | tojson".repeat(30)),
    ];
    let mut worst = (0usize, Duration::ZERO);
    for src in &bombs {
        let t: BTreeMap<String, String> = [("k".to_string(), src.clone())].into();
        let (peak, took, ok) = measure(&t, &values);
        assert!(!ok, "a bomb rendered: {}", &src[..60.min(src.len())]);
        assert!(peak < 2 << 20, "a refused bomb allocated {peak} bytes");
        assert!(took < MAX_TIME, "a bomb took {took:?}");
        worst = worst.max((peak, took));
    }
    eprintln!(
        "bombs: worst peak {} KiB, worst time {:?}",
        worst.0 >> 10,
        worst.1
    );

    // just under the work bound: renders, within the allocation limit
    let near = format!("{{{{ (big{}) | length }}}}", " ~ big".repeat(11));
    let t: BTreeMap<String, String> = [("k".to_string(), near)].into();
    let (peak, took, ok) = measure(&t, &values);
    assert!(ok, "a template under the bound renders");
    assert!(peak <= allowed(&values), "{peak}");
    eprintln!("near the bound: peak {} KiB in {took:?}", peak >> 10);

    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let limit = allowed(&values);
    let stats = std::cell::RefCell::new((0usize, 0usize, 0usize, Duration::ZERO));
    runner
        .run(&(template_src(), template_src()), |(a, b)| {
            let t: BTreeMap<String, String> = [("a".to_string(), a), ("b".to_string(), b)].into();
            let (peak, took, ok) = measure(&t, &values);
            prop_assert!(peak <= limit, "{peak} bytes > {limit} for {t:?}");
            prop_assert!(took < MAX_TIME, "{took:?} for {t:?}");
            let mut s = stats.borrow_mut();
            s.0 += 1;
            s.1 += usize::from(ok);
            s.2 = s.2.max(peak);
            s.3 = s.3.max(took);
            Ok(())
        })
        .unwrap();
    let stats = stats.into_inner();
    eprintln!(
        "generated: {} renders ({} rendered, the rest refused or failed), worst peak {} KiB (limit {} KiB), worst time {:?}",
        stats.0,
        stats.1,
        stats.2 >> 10,
        limit >> 10,
        stats.3
    );
}
