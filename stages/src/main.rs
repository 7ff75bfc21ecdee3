//! The `stageflow` command: runs pipelines described in TOML files (see `cmd`).

/// jemalloc returns the memory of a burst (a store outage's held batches, the catch-up after it) where glibc's
/// per-thread arenas keep it, which made a long run's RSS climb with each outage (docs/performance.md, the soak).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    stageflow_stages::cmd::main()
}
