//! The `PluginRelease` API (`hotload.dev/v1alpha1`): what a platform team applies, and the
//! status the operator reports. The CRD in `crds/` is generated from these types
//! (`hotload-operator crd`); every doc comment becomes a `kubectl explain` description, and
//! the CEL rules make the API server refuse a bad spec with a message that names the field.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A plugin artifact pinned by digest, rolled out to the pods a selector picks, without
/// restarting them.
// clippy reads the repeated `type_ = …` inside each `printcolumn(…)` as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hotload.dev",
    version = "v1alpha1",
    kind = "PluginRelease",
    namespaced,
    status = "PluginReleaseStatus",
    shortname = "plr",
    category = "hotload",
    printcolumn(name = "Plugin", type_ = "string", json_path = ".spec.plugin"),
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".status.targetRevision"
    ),
    printcolumn(name = "Updated", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PluginReleaseSpec {
    /// The plugin slot this release fills in the application (for example `auth-filter`).
    /// Each pod runs at most one release per plugin.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self) <= 63")
        .message("plugin must be a DNS label: lowercase letters, digits and '-', at most 63 characters"))]
    #[schemars(length(max = 63))]
    pub plugin: String,

    /// The pods that load the plugin, by label. It must not be empty: an empty selector would
    /// pick every pod in the namespace.
    #[x_kube(validation = Rule::new("(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)")
        .message("selector must not be empty: give matchLabels or matchExpressions"))]
    pub selector: LabelSelector,

    /// The artifact to load.
    pub artifact: Artifact,

    /// Free-form configuration handed to the plugin with every load: at most 128 top-level
    /// keys and 32 KiB as JSON. A change of config is a new revision, rolled out like a new
    /// artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub config: Option<serde_json::Value>,

    /// How the new revision spreads over the selected pods.
    #[serde(default)]
    pub strategy: Strategy,

    /// What happens when pods fail to load the new revision.
    #[serde(default)]
    pub failure_policy: FailurePolicy,

    /// Seconds the rollout may go without progress (a pod loading the new revision) before
    /// the release is marked Degraded with reason ProgressDeadlineExceeded. Default 600.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: i32,

    /// Stops the rollout where it is; set it back to false to continue. Also releases a
    /// canary step that pauses until resumed.
    #[serde(default)]
    pub paused: bool,

    /// How many past revisions `status.history` keeps. Default 10.
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub revision_history_limit: i32,

    /// Judge the new revision by how it runs, window by window, while it rolls out: a
    /// failing window applies the failure policy, and a step advances (or the rollout
    /// completes) only after passing windows. Without it only load failures count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,

    /// When progressDeadlineSeconds passes without progress, roll back as a failure with
    /// action Rollback would, instead of only marking the release Degraded (Argo Rollouts'
    /// progressDeadlineAbort). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub progress_deadline_abort: bool,
}

/// How the new revision is judged while it rolls out. Windows follow one another from the
/// first pod on the target; each is judged by every check: Pass, Fail, or Inconclusive when
/// there is too little data to say (never taken for a pass: the rollout holds, Paused with
/// the reason, and progressDeadlineSeconds still applies).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// The length of one window, like `10s` or `1m` (at most 10m). Default 10s.
    #[serde(default = "default_interval")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(s|m)$')")
        .message("analysis.interval must be a whole number of seconds or minutes, like 10s or 1m"))]
    #[schemars(length(max = 8))]
    pub interval: String,

    /// Calls the target revision must make in a window for the built-in checks to judge it
    /// (and on the stable revision's pods, for a latency ratio); fewer is inconclusive.
    /// Default 20.
    #[serde(default = "default_min_calls")]
    #[schemars(range(min = 1))]
    pub min_calls: i64,

    /// Failing windows tolerated during one attempt at a revision; one more applies the
    /// failure policy. Default 0: the first failing window acts.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub failure_limit: i32,

    /// Passing windows in a row a step needs once its pods run the target, before it
    /// advances; the last step (or a rollout without steps) needs them before it completes.
    /// Default 1.
    #[serde(default = "default_passing_windows")]
    #[schemars(range(min = 1, max = 100))]
    pub passing_windows: i32,

    /// What each window measures; it passes only when every check passes.
    #[schemars(length(min = 1, max = 8))]
    pub checks: Vec<Check>,
}

