//! The judge against reference vectors computed by scipy and numpy (`tests/fixtures/judge/`), and end to end on a canary.

use canaryd::core::judge::{
    self, CONF_LEVEL, Direction, MetricClass, MetricSpec, Samples, ScoreClass, Thresholds,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    scipy: String,
    conf_level: f64,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    x: Vec<f64>,
    y: Vec<f64>,
    u: f64,
    p_value: f64,
    hl: f64,
    ci_lower: Option<f64>,
    ci_upper: Option<f64>,
}

fn vectors() -> Vectors {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/judge/vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn mann_whitney_matches_scipy() {
    let v = vectors();
    assert!(v.cases.len() >= 12);
    let (mut max_abs, mut max_rel) = (0.0_f64, 0.0_f64);
    for c in &v.cases {
        let got = judge::mann_whitney(&c.x, &c.y);
        assert_eq!(got.u, c.u, "{}: U", c.name);
        let abs = (got.p_value - c.p_value).abs();
        let rel = abs / c.p_value;
        assert!(
            abs <= 1e-6,
            "{}: p {} vs scipy {}",
            c.name,
            got.p_value,
            c.p_value
        );
        if c.p_value < 1e-2 {
            assert!(
                rel <= 1e-6,
                "{}: p {:e} vs scipy {:e}",
                c.name,
                got.p_value,
                c.p_value
            );
        }
        max_abs = max_abs.max(abs);
        max_rel = max_rel.max(rel);
    }
    eprintln!(
        "p-value vs scipy {}: max abs error {max_abs:e}, max rel error {max_rel:e}",
        v.scipy
    );
}

#[test]
fn hodges_lehmann_and_interval_match_the_reference() {
    let v = vectors();
    for c in &v.cases {
        let s = judge::shift(&c.x, &c.y, v.conf_level).unwrap();
        let scale = c.hl.abs().max(1.0);
        assert!(
            (s.estimate - c.hl).abs() <= 1e-12 * scale,
            "{}: hl {} vs {}",
            c.name,
            s.estimate,
            c.hl
        );
        if let (Some(lo), Some(hi)) = (c.ci_lower, c.ci_upper) {
            // The reference is a port of R's interval solved by brentq to 1e-12 (see make_vectors.py).
            let tol = 1e-9 * (hi - lo).abs().max(1.0);
            assert!(
                (s.interval.lower - lo).abs() <= tol,
                "{}: lower {} vs {}",
                c.name,
                s.interval.lower,
                lo
            );
            assert!(
                (s.interval.upper - hi).abs() <= tol,
                "{}: upper {} vs {}",
                c.name,
                s.interval.upper,
                hi
            );
        }
    }
}

/// The interval's defining property, on a case without a reference: at each bound the
/// standardised rank statistic of `x − d` crosses ±z(0.99), so the two-sided test of
/// "shift = d" rejects just outside the interval and not just inside it.
#[test]
fn interval_bounds_are_where_the_test_flips() {
    let x: Vec<f64> = (0..40).map(|i| f64::from((i * 13) % 29) + 3.0).collect();
    let y: Vec<f64> = (0..35).map(|i| f64::from((i * 7) % 31)).collect();
    let s = judge::shift(&x, &y, 0.98).unwrap();
    assert!(
        s.interval.lower < s.estimate && s.estimate < s.interval.upper,
        "{s:?}"
    );
    let p_at = |d: f64| {
        let shifted: Vec<f64> = x.iter().map(|v| v - d).collect();
        judge::mann_whitney(&shifted, &y).p_value
    };
    let eps = 1e-6;
    assert!(
        p_at(s.interval.lower - eps) < 0.02,
        "just below the lower bound"
    );
    assert!(
        p_at(s.interval.lower + eps) >= 0.02,
        "just above the lower bound"
    );
    assert!(
        p_at(s.interval.upper + eps) < 0.02,
        "just above the upper bound"
    );
    assert!(
        p_at(s.interval.upper - eps) >= 0.02,
        "just below the upper bound"
    );
}

#[test]
fn judges_a_bad_canary_and_a_good_one() {
    let spread = |n: usize, c: f64| -> Vec<f64> {
        (0..n)
            .map(|i| c + ((i * 37 + 11) % 101) as f64 / 50.5 - 1.0)
            .collect()
    };
    let latency = MetricSpec {
        direction: Direction::Increase,
        ..MetricSpec::new("latency")
    };
    let errors = MetricSpec {
        critical: true,
        ..MetricSpec::new("errors")
    };
    let throughput = MetricSpec::new("throughput");
    let thresholds = Thresholds {
        pass: 90.0,
        marginal: 75.0,
    };
    let (base_latency, base_errors, base_tp) =
        (spread(120, 50.0), spread(120, 2.0), spread(120, 300.0));

    let good = judge::judge(
        &[
            Samples {
                spec: &latency,
                canary: &spread(110, 50.02),
                baseline: &base_latency,
            },
            Samples {
                spec: &errors,
                canary: &spread(110, 2.0),
                baseline: &base_errors,
            },
            Samples {
                spec: &throughput,
                canary: &[f64::NAN],
                baseline: &base_tp,
            },
        ],
        CONF_LEVEL,
        thresholds,
    );
    assert_eq!(
        (good.score, good.class),
        (100.0, ScoreClass::Pass),
        "{good:?}"
    );
    assert_eq!(good.metrics[2].class, MetricClass::NoData);

    let bad = judge::judge(
        &[
            Samples {
                spec: &latency,
                canary: &spread(110, 58.0),
                baseline: &base_latency,
            },
            Samples {
                spec: &errors,
                canary: &spread(110, 2.0),
                baseline: &base_errors,
            },
            Samples {
                spec: &throughput,
                canary: &spread(110, 300.0),
                baseline: &base_tp,
            },
        ],
        CONF_LEVEL,
        thresholds,
    );
    assert_eq!((bad.score, bad.class), (66.67, ScoreClass::Fail), "{bad:?}");
    assert_eq!(bad.metrics[0].class, MetricClass::High);

    let critical = judge::judge(
        &[
            Samples {
                spec: &latency,
                canary: &spread(110, 50.0),
                baseline: &base_latency,
            },
            Samples {
                spec: &errors,
                canary: &spread(110, 5.0),
                baseline: &base_errors,
            },
        ],
        CONF_LEVEL,
        thresholds,
    );
    assert_eq!(
        (critical.score, critical.class),
        (0.0, ScoreClass::Fail),
        "{critical:?}"
    );
}
