//! One small HTTP server per process (`--http ADDR` on `run`, `serve` and
//! `broker`): Prometheus metrics, health, the graph and a live metrics
//! stream, taps on a stage's events, and a live page of the graph.
//!
//! Everything is read from what the engine, the sinks and the broker
//! already keep, when asked: the pipeline does no work for being watched
//! (taps cost one atomic load per batch while nobody taps).
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /` | the live page |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when every source is connected and nothing drains; 503 and the reasons otherwise |
//! | `GET /api/graph` | stages, kinds, edges, dispatchers (JSON) |
//! | `GET /api/metrics/stream` | server-sent events, one snapshot per second |
//! | `GET /tap/<stage>?limit=N&sample=R` | server-sent events, a sample of a stage's events as JSON |

pub mod api;
pub mod health;
pub mod metrics;
pub mod page;
pub mod tap;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use stageflow::config::{PipelineFile, Registry, Resources};
use stageflow::{MetricsReader, PipelineHandle, ShutdownTrigger, Taps};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::sync::lock;

/// Reads `--http`'s address: `HOST:PORT`, or a bare `PORT` on the loopback interface.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse::<SocketAddr>().map_err(|_| {
        format!("{text:?} is not an address: expected HOST:PORT (e.g. 127.0.0.1:9090) or a port (e.g. 9090)")
    })
}

/// What one running pipeline shows over HTTP.
#[derive(Clone)]
pub struct PipelineView {
    /// `[pipeline] name`.
    pub name: String,
    /// Its graph, as `/api/graph` serves it.
    pub graph: api::Graph,
    /// Its stages' metrics.
    pub metrics: MetricsReader,
    /// Taps on its stages' events.
    pub taps: Taps,
    /// Tells whether it is draining.
    pub shutdown: ShutdownTrigger,
    /// The edges cut to other processes (`run --part`), none by default.
    pub cuts: crate::cluster::CutReport,
    /// What its stages share (statistics hub, sinks), from its build context.
    pub resources: Resources,
}

impl PipelineView {
    /// The view of `handle`, the pipeline built from `file` with `registry`'s kinds and `resources`.
    pub fn new(
        file: &PipelineFile,
        registry: &Registry,
        handle: &PipelineHandle,
        resources: &Resources,
    ) -> Self {
        PipelineView {
            name: file.name.clone(),
            graph: api::Graph::of(file, registry),
            metrics: handle.metrics_reader(),
            taps: handle.taps(),
            shutdown: handle.shutdown_trigger(),
            cuts: crate::cluster::CutReport::default(),
            resources: resources.clone(),
        }
    }
}

/// What a process's HTTP server shows: its pipeline (which may come and go,
/// as in `serve`) and its broker, if it is one. Cheap to clone.
#[derive(Clone, Default)]
pub struct Observed {
    pipeline: Arc<Mutex<Option<PipelineView>>>,
    broker: Option<Broker>,
}

impl Observed {
    /// Shows nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Shows `pipeline`.
    pub fn pipeline(pipeline: PipelineView) -> Self {
        let observed = Self::new();
        observed.show(pipeline);
        observed
    }

    /// Shows `broker`'s topics and subscribers.
    pub fn broker(broker: Broker) -> Self {
        Observed { pipeline: Arc::default(), broker: Some(broker) }
    }

    /// Shows `pipeline` from now on (replacing an earlier one).
    pub fn show(&self, pipeline: PipelineView) {
        *self.slot() = Some(pipeline);
    }

    /// Shows no pipeline from now on.
    pub fn hide(&self) {
        *self.slot() = None;
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<PipelineView>> {
        lock(&self.pipeline)
    }

    /// The pipeline shown now.
    pub fn current(&self) -> Option<PipelineView> {
        self.slot().clone()
    }

    /// The broker shown, if any.
    pub fn broker_shown(&self) -> Option<&Broker> {
        self.broker.as_ref()
    }

    /// Everything `/metrics` reports, read now.
    pub fn scrape(&self) -> metrics::Scrape {
        let mut scrape = metrics::Scrape::default();
        if let Some(view) = self.current() {
            scrape.stages = view.metrics.snapshot();
            let written = view
                .resources
                .get::<crate::dead_letters::DeadLetterCounts>()
                .map(|counts| counts.snapshot())
                .unwrap_or_default();
            scrape.dead_lettered = crate::dead_letters::per_stage(&written, &scrape.stages);
            scrape.sinks = health::sinks_of(&view.resources);
            scrape.cuts = metrics::CutFigures::of(&view.cuts);
            scrape.pipeline = Some(view.name);
        }
        if let Some(broker) = &self.broker {
            scrape.topics = broker.stats(None).unwrap_or_default();
            scrape.subscribers = broker.subscriber_figures();
        }
        scrape
    }
}

/// The routes, over `observed`.
pub fn router(observed: Observed) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/api/graph", get(api::graph))
        .route("/api/metrics/stream", get(api::stream))
        .route("/tap/{stage}", get(tap::tap))
        .with_state(observed)
}

async fn metrics_handler(
    axum::extract::State(observed): axum::extract::State<Observed>,
) -> impl axum::response::IntoResponse {
    let text = metrics::render(observed.scrape());
    ([(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text)
}

/// A running HTTP server; dropping it stops it.
pub struct HttpServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// The address it listens on (with the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Its base URL, e.g. `http://127.0.0.1:9090`.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves `observed` until the returned server is dropped.
pub async fn start_http(addr: SocketAddr, observed: Observed) -> Result<HttpServer, String> {
    let listener =
        TcpListener::bind(addr).await.map_err(|error| format!("--http {addr}: cannot listen: {error}"))?;
    let local_addr = listener.local_addr().map_err(|error| format!("--http {addr}: {error}"))?;
    let app = router(observed);
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::warn!(%error, "the HTTP server stopped");
        }
    });
    tracing::info!("HTTP: live page, /metrics, /healthz, /readyz, /api and /tap at http://{local_addr}/");
    Ok(HttpServer { local_addr, task })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_bare_port_is_on_the_loopback_interface() {
        assert_eq!(parse_addr("9090"), Ok("127.0.0.1:9090".parse().expect("addr")));
        assert_eq!(parse_addr("0.0.0.0:80"), Ok("0.0.0.0:80".parse().expect("addr")));
        assert_eq!(parse_addr("[::1]:9090"), Ok("[::1]:9090".parse().expect("addr")));
        let error = parse_addr("localhost:x").expect_err("bad");
        assert!(error.contains("expected HOST:PORT"), "{error}");
        assert!(parse_addr("70000").is_err());
    }

    proptest! {
        #[test]
        fn any_text_is_read_or_refused_without_panicking(text in ".{0,24}") {
            let _ = parse_addr(&text);
        }
    }
}