/// One check: exactly one of errorRate, latency, prometheus or webhook.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.errorRate) ? 1 : 0) + (has(self.latency) ? 1 : 0) + (has(self.prometheus) ? 1 : 0) + (has(self.webhook) ? 1 : 0) == 1")
    .message("a check needs exactly one of errorRate, latency, prometheus or webhook"))]
pub struct Check {
    /// The check's name in status, events and messages.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("check name must be a DNS label: lowercase letters, digits and '-'"))]
    #[schemars(length(max = 63))]
    pub name: String,

    /// Failed calls (traps, timeouts, memory limits, and calls the app marked failed) over
    /// all calls of the target revision, from the hosts' own counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<ErrorRateCheck>,

    /// A latency percentile of the target revision's calls, from the hosts' own histograms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyCheck>,

    /// A Prometheus query whose result must stay within bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusCheck>,

    /// An HTTP endpoint that answers pass, fail or inconclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookCheck>,
}

/// An error-rate limit.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRateCheck {
    /// The highest error rate that passes, as a percentage like `1%` or `0.5%`.
    #[x_kube(validation = Rule::new("self.matches('^(100|[0-9]{1,2})(\\\\.[0-9]{1,3})?%$')")
        .message("errorRate.max must be a percentage from 0% to 100%, like 1% or 0.5%"))]
    #[schemars(length(max = 8))]
    pub max: String,
}

/// A latency limit, absolute or relative to the stable revision.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.max) != has(self.maxRatio)")
    .message("latency needs exactly one of max or maxRatio"))]
pub struct LatencyCheck {
    /// Which percentile of the calls' latency, 1 to 99. Default 99.
    #[serde(default = "default_percentile")]
    #[schemars(range(min = 1, max = 99))]
    pub percentile: i32,

    /// The highest latency that passes, like `50ms`, `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(ms|s)$')")
        .message("latency.max must be a whole number of milliseconds or seconds, like 50ms or 2s"))]
    #[schemars(length(max = 12))]
    pub max: Option<String>,

    /// The highest ratio to the same percentile on the stable revision's pods in the same
    /// window, like `2` or `1.5`. Inconclusive while those pods make fewer than minCalls
    /// calls; once no pod runs the stable revision, the last ratio measured stands for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{1,3}(\\\\.[0-9]{1,3})?$')")
        .message("latency.maxRatio must be a decimal number, like 2 or 1.5"))]
    #[schemars(length(max = 8))]
    pub max_ratio: Option<String>,
}

/// A Prometheus instant query and the bounds its result must stay within.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.max) || has(self.min)")
    .message("prometheus needs max, min, or both"))]
pub struct PrometheusCheck {
    /// The Prometheus server, like `http://prometheus.monitoring:9090`.
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')")
        .message("prometheus.address must start with http:// or https://"))]
    #[schemars(length(max = 2048))]
    pub address: String,

    /// A PromQL query returning one number (a scalar, or a vector of one sample). Before it
    /// is sent, `{{revision}}`, `{{stableRevision}}`, `{{plugin}}`, `{{namespace}}`,
    /// `{{release}}` and `{{interval}}` (like `10s`) are replaced. No sample, or NaN, is
    /// inconclusive.
    #[schemars(length(max = 4096))]
    pub query: String,

    /// The highest result that passes, a decimal number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^-?[0-9]{1,15}(\\\\.[0-9]{1,9})?$')")
        .message("prometheus.max must be a decimal number, like 0.01"))]
    #[schemars(length(max = 26))]
    pub max: Option<String>,

    /// The lowest result that passes, a decimal number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^-?[0-9]{1,15}(\\\\.[0-9]{1,9})?$')")
        .message("prometheus.min must be a decimal number, like 0.99"))]
    #[schemars(length(max = 26))]
    pub min: Option<String>,

    /// Seconds to wait for the answer; no answer in time is inconclusive. Default 10.
    #[serde(default = "default_check_timeout")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: i32,
}

