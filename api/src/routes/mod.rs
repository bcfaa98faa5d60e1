//! HTTP handlers, one module per area.

pub mod describe;
pub mod ops;
pub mod runners;
pub mod usage;
