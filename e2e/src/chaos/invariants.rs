//! What must hold after every chaos run, decided from what was observed: the release's
//! status (as JSON, the way a user reads it), what each pod answered, and the traffic's
//! failed requests. Pure: the runner gathers, this judges.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

/// What one pod answered to the probes after the run (each on a new connection, so they
/// spread over its workers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodAnswers {
    /// The pod's name.
    pub pod: String,
    /// The `x-hotload-revision` of every answer (`""` for an answer without one, which is
    /// what a pod with no plugin loaded gives).
    pub revisions: BTreeSet<String>,
    /// Probes that got no whole answer, with why.
    pub errors: Vec<String>,
}

/// A request of the traffic that failed.
#[derive(Clone, Debug, PartialEq)]
pub struct FailedRequest {
    /// The pod it went to.
    pub pod: String,
    /// Seconds into the run.
    pub at: f32,
    /// Why it failed.
    pub error: String,
    /// The answer came whole but mixed from two plugin versions (never excused).
    pub mixed: bool,
}

/// An invariant that did not hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Violation {
    /// The release did not settle, or pods did not match it, within the bound.
    NotConverged { seconds: u64, why: String },
    /// A pod answers with a revision other than the one status lists for it as loaded.
    ServesOtherThanStatus {
        pod: String,
        status: String,
        served: BTreeSet<String>,
    },
    /// A pod serves, or status lists as loaded, a revision the history does not hold.
    NotInHistory { pod: String, revision: String },
    /// A Ready pod of the selector that status does not list.
    NotInStatus { pod: String },
    /// Phase RolledBack while pods are still on their way back.
    RollbackUnfinished { message: String },
    /// A request failed on a pod that no fault touched.
    RequestFailed { pod: String, at: f32, error: String },
    /// An answer mixed from two plugin versions.
    MixedAnswer { pod: String, at: f32, error: String },
    /// A probe after the run got no whole answer from a Ready pod.
    ProbeFailed { pod: String, error: String },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::NotConverged { seconds, why } => {
                write!(f, "not converged within {seconds}s: {why}")
            }
            Violation::ServesOtherThanStatus {
                pod,
                status,
                served,
            } => write!(
                f,
                "pod {pod} serves {served:?} but status says it loaded {status:?}"
            ),
            Violation::NotInHistory { pod, revision } => {
                write!(
                    f,
                    "pod {pod}: revision {revision:?} is not in status.history"
                )
            }
            Violation::NotInStatus { pod } => write!(f, "Ready pod {pod} is not in status.pods"),
            Violation::RollbackUnfinished { message } => {
                write!(f, "RolledBack while still reconciling: {message}")
            }
            Violation::RequestFailed { pod, at, error } => write!(
                f,
                "request to unfaulted pod {pod} failed at +{at:.1}s: {error}"
            ),
            Violation::MixedAnswer { pod, at, error } => {
                write!(f, "mixed answer from pod {pod} at +{at:.1}s: {error}")
            }
            Violation::ProbeFailed { pod, error } => {
                write!(f, "probe of Ready pod {pod} failed: {error}")
            }
        }
    }
}

/// A status condition's `status` (`"True"`/`"False"`), if present.
fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a str> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str())
}

/// Whether the release has settled at `generation`: observed, and finished or waiting for
/// a person (a RolledBack release only once no pod is still on its way back). The same rule
/// as `kubectl hotload status --watch`.
pub fn settled(status: &Value, generation: i64) -> bool {
    if status["observedGeneration"].as_i64() != Some(generation) {
        return false;
    }
    match status["phase"].as_str() {
        Some("RolledBack") => condition(status, "Reconciling") != Some("True"),
        Some("Completed" | "Degraded" | "Paused") => true,
        _ => false,
    }
}

/// Status's pods by name: (revision, state).
fn listed(status: &Value) -> BTreeMap<String, (String, String)> {
    status["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["pod"].as_str()?.to_string(),
                (
                    p["revision"].as_str().unwrap_or_default().to_string(),
                    p["state"].as_str().unwrap_or_default().to_string(),
                ),
            ))
        })
        .collect()
}

