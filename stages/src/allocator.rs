//! The allocator the `stageflow` binary ships with, for every binary that should run as it does.
//!
//! glibc's malloc keeps the memory of a burst (a store outage's held
//! batches, the catch-up after it) in per-thread arenas, which made a long
//! run's RSS climb with each outage; jemalloc gives it back. Benches that
//! measure the pipeline's speed use it too, so they time what ships
//! (docs/performance.md, the soak and the load suite).

/// The allocator type, for [`shipped_allocator!`](crate::shipped_allocator).
#[cfg(not(target_env = "msvc"))]
pub use tikv_jemallocator::Jemalloc;

/// Makes jemalloc, with the `stageflow` binary's options, this binary's global allocator.
///
/// The options: a background thread gives freed pages back after a second,
/// whether or not the process allocates again (otherwise purging waits for
/// allocations, and a quiet process keeps what a burst left). jemalloc
/// reads them from the exported `_rjem_malloc_conf` symbol, a C string.
#[macro_export]
macro_rules! shipped_allocator {
    () => {
        #[cfg(not(target_env = "msvc"))]
        #[global_allocator]
        static ALLOCATOR: $crate::allocator::Jemalloc = $crate::allocator::Jemalloc;

        /// jemalloc's options, read by jemalloc as a C string pointer (see `shipped_allocator!`).
        #[cfg(not(target_env = "msvc"))]
        #[unsafe(export_name = "_rjem_malloc_conf")]
        pub static MALLOC_CONF: &u8 = &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];
    };
}
