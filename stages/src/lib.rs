//! Domain stages of stageflow and the pieces of the `stageflow` command.
//!
//! The stage kinds pipeline files can name (`kinds`) and the command-line
//! plumbing (`cli`); the SSE receiver, tweet stages, broker and telnet
//! server land beside them.

pub mod analysis;
pub mod broker;
pub mod broker_stages;
pub mod cli;
pub mod csv_source;
pub mod emulator;
pub mod http;
pub mod kinds;
pub mod line_reader;
pub mod scored;
pub mod serve;
pub mod sse;
pub mod storage;
pub mod tweet;
