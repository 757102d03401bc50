//! The demo app's command line, and the arguments a pre-fork supervisor hands its workers.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Demo HTTP service with a hot-loaded request handler.
#[derive(Debug, Clone, Parser)]
#[command(name = "hotload-demo-app")]
pub struct Args {
    /// HTTP listen address.
    #[arg(long, env = "DEMO_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The sidecar's app socket.
    #[arg(
        long,
        env = "HOTLOAD_APP_SOCKET",
        default_value = "/var/run/hotload/app.sock"
    )]
    pub socket: PathBuf,
    /// Directory for precompiled modules (app-private, not the shared volume).
    #[arg(long, env = "HOTLOAD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// A Wasm plugin baked into the app: loaded into the `handler` slot before the port
    /// opens (so `/healthz` answers only once it serves), without a sidecar. What a team
    /// does without Hotload, changing the file means a new rollout of the pods. A sidecar,
    /// if there is one, can still replace it.
    #[arg(long, env = "DEMO_PLUGIN_FILE")]
    pub plugin_file: Option<PathBuf>,
    /// Worker processes. 1 serves from this process; more starts a supervisor that runs
    /// that many worker processes on the same port (SO_REUSEPORT), each its own sidecar worker.
    #[arg(long, env = "DEMO_WORKERS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// This process's worker id in its `hello` to the sidecar (default: the process id).
    /// Pre-fork workers always use their process id.
    #[arg(long, env = "HOTLOAD_WORKER_ID", value_parser = parse_worker_id)]
    pub worker_id: Option<String>,
    /// How long a pre-fork worker finishes in-flight requests after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 4000)]
    pub drain_timeout_ms: u64,
    /// Internal: this process is a pre-fork worker of the supervisor with this pid.
    #[arg(long, hide = true)]
    pub prefork_parent: Option<u32>,
}

/// Environment variables a pre-fork worker must not inherit: they would make it a
/// supervisor again, or give every worker the same id.
pub const WORKER_ENV_REMOVED: [&str; 2] = ["DEMO_WORKERS", "HOTLOAD_WORKER_ID"];

impl Args {
    /// Whether this process supervises pre-fork workers rather than serving itself.
    pub fn supervises(&self) -> bool {
        self.workers > 1 && self.prefork_parent.is_none()
    }

    /// The worker id sent in `hello` and the `x-hotload-worker` header.
    pub fn worker(&self) -> String {
        match (&self.worker_id, self.prefork_parent) {
            (Some(id), None) => id.clone(),
            _ => std::process::id().to_string(),
        }
    }

    /// The drain bound of a pre-fork worker.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// The arguments of a pre-fork worker of supervisor `parent`, serving `listen` (the
    /// address the supervisor resolved, so `:0` means one port for all). Pure.
    pub fn worker_args(&self, listen: SocketAddr, parent: u32) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--listen".into(),
            listen.to_string().into(),
            "--socket".into(),
            self.socket.clone().into(),
            "--drain-timeout-ms".into(),
            self.drain_timeout_ms.to_string().into(),
            "--prefork-parent".into(),
            parent.to_string().into(),
        ];
        if let Some(dir) = &self.cache_dir {
            args.extend(["--cache-dir".into(), dir.clone().into()]);
        }
        if let Some(file) = &self.plugin_file {
            args.extend(["--plugin-file".into(), file.clone().into()]);
        }
        args
    }
}

/// A worker id goes into JSON and an HTTP header: 1–64 visible ASCII characters.
fn parse_worker_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "worker id {s:?}: use 1-64 visible ASCII characters"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("hotload-demo-app").chain(args.iter().copied()))
            .expect("arguments parse")
    }

    #[test]
    fn one_worker_serves_itself() {
        let a = parse(&["--listen", "127.0.0.1:0"]);
        assert!(!a.supervises());
        assert_eq!(a.worker(), std::process::id().to_string());
        assert_eq!(parse(&["--worker-id", "w7"]).worker(), "w7");
    }

    #[test]
    fn a_worker_gets_the_resolved_port_and_never_supervises() {
        let a = parse(&[
            "--workers",
            "3",
            "--listen",
            "0.0.0.0:0",
            "--cache-dir",
            "/c",
            "--plugin-file",
            "/p/tagger.wasm",
        ]);
        assert!(a.supervises());
        let addr: SocketAddr = "0.0.0.0:8123".parse().expect("addr");
        let argv = a.worker_args(addr, 42);
        let w = Args::try_parse_from(std::iter::once(OsString::from("x")).chain(argv))
            .expect("worker arguments parse");
        assert_eq!(w.listen, addr);
        assert_eq!(w.prefork_parent, Some(42));
        assert_eq!(w.cache_dir, Some(PathBuf::from("/c")));
        assert_eq!(w.plugin_file, Some(PathBuf::from("/p/tagger.wasm")));
        assert!(!w.supervises());
    }

    #[test]
    fn worker_ids_must_fit_a_header() {
        assert!(parse_worker_id("gunicorn-3").is_ok());
        assert!(parse_worker_id("").is_err());
        assert!(parse_worker_id("a b").is_err());
        assert!(parse_worker_id("x\n").is_err());
    }
}
