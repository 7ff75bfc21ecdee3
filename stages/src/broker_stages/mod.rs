//! Pipeline stages that talk to a running `stageflow broker` over TCP.
//!
//! ```text
//! ... --text--------> broker_publish   --pub--> topic (one, from `topic`)
//! ... --ScoredTweet-> broker_tweets    --pub--> tweets, users
//! ... --StatsFrame--> broker_stats     --pub--> logger_stats, tweets_stats, users_stats
//! topic --event--> broker_subscribe --text--> ...    (acks follow demand)
//! ```
//!
//! The sinks ([`publish::PublishStage`]) pipeline up to `max_outstanding`
//! `pub`s and return from `handle_events` only once the broker answered each
//! one, so their demand comes back only for what the broker accepted; while
//! the broker is unreachable they retry with backoff, holding their credit,
//! and the pipeline upstream waits. The source ([`subscribe::SubscribeStage`])
//! emits what the broker delivers against demand and acks the events of
//! one `produce` call at the start of the next, so a stalled pipeline stops
//! acking and the broker, which delivers at most `window` unacked events,
//! keeps the rest. Nothing connects while a file is checked.

pub mod client;
pub mod publish;
pub mod subscribe;

pub use client::{ClientError, Connection, Incoming};
pub use publish::{Encode, Outgoing, PublishOptions, PublishStage, PublishStats, Wrap};
pub use subscribe::{Emit, SubscribeOptions, SubscribeStage, SubscribeStats};
