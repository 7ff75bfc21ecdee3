//! Domain stages of stageflow and the pieces of the `stageflow` command.
//!
//! The SSE receiver, tweet stages, broker and telnet server land here; for
//! now it holds the demo pipeline the CLI runs.

pub mod demo;
