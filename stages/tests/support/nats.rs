//! Real `nats-server` processes (JetStream on, data in a temporary
//! directory) started by a test on free 127.0.0.1 ports, killed on drop;
//! alone or as a cluster of three routed nodes.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use super::secantus::{free_port, repository, under_ci};

/// The server binary: `$STAGEFLOW_NATS_SERVER`, else `.venv/bin/nats-server`
/// (scripts/test installs it); `None` (the test says SKIPPED) outside CI.
pub fn binary() -> Option<PathBuf> {
    let binary = std::env::var_os("STAGEFLOW_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository().join(".venv/bin/nats-server"));
    if binary.exists() {
        return Some(binary);
    }
    let why = format!(
        "nats-server not found at {} (scripts/test installs it; or set STAGEFLOW_NATS_SERVER)",
        binary.display()
    );
    assert!(!under_ci(), "{why}");
    eprintln!("SKIPPED: {why}");
    None
}

/// One nats-server of this test.
pub struct NatsServer {
    binary: PathBuf,
    /// Client port on 127.0.0.1.
    pub port: u16,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    _directory: tempfile::TempDir,
}

impl NatsServer {
    /// A single JetStream server; `None` when not installed outside CI.
    pub async fn start() -> Option<NatsServer> {
        let binary = binary()?;
        let mut server = Self::new(binary, free_port(), Vec::new());
        server.launch().await;
        Some(server)
    }

    /// A single JetStream server with `extra` command-line arguments (e.g.
    /// `-c FILE`); `None` when not installed outside CI.
    pub async fn start_with(extra: &[&str]) -> Option<NatsServer> {
        let binary = binary()?;
        let mut server = Self::new(binary, free_port(), extra.iter().map(|arg| arg.to_string()).collect());
        server.launch().await;
        Some(server)
    }

    /// Three JetStream servers routed into one cluster; `None` when not installed outside CI.
    pub async fn cluster() -> Option<Vec<NatsServer>> {
        let binary = binary()?;
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let all_routes =
            routes.iter().map(|port| format!("nats://127.0.0.1:{port}")).collect::<Vec<_>>().join(",");
        let mut servers: Vec<NatsServer> = routes
            .iter()
            .enumerate()
            .map(|(index, route)| {
                let args = vec![
                    "--name".into(),
                    format!("n{index}"),
                    "--cluster_name".into(),
                    "stageflow-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{route}"),
                    "--routes".into(),
                    all_routes.clone(),
                ];
                Self::new(binary.clone(), free_port(), args)
            })
            .collect();
        for server in &mut servers {
            server.spawn();
        }
        for server in &mut servers {
            server.wait_ready().await;
        }
        Some(servers)
    }

    fn new(binary: PathBuf, port: u16, extra: Vec<String>) -> NatsServer {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let mut args: Vec<String> =
            vec!["-a".into(), "127.0.0.1".into(), "-p".into(), port.to_string(), "-js".into()];
        args.extend(["-sd".into(), directory.path().join("jetstream").to_string_lossy().into_owned()]);
        args.extend(extra);
        NatsServer {
            binary,
            port,
            args,
            log: directory.path().join("nats.log"),
            child: None,
            _directory: directory,
        }
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = File::options().create(true).append(true).open(&self.log).expect("a log file");
        let child = Command::new(&self.binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", self.binary.display()));
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                panic!("nats-server exited with {status}: {}", self.log_text());
            }
            if let Ok(client) = async_nats::connect(self.url()).await {
                let js = async_nats::jetstream::new(client);
                if js.query_account().await.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "nats-server not ready within 30 s: {}", self.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the server (again) with its data; returns once JetStream answers.
    pub async fn launch(&mut self) {
        self.spawn();
        self.wait_ready().await;
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the server (SIGKILL) and waits for it; its data stays on disk.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
