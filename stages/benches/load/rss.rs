//! A process's resident set size and CPU time, read from `/proc`, for the benches that watch them.

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

/// CPU seconds (user and system) a process has used: itself, or with
/// `children` the children it has waited for (`/proc/<pid>/stat`, in
/// clock ticks of 1/100 s, the Linux x86-64 `USER_HZ`).
pub fn cpu_seconds(pid: &str, children: bool) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name: state is the first, utime the twelfth.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let first = if children { 13 } else { 11 };
    let ticks: u64 = fields.get(first)?.parse::<u64>().ok()? + fields.get(first + 1)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}
