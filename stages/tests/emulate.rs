//! `stageflow emulate` as a user runs it: the binary on 127.0.0.1 port 0,
//! read over HTTP, stopped (killed) by its handle when the test ends.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Generous bound for anything that should take milliseconds.
const DEADLINE: Duration = Duration::from_secs(60);

/// A `stageflow emulate` child process, killed when dropped.
struct EmulatorProcess {
    child: Child,
    base_url: String,
}

impl EmulatorProcess {
    /// Starts the binary with `flags` and waits for the line that gives its address.
    fn start(flags: &[&str]) -> EmulatorProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stageflow"))
            .arg("emulate")
            .args(["--addr", "127.0.0.1:0"])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the stageflow binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end even after the address was found: a closed pipe
            // would make the emulator's next line fail (and the process end).
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let mut process = EmulatorProcess { child, base_url: String::new() };
        loop {
            let line = received.recv_timeout(DEADLINE).expect("the emulator prints its address");
            if let Some(url) = line.split_whitespace().find(|word| word.ends_with("/tweets/1")) {
                process.base_url = url.trim_end_matches("/tweets/1").to_string();
                return process;
            }
        }
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_emulate_command_serves_a_limited_deterministic_stream() {
    let emulator =
        EmulatorProcess::start(&["--rate", "max", "--seed", "7", "--limit", "3", "--kill-ratio", "0"]);
    assert!(emulator.base_url.starts_with("http://127.0.0.1:"), "{}", emulator.base_url);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let body =
        client.get(format!("{}/tweets/2", emulator.base_url)).send().await.unwrap().text().await.unwrap();
    let ids: Vec<&str> = body.lines().filter_map(|line| line.strip_prefix("id: ")).collect();
    assert_eq!(ids, ["1", "2", "3"], "{body}");
    assert!(
        body.lines().filter(|line| line.starts_with("data: {\"message\":{\"tweet\":")).count() == 3,
        "{body}"
    );
    let stats =
        client.get(format!("{}/stats", emulator.base_url)).send().await.unwrap().text().await.unwrap();
    assert!(stats.contains("\"events_sent\":3"), "{stats}");
}

#[test]
fn bad_flags_are_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_stageflow"))
        .args(["emulate", "--addr", "127.0.0.1:0", "--kill-ratio", "2"])
        .output()
        .expect("the stageflow binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("kill ratio must be between 0 and 1, got 2"), "{stderr}");
}

/// The names of a process's threads, from /proc.
#[cfg(target_os = "linux")]
fn thread_names(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process is alive");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

#[cfg(target_os = "linux")]
#[test]
fn the_binary_allocates_with_jemalloc_whose_background_thread_returns_memory() {
    let emulator = EmulatorProcess::start(&["--rate", "10"]);
    let started = std::time::Instant::now();
    loop {
        let names = thread_names(emulator.child.id());
        if names.iter().any(|name| name == "jemalloc_bg_thd") {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "no jemalloc background thread among {names:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
