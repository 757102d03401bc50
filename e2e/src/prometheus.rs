//! A real Prometheus server for tests: Debian's `/usr/bin/prometheus` (`make deps` installs
//! the `prometheus` package), started with a config of the test's own and a data directory
//! that is removed when it stops (on drop).
//!
//! It scrapes the targets the test names (`host:port`, each with labels of its own) from a
//! file_sd file that [`Prometheus::set_targets`] rewrites while it runs, every second.
//!
//! Where it listens:
//! - [`Prometheus::start`] listens on the address given: loopback for tests without a
//!   cluster. With port 0 it binds a free port itself and says which in its log
//!   (read by `announce.rs`).
//! - [`Prometheus::start_for_cluster`] listens on [`netplan::HOST_IP`] (198.18.0.2, the root
//!   namespace's end of the node link), port 0 as above. This is the address the artifact server
//!   uses, for the same reason: a pod (the in-cluster operator included) routes through its
//!   node netns, which holds the other end of that link, so `http://198.18.0.2:<port>` is
//!   the address to put in a release's `prometheus.address`. From the root namespace the
//!   whole test range (pods included) is routed into the node netns, so Prometheus scrapes
//!   pod IPs directly (a sidecar's `/metrics` on its admin port, 9901 unless the chart says
//!   otherwise: `http://<pod IP>:9901/metrics`).
//!
//! ```text
//!   root netns                                   node netns            pod netns
//!   prometheus 198.18.0.2:P ──scrape──────────────▶ routes ──────────▶ 198.18.16.x:9901/metrics
//!        ▲                                                             (sidecar admin port)
//!        └──────── GET /api/v1/query ◀──────────── routes ◀────────── operator pod
//! ```

mod announce;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use self::announce::listening_address;
use crate::netplan;

/// Where Debian's package installs the server.
pub const DEFAULT_BINARY: &str = "/usr/bin/prometheus";
/// Overrides [`DEFAULT_BINARY`].
pub const BINARY_ENV: &str = "HOTLOAD_PROMETHEUS_BIN";
/// How often it scrapes and evaluates.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);
/// How long [`Prometheus::start`] waits for `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One scrape target: `host:port` and the labels its series get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, like `198.18.16.7:9901`.
    pub address: String,
    /// Labels added to every series scraped from it, like `pod=demo-1`.
    pub labels: BTreeMap<String, String>,
}

impl Target {
    /// A target at `address` with no labels of its own.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            labels: BTreeMap::new(),
        }
    }

    /// The target with label `name=value`.
    pub fn label(mut self, name: &str, value: &str) -> Self {
        self.labels.insert(name.into(), value.into());
        self
    }
}

/// A running Prometheus; stopped (killed) and its data removed on drop.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    listen: SocketAddr,
    address: String,
}

impl Prometheus {
    /// Starts one listening on [`netplan::HOST_IP`] (a free port) that scrapes
    /// `metrics_path` of `targets`; pods reach it there, and it reaches pod IPs (see the
    /// module docs). Needs the local cluster's network up.
    pub async fn start_for_cluster(targets: &[Target], metrics_path: &str) -> Result<Self> {
        let listen = SocketAddr::new(IpAddr::V4(netplan::HOST_IP), 0);
        Self::start(listen, targets, metrics_path)
            .await
            .context("starting Prometheus on the node link's host address (is the cluster up?)")
    }

    /// Starts one listening on `listen` that scrapes `metrics_path` of `targets` every
    /// [`SCRAPE_INTERVAL`], and waits until it is ready. With port 0 Prometheus binds a free
    /// port itself and the port is read from its log: a port picked here and released for
    /// Prometheus to bind could be taken by another process in between.
    pub async fn start(listen: SocketAddr, targets: &[Target], metrics_path: &str) -> Result<Self> {
        let binary = binary()?;
        let dir = unique_dir()?;
        let mut prometheus = Self::spawn(&binary, dir, listen, targets, metrics_path)?;
        prometheus.wait_ready().await?;
        Ok(prometheus)
    }

