//! Analysis: the target revision is judged by how it runs, window by window, while it rolls
//! out. Pure: the controller measures a window that is [`due`] (the health store, Prometheus,
//! webhook gates) and hands the [`Measured`] window to the planner, which [`record`]s it in
//! `status.analysis`; the planner asks [`gate_open`] before a step advances or the rollout
//! completes.
//!
//! ```text
//!  window_started_at ──interval──▶ end ─(+REPORT_DELAY: the last second's reports arrive)─▶ measured
//!        │                                                                                    │
//!        │   judge: every check ─▶ Pass │ Fail │ Inconclusive (too little data, no answer)     │
//!        │          window     ─▶ Fail if any failed, else Inconclusive if any was, else Pass  │
//!        ▼                                                                                    ▼
//!   Pass: passing += 1 (toward the step's gate)    Fail: failing += 1; > failureLimit ─▶ failure policy
//!   Inconclusive: passing = 0; a gated rollout holds (Paused, with the reason)
//! ```
//!
//! A step's gate counts only windows that began after its pods ran the target: when a step's
//! goal is first met, the window restarts ([`enter_gate`]), so analysis adds at most
//! `passingWindows × interval` to each gated step.

use std::time::Duration;

use hotload_protocol::Counts;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{
    Analysis, AnalysisPhase, AnalysisStatus, AnalysisWindow, Check, CheckResult, LatencyCheck,
    PrometheusCheck, Verdict,
};

/// How long after a window ends it is measured: a call is reported by its worker within a
/// second, and forwarded by the sidecar within another.
pub const REPORT_DELAY: Duration = Duration::from_secs(2);
/// The longest window (the health store keeps a little more).
pub const MAX_INTERVAL: Duration = Duration::from_secs(600);
/// How many judged windows `status.analysis.windows` keeps.
pub const WINDOWS_KEPT: usize = 5;

/// What one check measured in one window.
#[derive(Clone, Debug, PartialEq)]
pub enum Measurement {
    /// A built-in check: the target revision's calls on its pods, and the stable revision's
    /// on its pods, in the window.
    Health {
        /// The target revision's counts.
        target: Counts,
        /// How many pods made them.
        target_pods: usize,
        /// The stable revision's counts (empty without one).
        stable: Counts,
    },
    /// A Prometheus query's one number, or why there is none.
    Value(Result<f64, String>),
    /// A webhook gate's verdict and reason, or why there is none.
    Gate(Result<(Verdict, String), String>),
}

/// One measured window, handed to the planner.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// The revision measured.
    pub revision: String,
    /// When the window began (`status.analysis.windowStartedAt` when it was due).
    pub start: Timestamp,
    /// When it ended.
    pub end: Timestamp,
    /// One measurement per check, in the order of `spec.analysis.checks`.
    pub checks: Vec<Measurement>,
}

/// A window that is due to be measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// When it began.
    pub start: Timestamp,
    /// When it ended.
    pub end: Timestamp,
}

/// The window length of `analysis` (`10s`, `1m`), within 1 s and [`MAX_INTERVAL`]; the CRD
/// refuses anything unparsable, and an object stored before that reads as 10 s.
pub fn interval(analysis: &Analysis) -> Duration {
    crate::planner::parse_duration(&analysis.interval)
        .unwrap_or(Duration::from_secs(10))
        .clamp(Duration::from_secs(1), MAX_INTERVAL)
}

/// The window of `status.analysis` that has ended and can be measured now, if any. Only a
/// rollout under way is measured (Progressing, or Paused), never one that completed or gave
/// up.
pub fn due(analysis: &Analysis, status: &AnalysisStatus, now: Timestamp) -> Option<Span> {
    if matches!(status.phase, AnalysisPhase::Failed | AnalysisPhase::Passed) {
        return None;
    }
    let start = status.window_started_at.as_ref()?.0;
    let end = start + jiff::SignedDuration::try_from(interval(analysis)).ok()?;
    let measurable = end + jiff::SignedDuration::try_from(REPORT_DELAY).ok()?;
    (now >= measurable).then_some(Span { start, end })
}

