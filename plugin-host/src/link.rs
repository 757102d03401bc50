//! [`Link`]: the app's side of the sidecar's Unix-socket protocol (docs/protocol.md), on
//! plain threads: connect, say `hello` (protocol v2, this process as one worker), hot-load
//! what the sidecar hands over, answer `loaded`/`failed`/`unloaded`, and report how the
//! plugins ran (`health`) about once a second. Reconnects on its own, so a sidecar restart
//! needs nothing from the app.
//!
//! ```text
//!  hotload-link         connect ─ hello ─ read lines ─┬─ load / unload ──► ops queue
//!    (back-off 50 ms → 2 s between attempts)          └─ error: logged
//!  hotload-link-ops     load (compile, self-check, swap) or unload, in order ─ reply ─┐
//!  hotload-link-health  every HEALTH_INTERVAL, while connected: take_health ─ health ─┤
//!                                                     one writer, behind a mutex ◄────┘
//! ```
//! A load runs on its own thread, so the reader keeps reading and health keeps flowing while
//! a module compiles; loads and unloads still run in the order the sidecar sent them. A
//! write that fails (or stays blocked for [`WRITE_TIMEOUT`]) drops the connection and the
//! link reconnects; a reply owed to a dropped connection is not sent on the next one (the
//! sidecar sends its whole set again on connect, and the host answers those at once).
//!
//! ```no_run
//! # fn demo() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use hotload_host::link::{Link, LinkOptions};
//! use hotload_host::{HostConfig, PluginHost};
//!
//! let host = Arc::new(PluginHost::new(HostConfig::default()).expect("host"));
//! let options = LinkOptions { app: "checkout".into(), ..LinkOptions::default() };
//! let link = Link::spawn("/var/run/hotload/app.sock", host.clone(), options)?;
//! // … serve requests with host.call / host.pin; keep `link` for the life of the process …
//! # drop(link); Ok(()) }
//! ```

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use hotload_protocol::{
    AppMessage, HEALTH_INTERVAL, MAX_LINE_BYTES, PluginHealth, SidecarMessage, encode_line,
};

use crate::error::LoadError;
use crate::host::{LoadRequest, Loaded, PluginHost};

/// The protocol version the link speaks (workers named in `hello`).
pub const PROTOCOL: u32 = 2;

/// First wait before reconnecting; it doubles after every attempt, up to [`RECONNECT_MAX`].
pub const RECONNECT_MIN: Duration = Duration::from_millis(50);

/// Longest wait between two connection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// A write to the sidecar blocked this long drops the connection (the sidecar stopped
/// reading); the link reconnects.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest line read from the sidecar (a `load` carries the release's plugin config); a
/// longer one is skipped, never buffered whole.
pub const MAX_SIDECAR_LINE_BYTES: usize = 1 << 20;

/// Who this app is to the sidecar, and how often it reports health.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Free-form app name sent in `hello`.
    pub app: String,
    /// This process's worker id in `hello` (default: the process id). Stable across
    /// reconnects, so the sidecar sees the same worker come back.
    pub worker: String,
    /// How often health is reported while plugins are called (default: [`HEALTH_INTERVAL`];
    /// at least 10 ms).
    pub health_interval: Duration,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            app: String::new(),
            worker: std::process::id().to_string(),
            health_interval: HEALTH_INTERVAL,
        }
    }
}

impl LinkOptions {
    /// The greeting the link sends first on every connection.
    pub fn hello(&self) -> AppMessage {
        AppMessage::Hello {
            app: self.app.clone(),
            worker: Some(self.worker.clone()),
            protocol: Some(PROTOCOL),
        }
    }
}

/// The wait after an attempt that waited `delay`: doubled, at most [`RECONNECT_MAX`]. Pure.
pub fn next_delay(delay: Duration) -> Duration {
    (delay * 2).clamp(RECONNECT_MIN, RECONNECT_MAX)
}

/// The summary sent in `loaded`'s `health` field.
pub fn load_summary(l: &Loaded) -> String {
    format!(
        "self-check {}; state {:?}; cache {:?}; load {:.1} ms; swap {:.1} µs",
        if l.self_checked { "passed" } else { "absent" },
        l.state,
        l.cache,
        l.total.as_secs_f64() * 1e3,
        l.swap.as_secs_f64() * 1e6
    )
}

/// The answer to a `load` of `revision` of `plugin`, given how it went. Pure.
pub fn load_reply(
    plugin: String,
    revision: String,
    result: Result<Loaded, LoadError>,
) -> AppMessage {
    match result {
        Ok(loaded) => AppMessage::Loaded {
            plugin,
            revision,
            health: load_summary(&loaded),
        },
        Err(e) => AppMessage::Failed {
            plugin,
            revision,
            reason: e.to_string(),
        },
    }
}

