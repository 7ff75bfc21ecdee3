//! Feeding dead letters back: `stageflow replay FILE --into PIPELINE --stage ID`.
//!
//! The pipeline file is cut down to stage `ID` and every stage downstream
//! of it; `ID` subscribes to a replay source instead of its producers, and
//! the source emits the events of `FILE`'s records of stage `ID` (turned
//! back from JSON into the stage's input type), then ends, so the run ends
//! once they are handled. Events that fail again are dead-lettered again
//! (to the stage's `dead_letter` target; for sinks by default
//! `dead-letters/<stage>.jsonl`).
//!
//! Stages taking SSE tweets, tweet flow, scored tweets or batches can be
//! fed. A stage that joins two inputs (the aggregator) gets only what is
//! replayed: its half-joined entries are evicted, as in any run.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use stageflow::config::{
    BuildContext, DispatcherChoices, Event, Kind, Location, PipelineFile, Registry, StageDecl,
    SubscriptionDecl, configure, settings,
};
use stageflow::ops::FromIter;
use stageflow::{DemandBounds, Nothing, Pipeline};

use super::{Record, read_records};
use crate::analysis::flow::{FlowTweet, TweetFlow};
use crate::scored::ScoredTweet;
use crate::sse::{SseEvent, TweetMessage};
use crate::storage::batcher::{Batch, DEFAULT_BATCH_SIZE};
use crate::tweet::Tweet;

/// An event type that dead letters hold as JSON and replay turns back.
pub trait Replayable: Event + Clone + Sized + Send + Sync + 'static {
    /// The event the JSON `event` of a dead letter stands for.
    fn from_json(value: &Value) -> Result<Self, String>;

    /// The events as replayed: as read, unless the type groups them.
    fn regroup(events: Vec<Self>) -> Vec<Self> {
        events
    }
}

fn tweet_of(value: &Value) -> Result<Tweet, String> {
    let tweet = value.get("tweet").ok_or("no \"tweet\" field")?;
    serde_json::from_value(tweet.clone()).map_err(|error| format!("\"tweet\" is not a tweet: {error}"))
}

fn is_kill(value: &Value) -> bool {
    value.get("kill").and_then(Value::as_bool) == Some(true)
}

impl Replayable for SseEvent {
    fn from_json(value: &Value) -> Result<Self, String> {
        let id = value.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let message =
            if is_kill(value) { TweetMessage::Kill } else { TweetMessage::Tweet(Box::new(tweet_of(value)?)) };
        Ok(SseEvent { id, message })
    }
}

impl Replayable for TweetFlow {
    fn from_json(value: &Value) -> Result<Self, String> {
        if is_kill(value) {
            return Ok(TweetFlow::Kill);
        }
        let extracted = value.get("extracted").and_then(Value::as_bool).unwrap_or(false);
        Ok(TweetFlow::Tweet(FlowTweet::new(tweet_of(value)?, extracted)))
    }
}

impl Replayable for ScoredTweet {
    fn from_json(value: &Value) -> Result<Self, String> {
        serde_json::from_value(value.clone()).map_err(|error| format!("not a scored tweet: {error}"))
    }
}

impl Replayable for Batch {
    /// A batch (`{"tweets": [...]}`) or one scored tweet (what a sink dead-letters).
    fn from_json(value: &Value) -> Result<Self, String> {
        match value.get("tweets") {
            Some(Value::Array(tweets)) => {
                Ok(Batch::new(tweets.iter().map(ScoredTweet::from_json).collect::<Result<_, _>>()?))
            }
            _ => Ok(Batch::new(vec![ScoredTweet::from_json(value)?])),
        }
    }

    /// Single tweets (a sink's letters) are stored again in batches of up to the batcher's default size.
    fn regroup(events: Vec<Self>) -> Vec<Self> {
        let tweets: Vec<ScoredTweet> =
            events.iter().flat_map(|batch| batch.tweets().iter().cloned()).collect();
        tweets.chunks(DEFAULT_BATCH_SIZE).map(|chunk| Batch::new(chunk.to_vec())).collect()
    }
}

/// The JSON of a tweet-carrying event, as the `Event::to_json` impls write it.
pub fn tweet_json(tweet: &Tweet, extra: Value) -> Option<String> {
    let mut object = json!({ "tweet": tweet });
    if let (Value::Object(target), Value::Object(fields)) = (&mut object, extra) {
        target.extend(fields);
    }
    serde_json::to_string(&object).ok()
}

/// The events of `records` (those of stage `stage`) as `T`s; errors name the file and record.
pub fn events_of<T: Replayable>(records: &[Record], stage: &str, file: &Path) -> Result<Vec<T>, String> {
    let mut events = Vec::new();
    for (index, record) in records.iter().enumerate().filter(|(_, record)| record.stage == stage) {
        let event = T::from_json(&record.event).map_err(|why| {
            format!("{}: record {}: cannot replay its event: {why}", file.display(), index + 1)
        })?;
        events.push(event);
    }
    Ok(events)
}

/// Builds a replay source stage of `T`s read from `file`'s records of `stage`.
fn build_replay<T: Replayable>(
    decl: &StageDecl,
    pipeline: &mut Pipeline,
    context: &BuildContext,
    file: &str,
    stage: &str,
) -> Result<(), String> {
    let path = context.data_dir.join(file);
    let events: Arc<Vec<T>> = Arc::new(T::regroup(events_of(&read_records(&path)?, stage, &path)?));
    let config = pipeline.producer(&decl.id, move || FromIter::new(Vec::clone(&events).into_iter()));
    configure(decl, config, &DispatcherChoices::demand_only(), None)
}

