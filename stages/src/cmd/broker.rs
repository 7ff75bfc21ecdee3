//! `stageflow broker`: the message broker as a process, from its flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::broker::{Broker, BrokerConfig, ServerConfig, SyncMode, serve};

/// `stageflow broker`: runs the message broker.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Example:\n  stageflow broker --addr 127.0.0.1:8000 --data-dir ./broker-data --sync batched\n  \
    then: nc 127.0.0.1 8000, and type: help"
)]
pub struct BrokerArgs {
    /// Address to listen on (loopback by default). Example: --addr 127.0.0.1:9000
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub addr: SocketAddr,
    /// Directory for the topic logs; created if missing. Example: --data-dir /var/lib/stageflow-broker
    #[arg(long, default_value = "broker-data")]
    pub data_dir: PathBuf,
    /// When to fsync the log: always (before each ok), batched (at least every 100 ms), off. Example: --sync always
    #[arg(long, default_value = "batched")]
    pub sync: SyncMode,
    /// Shared secret clients must send with `auth <token>` before other commands. Example: --token s3cret
    #[arg(long)]
    pub token: Option<String>,
    /// Longest accepted line in bytes; longer ones get an error. Example: --max-line-bytes 65536
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_line_bytes: usize,
    /// Most simultaneous connections; more are told so and closed. Example: --max-connections 100
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Most topics. Example: --max-topics 50
    #[arg(long, default_value_t = 1000)]
    pub max_topics: usize,
    /// Events each subscription keeps in memory; the rest wait in the log. Example: --queue-events 100
    #[arg(long, default_value_t = 1000)]
    pub queue_events: usize,
    /// Bytes each subscription keeps in memory; the rest wait in the log. Example: --queue-bytes 1048576
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub queue_bytes: usize,
    /// Log segment size in bytes; closed segments are compacted. Example: --segment-bytes 8388608
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub segment_bytes: u64,
    /// Seconds between compactions of closed segments. Example: --compact-secs 60
    #[arg(long, default_value_t = 10)]
    pub compact_secs: u64,
    /// Serves a live page of the topics, /metrics, /healthz and /readyz here (PORT means 127.0.0.1:PORT).
    #[arg(long, value_name = "ADDR", value_parser = crate::http::parse_addr)]
    pub http: Option<SocketAddr>,
}

impl BrokerArgs {
    /// The broker core's settings.
    pub fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            data_dir: self.data_dir.clone(),
            sync: self.sync,
            max_topics: self.max_topics,
            queue_events: self.queue_events,
            queue_bytes: self.queue_bytes,
            segment_bytes: self.segment_bytes,
            compact_interval: Duration::from_secs(self.compact_secs.max(1)),
        }
    }

    /// The TCP server's settings.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            addr: self.addr,
            token: self.token.clone(),
            max_line_bytes: self.max_line_bytes,
            max_connections: self.max_connections,
        }
    }
}

/// Runs `stageflow broker` until Ctrl-C.
pub async fn run_broker(args: BrokerArgs) -> Result<(), String> {
    let broker = Broker::open(args.broker_config()).await.map_err(|error| error.to_string())?;
    let server = serve(broker.clone(), args.server_config())
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.addr))?;
    let _http = match args.http {
        Some(addr) => {
            Some(crate::http::start_http(addr, crate::http::Observed::broker(broker.clone())).await?)
        }
        None => None,
    };
    println!("broker listening on {} (data in {})", server.local_addr(), args.data_dir.display());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tokio::signal::ctrl_c().await.map_err(|error| format!("cannot wait for Ctrl-C: {error}"))?;
    eprintln!("Ctrl-C: stopping the broker");
    server.shutdown().await;
    broker.shutdown().await;
    Ok(())
}