/// The plugin config as the `configure` export receives it: the release's JSON, or nothing
/// when the release has none. Pure.
pub fn config_bytes(config: &serde_json::Value) -> Vec<u8> {
    if config.is_null() {
        Vec::new()
    } else {
        config.to_string().into_bytes()
    }
}

/// `health` messages carrying `reports`, each line (newline included) at most `max_line`
/// bytes, so the sidecar takes every one; none when there is nothing to report. A report
/// too large for a line on its own (a plugin or revision name of tens of KiB) is dropped
/// with a warning. Pure but for that warning.
pub fn health_messages(reports: Vec<PluginHealth>, max_line: usize) -> Vec<AppMessage> {
    // `{"type":"health","plugins":[` (28) + `]}` + newline.
    const FRAME: usize = 31;
    let mut messages = Vec::new();
    let (mut batch, mut size) = (Vec::new(), FRAME);
    for report in reports {
        let len = serde_json::to_vec(&report).map_or(usize::MAX, |v| v.len());
        if len.saturating_add(FRAME) > max_line {
            tracing::warn!(
                plugin = report.plugin,
                revision = report.revision,
                bytes = len,
                "health report too large for one line; dropped"
            );
            continue;
        }
        // One comma between entries.
        if !batch.is_empty() && size + 1 + len > max_line {
            messages.push(AppMessage::Health {
                plugins: std::mem::take(&mut batch),
            });
            size = FRAME;
        }
        size += len + usize::from(!batch.is_empty());
        batch.push(report);
    }
    if !batch.is_empty() {
        messages.push(AppMessage::Health { plugins: batch });
    }
    messages
}

/// Parses one line from the sidecar (without its newline). Pure.
pub fn parse_sidecar_line(line: &[u8]) -> Result<SidecarMessage, String> {
    let text = std::str::from_utf8(line).map_err(|_| "line is not UTF-8".to_string())?;
    serde_json::from_str(text.trim()).map_err(|e| format!("not a valid sidecar message: {e}"))
}

/// What reading one line gave.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A whole line is in the buffer (newline removed).
    Complete,
    /// The line was longer than the bound; it was read past and thrown away.
    TooLong,
    /// The peer closed the connection (a partial last line is dropped).
    Eof,
}

