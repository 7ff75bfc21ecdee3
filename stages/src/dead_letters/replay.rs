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
//! fed. A stage whose input has no JSON form to replay (the aggregator,
//! which joins the sentiment and engagement scores of a tweet) is fed
//! through the stages its inputs come from: the tweets of its records go,
//! once per tweet, to the nearest stages upstream that take a replayable
//! event (`sentiment` and `engagement`), so both halves of each join are
//! made again — a record holds only one half, which the join alone would
//! evict. [`replay_plan`] says which stages are fed and why.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use stageflow::config::{
    BuildContext, DispatcherChoices, DispatcherDecl, Event, Kind, Location, PipelineFile, Registry,
    Signature, StageDecl, SubscriptionDecl, configure, kind,
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

    /// The tweet an event is about, when it is about one (replay through a
    /// join feeds each tweet once, however many of its halves were letters).
    fn tweet_id(&self) -> Option<&str> {
        None
    }

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

    fn tweet_id(&self) -> Option<&str> {
        match self {
            TweetFlow::Tweet(flow) => Some(flow.tweet.id_str.as_str()),
            TweetFlow::Kill => None,
        }
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

/// `events` with only the first event of each tweet (events about no tweet all kept).
pub fn once_per_tweet<T: Replayable>(events: Vec<T>) -> Vec<T> {
    let mut seen = HashSet::new();
    events.into_iter().filter(|event| event.tweet_id().is_none_or(|id| seen.insert(id.to_string()))).collect()
}

/// Builds a replay source stage of `T`s read from `file`'s records of `stage`.
fn build_replay<T: Replayable>(
    decl: &StageDecl,
    pipeline: &mut Pipeline,
    context: &BuildContext,
    file: &str,
    stage: &str,
    per_tweet: bool,
) -> Result<(), String> {
    let path = context.data_dir.join(file);
    let mut events = events_of(&read_records(&path)?, stage, &path)?;
    if per_tweet {
        events = once_per_tweet(events);
    }
    let events: Arc<Vec<T>> = Arc::new(T::regroup(events));
    let config = pipeline.producer(&decl.id, move || FromIter::new(Vec::clone(&events).into_iter()));
    configure(decl, config, &DispatcherChoices::cloneable(), None)
}

macro_rules! replay_kind {
    ($kind:ident, $name:literal, $event:ty, $doc:literal) => {
        #[doc = $doc]
        #[kind($name, Nothing -> $event)]
        pub struct $kind {
            /// the dead-letter file (JSONL), relative to the data directory
            file: String,
            /// replay the records of this stage
            stage: String,
            /// feed each tweet once (a join's letters hold its two halves apart; default false)
            #[default(false)]
            once_per_tweet: bool,
        }

        impl Kind for $kind {
            fn build(
                self,
                decl: &StageDecl,
                pipeline: &mut Pipeline,
                context: &BuildContext,
            ) -> Result<(), String> {
                build_replay::<$event>(decl, pipeline, context, &self.file, &self.stage, self.once_per_tweet)
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

/// Which stages a replay of stage `stage`'s letters feeds, and with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayPlan {
    /// The stages fed by the replay source: `stage` itself, or the nearest
    /// stages upstream of it that take a replayable event.
    pub fed: Vec<String>,
    /// The replay kind of the source (`replay_sse`, `replay_flow`, ...).
    pub kind: &'static str,
    /// Why `fed` is not `stage` itself, for the user (`None` when it is).
    pub note: Option<String>,
}

/// The event type a stage takes, by its kind's name.
fn input_of(registry: &Registry, decl: &StageDecl) -> Option<&'static str> {
    registry.kind(&decl.kind).and_then(|kind| kind.input()).map(|input| input.name)
}

/// How to replay `stage`'s letters into `file`: into `stage` when its input
/// can be replayed; otherwise into the nearest stages upstream of it that
/// take one replayable event type (a join such as the aggregator, whose
/// letters each hold one half of a tweet's scores, is fed the tweets again
/// through the stages that score them).
pub fn replay_plan(registry: &Registry, file: &PipelineFile, stage: &str) -> Result<ReplayPlan, String> {
    let find = |id: &str| file.stages.iter().find(|decl| decl.id == id);
    let Some(target) = find(stage) else {
        let ids: Vec<&str> = file.stages.iter().map(|decl| decl.id.as_str()).collect();
        return Err(format!(
            "{} has no stage '{stage}'; its stages are: {}",
            file.path.display(),
            ids.join(", ")
        ));
    };
    let takes = input_of(registry, target);
    if let Some(kind) = takes.and_then(replay_kind_for) {
        return Ok(ReplayPlan { fed: vec![stage.to_string()], kind, note: None });
    }
    let cannot = |why: String| {
        format!(
            "stage '{stage}' (kind \"{}\") takes {} events, which replay cannot turn back from JSON, {why}; \
             replay can feed stages taking SSE tweet, tweet flow, scored tweet or batch events: \
             give --stage one of those, or fix the cause and let the source send the events again",
            target.kind,
            takes.unwrap_or("no"),
        )
    };
    if target.subscribe_to.is_empty() {
        return Err(cannot("and it subscribes to no stage to feed instead".into()));
    }
    // Walk up from each input to the first stage taking a replayable event.
    let mut fed: Vec<String> = Vec::new();
    let mut kinds: Vec<(&str, &str)> = Vec::new();
    let mut queue: VecDeque<&str> = target.subscribe_to.iter().map(|s| s.producer.as_str()).collect();
    let mut seen: HashSet<&str> = HashSet::from([stage]);
    while let Some(id) = queue.pop_front() {
        if !seen.insert(id) {
            continue;
        }
        let Some(decl) = find(id) else { continue };
        let input = input_of(registry, decl);
        match input.and_then(replay_kind_for) {
            Some(kind) => {
                fed.push(id.to_string());
                kinds.push((id, kind));
            }
            None if decl.subscribe_to.is_empty() => {
                return Err(cannot(format!(
                    "and '{id}' upstream of it takes {} events with no replayable stage before it",
                    input.unwrap_or("no")
                )));
            }
            None => queue.extend(decl.subscribe_to.iter().map(|s| s.producer.as_str())),
        }
    }
    let kind = kinds[0].1;
    if let Some((other, _)) = kinds.iter().find(|(_, k)| *k != kind) {
        return Err(cannot(format!(
            "and the stages it is fed through take different events ('{}' and '{other}')",
            kinds[0].0
        )));
    }
    fed.sort();
    let note = format!(
        "stage '{stage}' takes {} events, which replay cannot turn back from JSON{}: \
         the tweets of its letters are fed, once per tweet, into {} instead, and flow on to '{stage}'",
        takes.unwrap_or("no"),
        if target.subscribe_to.len() > 1 {
            " (it joins several inputs; a letter holds one of them)"
        } else {
            ""
        },
        fed.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(" and "),
    );
    Ok(ReplayPlan { fed, kind, note: Some(note) })
}

/// `file` cut down to what `plan` feeds, what lies between it and stage
/// `stage`, and what is downstream of `stage`; the fed stages subscribe to
/// a replay source reading `letters` (an absolute path, or relative to the
/// data directory) instead of their producers.
pub fn replay_file(
    registry: &Registry,
    file: &PipelineFile,
    letters: &Path,
    stage: &str,
) -> Result<PipelineFile, String> {
    let plan = replay_plan(registry, file, stage)?;
    let downstream_of = |from: &[&str]| -> HashSet<String> {
        let mut reached: HashSet<String> = from.iter().map(|id| id.to_string()).collect();
        let mut queue: VecDeque<String> = reached.iter().cloned().collect();
        while let Some(id) = queue.pop_front() {
            for decl in &file.stages {
                if !reached.contains(&decl.id) && decl.subscribe_to.iter().any(|s| s.producer == id) {
                    reached.insert(decl.id.clone());
                    queue.push_back(decl.id.clone());
                }
            }
        }
        reached
    };
    let upstream_of_stage = {
        let mut reached: HashSet<String> = HashSet::from([stage.to_string()]);
        let mut queue = VecDeque::from([stage.to_string()]);
        while let Some(id) = queue.pop_front() {
            if let Some(decl) = file.stages.iter().find(|decl| decl.id == id) {
                for producer in decl.subscribe_to.iter().map(|s| &s.producer) {
                    if reached.insert(producer.clone()) {
                        queue.push_back(producer.clone());
                    }
                }
            }
        }
        reached
    };
    let fed: Vec<&str> = plan.fed.iter().map(String::as_str).collect();
    // The fed stages, the stages between them and `stage`, and everything downstream of `stage`.
    let keep: HashSet<String> = downstream_of(&fed)
        .into_iter()
        .filter(|id| upstream_of_stage.contains(id))
        .chain(downstream_of(&[stage]))
        .collect();
    let mut source_id = "replay".to_string();
    while file.stages.iter().any(|decl| decl.id == source_id) {
        source_id.push('_');
    }
    let at = file.stages.iter().find(|decl| decl.id == stage).map(|decl| decl.location).unwrap_or_default();
    let setting = |key: &str, value: toml::Value| stageflow::config::Setting {
        key: key.to_string(),
        value,
        location: at,
    };
    let mut source = StageDecl {
        settings: vec![
            setting("file", toml::Value::String(letters.display().to_string())),
            setting("stage", toml::Value::String(stage.to_string())),
        ],
        ..StageDecl::new(&source_id, plan.kind, at)
    };
    if plan.note.is_some() {
        source.settings.push(setting("once_per_tweet", toml::Value::Boolean(true)));
    }
    if fed.len() > 1 {
        source.dispatcher = Some((DispatcherDecl::Broadcast, at));
    }
    let mut stages = vec![source];
    for decl in file.stages.iter().filter(|decl| keep.contains(&decl.id)) {
        let mut decl = decl.clone();
        if fed.contains(&decl.id.as_str()) {
            let bounds = decl.subscribe_to.first().map_or(DemandBounds::default(), |s| s.bounds);
            decl.subscribe_to =
                vec![SubscriptionDecl { bounds, ..SubscriptionDecl::to(&source_id, Location::default()) }];
        } else {
            decl.subscribe_to.retain(|s| keep.contains(&s.producer));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tweets_pipeline() -> (Registry, PipelineFile) {
        let registry = crate::registry();
        let file = crate::pipelines::load(&registry, Path::new("tweets"), &[], &Default::default())
            .expect("the built-in tweets pipeline");
        (registry, file)
    }

    fn ids(file: &PipelineFile) -> Vec<&str> {
        let mut ids: Vec<&str> = file.stages.iter().map(|decl| decl.id.as_str()).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn a_stage_taking_a_replayable_event_is_fed_itself() {
        let (registry, file) = tweets_pipeline();
        let plan = replay_plan(&registry, &file, "store").unwrap();
        assert_eq!(plan, ReplayPlan { fed: vec!["store".into()], kind: "replay_batches", note: None });
        let replayed = replay_file(&registry, &file, Path::new("/letters.jsonl"), "store").unwrap();
        assert_eq!(ids(&replayed), ["replay", "store"]);
    }

    #[test]
    fn a_join_is_fed_through_the_stages_that_make_its_inputs_once_per_tweet() {
        let (registry, file) = tweets_pipeline();
        let plan = replay_plan(&registry, &file, "aggregator").unwrap();
        assert_eq!(
            (plan.fed.clone(), plan.kind),
            (vec!["engagement".into(), "sentiment".into()], "replay_flow")
        );
        let note = plan.note.unwrap();
        assert!(
            note.contains("it joins several inputs") && note.contains("'engagement' and 'sentiment'"),
            "{note}"
        );
        let replayed = replay_file(&registry, &file, Path::new("/letters.jsonl"), "aggregator").unwrap();
        // Not the logger or hashtags: they are not on the way to the aggregator.
        assert_eq!(ids(&replayed), ["aggregator", "batcher", "engagement", "replay", "sentiment", "store"]);
        let source = &replayed.stages[0];
        assert_eq!(source.dispatcher.as_ref().map(|(d, _)| *d), Some(DispatcherDecl::Broadcast));
        assert!(
            source
                .settings
                .iter()
                .any(|s| s.key == "once_per_tweet" && s.value == toml::Value::Boolean(true))
        );
        for fed in ["sentiment", "engagement"] {
            let decl = replayed.stages.iter().find(|decl| decl.id == fed).unwrap();
            let producers: Vec<&str> = decl.subscribe_to.iter().map(|s| s.producer.as_str()).collect();
            assert_eq!(producers, ["replay"], "{fed}");
        }
    }

    #[test]
    fn a_stage_nothing_can_feed_is_refused_saying_why_and_what_to_do() {
        let (registry, file) = tweets_pipeline();
        let error = replay_plan(&registry, &file, "stream1").unwrap_err();
        assert!(error.starts_with("stage 'stream1' (kind \"sse\") takes no events"), "{error}");
        assert!(
            error.contains("subscribes to no stage") && error.contains("give --stage one of those"),
            "{error}"
        );
        let error = replay_plan(&registry, &file, "nope").unwrap_err();
        assert!(error.contains("has no stage 'nope'; its stages are: stream1, stream2, tweets"), "{error}");
    }

    #[test]
    fn once_per_tweet_keeps_the_first_event_of_each_tweet_and_every_kill() {
        let flow =
            |id: &str| TweetFlow::Tweet(FlowTweet::new(crate::analysis::flow::tests::tweet(id, "hi"), false));
        let events = vec![flow("1"), TweetFlow::Kill, flow("2"), flow("1"), TweetFlow::Kill];
        let kept: Vec<Option<String>> =
            once_per_tweet(events).iter().map(|event| event.tweet_id().map(str::to_string)).collect();
        assert_eq!(kept, [Some("1".into()), None, Some("2".into()), None]);
    }
}
