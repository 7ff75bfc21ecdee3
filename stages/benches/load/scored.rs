//! The emulator's tweets as scored batches, for benches that feed a sink without the pipeline.

use stageflow_stages::analysis::engagement::engagement_of;
use stageflow_stages::emulator::generator::{TweetGenerator, Vocabulary};
use stageflow_stages::scored::ScoredTweet;
use stageflow_stages::storage::batcher::Batch;

/// Tweets 1..=`per_stream` of each of `streams` (seed 42), scored (engagement as
/// the engagement stage computes it, a fixed sentiment), in batches of `batch_size`.
pub fn scored_batches(streams: &[u32], per_stream: u64, batch_size: usize) -> Vec<Batch> {
    let generator = TweetGenerator::new(42, 0.0, 0.0, Vocabulary::shipped());
    let tweets: Vec<ScoredTweet> = streams
        .iter()
        .flat_map(|&stream| (1..=per_stream).map(move |sequence| (stream, sequence)))
        .map(|(stream, sequence)| {
            let tweet = generator.tweet(stream, sequence);
            let engagement = engagement_of(&tweet);
            ScoredTweet { tweet, extracted: false, sentiment: 0.1, engagement, receipt: Default::default() }
        })
        .collect();
    tweets.chunks(batch_size).map(|chunk| Batch::new(chunk.to_vec())).collect()
}