/// An HTTP gate: the operator POSTs the window (release, revision, step, pods) as JSON and
/// the answer `{"verdict": "pass" | "fail" | "inconclusive", "reason": "…"}` judges it. No
/// answer in time, an HTTP error or an answer of another shape is inconclusive.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookCheck {
    /// Where to POST, `http://` or `https://`.
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')")
        .message("webhook.url must start with http:// or https://"))]
    #[schemars(length(max = 2048))]
    pub url: String,

    /// Seconds to wait for the answer. Default 10.
    #[serde(default = "default_check_timeout")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: i32,
}

fn default_interval() -> String {
    "10s".into()
}

fn default_min_calls() -> i64 {
    20
}

fn default_passing_windows() -> i32 {
    1
}

fn default_percentile() -> i32 {
    99
}

fn default_check_timeout() -> i32 {
    10
}

/// Where the plugin comes from and what it must hash to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// `oci://registry/repository:tag` (OCI distribution API) or `https://host/path`.
    #[x_kube(validation = Rule::new("self.startsWith('oci://') || self.startsWith('https://')")
        .message("artifact.url must start with oci:// or https://"))]
    #[schemars(length(max = 2048))]
    pub url: String,

    /// The artifact's sha256 digest, `sha256:` and 64 lowercase hex digits. Nothing that
    /// hashes otherwise is ever handed to an application.
    #[x_kube(validation = Rule::new("self.matches('^sha256:[a-f0-9]{64}$')")
        .message("artifact.digest must be sha256: followed by 64 lowercase hex digits"))]
    #[schemars(length(max = 80))]
    pub digest: String,

    /// A Secret in the release's namespace with registry credentials
    /// (`kubernetes.io/dockerconfigjson`, used for the matching registry only) or
    /// `username`/`password` keys, sent only to the hosts its `hotload.dev/hosts`
    /// annotation lists (comma-separated `host[:port]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret: Option<String>,

    /// Require a cosign signature made with this key; an unsigned or wrongly signed
    /// artifact is never loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignaturePolicy>,
}

/// A signature the artifact must carry.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SignaturePolicy {
    /// The PEM-encoded public key the cosign signature must verify against (at most 8 KiB).
    #[schemars(length(max = 8192))]
    pub public_key: String,
}

/// The rollout strategy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    /// How many selected pods may be switching to the new revision at once: a number, or a
    /// percentage of the selected pods rounded up (never less than one pod). Default 25%.
    #[serde(default = "default_max_unavailable")]
    #[schemars(schema_with = "int_or_percent")]
    #[x_kube(validation = Rule::new("type(self) == int ? self >= 1 : self.matches('^(100|[1-9]?[0-9])%$')")
        .message("maxUnavailable must be a whole number of at least 1, or a percentage from 0% to 100%"))]
    pub max_unavailable: IntOrString,

    /// Canary steps, in order. Without steps the rollout goes to every pod, in batches of
    /// maxUnavailable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub steps: Vec<Step>,

    /// Seconds a pod must have run the new revision before it counts as updated (and the
    /// next batch may start).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_ready_seconds: i32,
}

impl Default for Strategy {
    fn default() -> Self {
        Self {
            max_unavailable: default_max_unavailable(),
            steps: Vec::new(),
            min_ready_seconds: 0,
        }
    }
}

/// One canary step: grow to a percentage of the pods, then optionally hold.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.percent) || has(self.pause)")
    .message("a step needs percent, pause, or both"))]
pub struct Step {
    /// The share of the selected pods (1 to 100) that run the new revision at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub percent: Option<i32>,

    /// Hold once the step's pods are updated: for a duration, or until resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
}

/// A hold in a canary rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Pause {
    /// How long to hold, like `30s`, `5m` or `1h`. Without it the rollout holds until resumed
    /// (`spec.paused` set to true and back to false, or `kubectl hotload resume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(s|m|h)$')")
        .message("pause.duration must be a whole number of seconds, minutes or hours, like 30s, 5m or 1h"))]
    #[schemars(length(max = 12))]
    pub duration: Option<String>,
}

