//! The binary works from any directory: a copy of the built `stageflow`
//! in a directory of its own (standing in for `cargo install --path
//! stages`, which would build it again) runs from an empty directory, with
//! the shipped pipelines taken from the binary by name.
//!
//! Every process is killed by its handle when the test ends; every wait has
//! a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

/// How long any wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(90);

/// The built binary copied once into a `bin/` of its own (under cargo's
/// scratch directory for tests). Once, before any test starts a process: a
/// process forked while the copy is open for writing would keep it open,
/// and starting the copy would then fail with "text file busy".
fn installed_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("anywhere-bin");
        std::fs::create_dir_all(&bin).expect("bin/");
        let partial = bin.join(format!("stageflow.{}", std::process::id()));
        std::fs::copy(env!("CARGO_BIN_EXE_stageflow"), &partial).expect("the binary copies");
        let binary = bin.join("stageflow");
        std::fs::rename(&partial, &binary).expect("the copy is renamed into place");
        binary
    })
}

/// The installed binary and an empty directory of this test's own to run it from.
struct Installed {
    _root: tempfile::TempDir,
    binary: &'static Path,
    cwd: PathBuf,
}

impl Installed {
    fn new() -> Installed {
        let binary = installed_binary();
        let root = tempfile::tempdir().expect("a temporary directory");
        let cwd = root.path().join("empty");
        std::fs::create_dir_all(&cwd).expect("empty/");
        Installed { _root: root, binary, cwd }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.binary);
        command.current_dir(&self.cwd).args(args).env_remove("EMULATOR_URL").env("RUST_LOG", "warn");
        command
    }

    /// Runs to the end (within the deadline) and returns the output.
    fn run(&self, args: &[&str]) -> Output {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("stageflow starts");
        let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("waitable") {
                break status;
            }
            if started.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!("stageflow {args:?} did not end within {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
    }

    /// Starts a long-running command whose stdout lines arrive on a channel.
    fn start(&self, args: &[&str]) -> Running {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("stageflow starts");
        let (lines, receiver) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines: receiver }
    }
}

/// Reads a pipe to its end on a thread of its own.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    let mut pipe = pipe.expect("piped");
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// A process started by this test, killed when dropped.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// The first stdout line that `pick` finds something in.
    fn find<T>(&self, what: &str, pick: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = pick(&line) {
                        return found;
                    }
                }
                Err(_) => panic!("no line with {what} within {DEADLINE:?}"),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The word after `marker` in `line`.
fn word_after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.split_once(marker)?.1.split_whitespace().next()
}

#[test]
fn pipelines_lists_the_built_in_ones_and_check_and_graph_take_their_names() {
    let installed = Installed::new();
    let listed = installed.run(&["pipelines"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let names: Vec<String> = text(&listed.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(String::from)
        .collect();
    for name in ["demo", "tweets", "tweets-broker", "csv-import"] {
        assert!(names.iter().any(|listed| listed == name), "{name} not in {names:?}");
    }
    for name in &names {
        let checked = installed.run(&["check", name]);
        let (stdout, stderr) = (text(&checked.stdout), text(&checked.stderr));
        if name == "csv-import" {
            // Its input files are named relative to where it runs: from here there are none.
            assert!(!checked.status.success(), "{stdout}");
            assert!(stderr.contains("<built-in>/csv-import.toml:"), "{stderr}");
            assert!(
                stderr.contains("matches no file (paths are relative to where stageflow runs)"),
                "{stderr}"
            );
            continue;
        }
        // Every other built-in checks; servers they name are only reached when they run.
        assert!(checked.status.success(), "check {name}: {stderr}{stdout}");
        assert!(stdout.starts_with(&format!("<built-in>/{name}.toml: ok")), "{stdout}");
    }
    let graph = installed.run(&["graph", "demo"]);
    assert!(graph.status.success(), "{}", text(&graph.stderr));
    assert!(text(&graph.stdout).contains("numbers"), "{}", text(&graph.stdout));
    assert!(std::fs::read_dir(&installed.cwd).unwrap().next().is_none(), "check and graph write nothing");
}

#[test]
fn a_name_that_is_neither_a_file_nor_built_in_says_what_there_is() {
    let installed = Installed::new();
    let checked = installed.run(&["check", "tweet"]);
    assert!(!checked.status.success());
    let stderr = text(&checked.stderr);
    assert!(stderr.contains("cannot read tweet"), "{stderr}");
    assert!(stderr.contains("built-in pipeline: demo, tweets"), "{stderr}");
}

#[test]
fn run_takes_a_built_in_name_and_writes_its_data_where_it_is_run() {
    let installed = Installed::new();
    let ran = installed.run(&["run", "demo", "--set", "numbers.count=1000"]);
    let stdout = text(&ran.stdout);
    assert!(ran.status.success(), "{}{stdout}", text(&ran.stderr));
    assert!(stdout.contains("pipeline 'demo' finished"), "{stdout}");
    assert!(installed.cwd.join("stageflow-data").is_dir(), "the default data directory is in the cwd");
}

#[test]
fn serve_runs_the_built_in_tweet_pipeline_from_an_empty_directory() {
    let installed = Installed::new();
    let emulator =
        installed.start(&["emulate", "--addr", "127.0.0.1:0", "--rate", "50", "--kill-ratio", "0"]);
    let tweets = emulator.find("the tweets URL", |line| {
        let url = word_after(line, "tweets:")?;
        url.strip_suffix("/1").map(str::to_string)
    });
    let serve = installed.start(&["serve", "--addr", "127.0.0.1:0", "--sse-url", &tweets]);
    let addr: String = serve
        .find("the listening address", |line| word_after(line, "serve listening on").map(str::to_string));
    let stream = TcpStream::connect(&addr).expect("serve accepts");
    stream.set_read_timeout(Some(DEADLINE)).expect("a read timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("a second handle"));
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).expect("a greeting");
    writer.write_all(b"twitter\n").expect("the command goes out");
    let deadline = Instant::now() + DEADLINE;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).expect("serve keeps talking");
        assert!(read > 0, "serve closed the connection");
        assert!(!line.starts_with("error"), "{line}");
        if line.starts_with("tweet: ") {
            break;
        }
        assert!(Instant::now() < deadline, "no tweet within {DEADLINE:?}");
    }
    assert!(Path::new(&installed.cwd).join("stageflow-data").is_dir(), "its store is in the cwd");
}
