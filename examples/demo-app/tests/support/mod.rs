//! Test glue over `hotload_demo_app::harness` (the real pieces wired in-process).
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::path::Path;

use hotload_demo_app::harness;
pub use hotload_demo_app::harness::{Sidecar, Stack, V1_WAT, V2_WAT, assign_to, tag_of};
use hotload_sidecar::assignment::AssignOutcome;
use hotload_sidecar::digest::Sha256Digest;

pub async fn start(dir: &Path) -> Stack {
    harness::start(dir, std::sync::Arc::new(hotload_host::NoHooks))
        .await
        .expect("stack starts")
}

pub fn start_sidecar(dir: &Path) -> Sidecar {
    harness::start_sidecar(dir).expect("sidecar starts")
}

pub fn seed(state_dir: &Path, bytes: &[u8]) -> Sha256Digest {
    harness::seed(state_dir, bytes).expect("seed store")
}

pub async fn assign(stack: &Stack, revision: &str, digest: &Sha256Digest) -> AssignOutcome {
    assign_to(
        &stack.sidecar.agent,
        revision,
        digest,
        serde_json::Value::Null,
    )
    .await
}
