//! The app channel's wire types: newline-delimited JSON over a Unix socket on the shared
//! volume. The sidecar serves this protocol, so it owns these types (this crate lives beside
//! it, with no network or crypto dependencies, for apps and hosts to use too);
//! docs/protocol.md is the language-neutral description of the same thing.
//!
//! ```text
//!  app ──► sidecar   {"type":"hello","app":"checkout","worker":"4711","protocol":2}
//!  sidecar ──► app   {"type":"load","plugin":"auth","revision":"r2","path":"…","digest":"sha256:…","config":{…}}
//!  app ──► sidecar   {"type":"loaded","plugin":"auth","revision":"r2","health":"self-check passed"}
//!                    {"type":"failed","plugin":"auth","revision":"r2","reason":"…"}
//!  sidecar ──► app   {"type":"unload","plugin":"auth"}
//!  app ──► sidecar   {"type":"unloaded","plugin":"auth"}
//!  sidecar ──► app   {"type":"error","reason":"…"}   (the app sent something unusable)
//!  app ──► sidecar   {"type":"health","plugins":[{"plugin":"auth","revision":"r2","calls":412,…}]}
//! ```

use serde::{Deserialize, Serialize};

pub mod health;

pub use health::{Counts, ErrorKind, Errors, PluginHealth};

/// How often a worker sends `health` while calls happen (at most; none while idle).
pub const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest line the sidecar reads from the app; a longer one is refused, not buffered.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// A message from the sidecar to the app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SidecarMessage {
    /// Make `revision` of `plugin` the serving one; the file at `path` has been verified.
    Load {
        /// Plugin slot name.
        plugin: String,
        /// Revision name; echo it in the reply.
        revision: String,
        /// Absolute path of the verified artifact on the shared volume.
        path: String,
        /// `sha256:<hex>` of the file (apps may re-check it).
        digest: String,
        /// Plugin config from the release (`null` when none).
        #[serde(default)]
        config: serde_json::Value,
    },
    /// Stop running `plugin` (a rollback to "no plugin"); answer `unloaded`.
    Unload {
        /// Plugin slot name.
        plugin: String,
    },
    /// The app sent a line the sidecar could not use.
    Error {
        /// What was wrong with it.
        reason: String,
    },
}

/// A message from the app to the sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AppMessage {
    /// The app's greeting, first on a connection. With `protocol: 2` (or a `worker`) the
    /// connection is one worker of several; without, it is a v1 app (one implicit worker).
    Hello {
        /// Free-form app name.
        #[serde(default)]
        app: String,
        /// Stable id of the worker process (SDKs default to the process id).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
        /// Protocol version the app speaks (absent: 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<u32>,
    },
    /// The revision is loaded and serving.
    Loaded {
        /// Plugin slot name.
        plugin: String,
        /// Revision now serving.
        revision: String,
        /// Free-form health summary (for example the self-check result).
        #[serde(default)]
        health: String,
    },
    /// The revision could not be loaded; the app keeps its previous revision.
    Failed {
        /// Plugin slot name.
        plugin: String,
        /// Revision that was refused.
        revision: String,
        /// Why, as precisely as the app can say.
        reason: String,
    },
    /// The plugin no longer runs (also the answer when it was not loaded).
    Unloaded {
        /// Plugin slot name.
        plugin: String,
    },
    /// How the worker's plugins ran since its previous `health` on this connection, per
    /// revision: counts to add, never totals (see [`health`]).
    Health {
        /// One entry per plugin revision that was called.
        plugins: Vec<PluginHealth>,
    },
}

/// Why a line from the app was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The line exceeds [`MAX_LINE_BYTES`].
    #[error("line longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
    /// The line is not UTF-8.
    #[error("line is not UTF-8")]
    NotUtf8,
    /// The line is not a known message.
    #[error("not a valid app message: {0}")]
    Invalid(String),
}

/// Parses one line (without its newline) from the app. Pure.
pub fn parse_app_line(line: &[u8]) -> Result<AppMessage, ProtocolError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(ProtocolError::TooLong);
    }
    let text = std::str::from_utf8(line).map_err(|_| ProtocolError::NotUtf8)?;
    serde_json::from_str(text.trim()).map_err(|e| ProtocolError::Invalid(e.to_string()))
}

/// Serializes a message as one line, newline included.
pub fn encode_line<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail (no maps with non-string keys).
    let mut line = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_serializes_with_type_tag() {
        let msg = SidecarMessage::Load {
            plugin: "auth".into(),
            revision: "r2".into(),
            path: "/s/b".into(),
            digest: "sha256:00".into(),
            config: serde_json::json!({"k": 1}),
        };
        let line = String::from_utf8(encode_line(&msg)).expect("utf8");
        assert_eq!(
            line,
            "{\"type\":\"load\",\"plugin\":\"auth\",\"revision\":\"r2\",\"path\":\"/s/b\",\"digest\":\"sha256:00\",\"config\":{\"k\":1}}\n"
        );
    }

    #[test]
    fn app_replies_parse_and_health_is_optional() {
        assert_eq!(
            parse_app_line(br#"{"type":"loaded","plugin":"p","revision":"r"}"#),
            Ok(AppMessage::Loaded {
                plugin: "p".into(),
                revision: "r".into(),
                health: String::new()
            })
        );
        assert!(matches!(
            parse_app_line(br#"{"type":"failed","plugin":"p","revision":"r","reason":"trap"}"#),
            Ok(AppMessage::Failed { .. })
        ));
    }

    #[test]
    fn unload_and_its_answer_round_trip() {
        let line = String::from_utf8(encode_line(&SidecarMessage::Unload {
            plugin: "auth".into(),
        }))
        .expect("utf8");
        assert_eq!(line, "{\"type\":\"unload\",\"plugin\":\"auth\"}\n");
        assert_eq!(
            parse_app_line(br#"{"type":"unloaded","plugin":"auth"}"#),
            Ok(AppMessage::Unloaded {
                plugin: "auth".into()
            })
        );
    }

    #[test]
    fn health_reports_parse() {
        let line = br#"{"type":"health","plugins":[{"plugin":"auth","revision":"r2","calls":5,"errors":{"trap":1},"latency_us":[0,5]}]}"#;
        let Ok(AppMessage::Health { plugins }) = parse_app_line(line) else {
            panic!("not a health message");
        };
        assert_eq!(plugins[0].counts.calls, 5);
        assert_eq!(plugins[0].counts.errors.trap, 1);
        assert_eq!(plugins[0].counts.latency_us, vec![0, 5]);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        assert!(matches!(
            parse_app_line(b"hello?"),
            Err(ProtocolError::Invalid(_))
        ));
        assert!(
            matches!(parse_app_line(br#"{"type":"reboot"}"#), Err(ProtocolError::Invalid(m)) if m.contains("reboot"))
        );
        assert_eq!(parse_app_line(&[0xff, 0xfe]), Err(ProtocolError::NotUtf8));
        assert_eq!(
            parse_app_line(&vec![b' '; MAX_LINE_BYTES + 1]),
            Err(ProtocolError::TooLong)
        );
    }
}
