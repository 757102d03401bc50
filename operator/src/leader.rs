//! Leader election on a coordination.k8s.io Lease. Only the leader reconciles and accepts
//! sidecar streams (and only it reports Ready, so the Service routes sidecars to it). A
//! replica that loses the lease exits: its in-memory view of sidecars is stale, and a fresh
//! start rebuilds it from status and reconnecting sidecars.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::admin::Health;

/// What to do with the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds a live lease.
    Follow,
}

/// Decides from the lease as read, who we are, and the clock.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease else {
        return Decision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => Decision::Acquire,
        Some(holder) if holder == me => Decision::Renew,
        Some(_) => {
            let duration =
                SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            let renewed = spec
                .renew_time
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
            if renewed + duration < now {
                Decision::Acquire
            } else {
                Decision::Follow
            }
        }
    }
}

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct Election {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a lease lives without renewal.
    pub duration: Duration,
    /// This replica's pod (namespace, name), labelled [`LEADER_LABEL`] while it leads
    /// (in-cluster only).
    pub pod: Option<(String, String)>,
}

/// The label the leader puts on its own pod; the channel Service selects it.
pub const LEADER_LABEL: &str = "hotload.dev/leader";

/// Sets or clears [`LEADER_LABEL`] on this replica's pod.
async fn label_pod(client: &Client, election: &Election, leading: bool) -> anyhow::Result<()> {
    let Some((namespace, pod)) = &election.pod else {
        return Ok(());
    };
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    let value = if leading {
        serde_json::json!("true")
    } else {
        serde_json::Value::Null
    };
    let patch = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: value}}});
    pods.patch(
        pod,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .map_err(|e| anyhow::anyhow!("labelling pod {namespace}/{pod}: {e}"))?;
    Ok(())
}

/// Runs the election until leadership is lost (then returns an error, and the process exits).
pub async fn run(client: Client, election: Election, health: Arc<Health>) -> anyhow::Result<()> {
    // A restarted replica may carry the label from before; it is not leading yet.
    label_pod(&client, &election, false).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &election.namespace);
    let seconds = i32::try_from(election.duration.as_secs()).unwrap_or(15);
    let mut leading = false;
    loop {
        let current = leases.get_opt(&election.name).await?;
        let now = Timestamp::now();
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &election.identity,
            now,
        );
        let won = match decision {
            Decision::Follow => false,
            Decision::Acquire | Decision::Renew => {
                let acquired_before = current
                    .as_ref()
                    .and_then(|l| l.spec.as_ref())
                    .and_then(|s| s.acquire_time.clone());
                let transitions = current
                    .as_ref()
                    .and_then(|l| l.spec.as_ref())
                    .and_then(|s| s.lease_transitions)
                    .unwrap_or(0);
                let spec = LeaseSpec {
                    holder_identity: Some(election.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    renew_time: Some(MicroTime(now)),
                    acquire_time: if decision == Decision::Renew {
                        acquired_before
                    } else {
                        Some(MicroTime(now))
                    },
                    lease_transitions: Some(if decision == Decision::Acquire {
                        transitions + 1
                    } else {
                        transitions
                    }),
                    ..Default::default()
                };
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(election.name.clone()),
                        // Optimistic concurrency: a racing replica's write makes ours fail.
                        resource_version: current
                            .as_ref()
                            .and_then(|l| l.metadata.resource_version.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                let written = match &current {
                    Some(_) => {
                        leases
                            .replace(&election.name, &PostParams::default(), &lease)
                            .await
                    }
                    None => leases.create(&PostParams::default(), &lease).await,
                };
                match written {
                    Ok(_) => true,
                    Err(kube::Error::Api(e)) if e.code == 409 => false,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if won != leading {
            tracing::info!(identity = %election.identity, leading = won, "leadership changed");
            if leading && !won {
                health.set_leading(false);
                anyhow::bail!(
                    "lost the leader lease {}/{}",
                    election.namespace,
                    election.name
                );
            }
            leading = won;
            if won {
                label_pod(&client, &election, true).await?;
            }
            health.set_leading(won);
        }
        tokio::time::sleep(election.duration / 3).await;
    }
}

/// Gives the lease up if this replica holds it, so a successor (a rolling upgrade's new
/// pod) takes over at once instead of waiting for it to expire.
pub async fn release(client: Client, election: &Election) -> anyhow::Result<()> {
    label_pod(&client, election, false).await?;
    let leases: Api<Lease> = Api::namespaced(client, &election.namespace);
    let Some(mut lease) = leases.get_opt(&election.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(election.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.acquire_time = None;
    spec.renew_time = None;
    // resourceVersion is kept: if someone took it meanwhile, there is nothing to give up.
    match leases
        .replace(&election.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn free_or_expired_leases_are_taken_live_ones_followed() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert_eq!(decide(None, "a", now), Decision::Acquire);
        assert_eq!(decide(Some(&spec("a", 990)), "a", now), Decision::Renew);
        assert_eq!(decide(Some(&spec("b", 990)), "a", now), Decision::Follow);
        assert_eq!(
            decide(Some(&spec("b", 980)), "a", now),
            Decision::Acquire,
            "expired 5s ago"
        );
        assert_eq!(decide(Some(&spec("", 999)), "a", now), Decision::Acquire);
    }
}
