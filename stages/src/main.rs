//! The `stageflow` command: runs pipelines described in TOML files (see `cmd`).

stageflow_stages::shipped_allocator!();

fn main() -> std::process::ExitCode {
    stageflow_stages::cmd::main()
}
