//! The analysis providers beside the hosts' own health counts: a Prometheus instant query
//! and an HTTP webhook gate (`spec.analysis.checks[].prometheus` / `.webhook`).
//!
//! ```text
//!  Window{release, revision, pods, start..end}
//!     ├─▶ render_query ─▶ GET {address}/api/v1/query?query=…&time=<end> ─▶ parse_prometheus ─▶ f64
//!     └─▶ POST {url} (the Window as JSON) ─────────────────────────────────▶ parse_gate ─▶ Verdict
//! ```
//! This module only asks and reads the answer; comparing a number with min/max is the
//! analysis' job. Every failure to get an answer comes back as `Err(reason)`, which the
//! analysis reports as inconclusive: the reason names the server (its URL without userinfo,
//! query or fragment, so no credential reaches status or events) and the cause. Text from the
//! servers is bounded and has its control characters escaped before it goes anywhere.

use std::time::Duration;

use anyhow::Context as _;
use reqwest::Url;
use serde::Deserialize;

use crate::api::{PrometheusCheck, Verdict, WebhookCheck, escape_controls};

/// The largest Prometheus answer read; a larger one is an error (the query must aggregate).
pub const MAX_PROMETHEUS_BODY: usize = 1 << 20;
/// The largest gate answer read.
pub const MAX_GATE_BODY: usize = 64 << 10;
/// A gate's reason, and any text from a server, is cut to this many characters.
pub const MAX_REASON_CHARS: usize = 256;
/// How much of an unexpected answer's body an error message quotes.
const EXCERPT_BYTES: usize = 200;
/// Redirects followed within one origin.
const MAX_REDIRECTS: usize = 5;

/// What a check is asked about: one window of one release's rollout.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// The release's namespace.
    pub namespace: String,
    /// The release's name.
    pub release: String,
    /// The plugin slot it rolls out.
    pub plugin: String,
    /// The target revision, judged in this window.
    pub revision: String,
    /// The revision the fleet goes back to on failure, if there is one.
    pub stable_revision: Option<String>,
    /// The canary step (index into spec.strategy.steps), if the rollout has steps.
    pub step: Option<i32>,
    /// The pods running the target revision in this window.
    pub pods: Vec<String>,
    /// When the window began.
    pub start: jiff::Timestamp,
    /// When it ended; Prometheus is queried at this instant.
    pub end: jiff::Timestamp,
    /// The window's length as PromQL writes it, like `10s`.
    pub interval: String,
}

/// The HTTP client the providers share: one per operator, cheap to clone.
#[derive(Clone, Debug)]
pub struct Providers {
    client: reqwest::Client,
}

impl Providers {
    /// A client trusting the platform's roots.
    pub fn new() -> anyhow::Result<Self> {
        Self::build(None)
    }

    /// A client trusting the platform's roots and the CA certificates in `pem` (for a
    /// Prometheus or a gate behind a private CA).
    pub fn with_extra_roots(pem: &[u8]) -> anyhow::Result<Self> {
        Self::build(Some(pem))
    }

