//! The `null` sink: counts what it is given and stores nothing (for benchmarks).

use super::documents::{DocumentForm, SplitBatch};
use super::{EngagementFlush, FlushId, Inserted, Sink, SinkError};
use stageflow::config::{BuildContext, Kind, Signature, StageDecl, kind};
use stageflow::{Nothing, Pipeline};

use super::batcher::Batch;
use super::{SinkOptions, build_sink};

/// Takes every batch at once and keeps nothing; every tweet counts as new.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl Sink for NullSink {
    const DOCUMENTS: DocumentForm = DocumentForm::Keys;
    const STORES_ENGAGEMENT: bool = false;

    async fn insert(&mut self, batch: &SplitBatch, _: &FlushId) -> Result<Inserted, SinkError> {
        Ok(Inserted {
            new_tweets: (0..batch.tweets.len()).collect(),
            new_users: batch.users.len(),
            ..Inserted::default()
        })
    }

    async fn add_engagements(&mut self, _: &EngagementFlush) -> Result<(), SinkError> {
        Ok(())
    }
}

/// counts batches of scored tweets and discards them (for benchmarks)
#[kind("null_sink", Batch -> Nothing)]
pub struct NullSinkKind {}

impl Kind for NullSinkKind {
    fn build(self, stage: &StageDecl, pipeline: &mut Pipeline, context: &BuildContext) -> Result<(), String> {
        build_sink(stage, pipeline, context, Self::NAME, SinkOptions::default(), || NullSink)
    }
}
