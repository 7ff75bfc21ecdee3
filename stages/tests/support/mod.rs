//! Helpers shared by several integration-test binaries.
// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

pub mod broker_process;
pub mod http_process;
pub mod nats;
pub mod secantus;
pub mod tools;
