//! Pre-fork mode (`--workers N`, N > 1): this process only supervises N worker processes,
//! each a re-exec of this binary that serves the same port and is its own sidecar worker.
//!
//! ```text
//!  supervisor: binds the port (SO_REUSEPORT, never listens), so `:0` is one port for all
//!   ├─ worker 4711  hotload-demo-app --prefork-parent <pid> …  ─ hello worker "4711" ─► sidecar
//!   ├─ worker 4712  …                                          ─ hello worker "4712" ─► sidecar
//!   └─ worker 4713  dies ─► restarted (new pid, new sidecar worker; back-off if it keeps dying)
//!  SIGTERM / SIGINT ─► forwarded to every worker ─► each drains ─► supervisor exits
//!  a second signal  ─► SIGKILL to every worker
//! ```
//! Workers carry a parent-death signal, so a supervisor killed outright takes them along.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::TcpSocket;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::cli::{Args, WORKER_ENV_REMOVED};
use crate::serve::{Terminations, reuseport_socket};

/// Runs the supervisor until a termination signal has stopped every worker.
pub fn supervise(args: Args) -> anyhow::Result<()> {
    // One thread: workers are spawned from this main thread, which lives as long as the
    // process (Linux sends the parent-death signal when the *thread* that forked exits).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async { Supervisor::start(&args)?.run().await })
}

/// A worker that lived this long was healthy: restart it at once.
const STABLE: Duration = Duration::from_secs(10);
/// First delay before restarting a worker that died young.
const MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between restarts of a worker that keeps dying.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// How long to wait before restarting a worker that lived `lived`, given the delay before
/// its last restart: none after a healthy life, else doubling from 100 ms up to 5 s, so a
/// crash loop does not spin. Pure.
pub fn restart_delay(lived: Duration, previous: Duration) -> Duration {
    if lived >= STABLE {
        Duration::ZERO
    } else {
        (previous * 2).clamp(MIN_DELAY, MAX_DELAY)
    }
}

enum Event {
    Exited {
        slot: usize,
        pid: u32,
        status: std::io::Result<ExitStatus>,
    },
    Respawn(usize),
}

/// One worker position: the process filling it now, if any.
#[derive(Default)]
struct Slot {
    pid: Option<u32>,
    started: Option<Instant>,
    delay: Duration,
}

struct Supervisor {
    exe: PathBuf,
    argv: Vec<OsString>,
    slots: Vec<Slot>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    /// Holds the port (bound, not listening: it takes no connections).
    _port: TcpSocket,
}

impl Supervisor {
    fn start(args: &Args) -> anyhow::Result<Self> {
        let port = reuseport_socket(args.listen)?;
        let listen = port.local_addr()?;
        println!(
            "hotload-demo-app listening on {listen} ({} workers)",
            args.workers
        );
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Supervisor {
            exe: std::env::current_exe()?,
            argv: args.worker_args(listen, std::process::id()),
            slots: (0..args.workers).map(|_| Slot::default()).collect(),
            tx,
            rx,
            _port: port,
        })
    }

    async fn run(mut self) -> anyhow::Result<()> {
        let mut stop = Terminations::register()?;
        for slot in 0..self.slots.len() {
            self.spawn(slot);
        }
        loop {
            tokio::select! {
                signal = stop.next() => return self.shutdown(signal, stop).await,
                Some(event) = self.rx.recv() => self.on_event(event),
            }
        }
    }

    fn spawn(&mut self, slot: usize) {
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.argv);
        for var in WORKER_ENV_REMOVED {
            cmd.env_remove(var);
        }
        match cmd.spawn() {
            Ok(child) => self.watch(slot, child),
            Err(e) => {
                tracing::error!(slot, exe = %self.exe.display(), error = %e, "cannot start worker");
                self.restart_later(slot, Duration::ZERO);
            }
        }
    }

    fn watch(&mut self, slot: usize, mut child: Child) {
        let Some(pid) = child.id() else {
            // Only after the child was reaped, which nothing here has done yet.
            self.restart_later(slot, Duration::ZERO);
            return;
        };
        self.slots[slot].pid = Some(pid);
        self.slots[slot].started = Some(Instant::now());
        tracing::info!(slot, pid, "worker started");
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = tx.send(Event::Exited { slot, pid, status });
        });
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Exited { slot, pid, status } => {
                let s = &mut self.slots[slot];
                s.pid = None;
                let lived = s.started.map_or(Duration::ZERO, |t| t.elapsed());
                tracing::warn!(slot, pid, status = ?status, lived_ms = lived.as_millis(),
                    "worker died; restarting it");
                self.restart_later(slot, lived);
            }
            Event::Respawn(slot) if self.slots[slot].pid.is_none() => self.spawn(slot),
            Event::Respawn(_) => {}
        }
    }

    fn restart_later(&mut self, slot: usize, lived: Duration) {
        let s = &mut self.slots[slot];
        s.delay = restart_delay(lived, s.delay);
        let (tx, delay) = (self.tx.clone(), s.delay);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Event::Respawn(slot));
        });
    }

    /// Forwards `signal` to every worker and waits for all to exit; restarts stop.
    async fn shutdown(mut self, signal: Signal, mut stop: Terminations) -> anyhow::Result<()> {
        tracing::info!(%signal, "stopping workers");
        self.signal_all(signal);
        while self.slots.iter().any(|s| s.pid.is_some()) {
            tokio::select! {
                _ = stop.next() => {
                    tracing::warn!("second signal: killing workers");
                    self.signal_all(Signal::SIGKILL);
                }
                Some(event) = self.rx.recv() => {
                    if let Event::Exited { slot, pid, status } = event {
                        self.slots[slot].pid = None;
                        tracing::info!(slot, pid, status = ?status, "worker stopped");
                    }
                }
            }
        }
        Ok(())
    }

    fn signal_all(&self, signal: Signal) {
        for pid in self.slots.iter().filter_map(|s| s.pid) {
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            if let Err(e) = kill(Pid::from_raw(raw), signal) {
                tracing::warn!(pid, %signal, error = %e, "cannot signal worker");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_worker_restarts_at_once() {
        assert_eq!(
            restart_delay(Duration::from_secs(60), MAX_DELAY),
            Duration::ZERO
        );
    }

    #[test]
    fn a_crash_loop_backs_off_to_a_cap() {
        let young = Duration::from_millis(50);
        let mut delay = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..8 {
            delay = restart_delay(young, delay);
            seen.push(delay.as_millis());
        }
        assert_eq!(seen, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }
}
