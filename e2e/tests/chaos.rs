//! The chaos harness in CI, bounded: three fixed seeds of `hotload-e2e chaos` on one fleet
//! (two operator replicas, four pre-forked demo pods under traffic). Between them the seeds
//! apply every kind of release action and inject every kind of fault the harness knows
//! (`chaos::plan::tests` holds the full reachability check); each run must keep every
//! invariant. A failure prints the seed's plan, log and violations, and
//! `hotload-e2e chaos --runs 1 --seed S` replays it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::ensure;
use hotload_e2e::chaos::{self, Fleet, plan};
use hotload_e2e::testing;

const E2E: &str = env!("CARGO_BIN_EXE_hotload-e2e");

/// Chosen so that together they reach every action and fault kind in few seconds of plan.
const SEEDS: [u64; 3] = [33, 47, 96];

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
            kinds.len() == plan::ACTION_KINDS.len() + plan::FAULT_KINDS.len(),
            "the CI seeds no longer reach every kind: {kinds:?}"
        );
        let started = Instant::now();
        let fleet = Fleet::start(E2E, &ns).await?;
        let mut failed = Vec::new();
        for seed in SEEDS {
            let report = chaos::run_one(&fleet, seed, Duration::from_secs(90)).await?;
            eprintln!("{report}");
            if !report.passed() {
                failed.push(report.to_string());
            }
        }
        eprintln!(
            "chaos seeds {SEEDS:?} in {:.0}s",
            started.elapsed().as_secs_f32()
        );
        ensure!(failed.is_empty(), "{}", failed.join("\n"));
        Ok(())
    })
    .await;
}
