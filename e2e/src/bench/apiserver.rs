//! Reading the numbers: the API server's `apiserver_request_total` (Prometheus text), a
//! gauge or counter from any exposition, and a process's CPU time and peak RSS from /proc.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

/// Requests the API server counted, by verb.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestCounts {
    by_verb: BTreeMap<String, f64>,
}

/// A difference of two [`RequestCounts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Every request.
    pub total: u64,
    /// POST, PUT, PATCH, APPLY and DELETE.
    pub writes: u64,
}

impl RequestCounts {
    /// `self - earlier`.
    pub fn minus(&self, earlier: &Self) -> Delta {
        let mut delta = Delta::default();
        for (verb, count) in &self.by_verb {
            let n = (count - earlier.by_verb.get(verb).copied().unwrap_or(0.0)).max(0.0) as u64;
            delta.total += n;
            if matches!(
                verb.as_str(),
                "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION"
            ) {
                delta.writes += n;
            }
        }
        delta
    }
}

/// Sums `apiserver_request_total` by its `verb` label.
pub fn request_counts(exposition: &str) -> RequestCounts {
    let mut counts = RequestCounts::default();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let verb = labels
            .split(',')
            .find_map(|l| l.strip_prefix("verb=\""))
            .map(|v| v.trim_end_matches('"').to_string());
        if let (Some(verb), Ok(value)) = (verb, value.trim().parse::<f64>()) {
            *counts.by_verb.entry(verb).or_default() += value;
        }
    }
    counts
}

/// The value of sample `name` (a gauge, or a counter's `_total`; with its labels, if any).
pub fn gauge(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// User + system CPU seconds of `pid`.
pub fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    cpu_seconds_of(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))
}

fn cpu_seconds_of(stat: &str) -> Option<f64> {
    // Fields after the command (which may hold spaces) start at ") "; utime and stime are
    // fields 14 and 15, in clock ticks (100 per second on Linux).
    let after = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// A memory figure of `pid` from /proc/<pid>/status (`VmHWM`: peak resident, `VmRSS`:
/// resident now), KiB.
pub fn process_memory_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counts_sum_by_verb_and_count_writes() {
        let before = request_counts(
            "# HELP apiserver_request_total x\n\
             apiserver_request_total{code=\"200\",component=\"apiserver\",group=\"\",resource=\"pods\",verb=\"LIST\",version=\"v1\"} 10\n\
             apiserver_request_total{code=\"200\",resource=\"pluginreleases\",subresource=\"status\",verb=\"APPLY\"} 2\n",
        );
        let after = request_counts(
            "apiserver_request_total{code=\"200\",component=\"apiserver\",group=\"\",resource=\"pods\",verb=\"LIST\",version=\"v1\"} 13\n\
             apiserver_request_total{code=\"200\",resource=\"pluginreleases\",subresource=\"status\",verb=\"APPLY\"} 5\n\
             apiserver_request_total{code=\"201\",resource=\"events\",verb=\"POST\"} 1\n\
             apiserver_requested_deprecated_apis{x=\"1\"} 4\n",
        );
        assert_eq!(
            after.minus(&before),
            Delta {
                total: 7,
                writes: 4
            }
        );
    }

    #[test]
    fn gauges_and_proc_stat_parse() {
        let text = "# TYPE hotload_connected_sidecars gauge\nhotload_connected_sidecars 1000\nhotload_status_writes_total 7\n";
        assert_eq!(gauge(text, "hotload_connected_sidecars"), Some(1000.0));
        assert_eq!(gauge(text, "hotload_status_writes_total"), Some(7.0));
        assert_eq!(gauge(text, "hotload_status_writes"), None);
        let stat = "42 (hotload op) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1 1 1";
        assert_eq!(cpu_seconds_of(stat), Some(3.0));
    }
}
