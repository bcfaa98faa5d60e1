//! The `geonex` binary's library: command line, startup wiring and logging. The
//! binary itself only loads settings and calls in here.

pub mod bench;
pub mod cli;
pub mod startup;
pub mod telemetry;