    fn build(extra_roots: Option<&[u8]>) -> anyhow::Result<Self> {
        // reqwest is built without a provider of its own and would panic without one; the
        // operator's main installs ring too, this covers tests and other callers.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let decision = redirect_decision(attempt.previous(), attempt.url());
                match decision {
                    Ok(()) => attempt.follow(),
                    Err(reason) => attempt.error(reason),
                }
            }));
        if let Some(pem) = extra_roots {
            let certs = reqwest::Certificate::from_pem_bundle(pem).context("CA bundle")?;
            anyhow::ensure!(!certs.is_empty(), "CA bundle: no certificate found");
            builder = builder.tls_certs_merge(certs);
        }
        Ok(Self {
            client: builder
                .build()
                .context("building the providers' HTTP client")?,
        })
    }

    /// The query's one number, or why there is none (the reason becomes the inconclusive
    /// message).
    pub async fn prometheus(
        &self,
        check: &PrometheusCheck,
        window: &Window,
    ) -> Result<f64, String> {
        let timeout = timeout_of(check.timeout_seconds);
        let server = redact_url(&check.address);
        let url = query_url(
            &check.address,
            &render_query(&check.query, window),
            window.end,
            timeout,
        )
        .map_err(|e| format!("prometheus {server}: {e}"))?;
        let answer = async {
            let response = self
                .client
                .get(url)
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| transport_failure(e, timeout))?;
            let status = response.status().as_u16();
            let body = read_bounded(response, MAX_PROMETHEUS_BODY, timeout).await?;
            prometheus_answer(status, &body)
        };
        answer
            .await
            .map_err(|e| format!("prometheus {server}: {e}"))
    }

    /// The gate's verdict and reason, or why there is none.
    pub async fn webhook(
        &self,
        check: &WebhookCheck,
        window: &Window,
    ) -> Result<(Verdict, String), String> {
        let timeout = timeout_of(check.timeout_seconds);
        let server = redact_url(&check.url);
        let answer = async {
            let url = web_url(&check.url)?;
            let response = self
                .client
                .post(url)
                .header(reqwest::header::ACCEPT, "application/json")
                .json(window)
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| transport_failure(e, timeout))?;
            let status = response.status().as_u16();
            let body = read_bounded(response, MAX_GATE_BODY, timeout).await?;
            parse_gate(status, &body)
        };
        answer.await.map_err(|e| format!("webhook {server}: {e}"))
    }
}

/// `seconds` as a timeout within the API's bounds (1 to 60 s), whatever the spec says.
fn timeout_of(seconds: i32) -> Duration {
    Duration::from_secs(u64::try_from(seconds.clamp(1, 60)).unwrap_or(10))
}

/// `template` with the window's placeholders replaced: `{{revision}}`, `{{stableRevision}}`
/// (empty when there is no stable revision), `{{plugin}}`, `{{namespace}}`, `{{release}}`
/// and `{{interval}}`. Other text, unknown placeholders included, stays as it is, so
/// Prometheus names them in its error. The values need no PromQL quoting: revisions are
/// hex, the names are Kubernetes names and the interval is a duration.
pub fn render_query(template: &str, window: &Window) -> String {
    let stable = window.stable_revision.as_deref().unwrap_or("");
    let values: [(&str, &str); 6] = [
        ("{{revision}}", &window.revision),
        ("{{stableRevision}}", stable),
        ("{{plugin}}", &window.plugin),
        ("{{namespace}}", &window.namespace),
        ("{{release}}", &window.release),
        ("{{interval}}", &window.interval),
    ];
    // One pass over the template, so a value that itself reads like a placeholder is
    // never replaced again.
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    'scan: while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        for (placeholder, value) in values {
            if let Some(after) = rest.strip_prefix(placeholder) {
                out.push_str(value);
                rest = after;
                continue 'scan;
            }
        }
        out.push_str("{{");
        rest = &rest[2..];
    }
    out.push_str(rest);
    out
}

/// The instant-query URL: `{address}/api/v1/query` (under any path prefix the address has)
/// with `query`, `time` (unix seconds) and Prometheus' own evaluation `timeout`, encoded.
pub fn query_url(
    address: &str,
    query: &str,
    time: jiff::Timestamp,
    timeout: Duration,
) -> Result<Url, String> {
    let mut url = web_url(address)?;
    let path = format!("{}/api/v1/query", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url.set_fragment(None);
    url.query_pairs_mut()
        .append_pair("query", query)
        .append_pair("time", &unix_seconds(time))
        .append_pair("timeout", &format!("{}s", timeout.as_secs()));
    Ok(url)
}

/// `time` as Prometheus takes it: unix seconds with milliseconds, like `1767225600.250`.
fn unix_seconds(time: jiff::Timestamp) -> String {
    let millis = time.as_millisecond();
    format!("{}.{:03}", millis.div_euclid(1000), millis.rem_euclid(1000))
}

/// `text` parsed as an `http://` or `https://` URL; the error never quotes it.
fn web_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a valid URL ({e})"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!(
            "scheme {} is not http or https",
            bounded(other.as_bytes())
        )),
    }
}

