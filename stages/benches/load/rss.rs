//! A process's resident set size, read from `/proc`, for the benches that watch memory.

/// The resident set size of process `pid` in kB, if it is alive and readable.
pub fn rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS")
}

/// A kB figure of `/proc/PID/status` (`VmRSS`, `RssAnon`, `RssFile` …), if the process is alive.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
