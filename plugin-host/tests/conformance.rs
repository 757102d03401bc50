//! Runs the shared SDK conformance cases (`sdk/conformance/cases.json`, described in its
//! README) against `hotload-host`, the host whose behaviour they pin down. Every SDK runs
//! the same file from its own runner; this one follows the Go runner
//! (`sdk/go/conformance_test.go`) step for step.
//!
//! The plugin binaries (`sdk/conformance/plugins/*.wasm`) are built by
//! `make conformance-plugins`. `CONFORMANCE_CASE=<substring>` runs only the matching cases.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hotload_host::protocol::health::bucket_of;
use hotload_host::protocol::{Errors, PluginHealth};
use hotload_host::{
    CallError, Fault, GuestFailure, HostConfig, HostHooks, LoadError, LoadEvent, LoadRequest,
    Phase, Pinned, PluginHost, StateHandover, UnloadEvent, sha256_digest,
};
use serde_json::{Map, Value};

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/conformance")
}

/// A case went wrong: `Fatal` ends the case (the Go runner's `t.Fatalf`), the other
/// failures are collected and the case goes on (`t.Errorf`).
struct Fatal(String);

type Failures = Vec<String>;

/// Hook events in the form `cases.json` compares.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
}

impl Recorder {
    fn add(&self, s: String) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(s);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl HostHooks for Recorder {
    fn before_unload(&self, e: &UnloadEvent<'_>) {
        self.add(format!(
            "before_unload {} {} next={}",
            e.plugin,
            e.revision,
            e.next.unwrap_or("")
        ));
    }

    fn after_load(&self, e: &LoadEvent<'_>) {
        self.add(format!(
            "after_load {} {} previous={}",
            e.plugin,
            e.revision,
            e.previous.unwrap_or("")
        ));
    }

    fn load_failed(&self, plugin: &str, revision: &str, error: &LoadError) {
        self.add(format!(
            "load_failed {plugin} {revision} {}",
            load_kind(error).0
        ));
    }
}

// ---- the conformance vocabulary ----

fn fault_kind(f: &Fault) -> &'static str {
    match f {
        Fault::Timeout => "timeout",
        Fault::MemoryLimit { .. } => "memory_limit",
        Fault::Trap(_) => "trap",
        Fault::Other(_) => "other",
    }
}

fn failure_kind(f: &GuestFailure) -> &'static str {
    match f {
        GuestFailure::Status(_) => "status",
        GuestFailure::Fault(f) => fault_kind(f),
        GuestFailure::BadRange { .. } => "bad_range",
    }
}

/// A load error's kind and fault ("" when no guest export failed). The kinds of the last
/// three variants are `hotload-host`'s own (no case uses them).
fn load_kind(e: &LoadError) -> (&'static str, &'static str) {
    match e {
        LoadError::BadDigest { .. } => ("bad_digest", ""),
        LoadError::DigestMismatch { .. } => ("digest_mismatch", ""),
        LoadError::Read { .. } => ("read", ""),
        LoadError::InvalidWasm { .. } => ("invalid_wasm", ""),
        LoadError::Abi { .. } => ("abi", ""),
        LoadError::Instantiate { fault, .. } => ("instantiate", fault_kind(fault)),
        LoadError::Guest { phase, detail, .. } => (
            match phase {
                Phase::Configure => "configure",
                Phase::SelfCheck => "self_check",
                Phase::SaveState => "save_state",
                Phase::RestoreState => "restore_state",
            },
            failure_kind(detail),
        ),
        LoadError::TooManyPlugins { .. } => ("too_many_plugins", ""),
        LoadError::ModuleTooLarge { .. } => ("module_too_large", ""),
        LoadError::CompileTimeout { .. } => ("compile_timeout", ""),
        LoadError::CompileThread { .. } => ("compile_thread", ""),
    }
}

