//! Webhook AdmissionReviews: the bytes the API server POSTs to `/mutate`, decoded as the
//! handler's `Json` extractor does, through `webhook::review` (which runs `inject::inject`
//! and diffs the pod into a JSON patch), and the answer serialized as the handler does.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use hotload_operator::certs::{self, Renewal};
use hotload_operator::metrics::Metrics;
use hotload_operator::tls::CertStore;
use hotload_operator::webhook::{Webhook, review};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::AdmissionReview;
use libfuzzer_sys::fuzz_target;

static WEBHOOK: LazyLock<Webhook> = LazyLock::new(|| {
    let certs = Arc::new(CertStore::default());
    let material = certs::renew(
        None,
        &Renewal::Everything("fuzz".into()),
        &certs::service_names("hotload", "ops"),
        time::OffsetDateTime::now_utc(),
        Duration::from_secs(3600),
    )
    .expect("issue certificates")
    .expect("new material");
    certs.set(material).expect("serve the material");
    Webhook {
        config: Arc::new(
            serde_json::from_str(r#"{"image":"s:1","operatorAddr":"https://o:8443"}"#)
                .expect("inject config"),
        ),
        certs,
        metrics: Arc::new(Metrics::default()),
    }
});

fuzz_target!(|data: &[u8]| {
    let webhook = &*WEBHOOK;
    let Ok(request) = serde_json::from_slice::<AdmissionReview<Pod>>(data) else {
        return;
    };
    let answer = review(webhook, request);
    serde_json::to_vec(&answer).expect("the answer serializes");
});
