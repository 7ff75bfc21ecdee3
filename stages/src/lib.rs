//! Domain stages of stageflow and the pieces of the `stageflow` command.
//!
//! Each area holds its stages and, beside each stage, its kind: the settings
//! struct a pipeline file's `[[stage]]` table deserialises into (see
//! [`stageflow::config::Kind`] for how to write one). [`registry`] lists them
//! all; the events that flow between them are in [`events`].

#![warn(missing_docs)]

pub mod allocator;
pub mod analysis;
pub mod backoff;
pub mod broker;
pub mod broker_stages;
pub mod cluster;
pub mod cmd;
pub mod csv_source;
pub mod dead_letters;
pub mod demo;
pub mod emulator;
pub mod events;
#[cfg(test)]
mod fuzz;
pub mod http;
pub mod line_reader;
pub mod pipelines;
pub mod receipt;
pub mod scored;
pub mod serve;
pub mod settings;
pub mod sse;
pub mod sse_parser;
pub mod storage;
pub mod sync;
pub mod timings;
pub mod tweet;

use stageflow::config::Registry;

/// Every stage kind this program offers to pipeline files.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .add::<demo::NumbersKind>()
        .add::<demo::ScaleKind>()
        .add::<demo::SumKind>()
        .add::<demo::FormatKind>()
        .add::<demo::PrintKind>()
        .add::<sse::SseKind>()
        .add::<csv_source::CsvTweetsKind>()
        .add::<cluster::NatsPublishKind>()
        .add::<cluster::NatsSubscribeKind>()
        .add::<analysis::flow::TweetsKind>()
        .add::<analysis::logger::LoggerKind>()
        .add::<analysis::sentiment::SentimentKind>()
        .add::<analysis::engagement::EngagementKind>()
        .add::<analysis::aggregator::AggregatorKind>()
        .add::<analysis::hashtags::HashtagsKind>()
        .add::<analysis::statistics::StatisticsKind>()
        .add::<storage::batcher::BatcherKind>()
        .add::<storage::sqlite::SqliteSinkKind>()
        .add::<storage::mongo::MongoSinkKind>()
        .add::<storage::null::NullSinkKind>()
        .add::<broker_stages::publish::BrokerPublishKind>()
        .add::<broker_stages::publish::BrokerTweetsKind>()
        .add::<broker_stages::publish::BrokerStatsKind>()
        .add::<broker_stages::subscribe::BrokerSubscribeKind>()
        .add::<dead_letters::replay::ReplaySseKind>()
        .add::<dead_letters::replay::ReplayFlowKind>()
        .add::<dead_letters::replay::ReplayScoredKind>()
        .add::<dead_letters::replay::ReplayBatchKind>()
        .dead_letters(dead_letters::Targets);
    registry
}