/// What to do when pods fail to load the new revision.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// `Rollback` (default) loads the stable revision back on every pod the rollout touched;
    /// `Pause` stops the rollout where it is for a person to look.
    #[serde(default)]
    pub action: FailureAction,

    /// How many pods may fail before the action is taken: a number, or a percentage of the
    /// selected pods. Default 0: the first failure acts.
    #[serde(default = "default_max_failures")]
    #[schemars(schema_with = "int_or_percent")]
    #[x_kube(validation = Rule::new("type(self) == int ? self >= 0 : self.matches('^(100|[1-9]?[0-9])%$')")
        .message("maxFailures must be a whole number of at least 0, or a percentage from 0% to 100%"))]
    pub max_failures: IntOrString,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self {
            action: FailureAction::Rollback,
            max_failures: default_max_failures(),
        }
    }
}

/// The response to failed loads.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FailureAction {
    /// Load the stable revision back everywhere the rollout reached.
    #[default]
    Rollback,
    /// Stop where the rollout is.
    Pause,
}

fn default_progress_deadline() -> i32 {
    600
}

fn default_history_limit() -> i32 {
    10
}

fn default_max_unavailable() -> IntOrString {
    IntOrString::String("25%".into())
}

fn default_max_failures() -> IntOrString {
    IntOrString::Int(0)
}

/// A count or a percentage; bounded in length so CEL rules on it stay cheap for the API server.
fn int_or_percent(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 4}]
    })
}

/// Arbitrary JSON kept as written (the API server must not prune it). The schema can bound
/// only its top level; [`oversized`] bounds its serialized size.
fn free_form(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "maxProperties": MAX_CONFIG_KEYS,
        "description": "Free-form configuration handed to the plugin with every load: at most 128 top-level keys and 32 KiB as JSON. A change of config is a new revision, rolled out like a new artifact."
    })
}

/// The most top-level keys `spec.config` may have (the CRD's `maxProperties`).
pub const MAX_CONFIG_KEYS: usize = 128;

/// The largest `spec.config`, as compact JSON. It goes to every pod with each assignment
/// and into every `status.history` record of its revision.
pub const MAX_CONFIG_BYTES: usize = 32 * 1024;

/// The largest `signature.publicKey` (the CRD's `maxLength`).
pub const MAX_PUBLIC_KEY_BYTES: usize = 8 * 1024;

/// Why `spec` is too large to roll out, naming the field and both sizes; `None` when it
/// fits. The CRD refuses most of this at admission; this also covers what the schema
/// cannot express (the config's serialized size) and objects stored before the limits.
pub fn oversized(spec: &PluginReleaseSpec) -> Option<String> {
    let config = spec
        .config
        .as_ref()
        .map_or(0, |c| serde_json::to_vec(c).map_or(usize::MAX, |b| b.len()));
    if config > MAX_CONFIG_BYTES {
        return Some(format!(
            "spec.config is {config} bytes as JSON, more than the {MAX_CONFIG_BYTES} a \
             release may hand its pods; move bulky data out of the plugin's config"
        ));
    }
    let key = spec
        .artifact
        .signature
        .as_ref()
        .map_or(0, |s| s.public_key.len());
    (key > MAX_PUBLIC_KEY_BYTES).then(|| {
        format!(
            "spec.artifact.signature.publicKey is {key} bytes, more than the \
             {MAX_PUBLIC_KEY_BYTES} a PEM public key needs"
        )
    })
}

/// A history record's config, kept as written.
fn revision_config(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "description": "The plugin config of this revision, kept so a rollback hands pods exactly what they ran before."
    })
}

/// What the operator observed and did, written only by the operator (server-side apply).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PluginReleaseStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Progressing, Paused, Completed, Degraded or RolledBack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The revision being rolled out (hash of the artifact digest and the config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<String>,

    /// The last revision every pod ran successfully; rollbacks return to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,

    /// The canary step in progress (0-based), when the strategy has steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<i32>,

    /// When the current step (or pause) began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,

    /// "updated/matched", for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,

    /// Pods the selector matches and this release manages (a pod whose plugin another
    /// release owns is counted in the Conflict condition instead).
    #[serde(default)]
    pub matched: i32,
    /// Pods that run the target revision (loaded for minReadySeconds).
    #[serde(default)]
    pub updated: i32,
    /// Pods whose plugin is loaded and healthy, whatever the revision.
    #[serde(default)]
    pub ready: i32,
    /// Pods whose last load failed.
    #[serde(default)]
    pub failed: i32,
    /// Pods whose sidecar is not connected to the operator.
    #[serde(default)]
    pub unreachable: i32,

    /// Ready, Progressing and Degraded, in kstatus form (`kubectl wait`, Argo CD and Flux
    /// read them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Per-pod acknowledgements: every pod up to 256, beyond that the ones not converged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodAck>,

    /// Past revisions, newest first, at most spec.revisionHistoryLimit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RevisionRecord>,

    /// What is happening, for a person; names the first failure's pod and cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// The `hotload.dev/retry` annotation value already acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_token: Option<String>,

    /// The `hotload.dev/resume` annotation value already acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<String>,

    /// The `hotload.dev/abort` annotation value already acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_token: Option<String>,

    /// When the rollout last made progress (for progressDeadlineSeconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_at: Option<Time>,

    /// How the analysis of the target revision stands (spec.analysis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,
}