/// `text` as a URL fit for messages: without userinfo, query and fragment, where tokens
/// and passwords live.
pub fn redact_url(text: &str) -> String {
    let Ok(mut url) = Url::parse(text) else {
        return "(invalid URL)".into();
    };
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    bounded(url.as_str().as_bytes())
}

/// Whether a redirect from the first of `previous` to `next` may be followed: only within
/// the same origin (scheme, host and port), at most [`MAX_REDIRECTS`] times. A gate that
/// sends the operator elsewhere is refused rather than trusted with the window's contents.
fn redirect_decision(previous: &[Url], next: &Url) -> Result<(), String> {
    if previous.len() > MAX_REDIRECTS {
        return Err(format!("more than {MAX_REDIRECTS} redirects"));
    }
    match previous.first() {
        Some(first) if first.origin() != next.origin() => Err(format!(
            "redirect to another origin refused: {}",
            redact_url(next.as_str())
        )),
        _ => Ok(()),
    }
}

/// Reads `response`'s body, refusing one larger than `limit` bytes (before reading, when
/// its length is announced, and while reading, when not).
async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let too_large = || format!("answer larger than {}, not read", describe_size(limit));
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_failure(e, timeout))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `bytes` as people write it: `1 MiB`, `64 KiB`, `512 bytes`.
fn describe_size(bytes: usize) -> String {
    match bytes {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// Why a request got no answer: a timeout says so with its length; anything else is the
/// error's chain of causes, without the URL reqwest would add.
fn transport_failure(error: reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("no answer within {}s", timeout.as_secs());
    }
    let error = error.without_url();
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let text = cause.to_string();
        // hyper and reqwest repeat their inner error's text in their own.
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    bounded(parts.join(": ").as_bytes())
}

/// Outside text fit for status: decoded (lossily), control characters escaped, cut to
/// [`MAX_REASON_CHARS`] characters (with `…` where it was cut).
fn bounded(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let escaped = escape_controls(&text);
    match escaped.char_indices().nth(MAX_REASON_CHARS) {
        Some((at, _)) => format!("{}…", &escaped[..at]),
        None => escaped.into_owned(),
    }
}

/// The first [`EXCERPT_BYTES`] bytes of an unexpected body, for an error message.
fn excerpt(body: &[u8]) -> String {
    let cut = &body[..body.len().min(EXCERPT_BYTES)];
    let text = bounded(cut);
    match (text.is_empty(), body.len() > EXCERPT_BYTES) {
        (true, _) => "(empty body)".into(),
        (false, true) => format!("{text}…"),
        (false, false) => text,
    }
}

/// An answer of Prometheus' HTTP API, success or error.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiAnswer {
    status: String,
    #[serde(default)]
    data: Option<QueryData>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// The `data` of an instant query.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryData {
    result_type: String,
    result: serde_json::Value,
}

/// One sample of an instant vector; `value` is absent for a native histogram.
#[derive(Deserialize)]
struct Sample {
    #[serde(default)]
    value: Option<(f64, String)>,
}

/// A whole answer to an instant query: `status` is its HTTP status. A 200 is read by
/// [`parse_prometheus`]; any other status is an error, with Prometheus' own error when the
/// body carries one, else an excerpt of the body.
pub fn prometheus_answer(status: u16, body: &[u8]) -> Result<f64, String> {
    if status == 200 {
        return parse_prometheus(body);
    }
    match serde_json::from_slice::<ApiAnswer>(body) {
        Ok(answer) if answer.status == "error" => {
            Err(format!("HTTP {status}: {}", api_error(&answer)))
        }
        _ => Err(format!("HTTP {status}: {}", excerpt(body))),
    }
}