fn call_kind(e: &CallError) -> (&'static str, &'static str) {
    match e {
        CallError::NotLoaded { .. } => ("not_loaded", ""),
        CallError::Busy { .. } => ("busy", ""),
        CallError::Guest { failure, .. } => ("handle", failure_kind(failure)),
        CallError::Reinstantiate { fault, .. } => ("reinstantiate", fault_kind(fault)),
    }
}

// ---- reading cases.json (strictly: unknown keys are mistakes in the file) ----

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, Fatal> {
    v.as_object()
        .ok_or_else(|| Fatal(format!("{what}: not an object: {v}")))
}

fn only_keys(m: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), Fatal> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(Fatal(format!("{what}: unknown field {k:?}"))),
        None => Ok(()),
    }
}

fn str_field<'a>(m: &'a Map<String, Value>, key: &str, what: &str) -> Result<&'a str, Fatal> {
    m.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Fatal(format!("{what}: {key} missing or not a string")))
}

fn opt_str<'a>(m: &'a Map<String, Value>, key: &str, what: &str) -> Result<Option<&'a str>, Fatal> {
    match m.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| Fatal(format!("{what}: {key} is not a string"))),
    }
}

fn opt_bool(m: &Map<String, Value>, key: &str, what: &str) -> Result<Option<bool>, Fatal> {
    match m.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| Fatal(format!("{what}: {key} is not a boolean"))),
    }
}

fn opt_u64(m: &Map<String, Value>, key: &str, what: &str) -> Result<Option<u64>, Fatal> {
    match m.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| Fatal(format!("{what}: {key} is not a non-negative integer"))),
    }
}

/// `Some(None)` for an explicit `null`.
fn opt_nullable_str<'a>(
    m: &'a Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<Option<Option<&'a str>>, Fatal> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => Ok(Some(Some(s))),
        Some(v) => Err(Fatal(format!(
            "{what}: {key} is neither a string nor null: {v}"
        ))),
    }
}

fn string_list(v: &Value, what: &str) -> Result<Vec<String>, Fatal> {
    v.as_array()
        .and_then(|a| {
            a.iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| Fatal(format!("{what}: not a list of strings: {v}")))
}

const HOST_KEYS: &[&str] = &[
    "max_memory_bytes",
    "call_timeout_ms",
    "instances_per_revision",
    "checkout_timeout_ms",
    "max_plugins",
];

/// Applies the settings `v` gives over `c`.
fn apply_host(c: &mut HostConfig, v: &Value, what: &str) -> Result<(), Fatal> {
    let m = obj(v, what)?;
    only_keys(m, HOST_KEYS, what)?;
    let usize_of = |n: u64| usize::try_from(n).map_err(|_| Fatal(format!("{what}: {n} too large")));
    if let Some(n) = opt_u64(m, "max_memory_bytes", what)? {
        c.max_memory_bytes = usize_of(n)?;
    }
    if let Some(n) = opt_u64(m, "call_timeout_ms", what)? {
        c.call_timeout = Duration::from_millis(n);
    }
    if let Some(n) = opt_u64(m, "instances_per_revision", what)? {
        c.instances_per_revision = usize_of(n)?;
    }
    if let Some(n) = opt_u64(m, "checkout_timeout_ms", what)? {
        c.checkout_timeout = Duration::from_millis(n);
    }
    if let Some(n) = opt_u64(m, "max_plugins", what)? {
        c.max_plugins = usize_of(n)?;
    }
    Ok(())
}

fn plugin_file(name: &str) -> Result<Vec<u8>, Fatal> {
    let path = conformance_dir().join("plugins").join(name);
    std::fs::read(&path).map_err(|e| Fatal(format!("plugin file {}: {e}", path.display())))
}

/// `input` (UTF-8) or `input_b64` of a call step.
fn input_bytes(m: &Map<String, Value>, what: &str) -> Result<Vec<u8>, Fatal> {
    if let Some(b) = opt_str(m, "input_b64", what)? {
        return B64
            .decode(b)
            .map_err(|e| Fatal(format!("{what}: input_b64: {e}")));
    }
    if let Some(s) = opt_str(m, "input", what)? {
        return Ok(s.as_bytes().to_vec());
    }
    Err(Fatal(format!(
        "{what}: step has neither input nor input_b64"
    )))
}

// ---- running ----

const OPERATIONS: &[&str] = &[
    "load",
    "call",
    "call_pinned",
    "pin",
    "release",
    "unload",
    "serving",
    "plugins",
    "events",
    "mark_failed",
    "health",
];

const EXPECT_KEYS: &[&str] = &[
    "swapped",
    "self_checked",
    "state_bytes",
    "output",
    "output_b64",
    "error",
    "revision",
    "names",
    "was_loaded",
    "events",
    "reports",
];

struct Run<'a> {
    host: &'a PluginHost,
    rec: &'a Recorder,
    pins: HashMap<String, Pinned>,
    failures: Failures,
}

