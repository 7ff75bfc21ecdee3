//! `stageflow serve`: the telnet server as a process, from its flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::serve::{ServeConfig, start_serve};

/// `stageflow serve`: the telnet server.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Example:\n  stageflow emulate &\n  stageflow serve --addr 127.0.0.1:8080\n  \
    then: telnet 127.0.0.1 8080 (or nc), and type: twitter")]
pub struct ServeArgs {
    /// Address to listen on (loopback by default). Example: --addr 0.0.0.0:8080
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Base URL of the SSE tweet streams (`${EMULATOR_URL}` in the file is this without `/tweets`). Example: --sse-url http://127.0.0.1:4000/tweets
    #[arg(long, default_value = "http://127.0.0.1:4000/tweets")]
    pub sse_url: String,
    /// Number of SSE streams (replaces the file's `sse` stages by stream1… reading `<sse-url>/1`…); default: as the file says. Example: --streams 4
    #[arg(long)]
    pub streams: Option<usize>,
    /// The pipeline file, or the name of a built-in one (see `stageflow pipelines`). Example: --pipeline my-tweets.toml
    #[arg(long, default_value = "tweets")]
    pub pipeline: PathBuf,
    /// Directory for embedded stores and output files. Example: --data-dir /tmp/serve-data
    #[arg(long, default_value = "stageflow-data")]
    pub data_dir: PathBuf,
    /// Overrides a stage setting: stage.key=value (value read as TOML, else as text). Repeatable. Example: --set logger.sleep_mean_ms=50
    #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Also publish scored tweets and stats frames to the broker at HOST:PORT (broker_tweets, broker_stats). Example: --broker 127.0.0.1:8000
    #[arg(long, value_name = "HOST:PORT")]
    pub broker: Option<String>,
    /// Longest accepted command line in bytes; longer ones get an error. Example: --max-line-bytes 1024
    #[arg(long, default_value_t = 4096)]
    pub max_line_bytes: usize,
    /// Most simultaneous connections; more are told so and closed. Example: --max-connections 100
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Tweet lines each session keeps for a slow reader before dropping the oldest. Example: --outbox-lines 100
    #[arg(long, default_value_t = 1000)]
    pub outbox_lines: usize,
    /// Bytes of tweet lines each session keeps for a slow reader. Example: --outbox-bytes 65536
    #[arg(long, default_value_t = 256 * 1024)]
    pub outbox_bytes: usize,
    /// How long the pipeline may take to drain after the last watcher leaves. Example: --drain-timeout 10s
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub drain_timeout: Duration,
    /// Serves the live page of the shared pipeline, /metrics, /healthz, /readyz, /api and /tap here (PORT means 127.0.0.1:PORT).
    #[arg(long, value_name = "ADDR", value_parser = crate::http::parse_addr)]
    pub http: Option<SocketAddr>,
}

impl ServeArgs {
    /// The server's settings.
    pub fn config(&self) -> ServeConfig {
        ServeConfig {
            addr: self.addr,
            sse_url: self.sse_url.clone(),
            streams: self.streams,
            pipeline_file: self.pipeline.clone(),
            data_dir: self.data_dir.clone(),
            overrides: self.overrides.clone(),
            broker: self.broker.clone(),
            max_line_bytes: self.max_line_bytes.max(1),
            max_connections: self.max_connections.max(1),
            outbox_lines: self.outbox_lines.max(1),
            outbox_bytes: self.outbox_bytes.max(1),
            drain_timeout: self.drain_timeout,
            http: self.http,
        }
    }
}

/// Runs `stageflow serve` until Ctrl-C.
pub async fn run_serve(args: ServeArgs) -> Result<(), String> {
    let config = args.config();
    let handle = start_serve(config.clone()).await?;
    let streams = config.streams.map_or_else(|| "the file's streams".to_string(), |n| format!("{n} streams"));
    println!(
        "serve listening on {} (pipeline {}, {streams} from {}); try: telnet {} {} then type twitter",
        handle.local_addr(),
        config.pipeline_file.display(),
        config.sse_url,
        handle.local_addr().ip(),
        handle.local_addr().port()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tokio::signal::ctrl_c().await.map_err(|error| format!("cannot wait for Ctrl-C: {error}"))?;
    eprintln!("Ctrl-C: closing the sessions and draining the pipeline");
    handle.stop().await;
    Ok(())
}
