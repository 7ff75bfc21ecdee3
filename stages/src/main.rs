//! The `stageflow` command: runs pipelines described in TOML files (see `cmd`).

/// jemalloc returns the memory of a burst (a store outage's held batches, the catch-up after it) where glibc's
/// per-thread arenas keep it, which made a long run's RSS climb with each outage (docs/performance.md, the soak).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (it reads this symbol as a C string pointer): a background thread gives freed pages back after a second, whether or not the process
/// allocates again (otherwise purging waits for allocations, and a quiet process keeps what a burst left).
#[cfg(not(target_env = "msvc"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &u8 = &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];

fn main() -> std::process::ExitCode {
    stageflow_stages::cmd::main()
}