    fn spawn(
        binary: &Path,
        dir: PathBuf,
        listen: SocketAddr,
        targets: &[Target],
        metrics_path: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir.join("targets"))?;
        std::fs::create_dir_all(dir.join("data"))?;
        write_targets(&dir, targets)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_yaml(&dir, metrics_path)?)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--web.enable-lifecycle")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the child dies with the test rather than
        // outliving a killed test process.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e).with_context(|| format!("starting {}", binary.display()));
            }
        };
        Ok(Self {
            child,
            dir,
            listen,
            address: format!("http://{listen}"),
        })
    }

    /// Its base URL, like `http://198.18.0.2:41234`: a release's `prometheus.address`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The socket address it listens on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Scrapes `targets` from now on, instead of the ones it had: the file_sd file is
    /// replaced atomically and Prometheus notices within about a second.
    pub fn set_targets(&self, targets: &[Target]) -> Result<()> {
        write_targets(&self.dir, targets)
    }

    /// Reloads its configuration (`POST /-/reload`), for a caller that cannot wait for the
    /// file watch.
    pub async fn reload(&self) -> Result<()> {
        let response = client()?
            .post(format!("{}/-/reload", self.address))
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "reload: {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        Ok(())
    }

    /// The `data.result` of instant query `promql` now.
    pub async fn query(&self, promql: &str) -> Result<Value> {
        let mut url = reqwest::Url::parse(&format!("{}/api/v1/query", self.address))?;
        url.query_pairs_mut().append_pair("query", promql);
        let response = client()?.get(url).send().await?;
        let status = response.status();
        let answer: Value = serde_json::from_slice(&response.bytes().await?)
            .with_context(|| format!("query {promql}: HTTP {status}, not JSON"))?;
        ensure!(
            answer["status"] == "success",
            "query {promql}: HTTP {status}: {answer}"
        );
        Ok(answer["data"]["result"].clone())
    }

    /// Waits until instant query `promql` returns at least one sample; its result.
    pub async fn wait_for_data(&self, promql: &str, timeout: Duration) -> Result<Value> {
        let what = format!("prometheus query {promql} to return data");
        crate::testing::eventually(&what, timeout, || async {
            let result = self.query(promql).await?;
            match result.as_array() {
                Some(samples) if !samples.is_empty() => Ok(result),
                _ => bail!("no samples yet ({result}); log:\n{}", self.log_tail()),
            }
        })
        .await
    }

    /// The scrape targets it knows, as `(address, health)` (`up`, `down`, `unknown`).
    pub async fn targets(&self) -> Result<Vec<(String, String)>> {
        let response = client()?
            .get(format!("{}/api/v1/targets?state=active", self.address))
            .send()
            .await?;
        let answer: Value = serde_json::from_slice(&response.bytes().await?)?;
        let targets = answer["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(targets
            .iter()
            .map(|t| {
                let address = t["labels"]["instance"].as_str().unwrap_or_default();
                let health = t["health"].as_str().unwrap_or_default();
                (address.to_string(), health.to_string())
            })
            .collect())
    }

    /// Its whole log.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until it has said where it listens (port 0 learns its port here) and answers
    /// `/-/ready` there.
    async fn wait_ready(&mut self) -> Result<()> {
        let client = client()?;
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "prometheus exited ({status}) before it was ready; log:\n{}",
                    self.log_tail()
                );
            }
            if self.listen.port() == 0
                && let Some(listen) = listening_address(&self.log())
            {
                self.listen = listen;
                self.address = format!("http://{listen}");
            }
            if self.listen.port() != 0
                && let Ok(response) = client.get(format!("{}/-/ready", self.address)).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "prometheus at {} not ready after {READY_TIMEOUT:?}; log:\n{}",
                    self.address,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server binary: `$HOTLOAD_PROMETHEUS_BIN`, else Debian's; an error naming `make deps`
/// when it is missing (a test that needs it fails, it does not skip).
pub fn binary() -> Result<PathBuf> {
    let path = std::env::var_os(BINARY_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BINARY));
    ensure!(
        path.is_file(),
        "{} not found: `make deps` installs it (Debian package prometheus), or set {BINARY_ENV}",
        path.display()
    );
    Ok(path)
}

