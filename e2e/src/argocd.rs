//! Runs the Argo CD health check shipped in `integrations/argocd/` against an object, with
//! a real Lua 5.1 interpreter (`lua5.1`, the dialect of Argo CD's gopher-lua), the way Argo
//! CD calls it: the object as the global `obj`, the script's returned table as the health.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The PluginRelease health check.
pub fn health_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../integrations/argocd/hotload.dev/PluginRelease/health.lua")
}

/// What the health check says about `object`: (status, message).
pub fn health(object: &Value) -> Result<(String, String)> {
    let script = health_script();
    let harness = format!(
        "obj = {}\n\
         local check = assert(loadfile({:?}))\n\
         local hs = check()\n\
         io.write(hs.status, '\\n', hs.message or '')",
        to_lua(object),
        script.display().to_string()
    );
    let out = Command::new("lua5.1")
        .args(["-e", &harness])
        .output()
        .context("running lua5.1 (apt-get install lua5.1; make deps does)")?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let (status, message) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    Ok((status.to_string(), message.to_string()))
}

/// A JSON value as a Lua table constructor (what Argo CD hands its scripts).
pub fn to_lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(to_lua).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(map) => {
            let fields: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), to_lua(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\{:03}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_becomes_a_lua_table() {
        let lua = to_lua(&json!({"a": [1, "x\"y\n"], "b": null, "c": true}));
        assert_eq!(lua, r#"{["a"] = {1, "x\"y\n"}, ["b"] = nil, ["c"] = true}"#);
    }

    fn release(generation: i64, status: Value) -> Value {
        json!({"metadata": {"name": "auth", "generation": generation}, "status": status})
    }

    #[test]
    fn health_follows_phase_conditions_and_observed_generation() {
        let ready = |s: &str| json!([{"type": "Ready", "status": s}]);
        let cases = [
            (json!({"metadata": {"generation": 1}}), "Progressing"),
            (
                release(
                    2,
                    json!({"observedGeneration": 1, "phase": "Completed", "conditions": ready("True")}),
                ),
                "Progressing",
            ),
            (
                release(
                    2,
                    json!({"observedGeneration": 2, "phase": "Progressing", "progress": "2/5"}),
                ),
                "Progressing",
            ),
            (
                release(2, json!({"observedGeneration": 2, "phase": "Paused"})),
                "Suspended",
            ),
            (
                release(
                    2,
                    json!({"observedGeneration": 2, "phase": "Completed", "conditions": ready("True")}),
                ),
                "Healthy",
            ),
            (
                release(
                    2,
                    json!({"observedGeneration": 2, "phase": "RolledBack", "message": "pod p: digest mismatch"}),
                ),
                "Degraded",
            ),
            (
                release(
                    2,
                    json!({"observedGeneration": 2, "phase": "Progressing",
                               "conditions": [{"type": "Degraded", "status": "True", "message": "deadline"}]}),
                ),
                "Degraded",
            ),
        ];
        for (object, want) in cases {
            let (status, _) = health(&object).unwrap();
            assert_eq!(status, want, "{object}");
        }
        let (_, message) = health(&release(
            1,
            json!({"observedGeneration": 1, "phase": "RolledBack",
                                                     "message": "pod p: digest mismatch"}),
        ))
        .unwrap();
        assert_eq!(message, "pod p: digest mismatch");
    }

    #[test]
    fn health_shows_the_analysis_with_its_message() {
        let window = |verdict: &str, message: &str| {
            json!([{"start": "2026-12-02T10:00:00Z", "end": "2026-12-02T10:00:10Z",
                    "verdict": verdict,
                    "checks": [{"name": "latency", "verdict": "Pass", "message": "p99 2ms"},
                               {"name": "errors", "verdict": verdict, "message": message}]}])
        };
        let analysed = |phase: &str, analysis: &str, message: Option<&str>, windows: Value| {
            let mut status = json!({
                "observedGeneration": 2, "phase": phase, "targetRevision": "r2",
                "analysis": {"revision": "r2", "phase": analysis, "windows": windows},
            });
            if let Some(message) = message {
                status["message"] = json!(message);
            }
            release(2, status)
        };
        let failed = "error rate 19.8% > 1% over 412 calls on 1 canary pod in 10s";
        let cases = [
            // Failed analysis: Degraded with the operator's message, whatever the phase says
            // while the rollback goes on.
            (
                analysed(
                    "Progressing",
                    "Failed",
                    Some(failed),
                    window("Fail", failed),
                ),
                ("Degraded", failed.to_string()),
            ),
            (
                analysed("RolledBack", "Failed", None, window("Fail", failed)),
                ("Degraded", format!("analysis failed: errors: {failed}")),
            ),
            // Inconclusive: Suspended (held, as an Argo Rollout paused by an inconclusive
            // run), with the reason.
            (
                analysed(
                    "Paused",
                    "Inconclusive",
                    Some("analysis inconclusive: errors: 3 calls < minCalls 20"),
                    window("Inconclusive", "3 calls < minCalls 20"),
                ),
                (
                    "Suspended",
                    "analysis inconclusive: errors: 3 calls < minCalls 20".to_string(),
                ),
            ),
            (
                analysed(
                    "Progressing",
                    "Inconclusive",
                    None,
                    window("Inconclusive", "no calls in 10s"),
                ),
                (
                    "Suspended",
                    "analysis inconclusive: errors: no calls in 10s".to_string(),
                ),
            ),
            // Running or passed analyses leave the phase to speak.
            (
                analysed("Progressing", "Running", Some("2/5"), json!([])),
                ("Progressing", "2/5".to_string()),
            ),
            (
                {
                    let mut done = analysed("Completed", "Passed", Some("done"), json!([]));
                    done["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
                    done
                },
                ("Healthy", "done".to_string()),
            ),
        ];
        for (object, want) in cases {
            let got = health(&object).unwrap();
            assert_eq!((got.0.as_str(), got.1), (want.0, want.1), "{object}");
        }
        // An older revision's failed analysis does not make the new one Degraded.
        let mut retried = analysed("Progressing", "Failed", Some("3/5"), window("Fail", failed));
        retried["status"]["targetRevision"] = json!("r3");
        assert_eq!(health(&retried).unwrap().0, "Progressing");
    }
}
