//! End-to-end tests against real Postgres, RabbitMQ and moto (EC2).

mod describe;
mod durability;
mod helpers;
mod proxy;
mod runners;
mod usage;
mod validation;
