//! `GET /tap/<stage>?limit=N&sample=R`: server-sent events carrying a sample
//! of the events a stage emits, as JSON, and `stageflow tap URL STAGE`, which
//! prints them (like `vector tap`).
//!
//! The engine's tap holds a small bounded buffer and drops (and counts) what
//! the watcher is too slow for, so a tap never slows the stage. Each event is
//! a `data:` line of JSON; an `event: dropped` (at most once a second) says
//! how many were dropped so far, and `event: end` closes the stream (limit
//! reached or stage ended) with the final count.

use std::any::TypeId;
use std::collections::HashMap;
use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use stageflow::{TapOptions, TapStream, Taps};

use super::Observed;
use crate::analysis::{StatsFrame, TweetFlow, TweetScore};
use crate::scored::ScoredTweet;
use crate::sse::{SseEvent, TweetMessage};
use crate::storage::batcher::Batch;

/// Rendered events a tap holds for a slow watcher before it drops.
const TAP_CAPACITY: usize = 256;

/// Least time between two `dropped` notices of one tap.
const DROP_NOTICE_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// The keys `/tap/<stage>` takes.
const QUERY_KEYS: [&str; 2] = ["limit", "sample"];

/// Reads `limit` and `sample` from a tap's query; the error says which key and what was expected.
pub fn parse_query(query: &HashMap<String, String>) -> Result<TapOptions, String> {
    let mut options = TapOptions { capacity: TAP_CAPACITY, ..TapOptions::default() };
    for (key, value) in query {
        match key.as_str() {
            "limit" => match value.parse::<u64>() {
                Ok(limit) if limit > 0 => options.limit = Some(limit),
                _ => {
                    return Err(format!(
                        "limit must be a whole number of events, at least 1 (got {value:?})"
                    ));
                }
            },
            "sample" => match value.parse::<f64>() {
                Ok(sample) if sample > 0.0 && sample <= 1.0 => options.sample = sample,
                _ => {
                    return Err(format!(
                        "sample must be the share of events to keep, above 0 and at most 1, e.g. 0.1 (got {value:?})"
                    ));
                }
            },
            other => {
                return Err(format!("unknown parameter {other:?}; a tap takes {}", QUERY_KEYS.join(", ")));
            }
        }
    }
    Ok(options)
}

fn tweet_message(message: &TweetMessage) -> Value {
    match message {
        TweetMessage::Tweet(tweet) => json!({ "tweet": tweet }),
        TweetMessage::Kill => json!({ "kill": true }),
    }
}

/// A renderer per event type the stage kinds emit, as JSON.
type Attach = fn(&Taps, &str, TapOptions) -> Result<TapStream, String>;

fn attach_json<T: Send + 'static>(
    taps: &Taps,
    stage: &str,
    options: TapOptions,
    render: fn(&T) -> Value,
) -> Result<TapStream, String> {
    taps.attach(stage, move |event: &T| render(event).to_string(), options)
}

fn renderers() -> [(TypeId, Attach); 8] {
    [
        (TypeId::of::<u64>(), |t, s, o| attach_json::<u64>(t, s, o, |n| json!(n))),
        (TypeId::of::<String>(), |t, s, o| attach_json::<String>(t, s, o, |text| json!(text))),
        (TypeId::of::<SseEvent>(), |t, s, o| {
            attach_json::<SseEvent>(t, s, o, |event| {
                let mut value = tweet_message(&event.message);
                value["id"] = json!(event.id);
                value
            })
        }),
        (TypeId::of::<TweetFlow>(), |t, s, o| {
            attach_json::<TweetFlow>(t, s, o, |flow| match flow {
                TweetFlow::Tweet(tweet) => {
                    json!({ "seq": tweet.seq, "extracted": tweet.extracted, "tweet": tweet.tweet.as_ref() })
                }
                TweetFlow::Kill => json!({ "kill": true }),
            })
        }),
        (TypeId::of::<TweetScore>(), |t, s, o| {
            attach_json::<TweetScore>(t, s, o, |scored| {
                let (name, value) = match scored.score {
                    crate::analysis::Score::Sentiment(value) => ("sentiment", value),
                    crate::analysis::Score::Engagement(value) => ("engagement", value),
                };
                json!({ "seq": scored.tweet.seq, "id_str": scored.tweet.tweet.id_str, name: value })
            })
        }),
        (TypeId::of::<ScoredTweet>(), |t, s, o| attach_json::<ScoredTweet>(t, s, o, |tweet| json!(tweet))),
        (TypeId::of::<Batch>(), |t, s, o| {
            attach_json::<Batch>(t, s, o, |batch| json!({ "size": batch.len(), "tweets": batch.tweets() }))
        }),
        (TypeId::of::<StatsFrame>(), |t, s, o| attach_json::<StatsFrame>(t, s, o, |frame| json!(frame))),
    ]
}

