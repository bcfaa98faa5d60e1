//! End-to-end tests against real Postgres, RabbitMQ and moto (EC2).

mod auth;
mod describe;
mod durability;
mod embedded;
mod helpers;
mod proxy;
mod reconcile;
mod runners;
mod validation;