/// `errorType: error` of an error answer.
fn api_error(answer: &ApiAnswer) -> String {
    let kind = answer.error_type.as_deref().unwrap_or("error");
    let text = answer.error.as_deref().unwrap_or("(no message)");
    bounded(format!("{kind}: {text}").as_bytes())
}

/// The one number of an `/api/v1/query` answer (JSON): a scalar, or an instant vector of
/// exactly one sample. No sample, several samples (the query must aggregate them), a
/// matrix or string, NaN or an infinity, or an error answer are each an error saying so.
pub fn parse_prometheus(body: &[u8]) -> Result<f64, String> {
    let answer: ApiAnswer = serde_json::from_slice(body)
        .map_err(|e| format!("answer is not Prometheus API JSON ({e})"))?;
    match answer.status.as_str() {
        "success" => {}
        "error" => return Err(api_error(&answer)),
        other => {
            return Err(format!(
                "answer has status {:?}, not success",
                bounded(other.as_bytes())
            ));
        }
    }
    let data = answer
        .data
        .ok_or_else(|| "answer has no data".to_string())?;
    let shape = |e: serde_json::Error| format!("{} result is malformed ({e})", data.result_type);
    let value = match data.result_type.as_str() {
        "scalar" => serde_json::from_value::<(f64, String)>(data.result.clone()).map_err(shape)?,
        "vector" => {
            let samples =
                serde_json::from_value::<Vec<Sample>>(data.result.clone()).map_err(shape)?;
            match samples.as_slice() {
                [] => return Err("query returned no samples".into()),
                [one] => one
                    .value
                    .clone()
                    .ok_or_else(|| "query returned a histogram, not a number".to_string())?,
                many => {
                    return Err(format!(
                        "query returned {} samples; it must return one (aggregate them, \
                         like sum(...))",
                        many.len()
                    ));
                }
            }
        }
        other => {
            return Err(format!(
                "query returned a {}, not a scalar or a vector of one sample",
                bounded(other.as_bytes())
            ));
        }
    };
    let number: f64 = value.1.parse().map_err(|_| {
        format!(
            "query returned {:?}, not a number",
            bounded(value.1.as_bytes())
        )
    })?;
    if number.is_finite() {
        Ok(number)
    } else {
        Err(format!("query returned {}", bounded(value.1.as_bytes())))
    }
}

/// The answer a gate gives.
#[derive(Deserialize)]
struct GateAnswer {
    verdict: String,
    #[serde(default)]
    reason: Option<String>,
}

