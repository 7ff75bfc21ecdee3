//! `GET /healthz` (the process serves) and `GET /readyz` (every source is
//! connected and nothing drains; 503 with the reasons otherwise), and where
//! the figures kept beside the engine's (sources, sinks) are read from.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::Observed;
use super::metrics::SinkFigures;
use stageflow::config::Resources;

use crate::analysis::StatsHub;
use crate::sse::SseStatsSnapshot;
use crate::storage::published_sinks;

/// The SSE sources of the pipeline built with `resources`, by stage id, with their counters now.
pub fn sources_of(resources: &Resources) -> Vec<(String, SseStatsSnapshot)> {
    resources.get::<StatsHub>().map(|hub| hub.sources()).unwrap_or_default()
}

/// The sinks of the pipeline built with `resources`, with their figures now.
pub fn sinks_of(resources: &Resources) -> Vec<SinkFigures> {
    published_sinks(resources)
        .into_iter()
        .map(|sink| SinkFigures {
            stage: sink.stage,
            counters: sink.metrics.counters(),
            inserts: sink.metrics.total(),
        })
        .collect()
}

/// Why a pipeline is not ready, or `Ok` when it is: nothing drains and every source is connected.
pub fn readiness(
    pipeline: &str,
    draining: bool,
    sources: &[(String, SseStatsSnapshot)],
) -> Result<(), Vec<String>> {
    let mut reasons = Vec::new();
    if draining {
        reasons.push(format!("pipeline '{pipeline}' is draining"));
    }
    for (stage, source) in sources {
        if source.connected {
            continue;
        }
        let state = if source.ended {
            "has ended".to_string()
        } else if source.connections_opened == 0 && source.last_error.is_none() {
            "is connecting".to_string()
        } else {
            "is not connected".to_string()
        };
        let error = source.last_error.as_ref().map(|error| format!(" ({error})")).unwrap_or_default();
        reasons.push(format!("source '{stage}' {state}{error}"));
    }
    if reasons.is_empty() { Ok(()) } else { Err(reasons) }
}

/// `GET /healthz`: the process is alive and serving.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 `ready`, or 503 with one reason per line.
pub async fn readyz(State(observed): State<Observed>) -> impl IntoResponse {
    let verdict = match observed.current() {
        Some(view) => readiness(&view.name, view.shutdown.is_requested(), &sources_of(&view.resources)),
        None => Ok(()),
    };
    match verdict {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reasons) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", reasons.join("; "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(connected: bool, opened: u64, error: Option<&str>, ended: bool) -> SseStatsSnapshot {
        SseStatsSnapshot {
            connected,
            connections_opened: opened,
            last_error: error.map(str::to_string),
            ended,
            ..Default::default()
        }
    }

    #[test]
    fn ready_when_every_source_is_connected_and_nothing_drains() {
        let sources = vec![("s1".to_string(), source(true, 1, None, false))];
        assert_eq!(readiness("p", false, &sources), Ok(()));
        assert_eq!(readiness("p", false, &[]), Ok(()), "a pipeline without SSE sources");
    }

    #[test]
    fn each_reason_is_named() {
        let sources = vec![
            ("s1".to_string(), source(true, 1, None, false)),
            ("s2".to_string(), source(false, 0, None, false)),
            ("s3".to_string(), source(false, 2, Some("http://x/tweets: connection refused"), false)),
            ("s4".to_string(), source(false, 1, None, true)),
        ];
        let reasons = readiness("tweets", true, &sources).expect_err("not ready");
        assert_eq!(
            reasons,
            vec![
                "pipeline 'tweets' is draining".to_string(),
                "source 's2' is connecting".to_string(),
                "source 's3' is not connected (http://x/tweets: connection refused)".to_string(),
                "source 's4' has ended".to_string(),
            ]
        );
    }
}
