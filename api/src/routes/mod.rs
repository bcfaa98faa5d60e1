//! HTTP handlers, one module per area.

pub mod containers;
pub mod costs;
pub mod describe;
pub mod email;
pub mod images;
pub mod ops;
pub mod runners;
pub mod usage;
pub mod users;
