//! A SecantusDB server (the MongoDB-wire-compatible server the storage tests
//! use) started by a test on a free 127.0.0.1 port and killed on drop.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mongodb::Client;
use mongodb::bson::doc;
use tokio::time::Instant;

/// The repository root (the parent of `stages/`).
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("stages/ is inside the repository").to_path_buf()
}

/// Whether this runs under CI (`CI=true`), where a missing SecantusDB fails the test.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true")
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("a free port").port()
}

/// A SecantusDB server of this test: 127.0.0.1, a free port, killed on drop.
pub struct Secantus {
    binary: PathBuf,
    port: u16,
    storage: String,
    log: PathBuf,
    child: Option<Child>,
    _directory: tempfile::TempDir,
}

impl Secantus {
    /// Starts a server (data on disk or in memory); `None` when it is not
    /// installed and this is not CI (the test then says so and passes).
    pub async fn start(on_disk: bool) -> Option<Secantus> {
        let binary = match std::env::var_os("STAGEFLOW_SECANTUSD") {
            Some(path) => {
                let path = PathBuf::from(path);
                assert!(path.exists(), "STAGEFLOW_SECANTUSD names {}, which does not exist", path.display());
                path
            }
            None => repository().join(".venv/bin/secantusd-py"),
        };
        if !binary.exists() {
            let why = format!(
                "SecantusDB not found at {} (scripts/test installs it; or set STAGEFLOW_SECANTUSD)",
                binary.display()
            );
            assert!(!under_ci(), "{why}");
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let directory = tempfile::tempdir().expect("a temporary directory");
        let storage = if on_disk {
            directory.path().join("data").to_string_lossy().into_owned()
        } else {
            ":memory:".to_string()
        };
        let mut server = Secantus {
            binary,
            port: free_port(),
            storage,
            log: directory.path().join("secantusd.log"),
            child: None,
            _directory: directory,
        };
        server.launch().await;
        Some(server)
    }

    /// The connection string for `database`.
    pub fn uri(&self, database: &str) -> String {
        format!("mongodb://127.0.0.1:{}/{database}?directConnection=true", self.port)
    }

    /// Starts the server process (again) on its port and path; returns once it answers a ping.
    pub async fn launch(&mut self) {
        self.launch_within(Duration::from_secs(60)).await;
    }

    /// [`Secantus::launch`], waiting up to `limit` for the first answer: a
    /// restart reads the data back first, which takes longer as it grows.
    pub async fn launch_within(&mut self, limit: Duration) {
        let log = File::options().create(true).append(true).open(&self.log).expect("a log file");
        let child = Command::new(&self.binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string(), "--storage-path", &self.storage])
            .args(["--standalone", "--log-level", "WARNING"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", self.binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                panic!(
                    "secantusd-py exited with {status}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if self.ping().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "SecantusDB did not answer on port {} within {limit:?}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the server answers a ping within half a second.
    pub async fn ping(&self) -> bool {
        let uri = format!("{}&serverSelectionTimeoutMS=500&connectTimeoutMS=500", self.uri("admin"));
        let Ok(client) = Client::with_uri_str(&uri).await else { return false };
        client.database("admin").run_command(doc! { "ping": 1 }).await.is_ok()
    }

    /// Stops the server (SIGTERM, then SIGKILL after 20 s); its data stays on disk.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server (SIGKILL, no shutdown) and waits for it to exit; its data stays on disk.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server process where it is (SIGSTOP): connections hang, nothing is answered.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").args(["-STOP", &child.id().to_string()]).status();
        }
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
        }
    }

    /// A client of this server.
    pub async fn client(&self) -> Client {
        Client::with_uri_str(self.uri("admin")).await.expect("a client")
    }
}

impl Drop for Secantus {
    fn drop(&mut self) {
        self.kill();
    }
}