/// A gate's verdict and reason from its HTTP `status` and `body`: a 2xx with
/// `{"verdict": "pass" | "fail" | "inconclusive", "reason": "…"}` (reason optional, cut to
/// [`MAX_REASON_CHARS`] characters, controls escaped; other fields ignored). Any other
/// status, or another body, is an error saying what came.
pub fn parse_gate(status: u16, body: &[u8]) -> Result<(Verdict, String), String> {
    if !(200..300).contains(&status) {
        return Err(format!("HTTP {status}: {}", excerpt(body)));
    }
    let answer: GateAnswer = serde_json::from_slice(body).map_err(|e| {
        format!(
            "answer is not {{\"verdict\": …, \"reason\": …}} JSON ({}): {}",
            bounded(e.to_string().as_bytes()),
            excerpt(body)
        )
    })?;
    let verdict = match answer.verdict.as_str() {
        "pass" => Verdict::Pass,
        "fail" => Verdict::Fail,
        "inconclusive" => Verdict::Inconclusive,
        other => {
            return Err(format!(
                "unknown verdict {:?}; a gate answers pass, fail or inconclusive",
                bounded(other.as_bytes())
            ));
        }
    };
    let reason = bounded(answer.reason.unwrap_or_default().as_bytes());
    Ok((verdict, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> Window {
        Window {
            namespace: "shop".into(),
            release: "auth-filter".into(),
            plugin: "auth".into(),
            revision: "abc123".into(),
            stable_revision: Some("def456".into()),
            step: Some(1),
            pods: vec!["checkout-1".into()],
            start: "2026-01-01T00:00:00Z".parse().unwrap(),
            end: "2026-01-01T00:00:10.25Z".parse().unwrap(),
            interval: "10s".into(),
        }
    }

    #[test]
    fn render_replaces_every_placeholder() {
        let q = "rate(x{rev=\"{{revision}}\",stable=\"{{stableRevision}}\",p=\"{{plugin}}\",\
                 ns=\"{{namespace}}\",r=\"{{release}}\"}[{{interval}}]) {{revision}}";
        assert_eq!(
            render_query(q, &window()),
            "rate(x{rev=\"abc123\",stable=\"def456\",p=\"auth\",ns=\"shop\",r=\"auth-filter\"}[10s]) abc123"
        );
    }

    #[test]
    fn render_without_stable_revision_leaves_it_empty() {
        let w = Window {
            stable_revision: None,
            ..window()
        };
        assert_eq!(render_query("a{{stableRevision}}b", &w), "ab");
    }

    #[test]
    fn render_keeps_unknown_placeholders_and_braces() {
        assert_eq!(
            render_query("{{pod}} {x} {{ {{revision}}{{", &window()),
            "{{pod}} {x} {{ abc123{{"
        );
    }

    #[test]
    fn render_does_not_replace_inside_replaced_values() {
        let w = Window {
            release: "{{revision}}".into(),
            ..window()
        };
        assert_eq!(render_query("{{release}}", &w), "{{revision}}");
    }

    #[test]
    fn query_url_encodes_query_and_time_under_a_path_prefix() {
        let url = query_url(
            "https://user:pw@prom.example:9090/prometheus/",
            "sum(x{a=\"b c\"}) + 1 / 2 & {{",
            window().end,
            Duration::from_secs(7),
        )
        .unwrap();
        assert_eq!(url.path(), "/prometheus/api/v1/query");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            [
                ("query".into(), "sum(x{a=\"b c\"}) + 1 / 2 & {{".into()),
                ("time".into(), "1767225610.250".into()),
                ("timeout".into(), "7s".into()),
            ]
        );
        assert!(!url.query().unwrap().contains(' '));
        assert!(!url.query().unwrap().contains("+ 1"));
    }

    #[test]
    fn query_url_refuses_other_schemes_and_garbage() {
        assert!(query_url("ftp://x", "up", window().end, Duration::from_secs(1)).is_err());
        let err = query_url("not a url", "up", window().end, Duration::from_secs(1)).unwrap_err();
        assert!(!err.contains("not a url"), "{err}");
    }

    #[test]
    fn unix_seconds_before_1970_count_down() {
        let t: jiff::Timestamp = "1969-12-31T23:59:59.75Z".parse().unwrap();
        assert_eq!(unix_seconds(t), "-1.750");
    }

    #[test]
    fn redact_drops_credentials_query_and_fragment() {
        assert_eq!(
            redact_url("https://user:secret@gate.example:8443/judge?token=t0k#frag"),
            "https://gate.example:8443/judge"
        );
        assert_eq!(redact_url("::"), "(invalid URL)");
    }

    #[test]
    fn redirects_stay_within_the_origin() {
        let first = Url::parse("http://a.example:80/x").unwrap();
        let same = Url::parse("http://a.example/y").unwrap();
        let other_port = Url::parse("http://a.example:8080/y").unwrap();
        let other_scheme = Url::parse("https://a.example/y").unwrap();
        let other_host = Url::parse("http://u:secret@b.example/y?t=1").unwrap();
        assert_eq!(
            redirect_decision(std::slice::from_ref(&first), &same),
            Ok(())
        );
        for next in [&other_port, &other_scheme, &other_host] {
            let err = redirect_decision(std::slice::from_ref(&first), next).unwrap_err();
            assert!(err.contains("another origin"), "{err}");
            assert!(!err.contains("secret") && !err.contains("t=1"), "{err}");
        }
        let many = vec![first.clone(); MAX_REDIRECTS + 1];
        assert!(redirect_decision(&many, &same).is_err());
        let enough = vec![first; MAX_REDIRECTS];
        assert_eq!(redirect_decision(&enough, &same), Ok(()));
    }

    #[test]
    fn timeouts_stay_within_the_api_bounds() {
        assert_eq!(timeout_of(-5), Duration::from_secs(1));
        assert_eq!(timeout_of(10), Duration::from_secs(10));
        assert_eq!(timeout_of(1000), Duration::from_secs(60));
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(describe_size(1 << 20), "1 MiB");
        assert_eq!(describe_size(64 << 10), "64 KiB");
        assert_eq!(describe_size(1000), "1000 bytes");
    }

    fn vector(values: &[&str]) -> Vec<u8> {
        let result: Vec<_> = values
            .iter()
            .map(|v| serde_json::json!({"metric": {"revision": "r1"}, "value": [1767225610.25, v]}))
            .collect();
        serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": result}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn one_sample_is_its_value() {
        assert_eq!(parse_prometheus(&vector(&["0.07"])), Ok(0.07));
        assert_eq!(parse_prometheus(&vector(&["-3e2"])), Ok(-300.0));
    }

    #[test]
    fn a_scalar_is_its_value() {
        let body =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1767225610.25,"42"]}}"#;
        assert_eq!(parse_prometheus(body), Ok(42.0));
    }

    #[test]
    fn no_sample_is_an_error() {
        assert_eq!(
            parse_prometheus(&vector(&[])),
            Err("query returned no samples".into())
        );
    }

    #[test]
    fn several_samples_name_their_count() {
        let err = parse_prometheus(&vector(&["1", "2", "3"])).unwrap_err();
        assert!(
            err.contains("3 samples") && err.contains("aggregate"),
            "{err}"
        );
    }

    #[test]
    fn nan_and_infinities_are_errors() {
        for v in ["NaN", "+Inf", "-Inf"] {
            let err = parse_prometheus(&vector(&[v])).unwrap_err();
            assert!(err.contains(v), "{v}: {err}");
        }
        let body = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#;
        assert!(parse_prometheus(body).is_err());
    }

    #[test]
    fn a_value_that_is_no_number_is_an_error() {
        let err = parse_prometheus(&vector(&["seven\u{1b}[2J"])).unwrap_err();
        assert!(
            err.contains("not a number") && !err.contains('\u{1b}'),
            "{err}"
        );
    }

    #[test]
    fn a_histogram_sample_is_an_error() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1,{"count":"2"}]}]}}"#;
        let err = parse_prometheus(body).unwrap_err();
        assert!(err.contains("histogram"), "{err}");
    }

    #[test]
    fn matrix_and_string_results_are_errors() {
        for (kind, result) in [
            (
                "matrix",
                serde_json::json!([{"metric": {}, "values": [[1, "1"]]}]),
            ),
            ("string", serde_json::json!([1, "hello"])),
        ] {
            let body = serde_json::json!({"status": "success", "data": {"resultType": kind, "result": result}});
            let err = parse_prometheus(body.to_string().as_bytes()).unwrap_err();
            assert!(err.contains(kind) && err.contains("not a scalar"), "{err}");
        }
    }

    #[test]
    fn malformed_results_are_errors() {
        for body in [
            br#"{"status":"success","data":{"resultType":"vector","result":{"a":1}}}"#.as_slice(),
            br#"{"status":"success","data":{"resultType":"scalar","result":"x"}}"#,
            br#"{"status":"success"}"#,
            br#"{"status":"pending","data":{"resultType":"scalar","result":[1,"1"]}}"#,
            b"<html>proxy error</html>",
            b"",
        ] {
            assert!(
                parse_prometheus(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn an_error_answer_gives_prometheus_reason() {
        let body = br#"{"status":"error","errorType":"bad_data","error":"parse error: unexpected end of input"}"#;
        assert_eq!(
            parse_prometheus(body),
            Err("bad_data: parse error: unexpected end of input".into())
        );
    }

    #[test]
    fn non_200_quotes_prometheus_error_or_the_body() {
        let body = br#"{"status":"error","errorType":"timeout","error":"query timed out"}"#;
        assert_eq!(
            prometheus_answer(503, body),
            Err("HTTP 503: timeout: query timed out".into())
        );
        let long = format!("bad gateway \u{7}{}", "x".repeat(500));
        let err = prometheus_answer(502, long.as_bytes()).unwrap_err();
        assert!(err.starts_with("HTTP 502: bad gateway \\u{7}xx"), "{err}");
        assert!(err.ends_with('…') && err.chars().count() < 230, "{err}");
        assert_eq!(
            prometheus_answer(404, b""),
            Err("HTTP 404: (empty body)".into())
        );
        assert_eq!(prometheus_answer(200, &vector(&["1"])), Ok(1.0));
    }

    #[test]
    fn gate_verdicts() {
        assert_eq!(
            parse_gate(200, br#"{"verdict":"pass","reason":"all good"}"#),
            Ok((Verdict::Pass, "all good".into()))
        );
        assert_eq!(
            parse_gate(
                201,
                br#"{"verdict":"fail","reason":"p99 too high","extra":1}"#
            ),
            Ok((Verdict::Fail, "p99 too high".into()))
        );
        assert_eq!(
            parse_gate(204, br#"{"verdict":"inconclusive"}"#),
            Ok((Verdict::Inconclusive, String::new()))
        );
        assert_eq!(
            parse_gate(200, br#"{"verdict":"pass","reason":null}"#),
            Ok((Verdict::Pass, String::new()))
        );
    }

    #[test]
    fn gate_reason_is_cut_and_escaped() {
        let reason = format!("\u{1b}[31m{}", "r".repeat(1000));
        let body = serde_json::json!({"verdict": "fail", "reason": reason}).to_string();
        let (verdict, reason) = parse_gate(200, body.as_bytes()).unwrap();
        assert_eq!(verdict, Verdict::Fail);
        assert!(reason.starts_with("\\u{1b}[31mrrr"), "{reason}");
        assert_eq!(reason.chars().count(), MAX_REASON_CHARS + 1);
        assert!(reason.ends_with('…'));
    }

    #[test]
    fn gate_http_errors_quote_the_body() {
        assert_eq!(
            parse_gate(500, b"boom\r\n"),
            Err("HTTP 500: boom\\r\\n".into())
        );
        assert_eq!(parse_gate(302, b""), Err("HTTP 302: (empty body)".into()));
        // A failing status wins even with a well-formed body.
        assert!(parse_gate(503, br#"{"verdict":"pass"}"#).is_err());
    }

    #[test]
    fn gate_answers_of_another_shape_are_errors() {
        for body in [
            br#"{"verdict":"PASS"}"#.as_slice(),
            br#"{"verdict":"maybe","reason":"x"}"#,
            br#"{"reason":"no verdict"}"#,
            br#"{"verdict":true}"#,
            br#"{"verdict":"pass","reason":5}"#,
            b"pass",
            b"",
        ] {
            let err = parse_gate(200, body).unwrap_err();
            assert!(!err.is_empty());
        }
        let err = parse_gate(200, br#"{"verdict":"maybe"}"#).unwrap_err();
        assert!(
            err.contains("\"maybe\"") && err.contains("pass, fail or inconclusive"),
            "{err}"
        );
        let err = parse_gate(200, b"\x1b]0;owned\x07").unwrap_err();
        assert!(!err.contains('\u{1b}') && !err.contains('\u{7}'), "{err}");
    }

    #[test]
    fn window_serializes_in_camel_case() {
        let json = serde_json::to_value(window()).unwrap();
        assert_eq!(json["stableRevision"], "def456");
        assert_eq!(json["step"], 1);
        assert_eq!(json["pods"], serde_json::json!(["checkout-1"]));
        assert_eq!(json["end"], "2026-01-01T00:00:10.25Z");
        assert_eq!(json["interval"], "10s");
    }
}
