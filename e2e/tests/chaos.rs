//! The chaos harness in CI, bounded: three fixed seeds of `hotload-e2e chaos` on one fleet
//! (two operator replicas, four pre-forked demo pods under traffic, an HTTPS artifact server
//! and an OCI registry). Between them the seeds inject every kind of fault the harness knows,
//! apply every kind of release action, and deliver revisions over OCI (`chaos::plan::tests`
//! holds the full reachability check); each run must keep every invariant. A failure prints the seed's plan, log and violations, and
//! `hotload-e2e chaos --runs 1 --seed S` replays it.
//!
//! Seed 47 is the harness's first finding: an abort that landed while the target was
//! already the stable revision (a pod deleted after the rollout completed) left the release
//! RolledBack and reconciling for good; the operator now ignores such an abort.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::ensure;
use hotload_e2e::chaos::{self, Fleet, plan};
use hotload_e2e::testing;

const E2E: &str = env!("CARGO_BIN_EXE_hotload-e2e");

/// Chosen so that together they reach every fault kind, every action and OCI delivery in
/// few seconds of plan: 92 fills a pod's emptyDir while v2 rolls out over OCI (the pod must
/// download it) and cuts the operator leader off for 15 s (longer than it may go without
/// renewing its lease); 385 takes the OCI registry down and slows it while revisions come
/// from it; 47 aborts once the rollout has completed and a pod was deleted.
const SEEDS: [u64; 3] = [92, 385, 47];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_seeds_keep_every_invariant() {
    testing::run(E2E, "chaos-seeds", |ns| async move {
        let kinds: BTreeSet<&str> = SEEDS
            .iter()
            .flat_map(|s| plan::plan(*s).steps)
            .flat_map(|s| {
                [
                    Some(s.action.kind()),
                    s.over_oci().then_some("over-oci"),
                    s.fault.map(|f| f.kind()),
                ]
            })
            .flatten()
            .collect();
        ensure!(
            kinds.len() == plan::ACTION_KINDS.len() + plan::FAULT_KINDS.len() + 1,
            "the CI seeds no longer reach every kind and OCI delivery: {kinds:?}"
        );
        run_seeds(ns, &SEEDS).await
    })
    .await;
}

/// Runs `seeds` on one fleet in `ns`; fails with the report of every run that broke an
/// invariant.
async fn run_seeds(ns: testing::TestNamespace, seeds: &[u64]) -> anyhow::Result<()> {
    let started = Instant::now();
    let fleet = Fleet::start(E2E, &ns).await?;
    let mut failed = Vec::new();
    for &seed in seeds {
        let report = chaos::run_one(&fleet, seed, Duration::from_secs(90)).await?;
        eprintln!("{report}");
        if !report.passed() {
            failed.push(report.to_string());
        }
    }
    eprintln!(
        "chaos seeds {seeds:?} in {:.0}s",
        started.elapsed().as_secs_f32()
    );
    ensure!(failed.is_empty(), "{}", failed.join("\n"));
    Ok(())
}
