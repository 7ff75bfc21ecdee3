//! Errors a pipeline reports.

use std::fmt;

/// A stage failed: it escalated past its restart limit, or a producer it
/// depended on failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageError {
    /// The stage id.
    pub stage: String,
    /// What happened, in words.
    pub message: String,
}

impl StageError {
    pub(crate) fn new(stage: &str, message: impl Into<String>) -> Self {
        StageError { stage: stage.to_string(), message: message.into() }
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stage '{}' failed: {}", self.stage, self.message)
    }
}

impl std::error::Error for StageError {}

/// Why a pipeline could not start or did not end cleanly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineError {
    /// The graph or a stage's settings are wrong; every problem found is listed.
    Invalid(Vec<String>),
    /// A stage failed and the pipeline was shut down.
    StageFailed(StageError),
    /// Shutdown did not finish draining in time; these stages were still running.
    DrainTimeout(Vec<String>),
    /// A request to a running pipeline could not be served.
    Request(String),
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PipelineError::Invalid(problems) => {
                write!(f, "invalid pipeline:")?;
                for problem in problems {
                    write!(f, "\n  - {problem}")?;
                }
                Ok(())
            }
            PipelineError::StageFailed(error) => write!(f, "{error}"),
            PipelineError::DrainTimeout(stages) => {
                write!(f, "shutdown timed out while draining; still running: {}", stages.join(", "))
            }
            PipelineError::Request(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for PipelineError {}