macro_rules! replay_kind {
    ($kind:ident, $name:literal, $event:ty, $doc:literal) => {
        #[doc = $doc]
        #[settings]
        pub struct $kind {
            /// the dead-letter file (JSONL), relative to the data directory
            file: String,
            /// replay the records of this stage
            stage: String,
        }

        impl Kind for $kind {
            const NAME: &'static str = $name;
            type In = Nothing;
            type Out = $event;

            fn build(
                self,
                decl: &StageDecl,
                pipeline: &mut Pipeline,
                context: &BuildContext,
            ) -> Result<(), String> {
                build_replay::<$event>(decl, pipeline, context, &self.file, &self.stage)
            }
        }
    };
}

replay_kind!(
    ReplaySseKind,
    "replay_sse",
    SseEvent,
    "emits the SSE tweets of a dead-letter file's records of one stage, then ends"
);
replay_kind!(
    ReplayFlowKind,
    "replay_flow",
    TweetFlow,
    "emits the tweet flow events of a dead-letter file's records of one stage, then ends"
);
replay_kind!(
    ReplayScoredKind,
    "replay_scored",
    ScoredTweet,
    "emits the scored tweets of a dead-letter file's records of one stage, then ends"
);
replay_kind!(
    ReplayBatchKind,
    "replay_batches",
    Batch,
    "emits the batches (or single scored tweets) of a dead-letter file's records of one stage, then ends"
);

/// The replay kind feeding events of type `name`, if there is one.
fn replay_kind_for(name: &str) -> Option<&'static str> {
    [
        (<SseEvent as Event>::NAME, ReplaySseKind::NAME),
        (<TweetFlow as Event>::NAME, ReplayFlowKind::NAME),
        (<ScoredTweet as Event>::NAME, ReplayScoredKind::NAME),
        (<Batch as Event>::NAME, ReplayBatchKind::NAME),
    ]
    .into_iter()
    .find_map(|(event, kind)| (event == name).then_some(kind))
}

/// `file` cut down to stage `stage` and what is downstream of it, `stage`
/// fed by a replay source reading `letters` (an absolute path, or relative to the data directory).
pub fn replay_file(
    registry: &Registry,
    file: &PipelineFile,
    letters: &Path,
    stage: &str,
) -> Result<PipelineFile, String> {
    let Some(target) = file.stages.iter().find(|decl| decl.id == stage) else {
        let ids: Vec<&str> = file.stages.iter().map(|decl| decl.id.as_str()).collect();
        return Err(format!(
            "{} has no stage '{stage}'; its stages are: {}",
            file.path.display(),
            ids.join(", ")
        ));
    };
    let input = registry.kind(&target.kind).and_then(|kind| kind.input());
    let Some(kind) = input.and_then(|input| replay_kind_for(input.name)) else {
        let takes = input.map_or("no", |input| input.name);
        return Err(format!(
            "stage '{stage}' (kind \"{}\") takes {takes} events: replay can feed stages taking SSE tweet, tweet flow, scored tweet or batch events",
            target.kind
        ));
    };
    // The stage and everything downstream of it.
    let mut keep: HashSet<&str> = HashSet::from([stage]);
    let mut queue = VecDeque::from([stage]);
    while let Some(id) = queue.pop_front() {
        for decl in &file.stages {
            if !keep.contains(decl.id.as_str()) && decl.subscribe_to.iter().any(|s| s.producer == id) {
                keep.insert(&decl.id);
                queue.push_back(&decl.id);
            }
        }
    }
    let mut source_id = "replay".to_string();
    while file.stages.iter().any(|decl| decl.id == source_id) {
        source_id.push('_');
    }
    let at = target.location;
    let setting = |key: &str, value: String| stageflow::config::Setting {
        key: key.to_string(),
        value: toml::Value::String(value),
        location: at,
    };
    let source = StageDecl {
        settings: vec![setting("file", letters.display().to_string()), setting("stage", stage.to_string())],
        ..StageDecl::new(&source_id, kind, at)
    };
    let mut stages = vec![source];
    for decl in file.stages.iter().filter(|decl| keep.contains(decl.id.as_str())) {
        let mut decl = decl.clone();
        if decl.id == stage {
            let bounds = decl.subscribe_to.first().map_or(DemandBounds::default(), |s| s.bounds);
            decl.subscribe_to =
                vec![SubscriptionDecl { bounds, ..SubscriptionDecl::to(&source_id, Location::default()) }];
        } else {
            decl.subscribe_to.retain(|s| keep.contains(s.producer.as_str()));
        }
        decl.part = None;
        stages.push(decl);
    }
    let replayed = PipelineFile {
        path: file.path.clone(),
        name: file.name.clone(),
        settings: file.settings.clone(),
        stages,
        cluster: None,
    };
    registry.check(&replayed).map_err(|errors| format!("the replay pipeline: {errors}"))?;
    Ok(replayed)
}

/// `letters` as the replay source reads it: absolute, so the data directory does not move it.
pub fn absolute(letters: &Path) -> Result<PathBuf, String> {
    if !letters.is_file() {
        return Err(format!("{}: no such dead-letter file", letters.display()));
    }
    std::path::absolute(letters).map_err(|error| format!("{}: {error}", letters.display()))
}
