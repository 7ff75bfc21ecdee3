//! The `stageflow` command: runs pipelines described in TOML files (see `cmd`).

fn main() -> std::process::ExitCode {
    stageflow_stages::cmd::main()
}