/// Runs one case on a fresh host; returns its failures (empty: the case passed).
fn run_case(base: &HostConfig, case: &Value) -> (String, Failures) {
    let name = case
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string();
    let mut failures = Failures::new();
    if let Err(Fatal(msg)) = run_case_inner(base, case, &name, &mut failures) {
        failures.push(msg);
    }
    (name, failures)
}

fn run_case_inner(
    base: &HostConfig,
    case: &Value,
    name: &str,
    failures: &mut Failures,
) -> Result<(), Fatal> {
    let m = obj(case, name)?;
    only_keys(m, &["name", "checks", "host", "steps"], name)?;
    let mut config = base.clone();
    if let Some(h) = m.get("host") {
        apply_host(&mut config, h, &format!("{name}: host"))?;
    }
    let rec = Arc::new(Recorder::default());
    let host = PluginHost::with_hooks(config, rec.clone())
        .map_err(|e| Fatal(format!("{name}: host: {e}")))?;
    let steps = m
        .get("steps")
        .and_then(Value::as_array)
        .ok_or_else(|| Fatal(format!("{name}: steps missing")))?;
    let mut run = Run {
        host: &host,
        rec: &rec,
        pins: HashMap::new(),
        failures: Vec::new(),
    };
    let result = (|| {
        for (i, s) in steps.iter().enumerate() {
            let where_ = format!("{name} step {}", i + 1);
            let sm = obj(s, &where_)?;
            let repeat = opt_u64(sm, "repeat", &where_)?.unwrap_or(0).max(1);
            let max_ms = opt_u64(sm, "max_ms", &where_)?;
            for n in 0..repeat {
                let mut where_n = where_.clone();
                if repeat > 1 {
                    where_n += &format!(" (repeat {})", n + 1);
                }
                let start = Instant::now();
                run.step(sm, &where_n)?;
                let took = start.elapsed();
                if let Some(ms) = max_ms.filter(|&ms| ms > 0)
                    && took > Duration::from_millis(ms)
                {
                    run.failures
                        .push(format!("{where_n}: took {took:?}, bound {ms} ms"));
                }
            }
        }
        Ok(())
    })();
    failures.append(&mut run.failures);
    run.pins.clear();
    result
}

