//! The per-pod Hotload agent: channel client, fetcher (HTTPS, OCI), verifier, on-disk
//! store and the app channel (a Unix socket on the shared volume).
