//! Requests to the demo pods all through a chaos run, each on a new connection (so they
//! spread over a pod's workers), round-robin over the pods Ready at the moment (the runner
//! retargets as pods come and go). Every failure is kept with the pod it went to, so the
//! invariants can tell a faulted pod's failures from a bystander's.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::chaos::invariants::FailedRequest;
use crate::workload::{post, tag_of};

/// The longest one run's traffic lasts, told to stop or not.
pub const MAX_RUN_TRAFFIC: Duration = Duration::from_secs(600);

/// What the traffic saw.
#[derive(Debug, Default)]
pub struct TrafficLog {
    /// Whole answers.
    pub ok: usize,
    /// Every failed request.
    pub failed: Vec<FailedRequest>,
    /// Every pod a request went to.
    pub pods: BTreeSet<String>,
}

/// The running traffic; stop it with [`Traffic::finish`].
pub struct Traffic {
    stop: Arc<AtomicBool>,
    targets: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<TrafficLog>,
}

impl Traffic {
    /// Starts requests to `targets` (`(pod, ip)`), timed from `started`.
    pub fn start(targets: Vec<(String, String)>, started: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let targets = Arc::new(Mutex::new(targets));
        let (flag, shared) = (stop.clone(), targets.clone());
        let task = tokio::spawn(async move {
            let mut log = TrafficLog::default();
            let mut i = 0usize;
            while !flag.load(Ordering::Relaxed) && started.elapsed() < MAX_RUN_TRAFFIC {
                let target = shared
                    .lock()
                    .ok()
                    .and_then(|t| t.get(i % t.len().max(1)).cloned());
                i = i.wrapping_add(1);
                let Some((pod, ip)) = target else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                log.pods.insert(pod.clone());
                let failure = |error: String, mixed: bool| FailedRequest {
                    pod: pod.clone(),
                    at: started.elapsed().as_secs_f32(),
                    error,
                    mixed,
                };
                match post(&ip, &format!("request-{i}")).await {
                    Ok(body) if tag_of(&body).is_some() => log.ok += 1,
                    Ok(body) => log.failed.push(failure(format!("{body:?}"), true)),
                    Err(e) => log.failed.push(failure(format!("{e:#}"), false)),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            log
        });
        Self {
            stop,
            targets,
            task,
        }
    }

    /// From now on, requests go to `targets`.
    pub fn retarget(&self, targets: Vec<(String, String)>) {
        if let Ok(mut current) = self.targets.lock() {
            *current = targets;
        }
    }

    /// Stops and reports.
    pub async fn finish(self) -> Result<TrafficLog> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}
