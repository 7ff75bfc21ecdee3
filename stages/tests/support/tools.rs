//! Outside programs the tests drive (Chromium, Prometheus): found on PATH,
//! installed by `scripts/test`. Missing locally, a test says SKIPPED; under
//! CI=true a missing tool fails the test.

use std::path::PathBuf;

/// The program `name` (or the path in the environment variable `override_var`),
/// `None` after printing SKIPPED when it is missing outside CI; panics when it is missing under CI.
pub fn tool(name: &str, override_var: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os(override_var).map(PathBuf::from).or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
        })
    });
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|value| value == "true");
        assert!(!ci, "{test}: `{name}` is missing under CI=true (scripts/test installs it with apt-get)");
        println!(
            "SKIPPED {test}: `{name}` is not installed (scripts/test installs it; or set {override_var})"
        );
    }
    found
}