impl Run<'_> {
    fn fail(&mut self, msg: String) {
        self.failures.push(msg);
    }

    fn step(&mut self, s: &Map<String, Value>, where_: &str) -> Result<(), Fatal> {
        let mut allowed = OPERATIONS.to_vec();
        allowed.extend(["expect", "repeat", "max_ms"]);
        only_keys(s, &allowed, where_)?;
        let ops: Vec<&str> = OPERATIONS
            .iter()
            .copied()
            .filter(|k| s.contains_key(*k))
            .collect();
        let [op] = ops[..] else {
            return Err(Fatal(format!(
                "{where_}: a step has exactly one operation, this one {ops:?}"
            )));
        };
        let empty = Map::new();
        let x = match s.get("expect") {
            Some(v) => obj(v, &format!("{where_}: expect"))?,
            None => &empty,
        };
        only_keys(x, EXPECT_KEYS, &format!("{where_}: expect"))?;
        let arg = obj(&s[op], &format!("{where_}: {op}"))?;
        match op {
            "load" => self.load(arg, x, where_),
            "call" => {
                only_keys(arg, &["plugin", "input", "input_b64"], where_)?;
                let input = input_bytes(arg, where_)?;
                let out = self.host.call(str_field(arg, "plugin", where_)?, &input);
                self.check_output(where_, out, x)
            }
            "call_pinned" => {
                only_keys(arg, &["pin", "input", "input_b64"], where_)?;
                let pin = str_field(arg, "pin", where_)?;
                let input = input_bytes(arg, where_)?;
                let p = self
                    .pins
                    .get(pin)
                    .ok_or_else(|| Fatal(format!("{where_}: no pin {pin:?}")))?;
                let out = p.call(&input);
                self.check_output(where_, out, x)
            }
            "pin" => {
                only_keys(arg, &["plugin", "as"], where_)?;
                let plugin = str_field(arg, "plugin", where_)?;
                let as_ = str_field(arg, "as", where_)?;
                match self.host.pin(plugin) {
                    Err(e) => {
                        self.check_error(where_, Some(call_kind(&e)), &e.to_string(), x)?;
                    }
                    Ok(p) => {
                        if !self.check_error(where_, None, "", x)? {
                            let rev = p.revision().revision.clone();
                            self.pins.insert(as_.to_string(), p);
                            self.check_revision(where_, Some(&rev), x)?;
                        }
                    }
                }
                Ok(())
            }
            "release" => {
                only_keys(arg, &["pin"], where_)?;
                self.pins.remove(str_field(arg, "pin", where_)?);
                Ok(())
            }
            "unload" => {
                only_keys(arg, &["plugin"], where_)?;
                let was = self.host.unload(str_field(arg, "plugin", where_)?);
                if let Some(want) = opt_bool(x, "was_loaded", where_)?
                    && was != want
                {
                    self.fail(format!("{where_}: unload reported {was}, want {want}"));
                }
                Ok(())
            }
            "serving" => {
                only_keys(arg, &["plugin"], where_)?;
                let id = self.host.serving(str_field(arg, "plugin", where_)?);
                self.check_revision(where_, id.as_ref().map(|r| r.revision.as_str()), x)
            }
            "plugins" => {
                only_keys(arg, &[], where_)?;
                let got = self.host.plugins();
                if let Some(v) = x.get("names") {
                    let want = string_list(v, &format!("{where_}: names"))?;
                    if got != want {
                        self.fail(format!("{where_}: plugins {got:?}, want {want:?}"));
                    }
                }
                Ok(())
            }
            "events" => {
                only_keys(arg, &[], where_)?;
                let got = self.rec.take();
                if let Some(v) = x.get("events") {
                    let want = string_list(v, &format!("{where_}: events"))?;
                    if got != want {
                        self.fail(format!("{where_}: events\n got {got:?}\nwant {want:?}"));
                    }
                }
                Ok(())
            }
            "mark_failed" => {
                only_keys(arg, &["plugin", "pin"], where_)?;
                if let Some(pin) = opt_str(arg, "pin", where_)? {
                    self.pins
                        .get(pin)
                        .ok_or_else(|| Fatal(format!("{where_}: no pin {pin:?}")))?
                        .mark_failed();
                } else {
                    let plugin = str_field(arg, "plugin", where_)?;
                    if !self.host.mark_failed(plugin) {
                        self.fail(format!("{where_}: mark_failed: {plugin} serves nothing"));
                    }
                }
                Ok(())
            }
            "health" => {
                only_keys(arg, &[], where_)?;
                let got = self.host.take_health();
                match x.get("reports") {
                    Some(want) => self.check_health(where_, &got, want),
                    None => Ok(()),
                }
            }
            _ => unreachable!("every operation is matched"),
        }
    }

    /// Compares drained counts with a `health` step's reports: the same revisions in order,
    /// exact calls and errors, latency buckets that add up to the calls, and at least
    /// `latency_at_least.calls` of them in the buckets of `latency_at_least.ms` or slower.
    fn check_health(
        &mut self,
        where_: &str,
        got: &[PluginHealth],
        want: &Value,
    ) -> Result<(), Fatal> {
        let want = want
            .as_array()
            .ok_or_else(|| Fatal(format!("{where_}: reports is not a list")))?;
        if got.len() != want.len() {
            self.fail(format!(
                "{where_}: health has {} reports, want {}: {got:?}",
                got.len(),
                want.len()
            ));
            return Ok(());
        }
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let what = format!("{where_}: report {}", i + 1);
            let w = obj(w, &what)?;
            only_keys(
                w,
                &["plugin", "revision", "calls", "errors", "latency_at_least"],
                &what,
            )?;
            let (plugin, revision) = (
                str_field(w, "plugin", &what)?,
                str_field(w, "revision", &what)?,
            );
            if (g.plugin.as_str(), g.revision.as_str()) != (plugin, revision) {
                self.fail(format!(
                    "{what} is {} {}, want {plugin} {revision}",
                    g.plugin, g.revision
                ));
                continue;
            }
            let calls = opt_u64(w, "calls", &what)?.unwrap_or(0);
            let errors: Errors = match w.get("errors") {
                Some(e) => serde_json::from_value(e.clone())
                    .map_err(|e| Fatal(format!("{what}: errors: {e}")))?,
                None => Errors::default(),
            };
            let c = &g.counts;
            if c.calls != calls || c.errors != errors {
                self.fail(format!(
                    "{where_}: {plugin} {revision}: calls {} errors {:?}, want calls {calls} errors {errors:?}",
                    c.calls, c.errors
                ));
            }
            let timed: u64 = c.latency_us.iter().sum();
            if timed != c.calls {
                self.fail(format!(
                    "{where_}: {plugin} {revision}: latency buckets hold {timed} calls of {}: {:?}",
                    c.calls, c.latency_us
                ));
            }
            if let Some(a) = w.get("latency_at_least") {
                let a = obj(a, &format!("{what}: latency_at_least"))?;
                only_keys(a, &["ms", "calls"], &what)?;
                let ms = opt_u64(a, "ms", &what)?.unwrap_or(0);
                let least = opt_u64(a, "calls", &what)?.unwrap_or(0);
                let from = bucket_of(Duration::from_millis(ms));
                let slow: u64 = c.latency_us.iter().skip(from).sum();
                if slow < least {
                    self.fail(format!(
                        "{where_}: {plugin} {revision}: {slow} calls at {ms} ms or slower, want at least {least}: {:?}",
                        c.latency_us
                    ));
                }
            }
        }
        Ok(())
    }

    fn load(
        &mut self,
        l: &Map<String, Value>,
        x: &Map<String, Value>,
        where_: &str,
    ) -> Result<(), Fatal> {
        only_keys(
            l,
            &[
                "plugin",
                "revision",
                "file",
                "config",
                "digest",
                "digest_of",
            ],
            where_,
        )?;
        let wasm = plugin_file(str_field(l, "file", where_)?)?;
        let mut digest = sha256_digest(&wasm);
        if let Some(other) = opt_str(l, "digest_of", where_)?.filter(|f| !f.is_empty()) {
            digest = sha256_digest(&plugin_file(other)?);
        }
        if let Some(d) = opt_str(l, "digest", where_)? {
            digest = d.to_string();
        }
        let req = LoadRequest {
            plugin: str_field(l, "plugin", where_)?.to_string(),
            revision: str_field(l, "revision", where_)?.to_string(),
            digest,
            config: opt_str(l, "config", where_)?
                .unwrap_or("")
                .as_bytes()
                .to_vec(),
            wasm,
        };
        let loaded = match self.host.load(req) {
            Err(e) => {
                return self
                    .check_error(where_, Some(load_kind(&e)), &e.to_string(), x)
                    .map(|_| ());
            }
            Ok(l) => l,
        };
        if self.check_error(where_, None, "", x)? {
            return Ok(());
        }
        if let Some(want) = opt_bool(x, "swapped", where_)?
            && loaded.swapped != want
        {
            self.fail(format!("{where_}: swapped {}, want {want}", loaded.swapped));
        }
        if let Some(want) = opt_bool(x, "self_checked", where_)?
            && loaded.self_checked != want
        {
            self.fail(format!(
                "{where_}: self_checked {}, want {want}",
                loaded.self_checked
            ));
        }
        if let Some(want) = x.get("state_bytes") {
            let want = match want {
                Value::Null => None,
                v => Some(v.as_u64().ok_or_else(|| {
                    Fatal(format!(
                        "{where_}: state_bytes is neither a number nor null"
                    ))
                })?),
            };
            let got = match loaded.state {
                StateHandover::None => None,
                StateHandover::Restored(n) => Some(n as u64),
            };
            if got != want {
                self.fail(format!(
                    "{where_}: state {:?}, want {want:?} bytes",
                    loaded.state
                ));
            }
        }
        Ok(())
    }

    fn check_revision(
        &mut self,
        where_: &str,
        got: Option<&str>,
        x: &Map<String, Value>,
    ) -> Result<(), Fatal> {
        match (opt_nullable_str(x, "revision", where_)?, got) {
            (None, _) | (Some(None), None) => {}
            (Some(None), Some(g)) => {
                self.fail(format!("{where_}: revision {g:?} serves, want none"))
            }
            (Some(Some(w)), g) if g != Some(w) => {
                self.fail(format!("{where_}: revision {g:?}, want {w:?}"))
            }
            _ => {}
        }
        Ok(())
    }

    fn check_output(
        &mut self,
        where_: &str,
        out: Result<Vec<u8>, CallError>,
        x: &Map<String, Value>,
    ) -> Result<(), Fatal> {
        let out = match out {
            Err(e) => {
                return self
                    .check_error(where_, Some(call_kind(&e)), &e.to_string(), x)
                    .map(|_| ());
            }
            Ok(out) => out,
        };
        if self.check_error(where_, None, "", x)? {
            return Ok(());
        }
        let want = if let Some(b) = opt_str(x, "output_b64", where_)? {
            B64.decode(b)
                .map_err(|e| Fatal(format!("{where_}: output_b64: {e}")))?
        } else if let Some(s) = opt_str(x, "output", where_)? {
            s.as_bytes().to_vec()
        } else {
            return Ok(());
        };
        if out != want {
            self.fail(format!(
                "{where_}: output {:?}, want {:?}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&want)
            ));
        }
        Ok(())
    }

    /// Compares an error (`got`: its kind and fault, `msg` its message; `None` for a success)
    /// with the expected one. Returns true when the step is over (an error was expected, or
    /// one came unexpectedly).
    fn check_error(
        &mut self,
        where_: &str,
        got: Option<(&str, &str)>,
        msg: &str,
        x: &Map<String, Value>,
    ) -> Result<bool, Fatal> {
        let Some(want) = x.get("error") else {
            if got.is_some() {
                self.fail(format!("{where_}: unexpected error: {msg}"));
                return Ok(true);
            }
            return Ok(false);
        };
        let what = format!("{where_}: expect.error");
        let want = obj(want, &what)?;
        only_keys(want, &["kind", "fault", "reason"], &what)?;
        let kinds = match want.get("kind") {
            Some(Value::String(k)) => vec![k.clone()],
            Some(v) => string_list(v, &format!("{what}.kind"))?,
            None => return Err(Fatal(format!("{what}: kind missing"))),
        };
        let Some((kind, fault)) = got else {
            self.fail(format!("{where_}: succeeded, want a {kinds:?} error"));
            return Ok(true);
        };
        if !kinds.iter().any(|k| k == kind) {
            self.fail(format!(
                "{where_}: error kind {kind:?}, want {kinds:?}: {msg}"
            ));
        }
        if let Some(f) = opt_str(want, "fault", &what)?.filter(|f| !f.is_empty())
            && fault != f
        {
            self.fail(format!("{where_}: fault {fault:?}, want {f:?}: {msg}"));
        }
        if let Some(r) = want.get("reason") {
            for part in string_list(r, &format!("{what}.reason"))? {
                if !msg.contains(&part) {
                    self.fail(format!("{where_}: reason {msg:?} lacks {part:?}"));
                }
            }
        }
        Ok(true)
    }
}

