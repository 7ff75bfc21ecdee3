//! Domain stages of stageflow and the pieces of the `stageflow` command.
//!
//! The stage kinds pipeline files can name (`kinds`) and the command-line
//! plumbing (`cli`); the SSE receiver, tweet stages, broker and telnet
//! server land beside them.

pub mod cli;
pub mod kinds;