/// Attaches a JSON tap to `stage`, whatever kind of events it emits; the error says why not.
pub fn attach(taps: &Taps, stage: &str, options: TapOptions) -> Result<TapStream, (StatusCode, String)> {
    let Some(output) = taps.output_type(stage) else {
        // Let the engine say whether it is unknown or a consumer.
        let why = taps.attach(stage, |_: &()| String::new(), options).err().unwrap_or_default();
        let status =
            if why.starts_with("no stage") { StatusCode::NOT_FOUND } else { StatusCode::BAD_REQUEST };
        return Err((status, why));
    };
    let (_, attach) = renderers().into_iter().find(|(id, _)| *id == output).ok_or_else(|| {
        (StatusCode::BAD_REQUEST, format!("stage '{stage}' emits events this program cannot show as JSON"))
    })?;
    attach(taps, stage, options).map_err(|why| (StatusCode::CONFLICT, why))
}

/// `GET /tap/<stage>?limit=N&sample=R`.
pub async fn tap(
    State(observed): State<Observed>,
    Path(stage): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let options = match parse_query(&query) {
        Ok(options) => options,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    };
    let Some(view) = observed.current() else {
        return (StatusCode::NOT_FOUND, "no pipeline is running in this process\n").into_response();
    };
    match attach(&view.taps, &stage, options) {
        Ok(stream) => Sse::new(events(stream)).keep_alive(KeepAlive::default()).into_response(),
        Err((status, why)) => (status, format!("{why}\n")).into_response(),
    }
}

/// The SSE events of one tap: data, drop notices (at most one per [`DROP_NOTICE_PERIOD`]), and an end notice.
fn events(stream: TapStream) -> impl Stream<Item = Result<Event, Infallible>> {
    let start = (Some(stream), 0u64, std::time::Instant::now());
    futures::stream::unfold(start, |(stream, reported, noticed)| async move {
        let mut stream = stream?;
        let next = stream.next().await;
        let dropped = stream.dropped();
        let mut batch = Vec::new();
        let mut state = (reported, noticed);
        if dropped > reported && (next.is_none() || noticed.elapsed() >= DROP_NOTICE_PERIOD) {
            batch.push(Event::default().event("dropped").data(json!({ "dropped": dropped }).to_string()));
            state = (dropped, std::time::Instant::now());
        }
        match next {
            Some(data) => {
                batch.push(Event::default().data(data));
                Some((batch, (Some(stream), state.0, state.1)))
            }
            None => {
                batch.push(Event::default().event("end").data(json!({ "dropped": dropped }).to_string()));
                Some((batch, (None, state.0, state.1)))
            }
        }
    })
    .flat_map(|batch| futures::stream::iter(batch.into_iter().map(Ok)))
}

