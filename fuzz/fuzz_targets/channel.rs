//! Channel messages (gRPC, protobuf): what the operator does with a `SidecarMessage` a
//! sidecar sent (`operator::channel::report`, `registry::kept_reason`, and for a health
//! report `operator::channel::health_counts`) and what the sidecar
//! does with an `OperatorMessage` (`sidecar::channel::assignment`, the artifact reference
//! and digest it then parses). The first byte picks the direction; the rest is the message.
#![no_main]

use hotload_channel::proto::{OperatorMessage, SidecarMessage, operator_message, sidecar_message};
use hotload_operator::{channel, registry};
use hotload_sidecar::digest::Sha256Digest;
use hotload_sidecar::fetch::ArtifactRef;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&direction, bytes)) = data.split_first() else {
        return;
    };
    if direction & 1 == 0 {
        let Ok(message) = SidecarMessage::decode(bytes) else {
            return;
        };
        let again = SidecarMessage::decode(message.encode_to_vec().as_slice()).expect("re-decode");
        assert_eq!(again, message);
        let states = match message.kind {
            Some(sidecar_message::Kind::Hello(hello)) => hello.plugins,
            Some(sidecar_message::Kind::State(state)) => vec![state],
            Some(sidecar_message::Kind::Health(health)) => {
                let (kept, refused) = channel::health_counts(&health);
                // Every revision is either kept or refused with a reason.
                assert_eq!(kept.len() + refused.len(), health.revisions.len());
                Vec::new()
            }
            None => Vec::new(),
        };
        for state in &states {
            if let Ok(report) = channel::report(state, jiff::Timestamp::UNIX_EPOCH)
                && let Some(reason) = &report.reason
            {
                let _ = registry::kept_reason(reason);
            }
        }
    } else {
        let Ok(message) = OperatorMessage::decode(bytes) else {
            return;
        };
        let again = OperatorMessage::decode(message.encode_to_vec().as_slice()).expect("re-decode");
        assert_eq!(again, message);
        let Some(operator_message::Kind::Assign(assign)) = message.kind else {
            return;
        };
        let Ok(assignment) = hotload_sidecar::channel::assignment(assign) else {
            return;
        };
        let _ = assignment.revision_name();
        let _ = ArtifactRef::parse(&assignment.artifact);
        let _ = Sha256Digest::parse(&assignment.digest);
    }
});