/// How long until the window in progress can be measured (for the planner's requeue).
pub fn until_due(analysis: &Analysis, status: &AnalysisStatus, now: Timestamp) -> Option<Duration> {
    if matches!(status.phase, AnalysisPhase::Failed | AnalysisPhase::Passed) {
        return None;
    }
    let start = status.window_started_at.as_ref()?.0;
    let ready = start.as_nanosecond()
        + i128::try_from((interval(analysis) + REPORT_DELAY).as_nanos()).ok()?;
    let wait = u64::try_from(ready - now.as_nanosecond()).unwrap_or(0);
    Some(Duration::from_nanos(wait).max(Duration::from_millis(500)))
}

/// What the judge needs beside the measurements.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// A stable revision exists (a latency ratio has something to compare with).
    pub stable_exists: bool,
    /// Some pod still serves the stable revision (its absence of calls is then a lack of
    /// data, not the end of the baseline).
    pub stable_serving: bool,
    /// The baselines remembered from earlier windows (`name=seconds`).
    pub baselines: &'a [String],
}

/// Judges one window: each check, then the window. Returns the window and the baselines to
/// remember (a latency ratio's stable-side value, per check, once measured).
pub fn judge(
    analysis: &Analysis,
    measured: &Measured,
    context: Context<'_>,
) -> (AnalysisWindow, Vec<String>) {
    let mut baselines: Vec<String> = context.baselines.to_vec();
    let checks: Vec<CheckResult> = analysis
        .checks
        .iter()
        .zip(&measured.checks)
        .map(|(check, measurement)| {
            let (result, baseline) = judge_check(check, measurement, analysis.min_calls, &context);
            if let Some(seconds) = baseline {
                remember_baseline(&mut baselines, &check.name, seconds);
            }
            result
        })
        .collect();
    let verdict = if checks.iter().any(|c| c.verdict == Verdict::Fail) {
        Verdict::Fail
    } else if checks.len() < analysis.checks.len()
        || checks.iter().any(|c| c.verdict == Verdict::Inconclusive)
    {
        Verdict::Inconclusive
    } else {
        Verdict::Pass
    };
    let window = AnalysisWindow {
        start: Time(measured.start),
        end: Time(measured.end),
        verdict,
        checks,
    };
    (window, baselines)
}

fn judge_check(
    check: &Check,
    measurement: &Measurement,
    min_calls: i64,
    context: &Context<'_>,
) -> (CheckResult, Option<f64>) {
    let min_calls = u64::try_from(min_calls).unwrap_or(1).max(1);
    match measurement {
        Measurement::Health {
            target,
            target_pods,
            stable,
        } => {
            let data = HealthData {
                target,
                pods: *target_pods,
                stable,
                min_calls,
            };
            if let Some(rate) = &check.error_rate {
                (judge_error_rate(&check.name, &rate.max, &data), None)
            } else if let Some(latency) = &check.latency {
                judge_latency(&check.name, latency, &data, context)
            } else {
                let message = "a built-in measurement for a check that is not built in".into();
                (result(&check.name, Verdict::Inconclusive, message), None)
            }
        }
        Measurement::Value(value) => match (&check.prometheus, value) {
            (Some(prometheus), Ok(value)) => (judge_value(&check.name, prometheus, *value), None),
            (_, Err(why)) => (
                result(&check.name, Verdict::Inconclusive, why.clone()),
                None,
            ),
            (None, Ok(_)) => {
                let message = "a query result for a check that is not a query".into();
                (result(&check.name, Verdict::Inconclusive, message), None)
            }
        },
        Measurement::Gate(answer) => {
            let (verdict, message) = match answer {
                Ok((verdict, reason)) => (*verdict, format!("gate answered {verdict:?}: {reason}")),
                Err(why) => (
                    Verdict::Inconclusive,
                    format!("gate gave no verdict: {why}"),
                ),
            };
            (result(&check.name, verdict, message), None)
        }
    }
}

/// The built-in data of one window.
struct HealthData<'a> {
    target: &'a Counts,
    pods: usize,
    stable: &'a Counts,
    min_calls: u64,
}

impl HealthData<'_> {
    /// `over 412 calls on 1 pod`.
    fn over(&self) -> String {
        format!(
            "over {} calls on {} pod{}",
            self.target.calls,
            self.pods,
            if self.pods == 1 { "" } else { "s" }
        )
    }

    fn too_few(&self, name: &str) -> Option<CheckResult> {
        (self.target.calls < self.min_calls).then(|| {
            let mut r = result(
                name,
                Verdict::Inconclusive,
                format!(
                    "too little traffic: {} calls on {} pod{} < minCalls {}",
                    self.target.calls,
                    self.pods,
                    if self.pods == 1 { "" } else { "s" },
                    self.min_calls
                ),
            );
            r.calls = Some(clamp_i64(self.target.calls));
            r.pods = Some(clamp_i32(self.pods));
            r
        })
    }

    fn counted(&self, mut r: CheckResult) -> CheckResult {
        r.calls = Some(clamp_i64(self.target.calls));
        r.pods = Some(clamp_i32(self.pods));
        r
    }
}