#[test]
fn conformance() {
    let dir = conformance_dir();
    let plugins = dir.join("plugins");
    let wat: Vec<PathBuf> = std::fs::read_dir(&plugins)
        .unwrap_or_else(|e| panic!("{}: {e}", plugins.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wat"))
        .collect();
    let mut missing: Vec<String> = wat
        .iter()
        .map(|p| p.with_extension("wasm"))
        .chain([plugins.join("go-upper.wasm"), plugins.join("not-wasm.wasm")])
        .filter(|p| !p.exists())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "conformance plugins not built ({} missing: {}); run `make conformance-plugins`",
        missing.len(),
        missing.join(", ")
    );

    let path = dir.join("cases.json");
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let suite: Value = serde_json::from_slice(&raw).expect("cases.json parses");
    let top = suite.as_object().expect("cases.json is an object");
    let keys: Vec<&String> = top
        .keys()
        .filter(|k| !["format", "host", "cases"].contains(&k.as_str()))
        .collect();
    assert!(keys.is_empty(), "cases.json: unknown fields {keys:?}");
    assert_eq!(
        top.get("format").and_then(Value::as_u64),
        Some(1),
        "cases.json format, this runner reads 1"
    );
    let mut base = HostConfig::default();
    if let Some(h) = top.get("host")
        && let Err(Fatal(msg)) = apply_host(&mut base, h, "cases.json host")
    {
        panic!("{msg}");
    }
    let cases = top
        .get("cases")
        .and_then(Value::as_array)
        .expect("cases.json has cases");
    assert!(!cases.is_empty(), "no cases");

    let only = std::env::var("CONFORMANCE_CASE").ok();
    let (mut passed, mut failed) = (Vec::new(), Vec::new());
    for case in cases {
        let name = case.get("name").and_then(Value::as_str).unwrap_or("");
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let start = Instant::now();
        let outcome = std::panic::catch_unwind(|| run_case(&base, case));
        let (name, failures) = outcome.unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            (name.to_string(), vec![format!("{name}: panicked: {msg}")])
        });
        let took = start.elapsed();
        if failures.is_empty() {
            eprintln!("ok   {name} ({took:.1?})");
            passed.push(name);
        } else {
            eprintln!("FAIL {name} ({took:.1?})");
            for f in &failures {
                eprintln!("     {f}");
            }
            failed.push((name, failures));
        }
    }
    eprintln!(
        "conformance: {} passed, {} failed",
        passed.len(),
        failed.len()
    );
    assert!(
        !passed.is_empty() || !failed.is_empty(),
        "no case matches CONFORMANCE_CASE={only:?}"
    );
    assert!(
        failed.is_empty(),
        "{} conformance case(s) failed:\n{}",
        failed.len(),
        failed
            .iter()
            .map(|(n, f)| format!("{n}:\n  {}", f.join("\n  ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
