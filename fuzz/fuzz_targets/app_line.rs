//! App protocol lines (the app → sidecar Unix socket): `protocol::parse_app_line` never
//! panics, and whatever it accepts survives `encode_line` and parses back to itself.
#![no_main]

use hotload_sidecar::protocol::{MAX_LINE_BYTES, encode_line, parse_app_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let Ok(message) = parse_app_line(line) else {
        return;
    };
    let mut encoded = encode_line(&message);
    assert_eq!(encoded.pop(), Some(b'\n'));
    assert!(!encoded.contains(&b'\n'), "an encoded line holds a newline");
    if encoded.len() <= MAX_LINE_BYTES {
        assert_eq!(parse_app_line(&encoded).as_ref(), Ok(&message));
    }
});
