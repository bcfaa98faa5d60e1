//! The store contract: every store port behaves the same on Postgres and on
//! SQLite. Each case is a function generic over the port it exercises; `contract!`
//! runs it once against a fresh Postgres database and once against a fresh SQLite
//! file.

#[macro_use]
mod harness;

mod raw;

mod rate;
mod containers;
mod core;
mod cost;
mod email;
mod fleet;
mod images;
mod ops;
mod usage;
mod users;