/// The URL of a tap on `stage` at the server `base` (`http://host:port`, with or without a trailing `/`).
pub fn tap_url(
    base: &str,
    stage: &str,
    limit: Option<u64>,
    sample: Option<f64>,
) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(base)
        .map_err(|error| format!("{base:?} is not a URL ({error}); expected e.g. http://127.0.0.1:9090"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{base:?}: expected an http:// URL"));
    }
    url.path_segments_mut()
        .map_err(|_| format!("{base:?}: expected an http:// URL"))?
        .pop_if_empty()
        .push("tap")
        .push(stage);
    {
        let mut query = url.query_pairs_mut();
        if let Some(limit) = limit {
            query.append_pair("limit", &limit.to_string());
        }
        if let Some(sample) = sample {
            query.append_pair("sample", &sample.to_string());
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    Ok(url)
}

/// `stageflow tap`: prints each tapped event as one line of JSON on stdout
/// until the limit, the stage's end or Ctrl-C; drop notices go to stderr.
pub async fn run_tap(
    base: &str,
    stage: &str,
    limit: Option<u64>,
    sample: Option<f64>,
    mut out: impl std::io::Write,
) -> Result<(), String> {
    use reqwest_eventsource::{Error as SourceError, Event as SourceEvent, EventSource, retry::Never};
    let url = tap_url(base, stage, limit, sample)?;
    let mut source = EventSource::get(url.clone());
    source.set_retry_policy(Box::new(Never));
    while let Some(item) = source.next().await {
        match item {
            Ok(SourceEvent::Open) => {}
            Ok(SourceEvent::Message(message)) => match message.event.as_str() {
                "dropped" => eprintln!(
                    "tap: {} events dropped so far (this reader is slower than the stage)",
                    dropped_of(&message.data)
                ),
                "end" => {
                    eprintln!("tap: ended ({} dropped)", dropped_of(&message.data));
                    break;
                }
                _ => match writeln!(out, "{}", message.data) {
                    Ok(()) => {}
                    // The reader went away (e.g. `| head`): that is the end, not a failure.
                    Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => break,
                    Err(error) => return Err(format!("cannot write: {error}")),
                },
            },
            Err(SourceError::StreamEnded) => break,
            Err(SourceError::InvalidStatusCode(status, response)) => {
                let body = response.text().await.unwrap_or_default();
                return Err(format!("{url}: HTTP {status}: {}", body.trim()));
            }
            Err(error) => return Err(format!("{url}: {error}")),
        }
    }
    source.close();
    Ok(())
}

fn dropped_of(data: &str) -> u64 {
    serde_json::from_str::<Value>(data).ok().and_then(|v| v["dropped"].as_u64()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn limit_and_sample_are_read_and_default_to_everything() {
        let options = parse_query(&query(&[("limit", "20"), ("sample", "0.25")])).expect("valid");
        assert_eq!((options.limit, options.sample), (Some(20), 0.25));
        let options = parse_query(&query(&[])).expect("valid");
        assert_eq!((options.limit, options.sample, options.capacity), (None, 1.0, TAP_CAPACITY));
    }

    #[test]
    fn bad_parameters_are_named_with_what_was_expected() {
        let error = |pairs: &[(&str, &str)]| parse_query(&query(pairs)).expect_err("refused");
        assert!(error(&[("limit", "0")]).contains("limit must be"));
        assert!(error(&[("limit", "ten")]).contains("\"ten\""));
        assert!(error(&[("sample", "2")]).contains("sample must be"));
        assert!(error(&[("sample", "0")]).contains("sample must be"));
        assert!(error(&[("samples", "0.5")]).contains("unknown parameter \"samples\""));
    }

    proptest! {
        #[test]
        fn any_query_is_read_or_refused_without_panicking(key in "[a-z]{0,8}", value in ".{0,12}") {
            let _ = parse_query(&query(&[(key.as_str(), value.as_str())]));
        }
    }

    #[test]
    fn tap_urls_are_built_from_a_base_with_or_without_a_slash() {
        let url = tap_url("http://127.0.0.1:9090", "tweets", Some(5), Some(0.5)).expect("url");
        assert_eq!(url.as_str(), "http://127.0.0.1:9090/tap/tweets?limit=5&sample=0.5");
        let url = tap_url("http://127.0.0.1:9090/", "a b", None, None).expect("url");
        assert_eq!(url.as_str(), "http://127.0.0.1:9090/tap/a%20b");
        assert!(tap_url("127.0.0.1:9090", "s", None, None).expect_err("no scheme").contains("expected"));
        assert!(tap_url("not a url", "s", None, None).expect_err("bad").contains("not a URL"));
    }

    #[test]
    fn every_renderer_is_for_a_different_type() {
        let mut ids: Vec<TypeId> = renderers().iter().map(|(id, _)| *id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), renderers().len());
    }
}
