//! Judging windows: each check's verdict and message, the window's, and how the gate counts.

use std::time::Duration;

use hotload_protocol::{Counts, ErrorKind};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::*;
use crate::api::{Analysis, AnalysisPhase, Verdict};

fn t(seconds: i64) -> Timestamp {
    Timestamp::UNIX_EPOCH + SignedDuration::from_secs(1_800_000_000 + seconds)
}

fn analysis(checks: serde_json::Value) -> Analysis {
    serde_json::from_value(json!({"interval": "10s", "minCalls": 20, "checks": checks})).unwrap()
}

/// `calls` calls of `latency`, every `fail_every`-th trapping (0: none).
fn counts(calls: u64, latency: Duration, fail_every: u64) -> Counts {
    let mut c = Counts::default();
    for i in 1..=calls {
        let error = (fail_every > 0 && i % fail_every == 0).then_some(ErrorKind::Trap);
        c.record(latency, error);
    }
    c
}

fn health(target: Counts, pods: usize, stable: Counts) -> Measurement {
    Measurement::Health {
        target,
        target_pods: pods,
        stable,
    }
}

fn measured(checks: Vec<Measurement>) -> Measured {
    Measured {
        revision: "r2".into(),
        start: t(0),
        end: t(10),
        checks,
    }
}

const FIRST_ROLLOUT: Context<'static> = Context {
    stable_exists: false,
    stable_serving: false,
    baselines: &[],
};

const CANARY: Context<'static> = Context {
    stable_exists: true,
    stable_serving: true,
    baselines: &[],
};

#[test]
fn an_error_rate_above_its_limit_fails_with_the_numbers() {
    let a = analysis(json!([{"name": "errors", "errorRate": {"max": "1%"}}]));
    let m = measured(vec![health(
        counts(410, Duration::from_millis(1), 5),
        1,
        Counts::default(),
    )]);
    let (window, _) = judge(&a, &m, CANARY);
    assert_eq!(window.verdict, Verdict::Fail);
    let check = &window.checks[0];
    assert_eq!(check.value.as_deref(), Some("20.0%"));
    assert_eq!(check.limit.as_deref(), Some("<= 1%"));
    assert_eq!((check.calls, check.pods), (Some(410), Some(1)));
    assert_eq!(
        check.message,
        "error rate 20.0% > 1% over 410 calls on 1 pod"
    );
}

#[test]
fn a_healthy_error_rate_passes_and_too_few_calls_are_inconclusive() {
    let a = analysis(json!([{"name": "errors", "errorRate": {"max": "0.5%"}}]));
    let m = measured(vec![health(
        counts(1000, Duration::from_millis(1), 250),
        3,
        Counts::default(),
    )]);
    let (window, _) = judge(&a, &m, CANARY);
    assert_eq!(window.verdict, Verdict::Pass, "{window:?}");
    assert_eq!(
        window.checks[0].message,
        "error rate 0.4% ≤ 0.5% over 1000 calls on 3 pods"
    );

    let idle = measured(vec![health(
        counts(3, Duration::from_millis(1), 0),
        1,
        Counts::default(),
    )]);
    let (window, _) = judge(&a, &idle, CANARY);
    assert_eq!(window.verdict, Verdict::Inconclusive);
    assert_eq!(
        window.checks[0].message,
        "too little traffic: 3 calls on 1 pod < minCalls 20"
    );
    let none = measured(vec![health(Counts::default(), 0, Counts::default())]);
    assert_eq!(judge(&a, &none, CANARY).0.verdict, Verdict::Inconclusive);
}

#[test]
fn latency_is_held_to_an_absolute_limit() {
    let a = analysis(json!([{"name": "p99", "latency": {"percentile": 99, "max": "5ms"}}]));
    let slow = measured(vec![health(
        counts(100, Duration::from_millis(8), 0),
        2,
        Counts::default(),
    )]);
    let (window, _) = judge(&a, &slow, CANARY);
    assert_eq!(window.verdict, Verdict::Fail);
    assert_eq!(
        window.checks[0].message,
        "p99 10.0ms > 5ms over 100 calls on 2 pods"
    );
    let fast = measured(vec![health(
        counts(100, Duration::from_millis(1), 0),
        2,
        Counts::default(),
    )]);
    assert_eq!(judge(&a, &fast, CANARY).0.verdict, Verdict::Pass);
}

