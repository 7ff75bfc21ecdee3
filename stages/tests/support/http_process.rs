//! A `stageflow` child process started with `--http 127.0.0.1:0`, whose
//! HTTP address is read from its log; killed (SIGKILL) when dropped.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

/// How long the process may take to say where it serves HTTP.
const DEADLINE: Duration = Duration::from_secs(60);

/// The repository's root (where `pipelines/` is).
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("stages/ is inside the repository").to_path_buf()
}

/// The stage ids of `pipelines/tweets.toml`, in file order.
pub fn stage_ids_of_tweets_toml() -> Vec<String> {
    let text = std::fs::read_to_string(repository().join("pipelines/tweets.toml")).expect("tweets.toml");
    let table: toml::Table = toml::from_str(&text).expect("TOML");
    table["stage"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

/// A `stageflow` child process serving HTTP, killed when dropped.
pub struct HttpProcess {
    child: Child,
    /// Its HTTP base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub url: String,
    output: Arc<Mutex<String>>,
    /// Its data directory, when it has one of its own.
    _data: Option<tempfile::TempDir>,
}

impl HttpProcess {
    /// Runs `stageflow ARGS --http 127.0.0.1:0` in the repository and waits until it serves HTTP.
    pub fn start(args: &[&str]) -> HttpProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stageflow"))
            .current_dir(repository())
            .args(args)
            .args(["--http", "127.0.0.1:0"])
            .env_remove("EMULATOR_URL")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the stageflow binary starts");
        let output = Arc::new(Mutex::new(String::new()));
        let collected = output.clone();
        let mut stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(count) = stdout.read(&mut buffer) {
                if count == 0 {
                    break;
                }
                collected.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..count]));
            }
        });
        let (found, address) = mpsc::channel();
        let collected = output.clone();
        let stderr = child.stderr.take().expect("piped stderr");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some((_, rest)) =
                    line.split_once("HTTP: ").and_then(|(_, rest)| rest.split_once(" at http://"))
                {
                    let address = rest.split_whitespace().next().unwrap_or_default().trim_end_matches('/');
                    let _ = found.send(format!("http://{address}"));
                }
                let mut output = collected.lock().unwrap();
                output.push_str(&line);
                output.push('\n');
            }
        });
        let mut process = HttpProcess { child, url: String::new(), output, _data: None };
        match address.recv_timeout(DEADLINE) {
            Ok(url) => process.url = url,
            Err(_) => panic!("stageflow did not say where it serves HTTP; output: {}", process.output()),
        }
        process
    }

    /// `stageflow run pipelines/tweets.toml --for 300s` with a data directory of its own and `extra` flags.
    pub fn tweets(extra: &[&str]) -> HttpProcess {
        let data = tempfile::tempdir().expect("a temp dir");
        let data_dir = data.path().to_str().expect("a UTF-8 path").to_string();
        let mut args = vec!["run", "pipelines/tweets.toml", "--for", "300s", "--data-dir", &data_dir];
        args.extend_from_slice(extra);
        let mut process = HttpProcess::start(&args);
        process._data = Some(data);
        process
    }

    /// `stageflow broker` on a free port with a data directory of its own, and the address of its line protocol.
    pub fn broker() -> (HttpProcess, std::net::SocketAddr) {
        let data = tempfile::tempdir().expect("a temp dir");
        let data_dir = data.path().to_str().expect("a UTF-8 path").to_string();
        let mut process = HttpProcess::start(&["broker", "--addr", "127.0.0.1:0", "--data-dir", &data_dir]);
        process._data = Some(data);
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let output = process.output();
            let found = output
                .split_once("broker listening on ")
                .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok());
            if let Some(addr) = found {
                return (process, addr);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the broker did not say where it listens: {output}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Sends SIGINT (a user's Ctrl-C): the pipeline drains.
    pub fn interrupt(&self) {
        let status =
            Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(status.success(), "kill -INT failed");
    }

    /// Waits for the process to end (at most `limit`); true if it ended successfully.
    pub fn wait(&mut self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("waitable") {
                return status.success();
            }
            assert!(std::time::Instant::now() < deadline, "stageflow did not end within {limit:?}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HttpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