fn judge_error_rate(name: &str, max: &str, data: &HealthData<'_>) -> CheckResult {
    if let Some(r) = data.too_few(name) {
        return r;
    }
    let Some(limit) = parse_percent(max) else {
        return result(
            name,
            Verdict::Inconclusive,
            format!("errorRate.max {max:?} is not a percentage"),
        );
    };
    let rate = data.target.error_rate().unwrap_or(0.0);
    let (verdict, cmp) = beyond(rate > limit);
    let mut r = result(
        name,
        verdict,
        format!("error rate {} {cmp} {max} {}", percent(rate), data.over()),
    );
    r.value = Some(percent(rate));
    r.limit = Some(format!("<= {max}"));
    data.counted(r)
}

fn judge_latency(
    name: &str,
    check: &LatencyCheck,
    data: &HealthData<'_>,
    context: &Context<'_>,
) -> (CheckResult, Option<f64>) {
    if let Some(r) = data.too_few(name) {
        return (r, None);
    }
    let q = f64::from(check.percentile.clamp(1, 99)) / 100.0;
    let label = format!("p{}", check.percentile.clamp(1, 99));
    let Some(value) = data.target.quantile(q) else {
        let message = format!("{label}: the calls carried no latency");
        return (result(name, Verdict::Inconclusive, message), None);
    };
    if let Some(max) = &check.max {
        let Some(limit) = parse_latency(max) else {
            let message = format!("latency.max {max:?} is not a duration");
            return (result(name, Verdict::Inconclusive, message), None);
        };
        let (verdict, cmp) = beyond(value > limit);
        let mut r = result(
            name,
            verdict,
            format!("{label} {} {cmp} {max} {}", millis(value), data.over()),
        );
        r.value = Some(millis(value));
        r.limit = Some(format!("<= {max}"));
        return (data.counted(r), None);
    }
    let ratio_text = check.max_ratio.as_deref().unwrap_or("");
    let Some(max_ratio) = parse_decimal(ratio_text) else {
        let message = format!("latency.maxRatio {ratio_text:?} is not a number");
        return (result(name, Verdict::Inconclusive, message), None);
    };
    let (baseline, measured_now, whence) = match baseline(name, q, data, context) {
        Baseline::Measured(b) => (b, true, "the stable revision's"),
        Baseline::Remembered(b) => (b, false, "the stable revision's last measured"),
        Baseline::Lacking(message) => {
            let r = data.counted(result(name, Verdict::Inconclusive, message));
            return (r, None);
        }
        Baseline::None(message) => {
            let r = data.counted(result(name, Verdict::Pass, message));
            return (r, None);
        }
    };
    let ratio = value.as_secs_f64() / baseline.max(1e-6);
    let (verdict, cmp) = beyond(ratio > max_ratio);
    let mut r = result(
        name,
        verdict,
        format!(
            "{label} {} is {ratio:.2}× {whence} {} ({cmp} {ratio_text}×) {}",
            millis(value),
            millis(Duration::from_secs_f64(baseline)),
            data.over()
        ),
    );
    r.value = Some(format!("{ratio:.2}x"));
    r.limit = Some(format!("<= {ratio_text}x"));
    (data.counted(r), measured_now.then_some(baseline))
}

/// What a latency ratio compares with.
enum Baseline {
    /// The stable revision's percentile in this window, in seconds.
    Measured(f64),
    /// No pod runs the stable revision any more: its last measured percentile.
    Remembered(f64),
    /// Stable pods exist but made too few calls: inconclusive, with the reason.
    Lacking(String),
    /// Nothing to compare with (first rollout, or the stable revision was never measured
    /// while it ran): the ratio cannot fail, with the reason.
    None(String),
}