/// The analysis of one revision's rollout.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// The revision judged.
    pub revision: String,
    /// Running (no verdict yet, or the last window passed), Inconclusive, Failed, or
    /// Passed (the rollout completed with its windows passing).
    pub phase: AnalysisPhase,
    /// The step whose goal the passing windows count toward (the last step, or none
    /// without steps, is the completion gate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<i32>,
    /// Passing windows in a row since that step's pods ran the target.
    #[serde(default)]
    pub passing: i32,
    /// Failing windows during this attempt at the revision.
    #[serde(default)]
    pub failing: i32,
    /// When the window in progress began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_started_at: Option<Time>,
    /// The last latency ratio's stable-side value per check (`name=value`), which stands in
    /// once no pod runs the stable revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baselines: Vec<String>,
    /// The last windows judged, newest first (at most 5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<AnalysisWindow>,
}

/// Where an analysis stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AnalysisPhase {
    /// Measuring; no window failed beyond failureLimit and the last was not inconclusive.
    #[default]
    Running,
    /// The last window had too little data to judge; the rollout holds.
    Inconclusive,
    /// More windows failed than failureLimit; the failure policy acted.
    Failed,
    /// The rollout completed with passing windows.
    Passed,
}

/// One judged window.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisWindow {
    /// When the window began.
    pub start: Time,
    /// When it ended.
    pub end: Time,
    /// Fail if any check failed, else Inconclusive if any was, else Pass.
    pub verdict: Verdict,
    /// Each check's measurement.
    pub checks: Vec<CheckResult>,
}

/// One check's measurement in one window.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// Pass, Fail or Inconclusive.
    pub verdict: Verdict,
    /// What was measured, like `19.8%`, `41.2ms` or `0.004`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The limit it was held to, like `<= 1%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// Calls of the target revision in the window (built-in checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<i64>,
    /// Pods of the target revision that made them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<i32>,
    /// The verdict in words, with its numbers.
    pub message: String,
}

/// A window's or a check's verdict.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within its limits.
    Pass,
    /// Beyond its limits.
    Fail,
    /// Too little data (or no answer) to judge.
    Inconclusive,
}

/// Where a release is in its life.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Loading the target revision on more pods.
    Progressing,
    /// Held by spec.paused or a canary pause step.
    Paused,
    /// Every selected pod runs the target revision.
    Completed,
    /// Failed loads or a missed deadline; see conditions and message.
    Degraded,
    /// The target failed and every touched pod was sent back to the stable revision.
    RolledBack,
}

/// One pod's acknowledgement of its assignment.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodAck {
    /// The pod's name.
    pub pod: String,
    /// The revision the pod was told to run.
    pub revision: String,
    /// Pending, Loading, Loaded, Failed or Unreachable.
    pub state: AckState,
    /// Why a load failed (or the pod is unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Since when the pod is in this state.
    pub since: Time,
    /// The app's worker processes connected to the pod's sidecar (absent when the sidecar
    /// does not count them, or is not connected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<i32>,
    /// How many of those workers confirmed the revision (`workers` of them when Loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers_loaded: Option<i32>,
}

/// A pod's plugin state as its sidecar reported it.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum AckState {
    /// Assigned, not yet acknowledged.
    Pending,
    /// The sidecar is fetching or the app is loading.
    Loading,
    /// Loaded and healthy.
    Loaded,
    /// The load failed; the previous revision keeps serving.
    Failed,
    /// The pod's sidecar is not connected.
    Unreachable,
}

