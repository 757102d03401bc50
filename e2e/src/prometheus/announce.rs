//! Where a Prometheus started on port 0 listens, read from its log.
//!
//! Prometheus binds the port itself and says which one; a port picked by the caller and
//! released for Prometheus to bind could be taken by another process in between. A plain
//! file of `std` only, so the operator's provider tests include it by path and share it
//! without depending on this crate.

use std::net::SocketAddr;

/// The address Prometheus announces once it listens: the `address=` of its
/// `msg="Listening on"` line (Prometheus 2.x logfmt and 3.x slog text alike).
pub fn listening_address(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|line| line.contains("msg=\"Listening on\""))
        .find_map(|line| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix("address="))
                .and_then(|address| address.parse().ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_address_is_read_from_the_log_of_either_prometheus_major() {
        let v2 = "ts=2026-12-03T07:18:06.375Z caller=web.go:503 level=info component=web \
                  msg=\"Start listening for connections\" address=127.0.0.1:0\n\
                  ts=2026-12-03T07:18:06.378Z caller=tls_config.go:232 level=info \
                  component=web msg=\"Listening on\" address=198.18.0.2:37109\n";
        let v3 = "time=2026-12-03T07:18:06.378Z level=INFO source=tls_config.go:347 \
                  msg=\"Listening on\" component=web address=127.0.0.1:9090\n";
        let not_yet = v2.lines().next().unwrap_or_default();
        assert_eq!(listening_address(v2), "198.18.0.2:37109".parse().ok());
        assert_eq!(listening_address(v3), "127.0.0.1:9090".parse().ok());
        assert_eq!(listening_address(not_yet), None);
    }
}
