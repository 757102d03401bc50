//! The PluginRelease API on the real API server: defaults fill in, and a bad spec is refused
//! with a message that names the field and says what is wrong.

use anyhow::{Result, bail, ensure};
use hotload_e2e::testing;
use kube::api::{DynamicObject, PostParams};
use serde_json::{Value, json};

const E2E: &str = env!("CARGO_BIN_EXE_hotload-e2e");
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn release(name: &str, spec: Value) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "hotload.dev/v1alpha1",
        "kind": "PluginRelease",
        "metadata": {"name": name},
        "spec": spec,
    }))?)
}

fn good_spec() -> Value {
    json!({
        "plugin": "auth-filter",
        "selector": {"matchLabels": {"app": "shop"}},
        "artifact": {"url": "oci://127.0.0.1:5000/plugins/auth:1", "digest": DIGEST},
    })
}

#[tokio::test]
async fn defaults_fill_in_and_bad_specs_are_refused_with_a_reason() {
    testing::run(E2E, "api", |ns| async move {
        testing::apply_crds(&ns.client).await?;
        let api = testing::plugin_releases(&ns);
        let created = api.create(&PostParams::default(), &release("good", good_spec())?).await?;
        let spec = &created.data["spec"];
        ensure!(spec["strategy"]["maxUnavailable"] == "25%", "default maxUnavailable: {spec}");
        ensure!(spec["failurePolicy"]["action"] == "Rollback", "default failure action: {spec}");
        ensure!(spec["failurePolicy"]["maxFailures"] == 0, "default maxFailures: {spec}");
        ensure!(spec["progressDeadlineSeconds"] == 600, "default deadline: {spec}");

        let cases: Vec<(&str, Value, &str)> = vec![
            ("digest", json!({"artifact": {"url": "https://h/p.wasm", "digest": "sha256:abc"}}),
             "spec.artifact.digest: Invalid value: \"sha256:abc\": artifact.digest must be sha256: followed by 64 lowercase hex digits"),
            ("nodigest", json!({"artifact": {"digest": null}}),
             "spec.artifact.digest: Required value"),
            ("scheme", json!({"artifact": {"url": "ftp://h/p.wasm", "digest": DIGEST}}),
             "artifact.url must start with oci:// or https://"),
            ("selector", json!({"selector": {"matchLabels": null}}),
             "spec.selector: Invalid value: selector must not be empty"),
            ("percent", json!({"strategy": {"maxUnavailable": "150%"}}),
             "maxUnavailable must be a whole number of at least 1, or a percentage from 0% to 100%"),
            ("zero", json!({"strategy": {"maxUnavailable": 0}}),
             "maxUnavailable must be a whole number of at least 1"),
            ("step", json!({"strategy": {"steps": [{"percent": 120}]}}),
             "spec.strategy.steps[0].percent"),
            ("emptystep", json!({"strategy": {"steps": [{}]}}),
             "a step needs percent, pause, or both"),
            ("pause", json!({"strategy": {"steps": [{"percent": 20, "pause": {"duration": "soon"}}]}}),
             "pause.duration must be a whole number of seconds, minutes or hours"),
            ("plugin", json!({"plugin": "Auth_Filter"}),
             "plugin must be a DNS label"),
            ("action", json!({"failurePolicy": {"action": "Explode"}}),
             "spec.failurePolicy.action: Unsupported value: \"Explode\""),
        ];
        // The README's example, kept in examples/: the API server accepts it as it is.
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let example = std::fs::read_to_string(format!("{root}/examples/pluginrelease.yaml"))?;
        let readme = std::fs::read_to_string(format!("{root}/README.md"))?;
        ensure!(
            readme.contains(&format!("```yaml\n{example}```")),
            "README.md's PluginRelease example is not examples/pluginrelease.yaml"
        );
        let mut object: DynamicObject = serde_saphyr::from_str(&example)?;
        object.metadata.namespace = None;
        api.create(&PostParams::default(), &object).await?;

        for (name, change, want) in cases {
            let mut spec = good_spec();
            merge(&mut spec, &change);
            match api.create(&PostParams::default(), &release(name, spec)?).await {
                Ok(_) => bail!("case {name}: the API server accepted {change}"),
                Err(kube::Error::Api(status)) => {
                    let message = status.message.clone();
                    ensure!(status.code == 422, "case {name}: HTTP {} ({message})", status.code);
                    ensure!(message.contains(want), "case {name}: message {message:?} does not say {want:?}");
                }
                Err(other) => bail!("case {name}: {other}"),
            }
        }
        Ok(())
    })
    .await;
}

/// A JSON merge patch (RFC 7396) of `change` into `base`.
fn merge(base: &mut Value, change: &Value) {
    match (base, change) {
        (Value::Object(base), Value::Object(change)) => {
            for (key, value) in change {
                if value.is_null() {
                    base.remove(key);
                } else {
                    merge(base.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (base, change) => *base = change.clone(),
    }
}