fn baseline(name: &str, q: f64, data: &HealthData<'_>, context: &Context<'_>) -> Baseline {
    if !context.stable_exists {
        return Baseline::None("no stable revision to compare with (first rollout)".into());
    }
    if data.stable.calls >= data.min_calls
        && let Some(b) = data.stable.quantile(q)
    {
        return Baseline::Measured(b.as_secs_f64());
    }
    if context.stable_serving {
        return Baseline::Lacking(format!(
            "too little traffic on the stable revision to compare with: {} calls < minCalls {}",
            data.stable.calls, data.min_calls
        ));
    }
    match remembered_baseline(context.baselines, name) {
        Some(b) => Baseline::Remembered(b),
        None => Baseline::None("no pod runs the stable revision and it was never measured".into()),
    }
}

fn remembered_baseline(baselines: &[String], name: &str) -> Option<f64> {
    baselines.iter().find_map(|b| {
        let (check, seconds) = b.split_once('=')?;
        (check == name).then(|| seconds.parse().ok()).flatten()
    })
}

fn remember_baseline(baselines: &mut Vec<String>, name: &str, seconds: f64) {
    baselines.retain(|b| b.split_once('=').is_none_or(|(check, _)| check != name));
    baselines.push(format!("{name}={seconds:.6}"));
    baselines.sort();
}

fn judge_value(name: &str, check: &PrometheusCheck, value: f64) -> CheckResult {
    let bounds = [
        (check.max.as_deref(), ">", "<="),
        (check.min.as_deref(), "<", ">="),
    ];
    let mut limits = Vec::new();
    let mut broken = None;
    for (bound, breaks, holds) in bounds {
        let Some(text) = bound else { continue };
        let Some(limit) = parse_decimal(text) else {
            let message = format!("prometheus bound {text:?} is not a number");
            return result(name, Verdict::Inconclusive, message);
        };
        limits.push(format!("{holds} {text}"));
        let beyond = if breaks == ">" {
            value > limit
        } else {
            value < limit
        };
        if beyond && broken.is_none() {
            broken = Some(format!("{breaks} {text}"));
        }
    }
    let shown = format_number(value);
    let (verdict, message) = match broken {
        Some(why) => (Verdict::Fail, format!("query result {shown} {why}")),
        None => (
            Verdict::Pass,
            format!("query result {shown} within {}", limits.join(" and ")),
        ),
    };
    let mut r = result(name, verdict, message);
    r.value = Some(shown);
    r.limit = Some(limits.join(", "));
    r
}

/// A measurement against its upper limit: Fail and `>` beyond it, Pass and `≤` within.
fn beyond(over: bool) -> (Verdict, &'static str) {
    if over {
        (Verdict::Fail, ">")
    } else {
        (Verdict::Pass, "≤")
    }
}

fn result(name: &str, verdict: Verdict, message: String) -> CheckResult {
    CheckResult {
        name: name.to_string(),
        verdict,
        value: None,
        limit: None,
        calls: None,
        pods: None,
        message,
    }
}

/// What [`record`] concluded from a window.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Nothing new (no window measured, or a stale one).
    Nothing,
    /// A window passed.
    Passed,
    /// A window was inconclusive; the message says why.
    Inconclusive(String),
    /// A window failed, within failureLimit.
    Failed(String),
    /// A window failed beyond failureLimit: apply the failure policy with this cause.
    Exhausted(String),
}

/// Starts (or restarts, for a new target or a retry) the analysis of `target` at `now`.
pub fn start(target: &str, step: Option<i32>, now: Timestamp) -> AnalysisStatus {
    AnalysisStatus {
        revision: target.to_string(),
        phase: AnalysisPhase::Running,
        step,
        passing: 0,
        failing: 0,
        window_started_at: Some(Time(now)),
        baselines: Vec::new(),
        windows: Vec::new(),
    }
}