#[test]
fn a_latency_ratio_compares_with_the_stable_pods_in_the_same_window() {
    let a = analysis(json!([{"name": "p99-ratio", "latency": {"maxRatio": "2"}}]));
    let stable = counts(400, Duration::from_micros(150), 0);
    let slow = measured(vec![health(
        counts(100, Duration::from_millis(1), 0),
        1,
        stable.clone(),
    )]);
    let (window, baselines) = judge(&a, &slow, CANARY);
    assert_eq!(window.verdict, Verdict::Fail, "{window:?}");
    assert!(
        window.checks[0]
            .message
            .starts_with("p99 0.995ms is 5.00× the stable revision's 0.199ms (> 2×)"),
        "{}",
        window.checks[0].message
    );
    assert_eq!(baselines, vec!["p99-ratio=0.000199".to_string()]);

    // Stable pods that make too few calls give no baseline: inconclusive, not a pass.
    let quiet = measured(vec![health(
        counts(100, Duration::from_millis(1), 0),
        1,
        counts(3, Duration::from_micros(150), 0),
    )]);
    let (window, _) = judge(&a, &quiet, CANARY);
    assert_eq!(window.verdict, Verdict::Inconclusive);

    // Once every pod runs the target, the last baseline stands for the stable revision.
    let all_on_target = Context {
        stable_exists: true,
        stable_serving: false,
        baselines: &baselines,
    };
    let (window, _) = judge(&a, &quiet, all_on_target);
    assert_eq!(window.verdict, Verdict::Fail);
    assert!(window.checks[0].message.contains("last measured"));

    // A first rollout has nothing to compare with: the ratio cannot fail it.
    let (window, _) = judge(&a, &quiet, FIRST_ROLLOUT);
    assert_eq!(window.verdict, Verdict::Pass);
}

#[test]
fn query_results_and_gate_answers_are_judged_and_no_answer_is_inconclusive() {
    let a = analysis(json!([
        {"name": "prom", "prometheus": {"address": "http://p:9090", "query": "q", "max": "0.01"}},
        {"name": "gate", "webhook": {"url": "http://g"}},
    ]));
    let passing = measured(vec![
        Measurement::Value(Ok(0.004)),
        Measurement::Gate(Ok((Verdict::Pass, "load test green".into()))),
    ]);
    let (window, _) = judge(&a, &passing, CANARY);
    assert_eq!(window.verdict, Verdict::Pass);
    assert_eq!(
        window.checks[0].message,
        "query result 0.004 within <= 0.01"
    );
    assert_eq!(
        window.checks[1].message,
        "gate answered Pass: load test green"
    );

    let failing = measured(vec![
        Measurement::Value(Ok(0.07)),
        Measurement::Gate(Err("connection refused".into())),
    ]);
    let (window, _) = judge(&a, &failing, CANARY);
    assert_eq!(
        window.verdict,
        Verdict::Fail,
        "a failure outweighs no answer"
    );
    assert_eq!(window.checks[0].message, "query result 0.07 > 0.01");
    assert_eq!(window.checks[1].verdict, Verdict::Inconclusive);

    let empty = measured(vec![
        Measurement::Value(Err("query returned no samples".into())),
        Measurement::Gate(Ok((Verdict::Pass, String::new()))),
    ]);
    let (window, _) = judge(&a, &empty, CANARY);
    assert_eq!(window.verdict, Verdict::Inconclusive);
    assert_eq!(window.checks[0].message, "query returned no samples");

    let min = analysis(json!([
        {"name": "success", "prometheus": {"address": "http://p", "query": "q", "min": "0.99"}}
    ]));
    let (window, _) = judge(&min, &measured(vec![Measurement::Value(Ok(0.95))]), CANARY);
    assert_eq!(window.checks[0].message, "query result 0.95 < 0.99");
}