/// The revisions status.history holds.
fn history(status: &Value) -> BTreeSet<String> {
    status["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["revision"].as_str().map(String::from))
        .collect()
}

/// What is wrong between the status and what the Ready pods answered: the state
/// invariants, checked on every convergence attempt. Empty means they hold.
pub fn state_violations(status: &Value, answers: &[PodAnswers]) -> Vec<Violation> {
    let mut out = Vec::new();
    let listed = listed(status);
    let history = history(status);
    if status["phase"] == "RolledBack" && condition(status, "Reconciling") == Some("True") {
        out.push(Violation::RollbackUnfinished {
            message: status["message"].as_str().unwrap_or_default().to_string(),
        });
    }
    for (pod, (revision, state)) in &listed {
        if state == "Loaded" && !revision.is_empty() && !history.contains(revision) {
            out.push(Violation::NotInHistory {
                pod: pod.clone(),
                revision: revision.clone(),
            });
        }
    }
    for answer in answers {
        for error in &answer.errors {
            out.push(Violation::ProbeFailed {
                pod: answer.pod.clone(),
                error: error.clone(),
            });
        }
        for served in &answer.revisions {
            if !served.is_empty() && !history.contains(served) {
                out.push(Violation::NotInHistory {
                    pod: answer.pod.clone(),
                    revision: served.clone(),
                });
            }
        }
        match listed.get(&answer.pod) {
            None => out.push(Violation::NotInStatus {
                pod: answer.pod.clone(),
            }),
            Some((revision, state)) if state == "Loaded" => {
                let exact = answer.revisions.len() == 1 && answer.revisions.contains(revision);
                if !exact && !answer.revisions.is_empty() {
                    out.push(Violation::ServesOtherThanStatus {
                        pod: answer.pod.clone(),
                        status: revision.clone(),
                        served: answer.revisions.clone(),
                    });
                }
            }
            // Pending, Loading, Failed or Unreachable: not settled; the caller waits.
            Some((_, state)) => out.push(Violation::NotConverged {
                seconds: 0,
                why: format!("pod {} is {state}", answer.pod),
            }),
        }
    }
    out
}

/// The traffic's failures that no fault excuses: any on a pod outside `faulted`, and every
/// mixed answer.
pub fn traffic_violations(failed: &[FailedRequest], faulted: &BTreeSet<String>) -> Vec<Violation> {
    failed
        .iter()
        .filter_map(|f| {
            if f.mixed {
                Some(Violation::MixedAnswer {
                    pod: f.pod.clone(),
                    at: f.at,
                    error: f.error.clone(),
                })
            } else if !faulted.contains(&f.pod) {
                Some(Violation::RequestFailed {
                    pod: f.pod.clone(),
                    at: f.at,
                    error: f.error.clone(),
                })
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn status(phase: &str, reconciling: &str, pods: Value) -> Value {
        json!({
            "observedGeneration": 3,
            "phase": phase,
            "message": "rolling back",
            "conditions": [{"type": "Reconciling", "status": reconciling}],
            "pods": pods,
            "history": [{"revision": "aaa"}, {"revision": "bbb"}],
        })
    }

    fn answers(pod: &str, revisions: &[&str]) -> PodAnswers {
        PodAnswers {
            pod: pod.into(),
            revisions: revisions.iter().map(ToString::to_string).collect(),
            errors: Vec::new(),
        }
    }

    #[test]
    fn settled_follows_the_watch_rule() {
        assert!(settled(&status("Completed", "False", json!([])), 3));
        assert!(!settled(&status("Completed", "False", json!([])), 4));
        assert!(!settled(&status("Progressing", "True", json!([])), 3));
        assert!(!settled(&status("RolledBack", "True", json!([])), 3));
        assert!(settled(&status("RolledBack", "False", json!([])), 3));
        assert!(!settled(&json!({}), 0));
    }

    #[test]
    fn pods_that_serve_what_status_says_pass() {
        let s = status(
            "Completed",
            "False",
            json!([{"pod": "a", "revision": "bbb", "state": "Loaded"},
                   {"pod": "b", "revision": "bbb", "state": "Loaded"}]),
        );
        let v = state_violations(&s, &[answers("a", &["bbb"]), answers("b", &["bbb"])]);
        assert_eq!(v, vec![]);
    }

    #[test]
    fn a_pod_serving_another_revision_or_two_is_caught() {
        let s = status(
            "Completed",
            "False",
            json!([{"pod": "a", "revision": "bbb", "state": "Loaded"},
                   {"pod": "b", "revision": "bbb", "state": "Loaded"}]),
        );
        let v = state_violations(&s, &[answers("a", &["aaa"]), answers("b", &["aaa", "bbb"])]);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(
            v.iter()
                .all(|v| matches!(v, Violation::ServesOtherThanStatus { .. }))
        );
    }

    #[test]
    fn a_revision_outside_history_is_caught_whether_served_or_listed() {
        let s = status(
            "Completed",
            "False",
            json!([{"pod": "a", "revision": "zzz", "state": "Loaded"}]),
        );
        let v = state_violations(&s, &[answers("a", &["zzz"])]);
        assert_eq!(
            v,
            vec![
                Violation::NotInHistory {
                    pod: "a".into(),
                    revision: "zzz".into()
                },
                Violation::NotInHistory {
                    pod: "a".into(),
                    revision: "zzz".into()
                }
            ]
        );
        // No plugin at all ("") is not a revision and needs no history entry.
        let s = status(
            "RolledBack",
            "False",
            json!([{"pod": "a", "revision": "", "state": "Loaded"}]),
        );
        assert_eq!(state_violations(&s, &[answers("a", &[""])]), vec![]);
    }

    #[test]
    fn an_unfinished_rollback_an_unlisted_pod_and_a_loading_pod_are_caught() {
        let s = status(
            "RolledBack",
            "True",
            json!([{"pod": "a", "revision": "aaa", "state": "Loading"}]),
        );
        let v = state_violations(&s, &[answers("a", &["bbb"]), answers("new", &["aaa"])]);
        assert!(
            matches!(v[0], Violation::RollbackUnfinished { .. }),
            "{v:?}"
        );
        assert!(
            v.iter().any(
                |v| matches!(v, Violation::NotConverged { why, .. } if why.contains("Loading"))
            )
        );
        assert!(v.contains(&Violation::NotInStatus { pod: "new".into() }));
    }

    #[test]
    fn a_failed_probe_of_a_ready_pod_is_caught() {
        let s = status(
            "Completed",
            "False",
            json!([{"pod": "a", "revision": "bbb", "state": "Loaded"}]),
        );
        let mut a = answers("a", &["bbb"]);
        a.errors.push("connection refused".into());
        assert!(matches!(
            state_violations(&s, &[a])[..],
            [Violation::ProbeFailed { .. }]
        ));
    }

    #[test]
    fn only_faulted_pods_excuse_failed_requests_and_nothing_excuses_a_mixed_answer() {
        let failed = vec![
            FailedRequest {
                pod: "killed".into(),
                at: 1.0,
                error: "reset".into(),
                mixed: false,
            },
            FailedRequest {
                pod: "bystander".into(),
                at: 2.0,
                error: "reset".into(),
                mixed: false,
            },
            FailedRequest {
                pod: "killed".into(),
                at: 3.0,
                error: "v01 … v02".into(),
                mixed: true,
            },
        ];
        let faulted = BTreeSet::from(["killed".to_string()]);
        let v = traffic_violations(&failed, &faulted);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(matches!(&v[0], Violation::RequestFailed { pod, .. } if pod == "bystander"));
        assert!(matches!(&v[1], Violation::MixedAnswer { pod, .. } if pod == "killed"));
    }
}
