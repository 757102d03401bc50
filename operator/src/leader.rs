//! Leader election on a coordination.k8s.io Lease. Only the leader reconciles and accepts
//! sidecar streams, and it labels its own pod [`LEADER_LABEL`], which the channel Service
//! selects; standbys are Ready too (they serve the injection webhook). A replica that loses
//! the lease exits: its in-memory view of sidecars is stale, and a fresh start rebuilds it
//! from status and reconnecting sidecars.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
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

/// Decides from the lease as read, who we are, and for how long this replica has seen the
/// lease record unchanged (its holder and renew time). Expiry is judged on this replica's
/// own clock, as client-go does: comparing the holder's `renewTime` with our clock would
/// hand the lease over early whenever the two nodes' clocks disagree.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> Decision {
    let Some(spec) = lease else {
        return Decision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => Decision::Acquire,
        Some(holder) if holder == me => Decision::Renew,
        Some(_) => {
            let seconds = spec.lease_duration_seconds.unwrap_or(15);
            let duration = Duration::from_secs(u64::try_from(seconds).unwrap_or(15));
            if unchanged_for > duration {
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
/// A leader that cannot renew within two thirds of the lease's duration (an API server that
/// hangs) steps down the same way, before another replica may take the lease.
pub async fn run(client: Client, election: Election, health: Arc<Health>) -> anyhow::Result<()> {
    // A restarted replica may carry the label from before; it is not leading yet.
    label_pod(&client, &election, false).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &election.namespace);
    let renew_deadline = election.duration * 2 / 3;
    let mut seen = Seen::default();
    let mut leading = false;
    loop {
        let won = match tokio::time::timeout(renew_deadline, attempt(&leases, &election, &mut seen))
            .await
        {
            Ok(won) => won?,
            Err(_) if leading => {
                health.set_leading(false);
                anyhow::bail!(
                    "could not renew the leader lease {}/{} within {}s: stepping down",
                    election.namespace,
                    election.name,
                    renew_deadline.as_secs()
                );
            }
            Err(_) => false,
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

/// The lease record as last seen (holder, renew time), and since when on this replica's
/// clock.
#[derive(Default)]
struct Seen {
    record: Option<(Option<String>, Option<MicroTime>)>,
    since: Option<std::time::Instant>,
}

impl Seen {
    /// Records `spec` as read now; returns for how long it has been unchanged.
    fn observe(&mut self, spec: Option<&LeaseSpec>) -> Duration {
        let record = spec.map(|s| (s.holder_identity.clone(), s.renew_time.clone()));
        let now = std::time::Instant::now();
        if self.record != record || self.since.is_none() {
            self.record = record;
            self.since = Some(now);
        }
        self.since.map_or(Duration::ZERO, |since| now - since)
    }
}

/// One round: reads the lease, and takes or renews it if [`decide`] says so. Returns
/// whether this replica holds it now.
async fn attempt(
    leases: &Api<Lease>,
    election: &Election,
    seen: &mut Seen,
) -> anyhow::Result<bool> {
    let seconds = i32::try_from(election.duration.as_secs()).unwrap_or(15);
    let current = leases.get_opt(&election.name).await?;
    let spec = current.as_ref().and_then(|l| l.spec.as_ref());
    let decision = decide(spec, &election.identity, seen.observe(spec));
    if decision == Decision::Follow {
        return Ok(false);
    }
    let now = Timestamp::now();
    let acquired_before = spec.and_then(|s| s.acquire_time.clone());
    let transitions = spec.and_then(|s| s.lease_transitions).unwrap_or(0);
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
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "writing the leader lease {}/{}",
            election.namespace, election.name
        ))),
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
        let secs = Duration::from_secs;
        assert_eq!(decide(None, "a", secs(0)), Decision::Acquire);
        assert_eq!(decide(Some(&spec("a", 990)), "a", secs(0)), Decision::Renew);
        assert_eq!(
            decide(Some(&spec("b", 990)), "a", secs(10)),
            Decision::Follow
        );
        assert_eq!(
            decide(Some(&spec("b", 980)), "a", secs(16)),
            Decision::Acquire,
            "unchanged for longer than its 15 s"
        );
        assert_eq!(
            decide(Some(&spec("", 999)), "a", secs(0)),
            Decision::Acquire
        );
    }

    #[test]
    fn expiry_is_judged_on_our_clock_not_the_holders_renew_time() {
        // A renew time an hour old on our clock (the holder's clock is behind) is still a
        // live lease while we see it change.
        let mut seen = Seen::default();
        let stale = spec("b", 0);
        assert!(seen.observe(Some(&stale)) < Duration::from_secs(1));
        assert_eq!(
            decide(Some(&stale), "a", seen.observe(Some(&stale))),
            Decision::Follow
        );
        let renewed = spec("b", 5);
        assert!(
            seen.observe(Some(&renewed)) < Duration::from_secs(1),
            "a renewal restarts it"
        );
    }
}