/// Reads one `\n`-terminated line into `buf`, holding at most `max` bytes of it.
fn read_line(reader: &mut impl BufRead, max: usize, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(Line::Eof);
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if !too_long && buf.len() + chunk.len() <= max {
            buf.extend_from_slice(chunk);
        } else {
            too_long = true;
            buf.clear();
        }
        let used = done.unwrap_or(available.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

/// A running link; dropping it (or [`Link::stop`]) disconnects and ends its threads.
pub struct Link {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("socket", &self.shared.socket)
            .field("worker", &self.shared.options.worker)
            .field("connected", &self.connected())
            .finish()
    }
}

struct Shared {
    socket: PathBuf,
    host: Arc<PluginHost>,
    options: LinkOptions,
    conn: Mutex<Conn>,
    stopped: Mutex<bool>,
    wake: Condvar,
}

/// The connection replies and reports go to, if any; `generation` counts connections, so a
/// reply owed to an earlier one is never sent on a later one.
#[derive(Default)]
struct Conn {
    writer: Option<UnixStream>,
    generation: u64,
}

/// A `load` or `unload` to perform, and the connection that asked for it.
struct Op {
    generation: u64,
    msg: SidecarMessage,
}

impl Link {
    /// Starts the link to the sidecar's app socket at `socket`, loading into `host`.
    /// Returns at once; the link connects (and reconnects) in the background. Fails only
    /// when its threads cannot be started.
    pub fn spawn(
        socket: impl AsRef<Path>,
        host: Arc<PluginHost>,
        options: LinkOptions,
    ) -> io::Result<Link> {
        let shared = Arc::new(Shared {
            socket: socket.as_ref().to_path_buf(),
            host,
            options,
            conn: Mutex::new(Conn::default()),
            stopped: Mutex::new(false),
            wake: Condvar::new(),
        });
        let (ops, queue) = mpsc::channel::<Op>();
        let mut link = Link {
            shared: shared.clone(),
            threads: Vec::new(),
        };
        let s = shared.clone();
        link.threads.push(
            std::thread::Builder::new()
                .name("hotload-link-ops".into())
                .spawn(move || s.run_ops(queue))?,
        );
        let s = shared.clone();
        link.threads.push(
            std::thread::Builder::new()
                .name("hotload-link-health".into())
                .spawn(move || s.run_health())?,
        );
        let s = shared;
        link.threads.push(
            std::thread::Builder::new()
                .name("hotload-link".into())
                .spawn(move || s.run_connection(ops))?,
        );
        Ok(link)
    }

    /// Whether a connection to the sidecar is up (its `hello` sent).
    pub fn connected(&self) -> bool {
        self.shared.lock_conn().writer.is_some()
    }

    /// Disconnects and waits for the link's threads (and a load in progress) to end.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        *self
            .shared
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.wake.notify_all();
        self.shared.disconnect(None);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn lock_conn(&self) -> MutexGuard<'_, Conn> {
        // A writer and a counter: consistent after any panic.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits `delay`, or less if the link is stopped; `true` when it is.
    fn wait_stopped(&self, delay: Duration) -> bool {
        let stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let (stopped, _) = self
            .wake
            .wait_timeout_while(stopped, delay, |s| !*s)
            .unwrap_or_else(|p| p.into_inner());
        *stopped
    }

    /// Drops the connection `generation` (any, for `None`): the reader sees it end and
    /// the link reconnects.
    fn disconnect(&self, generation: Option<u64>) {
        let mut conn = self.lock_conn();
        if generation.is_none_or(|g| g == conn.generation)
            && let Some(w) = conn.writer.take()
        {
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Writes `msg` to the connection `generation` (the current one, for `None`); `false`
    /// when it is gone or the write failed (which drops it).
    fn send(&self, generation: Option<u64>, msg: &AppMessage) -> bool {
        let mut conn = self.lock_conn();
        if generation.is_some_and(|g| g != conn.generation) {
            return false;
        }
        let Some(w) = conn.writer.as_mut() else {
            return false;
        };
        match w.write_all(&encode_line(msg)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "write to sidecar failed; reconnecting");
                if let Some(w) = conn.writer.take() {
                    let _ = w.shutdown(std::net::Shutdown::Both);
                }
                false
            }
        }
    }

    fn run_connection(&self, ops: mpsc::Sender<Op>) {
        let mut delay = RECONNECT_MIN;
        while !self.is_stopped() {
            match UnixStream::connect(&self.socket) {
                Ok(stream) => {
                    delay = RECONNECT_MIN;
                    if let Err(e) = self.session(stream, &ops) {
                        tracing::warn!(error = %e, "sidecar link dropped");
                    }
                }
                Err(e) => {
                    tracing::debug!(socket = %self.socket.display(), error = %e, "sidecar not reachable yet");
                }
            }
            if self.wait_stopped(delay) {
                break;
            }
            delay = next_delay(delay);
        }
    }

    /// One connection: hello, then every line until it ends.
    fn session(&self, stream: UnixStream, ops: &mpsc::Sender<Op>) -> io::Result<()> {
        let mut writer = stream.try_clone()?;
        writer.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let generation = {
            let mut conn = self.lock_conn();
            writer.write_all(&encode_line(&self.options.hello()))?;
            conn.generation += 1;
            conn.writer = Some(writer);
            conn.generation
        };
        tracing::info!(socket = %self.socket.display(), worker = self.options.worker, "connected to the sidecar");
        // A stop that came before the writer was published found nothing to shut down.
        if self.is_stopped() {
            self.disconnect(Some(generation));
            return Ok(());
        }
        let result = self.read_lines(stream, generation, ops);
        self.disconnect(Some(generation));
        result
    }

    fn read_lines(
        &self,
        stream: UnixStream,
        generation: u64,
        ops: &mpsc::Sender<Op>,
    ) -> io::Result<()> {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            match read_line(&mut reader, MAX_SIDECAR_LINE_BYTES, &mut line)? {
                Line::Eof => return Ok(()),
                Line::TooLong => {
                    tracing::warn!(
                        max = MAX_SIDECAR_LINE_BYTES,
                        "line from the sidecar too long; skipped"
                    );
                    continue;
                }
                Line::Complete if line.iter().all(u8::is_ascii_whitespace) => continue,
                Line::Complete => {}
            }
            match parse_sidecar_line(&line) {
                Ok(SidecarMessage::Error { reason }) => {
                    tracing::warn!(reason, "sidecar refused a message");
                }
                Ok(msg) => {
                    if ops.send(Op { generation, msg }).is_err() {
                        return Ok(()); // the ops thread is gone: the link stops
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, line = %String::from_utf8_lossy(&line), "unreadable message from sidecar");
                }
            }
        }
    }

    /// Performs loads and unloads in the order they came, each answered on the connection
    /// that asked for it.
    fn run_ops(&self, queue: mpsc::Receiver<Op>) {
        while let Ok(Op { generation, msg }) = queue.recv() {
            let reply = match msg {
                SidecarMessage::Load {
                    plugin,
                    revision,
                    path,
                    digest,
                    config,
                } => {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        LoadRequest::from_file(
                            &plugin,
                            &revision,
                            Path::new(&path),
                            &digest,
                            config_bytes(&config),
                        )
                        .and_then(|req| self.host.load(req))
                    }));
                    match result {
                        Ok(result) => load_reply(plugin, revision, result),
                        Err(_) => AppMessage::Failed {
                            plugin,
                            revision,
                            reason: "the load panicked in the host".into(),
                        },
                    }
                }
                SidecarMessage::Unload { plugin } => {
                    let was_loaded = self.host.unload(&plugin);
                    tracing::info!(plugin, was_loaded, "unloaded plugin");
                    AppMessage::Unloaded { plugin }
                }
                SidecarMessage::Error { .. } => continue,
            };
            if !self.send(Some(generation), &reply) {
                tracing::debug!(?reply, "not answered: the connection that asked is gone");
            }
        }
    }

    /// Every interval, while connected, drains the host's counts into `health` messages.
    /// Not connected, nothing is drained: the counts wait for the next connection.
    fn run_health(&self) {
        let interval = self.options.health_interval.max(Duration::from_millis(10));
        while !self.wait_stopped(interval) {
            let generation = {
                let conn = self.lock_conn();
                if conn.writer.is_none() {
                    continue;
                }
                conn.generation
            };
            for msg in health_messages(self.host.take_health(), MAX_LINE_BYTES) {
                if !self.send(Some(generation), &msg) {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotload_protocol::Counts;

    #[test]
    fn hello_is_v2_and_names_the_worker() {
        let options = LinkOptions {
            app: "hotload-demo-app".into(),
            worker: "4711".into(),
            ..LinkOptions::default()
        };
        assert_eq!(
            String::from_utf8(encode_line(&options.hello())).expect("utf8"),
            "{\"type\":\"hello\",\"app\":\"hotload-demo-app\",\"worker\":\"4711\",\"protocol\":2}\n"
        );
        assert_eq!(
            LinkOptions::default().worker,
            std::process::id().to_string()
        );
    }

    #[test]
    fn reconnects_back_off_from_50_ms_doubling_to_2_s() {
        let mut delay = RECONNECT_MIN;
        let mut seen = vec![delay.as_millis()];
        for _ in 0..7 {
            delay = next_delay(delay);
            seen.push(delay.as_millis());
        }
        assert_eq!(seen, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[test]
    fn config_is_the_release_json_or_nothing() {
        assert!(config_bytes(&serde_json::Value::Null).is_empty());
        assert_eq!(config_bytes(&serde_json::json!({"k": 1})), br#"{"k":1}"#);
    }

    fn report(plugin: &str) -> PluginHealth {
        let mut counts = Counts::default();
        counts.record(Duration::from_micros(3), None);
        PluginHealth {
            plugin: plugin.into(),
            revision: "r".into(),
            counts,
        }
    }

    #[test]
    fn health_lines_stay_under_the_sidecars_bound() {
        assert!(health_messages(Vec::new(), MAX_LINE_BYTES).is_empty());
        let reports: Vec<_> = (0..50).map(|i| report(&format!("p{i}"))).collect();
        let one = health_messages(reports.clone(), MAX_LINE_BYTES);
        assert_eq!(one.len(), 1);
        let max = 600;
        let many = health_messages(reports.clone(), max);
        assert!(many.len() > 1);
        let mut back = Vec::new();
        for m in many {
            let line = encode_line(&m);
            assert!(line.len() <= max, "{} > {max}", line.len());
            let AppMessage::Health { plugins } = m else {
                panic!("not health");
            };
            back.extend(plugins);
        }
        assert_eq!(back, reports, "every report, in order, once");
        let huge = report(&"x".repeat(2000));
        assert!(health_messages(vec![huge], max).is_empty());
    }

    #[test]
    fn lines_are_bounded_and_garbage_is_an_error_not_a_panic() {
        let input = b"{\"type\":\"unload\",\"plugin\":\"a\"}\nxxxxxxxxxxxxxxxxxxxx\n\xff\npartial";
        let mut reader = BufReader::with_capacity(4, &input[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line(&mut reader, 40, &mut buf).expect("read"),
            Line::Complete
        );
        assert_eq!(
            parse_sidecar_line(&buf),
            Ok(SidecarMessage::Unload { plugin: "a".into() })
        );
        assert_eq!(
            read_line(&mut reader, 10, &mut buf).expect("read"),
            Line::TooLong
        );
        assert_eq!(
            read_line(&mut reader, 10, &mut buf).expect("read"),
            Line::Complete
        );
        assert!(parse_sidecar_line(&buf).unwrap_err().contains("UTF-8"));
        assert_eq!(
            read_line(&mut reader, 10, &mut buf).expect("read"),
            Line::Eof
        );
        assert!(parse_sidecar_line(b"{\"type\":\"reboot\"}").is_err());
    }
}
