//! The library an application links to hot-load Wasm plugins handed to it by the sidecar.