/// Records a measured window in `status` (ignored unless it is the window in progress) and
/// starts the next one where it ended.
pub fn record(
    analysis: &Analysis,
    status: &mut AnalysisStatus,
    measured: &Measured,
    context: Context<'_>,
) -> Outcome {
    let current = status.window_started_at.as_ref().map(|t| t.0);
    if measured.revision != status.revision
        || current != Some(measured.start)
        || matches!(status.phase, AnalysisPhase::Failed | AnalysisPhase::Passed)
    {
        return Outcome::Nothing;
    }
    let (window, baselines) = judge(analysis, measured, context);
    status.baselines = baselines;
    status.window_started_at = Some(Time(measured.end));
    let first = |verdict| {
        window
            .checks
            .iter()
            .find(|c| c.verdict == verdict)
            .map(|c| format!("check {}: {}", c.name, c.message))
            .unwrap_or_default()
    };
    let outcome = match window.verdict {
        Verdict::Pass => {
            status.passing = status.passing.saturating_add(1);
            status.phase = AnalysisPhase::Running;
            Outcome::Passed
        }
        Verdict::Inconclusive => {
            status.passing = 0;
            status.phase = AnalysisPhase::Inconclusive;
            Outcome::Inconclusive(first(Verdict::Inconclusive))
        }
        Verdict::Fail => {
            status.passing = 0;
            status.failing = status.failing.saturating_add(1);
            let cause = first(Verdict::Fail);
            if status.failing > analysis.failure_limit {
                status.phase = AnalysisPhase::Failed;
                Outcome::Exhausted(cause)
            } else {
                status.phase = AnalysisPhase::Running;
                Outcome::Failed(cause)
            }
        }
    };
    status.windows.insert(0, window);
    status.windows.truncate(WINDOWS_KEPT);
    outcome
}

/// The gate of `step` (the step index; the number of steps for completion) has just met its
/// pod goal: passing windows count from now, in a window that starts now. Does nothing when
/// the gate is already this step's.
pub fn enter_gate(status: &mut AnalysisStatus, step: i32, now: Timestamp) {
    if status.step == Some(step) {
        return;
    }
    status.step = Some(step);
    status.passing = 0;
    if status.phase == AnalysisPhase::Inconclusive {
        status.phase = AnalysisPhase::Running;
    }
    status.window_started_at = Some(Time(now));
}

/// Whether the gate of `step` is open: its pods ran the target for `passingWindows`
/// passing windows in a row.
pub fn gate_open(analysis: &Analysis, status: &AnalysisStatus, step: i32) -> bool {
    status.step == Some(step) && status.passing >= analysis.passing_windows
}

/// Why the gate of `step` holds, for status.message.
pub fn gate_reason(analysis: &Analysis, status: &AnalysisStatus, now: Timestamp) -> String {
    if status.phase == AnalysisPhase::Inconclusive
        && let Some(last) = status.windows.first()
        && let Some(check) = last
            .checks
            .iter()
            .find(|c| c.verdict == Verdict::Inconclusive)
    {
        return format!(
            "analysis inconclusive, holding: check {}: {}",
            check.name, check.message
        );
    }
    let ends = until_due(analysis, status, now)
        .map(|d| d.saturating_sub(REPORT_DELAY).as_secs())
        .unwrap_or(0);
    format!(
        "analysis: {} of {} passing windows; this window ends in {ends}s",
        status.passing.max(0),
        analysis.passing_windows
    )
}

/// `0.5%` → 0.005; `None` when it is not a percentage from 0 to 100.
pub fn parse_percent(text: &str) -> Option<f64> {
    let value = parse_decimal(text.strip_suffix('%')?)?;
    (0.0..=100.0).contains(&value).then_some(value / 100.0)
}

/// A plain decimal (`1.5`, `-0.25`); `None` for anything else (no exponents, no NaN).
pub fn parse_decimal(text: &str) -> Option<f64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let plain = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().filter(|&c| c == '.').count() <= 1
        && !digits.starts_with('.')
        && !digits.ends_with('.');
    if !plain {
        return None;
    }
    text.parse().ok().filter(|v: &f64| v.is_finite())
}

/// `50ms`, `2s` → a duration.
pub fn parse_latency(text: &str) -> Option<Duration> {
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    text.strip_suffix('s')?
        .parse()
        .ok()
        .map(Duration::from_secs)
}

/// 0.198 → `19.8%`.
fn percent(rate: f64) -> String {
    let p = rate * 100.0;
    if p != 0.0 && p < 0.1 {
        format!("{p:.3}%")
    } else {
        format!("{p:.1}%")
    }
}

/// A latency in milliseconds, like `41.2ms`.
fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{ms:.3}ms")
    } else {
        format!("{ms:.1}ms")
    }
}

/// A query result as a person reads it.
fn format_number(value: f64) -> String {
    let text = format!("{value:.6}");
    let trimmed = text.trim_end_matches('0').trim_end_matches('.');
    if trimmed.is_empty() || trimmed == "-" {
        "0".into()
    } else {
        trimmed.to_string()
    }
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn clamp_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
#[path = "analysis_tests.rs"]
mod tests;