/// A revision the release has rolled out.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRecord {
    /// The revision hash.
    pub revision: String,
    /// The artifact URL.
    pub url: String,
    /// The artifact digest.
    pub digest: String,
    /// The plugin config of this revision, kept so a rollback hands pods exactly what they
    /// ran before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "revision_config")]
    pub config: Option<serde_json::Value>,
    /// The signature this revision had to carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignaturePolicy>,
    /// The pull secret its artifact was fetched with, kept so a rollback to it still
    /// authenticates after the spec moved to another artifact (or another registry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret: Option<String>,
    /// When the rollout of this revision began.
    pub started_at: Time,
    /// Progressing, Stable, Failed, RolledBack or Superseded.
    pub outcome: Outcome,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How a revision's rollout ended.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still rolling out.
    Progressing,
    /// Reached every pod.
    Stable,
    /// Failed; the policy paused the rollout.
    Failed,
    /// Failed; the fleet went back to the stable revision.
    RolledBack,
    /// A newer spec replaced it before it finished.
    Superseded,
}

/// The CRD as YAML, as committed in `crds/`.
pub fn crd_yaml() -> anyhow::Result<String> {
    use kube::CustomResourceExt;
    let yaml = serde_saphyr::to_string(&PluginRelease::crd())?;
    Ok(format!(
        "# Generated by `hotload-operator crd`; do not edit.\n---\n{yaml}"
    ))
}

/// Whether `c` may not reach a terminal as it is: C0 and C1 controls (escape sequences,
/// carriage returns, bells) and the bidirectional overrides that make text read otherwise
/// than it is.
fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every [`unprintable`] character written as its Rust escape (`\n`,
/// `\u{1b}`), for text from outside (a sidecar's reason, a status field) that ends up
/// on a terminal.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(unprintable) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unprintable(c) {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

/// `namespace/name` of a release, for messages and logs.
pub fn describe(release: &PluginRelease) -> String {
    use kube::ResourceExt;
    format!(
        "{}/{}",
        release.namespace().unwrap_or_default(),
        release.name_any()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(config: serde_json::Value, key: &str) -> PluginReleaseSpec {
        serde_json::from_value(json!({
            "plugin": "auth", "selector": {"matchLabels": {"app": "web"}}, "config": config,
            "artifact": {"url": "https://plugins/auth.wasm",
                         "digest": format!("sha256:{}", "a".repeat(64)),
                         "signature": {"publicKey": key}},
        }))
        .unwrap()
    }

    #[test]
    fn a_config_or_key_larger_than_a_release_may_hand_out_is_refused_by_name() {
        assert_eq!(oversized(&spec(json!({"mode": "strict"}), "PEM")), None);
        let big = json!({"blob": "x".repeat(MAX_CONFIG_BYTES)});
        let why = oversized(&spec(big, "PEM")).unwrap();
        assert!(
            why.starts_with("spec.config is 32779 bytes as JSON, more than the 32768"),
            "{why}"
        );
        let why = oversized(&spec(json!({}), &"k".repeat(MAX_PUBLIC_KEY_BYTES + 1))).unwrap();
        assert!(
            why.starts_with("spec.artifact.signature.publicKey is 8193 bytes"),
            "{why}"
        );
    }

    #[test]
    fn the_crd_bounds_the_config_and_the_public_key() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(PluginRelease::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["config"]["maxProperties"], MAX_CONFIG_KEYS);
        assert_eq!(
            spec["artifact"]["properties"]["signature"]["properties"]["publicKey"]["maxLength"],
            MAX_PUBLIC_KEY_BYTES
        );
    }

    #[test]
    fn control_characters_and_direction_overrides_are_escaped() {
        assert!(matches!(
            escape_controls("fetch: 404 — not found"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_controls("app: \u{1b}[2J\u{1b}]0;owned\u{7}\r\nfake line\u{202e}txt"),
            "app: \\u{1b}[2J\\u{1b}]0;owned\\u{7}\\r\\nfake line\\u{202e}txt"
        );
        assert_eq!(escape_controls("C1 \u{9b}31m"), "C1 \\u{9b}31m");
    }
}
