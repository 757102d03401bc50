//! The operator's memory allocator: jemalloc (feature `jemalloc`, on by default), else the
//! system's.
//!
//! With a TLS connection per pod, glibc malloc's per-thread arenas fragment: at 10,000
//! reporting sidecars the operator's RSS crept by about 20 MiB (2 KiB a pod) in the five
//! minutes after the fleet connected, while its live heap stayed flat. With jemalloc it
//! stayed within 383–397 MiB for fifteen minutes, 10–15 MiB under glibc's peak
//! (docs/benchmarks.md, "The allocator"). The operator binary and the bench's
//! channel server (`hotload-e2e bench health-server`) both install [`ALLOCATOR`], so the
//! benchmark measures what runs in the cluster.

#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
mod chosen {
    /// The allocator's type.
    pub type Allocator = tikv_jemallocator::Jemalloc;
    /// Its value, for `#[global_allocator]`.
    pub const ALLOCATOR: Allocator = tikv_jemallocator::Jemalloc;
    /// Its name, as reports and benchmarks give it.
    pub const NAME: &str = "jemalloc";
}

#[cfg(not(all(feature = "jemalloc", not(target_env = "msvc"))))]
mod chosen {
    /// The allocator's type.
    pub type Allocator = std::alloc::System;
    /// Its value, for `#[global_allocator]`.
    pub const ALLOCATOR: Allocator = std::alloc::System;
    /// Its name, as reports and benchmarks give it.
    pub const NAME: &str = "system";
}

pub use chosen::{ALLOCATOR, Allocator, NAME};
