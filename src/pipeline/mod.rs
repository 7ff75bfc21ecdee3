//! Building a pipeline from stages wired by id, and the handle of a running one.
//!
//! `builder` holds what the user adds, `spec` the stages with their types
//! erased until `start` wires and starts them, `handle` the running pipeline.

mod builder;
mod handle;
mod spec;

pub use builder::{DEFAULT_BUFFER_SIZE, DEFAULT_DRAIN_TIMEOUT, Pipeline, StageConfig};
pub use handle::{MetricsReader, PipelineHandle, PipelineSummary, ShutdownTrigger, Taps};
