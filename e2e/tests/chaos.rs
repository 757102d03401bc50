//! The chaos harness in CI, bounded: three fixed seeds of `hotload-e2e chaos` on one fleet
//! (two operator replicas, four pre-forked demo pods under traffic). Between them the seeds
//! inject every kind of fault the harness knows and apply every kind of release action but
//! abort (`chaos::plan::tests` holds the full reachability check); each run must keep every
//! invariant. A failure prints the seed's plan, log and violations, and
//! `hotload-e2e chaos --runs 1 --seed S` replays it.
//!
//! Abort is left out while an abort that lands when the target is already the stable
//! revision leaves the release RolledBack and reconciling for good (seeds 1, 26 and 47;
//! docs/reliability.md, "Chaos"). The ignored test below is that finding: it fails today
//! and joins CI once the operator is fixed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::ensure;
use hotload_e2e::chaos::{self, Fleet, plan};
use hotload_e2e::testing;

const E2E: &str = env!("CARGO_BIN_EXE_hotload-e2e");

/// Chosen so that together they reach every fault kind and every action but abort in few
/// seconds of plan.
const SEEDS: [u64; 3] = [15, 27, 52];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_seeds_keep_every_invariant() {
    testing::run(E2E, "chaos-seeds", |ns| async move {
        let kinds: BTreeSet<&str> = SEEDS
            .iter()
            .flat_map(|s| plan::plan(*s).steps)
            .flat_map(|s| [Some(s.action.kind()), s.fault.map(|f| f.kind())])
            .flatten()
            .collect();
        ensure!(
            !kinds.contains("abort")
                && kinds.len() == plan::ACTION_KINDS.len() - 1 + plan::FAULT_KINDS.len(),
            "the CI seeds no longer reach every kind but abort: {kinds:?}"
        );
        run_seeds(ns, &SEEDS).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "operator: an abort when the target is the stable revision never settles (seed 47)"]
async fn an_abort_when_the_target_is_stable_settles() {
    testing::run(E2E, "chaos-abort", |ns| async move {
        run_seeds(ns, &[47]).await
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