#[test]
fn windows_count_toward_the_gate_and_failures_beyond_the_limit_exhaust_it() {
    let mut a = analysis(json!([{"name": "errors", "errorRate": {"max": "1%"}}]));
    a.failure_limit = 1;
    a.passing_windows = 2;
    let mut status = start("r2", Some(0), t(0));
    let window = |start: i64, calls: Counts| Measured {
        revision: "r2".into(),
        start: t(start),
        end: t(start + 10),
        checks: vec![health(calls, 1, Counts::default())],
    };
    let good = || counts(100, Duration::from_millis(1), 0);
    let bad = || counts(100, Duration::from_millis(1), 5);

    enter_gate(&mut status, 1, t(0));
    assert!(!gate_open(&a, &status, 1));
    assert_eq!(
        record(&a, &mut status, &window(0, good()), CANARY),
        Outcome::Passed
    );
    assert!(!gate_open(&a, &status, 1), "one of two passing windows");
    assert_eq!(status.window_started_at, Some(Time(t(10))));
    // A stale window (its start is not the window in progress) changes nothing.
    assert_eq!(
        record(&a, &mut status, &window(0, bad()), CANARY),
        Outcome::Nothing
    );
    assert!(matches!(
        record(&a, &mut status, &window(10, bad()), CANARY),
        Outcome::Failed(_)
    ));
    assert_eq!((status.passing, status.failing), (0, 1));
    record(&a, &mut status, &window(20, good()), CANARY);
    record(&a, &mut status, &window(30, good()), CANARY);
    assert!(gate_open(&a, &status, 1));
    assert!(
        !gate_open(&a, &status, 2),
        "the next step counts its own windows"
    );

    let Outcome::Exhausted(cause) = record(&a, &mut status, &window(40, bad()), CANARY) else {
        panic!("the second failing window exceeds failureLimit 1");
    };
    assert_eq!(
        cause,
        "check errors: error rate 20.0% > 1% over 100 calls on 1 pod"
    );
    assert_eq!(status.phase, AnalysisPhase::Failed);
    assert_eq!(status.windows.len(), 5);
    assert_eq!(status.windows[0].verdict, Verdict::Fail);
    assert_eq!(
        due(&a, &status, t(1000)),
        None,
        "a failed analysis measures no more"
    );
}

#[test]
fn an_inconclusive_window_breaks_the_row_and_holds_with_its_reason() {
    let a = analysis(json!([{"name": "errors", "errorRate": {"max": "1%"}}]));
    let mut status = start("r2", None, t(0));
    enter_gate(&mut status, 0, t(0));
    let quiet = Measured {
        revision: "r2".into(),
        start: t(0),
        end: t(10),
        checks: vec![health(Counts::default(), 0, Counts::default())],
    };
    assert!(matches!(
        record(&a, &mut status, &quiet, CANARY),
        Outcome::Inconclusive(_)
    ));
    assert_eq!(status.phase, AnalysisPhase::Inconclusive);
    assert_eq!(
        gate_reason(&a, &status, t(11)),
        "analysis inconclusive, holding: check errors: too little traffic: 0 calls on 0 pods < minCalls 20"
    );
    assert!(!gate_open(&a, &status, 0));
}

#[test]
fn a_window_is_due_once_its_reports_can_have_arrived() {
    let a = analysis(json!([{"name": "errors", "errorRate": {"max": "1%"}}]));
    let status = start("r2", None, t(0));
    assert_eq!(
        due(&a, &status, t(10)),
        None,
        "the last second's reports are in flight"
    );
    assert_eq!(
        due(&a, &status, t(12)),
        Some(Span {
            start: t(0),
            end: t(10)
        })
    );
    assert_eq!(until_due(&a, &status, t(4)), Some(Duration::from_secs(8)));
}

#[test]
fn limits_parse_as_the_crd_writes_them() {
    assert_eq!(parse_percent("1%"), Some(0.01));
    assert_eq!(parse_percent("0.5%"), Some(0.005));
    assert_eq!(parse_percent("101%"), None);
    assert_eq!(parse_percent("1"), None);
    assert_eq!(parse_decimal("-0.25"), Some(-0.25));
    assert_eq!(parse_decimal("1e3"), None);
    assert_eq!(parse_decimal("NaN"), None);
    assert_eq!(parse_decimal("."), None);
    assert_eq!(parse_latency("50ms"), Some(Duration::from_millis(50)));
    assert_eq!(parse_latency("2s"), Some(Duration::from_secs(2)));
    assert_eq!(parse_latency("2m"), None);
    let long = analysis(json!([{"name": "e", "errorRate": {"max": "1%"}}]));
    assert_eq!(interval(&long), Duration::from_secs(10));
}
