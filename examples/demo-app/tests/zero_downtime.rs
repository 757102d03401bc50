//! The bar, through every real piece: sidecar agent → Unix socket → demo app →
//! hotload-host, 100 swaps between two plugin versions under steady HTTP load, 0 failed
//! requests, every response wholly from one version, and a streaming response that stays
//! open across all swaps.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hotload_sidecar::assignment::AssignOutcome;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_swaps_under_load_fail_no_request_and_keep_the_stream_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stack = start(dir.path()).await;
    let v1 = wat::parse_str(V1_WAT).expect("v1 wat");
    let v2 = wat::parse_str(V2_WAT).expect("v2 wat");
    // Seed each version right before its first assignment (the agent keeps what it was
    // assigned and collects the rest).
    let d1 = seed(&stack.sidecar.state_dir, &v1);
    assert!(matches!(
        assign(&stack, "r0", &d1).await,
        AssignOutcome::Loaded { .. }
    ));
    let d2 = seed(&stack.sidecar.state_dir, &v2);
    assert!(matches!(
        assign(&stack, "r1", &d2).await,
        AssignOutcome::Loaded { .. }
    ));

    let stop = Arc::new(AtomicBool::new(false));
    // A hung request fails the test instead of holding the join forever.
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("client");
    let url = format!("http://{}/", stack.http);
    let mut load = Vec::new();
    for worker in 0..3 {
        let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut seen = [0u64; 2];
            for i in 0..1_000_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = format!("worker{worker}-req{i}");
                let resp = client
                    .post(&url)
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(|e| format!("request {i}: {e}"))?;
                let status = resp.status();
                let out = resp.bytes().await.map_err(|e| format!("body {i}: {e}"))?;
                if !status.is_success() {
                    return Err(format!(
                        "request {i}: HTTP {status}: {}",
                        String::from_utf8_lossy(&out)
                    ));
                }
                let (tag, echoed) =
                    tag_of(&out).ok_or_else(|| format!("mixed response {out:?}"))?;
                if echoed != body.as_bytes() {
                    return Err(format!("wrong body {out:?}"));
                }
                seen[usize::from(tag == "v02")] += 1;
            }
            Ok::<_, String>(seen)
        }));
    }
    let stream_url = format!("http://{}/stream", stack.http);
    let stream_stop = stop.clone();
    let stream = tokio::spawn(async move {
        let mut resp = reqwest::get(stream_url).await.map_err(|e| e.to_string())?;
        let (mut lines, mut tags, mut buf) = (0u64, std::collections::BTreeSet::new(), Vec::new());
        while !stream_stop.load(Ordering::Relaxed) {
            let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
                .await
                .map_err(|_| "stream stalled for 5 s".to_string())?
                .map_err(|e| format!("stream broke: {e}"))?
                .ok_or("stream ended")?;
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let (tag, _) = tag_of(&line[..line.len() - 1])
                    .ok_or_else(|| format!("bad stream line {line:?}"))?;
                tags.insert(tag);
                lines += 1;
            }
        }
        Ok::<_, String>((lines, tags))
    });

    let swaps = AtomicU64::new(0);
    let started = Instant::now();
    for n in 2..102u32 {
        let digest = if n % 2 == 0 { &d1 } else { &d2 };
        match assign(&stack, &format!("r{n}"), digest).await {
            AssignOutcome::Loaded { .. } => swaps.fetch_add(1, Ordering::Relaxed),
            other => panic!("swap {n}: {other:?}"),
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "swap loop over its time bound"
        );
    }
    // Let the stream cross the last swap before stopping.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);

    let mut total = [0u64; 2];
    for w in load {
        let seen = w
            .await
            .expect("worker")
            .unwrap_or_else(|e| panic!("a request failed: {e}"));
        total[0] += seen[0];
        total[1] += seen[1];
    }
    let (lines, tags) = stream
        .await
        .expect("stream task")
        .unwrap_or_else(|e| panic!("stream: {e}"));
    eprintln!(
        "100 swaps in {:?}; requests v01={} v02={}; stream lines={lines} tags={tags:?}",
        started.elapsed(),
        total[0],
        total[1]
    );
    assert_eq!(swaps.load(Ordering::Relaxed), 100);
    assert!(total[0] > 0 && total[1] > 0);
    assert_eq!(tags.len(), 2, "the stream saw both versions: {tags:?}");
    assert_eq!(
        stack.host.serving("handler").map(|r| r.revision),
        Some("r101".to_string())
    );
}