/// The configuration: every target from the file_sd directory, scraped every second.
fn config_yaml(dir: &Path, metrics_path: &str) -> Result<String> {
    let seconds = SCRAPE_INTERVAL.as_secs();
    let files = dir.join("targets").join("*.json");
    // JSON is YAML: no quoting rules to get wrong for paths.
    let config = serde_json::json!({
        "global": {
            "scrape_interval": format!("{seconds}s"),
            "scrape_timeout": format!("{seconds}s"),
            "evaluation_interval": format!("{seconds}s"),
        },
        "scrape_configs": [{
            "job_name": "hotload",
            "metrics_path": metrics_path,
            "file_sd_configs": [{
                "files": [files.to_str().context("data directory is not UTF-8")?],
                "refresh_interval": format!("{seconds}s"),
            }],
        }],
    });
    Ok(serde_json::to_string_pretty(&config)?)
}

/// Writes `targets` as the file_sd file, atomically (a name the glob does not match, then a
/// rename), so Prometheus never reads half a file.
fn write_targets(dir: &Path, targets: &[Target]) -> Result<()> {
    let groups: Vec<Value> = targets
        .iter()
        .map(|t| serde_json::json!({"targets": [t.address], "labels": t.labels}))
        .collect();
    let staging = dir.join("targets").join("targets.json.tmp");
    std::fs::write(&staging, serde_json::to_vec_pretty(&groups)?)?;
    std::fs::rename(&staging, dir.join("targets").join("targets.json"))?;
    Ok(())
}

/// A new directory of this process under the temp dir.
fn unique_dir() -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "hotload-prometheus-{}-{n}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_millisecond()
    ));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn client() -> Result<reqwest::Client> {
    // reqwest is built without a default provider: the process's must be installed first.
    crate::tls::install_crypto_provider();
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;

    /// A loopback exporter serving `body` as its `/metrics`.
    async fn exporter(body: &'static str) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new().route("/metrics", get(move || async move { body }));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((addr, task))
    }

    #[test]
    fn config_scrapes_the_file_sd_directory_every_second() {
        let yaml = config_yaml(Path::new("/tmp/p x"), "/metrics").unwrap();
        let config: Value = serde_json::from_str(&yaml).unwrap();
        let job = &config["scrape_configs"][0];
        assert_eq!(job["metrics_path"], "/metrics");
        assert_eq!(
            job["file_sd_configs"][0]["files"][0],
            "/tmp/p x/targets/*.json"
        );
        assert_eq!(config["global"]["scrape_interval"], "1s");
    }

    #[test]
    fn targets_file_carries_labels() {
        let dir = unique_dir().unwrap();
        std::fs::create_dir(dir.join("targets")).unwrap();
        write_targets(&dir, &[Target::new("10.0.0.1:9901").label("pod", "demo-1")]).unwrap();
        let written: Value =
            serde_json::from_slice(&std::fs::read(dir.join("targets/targets.json")).unwrap())
                .unwrap();
        assert_eq!(
            written,
            serde_json::json!([{"targets": ["10.0.0.1:9901"], "labels": {"pod": "demo-1"}}])
        );
        assert!(!dir.join("targets/targets.json.tmp").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The real server scrapes a loopback exporter, follows `set_targets` to another one,
    /// and its data directory is gone once it is dropped.
    #[tokio::test]
    async fn scrapes_targets_and_follows_changes() -> Result<()> {
        let (first, _a) = exporter("demo_up 1\n").await?;
        let (second, _b) = exporter("demo_up 2\n").await?;
        let prometheus = Prometheus::start(
            "127.0.0.1:0".parse()?,
            &[Target::new(first.to_string()).label("pod", "one")],
            "/metrics",
        )
        .await?;
        let timeout = Duration::from_secs(30);
        let result = prometheus
            .wait_for_data(r#"demo_up{pod="one"}"#, timeout)
            .await?;
        assert_eq!(result[0]["value"][1], "1");
        prometheus.set_targets(&[Target::new(second.to_string()).label("pod", "two")])?;
        let result = prometheus
            .wait_for_data(r#"demo_up{pod="two"}"#, timeout)
            .await?;
        assert_eq!(result[0]["value"][1], "2");
        assert!(
            prometheus
                .targets()
                .await?
                .iter()
                .any(|(address, _)| *address == second.to_string())
        );
        prometheus.reload().await?;
        let dir = prometheus.dir.clone();
        drop(prometheus);
        assert!(!dir.exists());
        Ok(())
    }
}
