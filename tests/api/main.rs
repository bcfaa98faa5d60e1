//! End-to-end tests against real Postgres, RabbitMQ, moto (EC2) and an SMTP server.

mod agent;
mod auth;
mod describe;
mod durability;
mod ec2events;
mod embedded;
mod helpers;
mod images;
mod proxy;
mod reconcile;
mod runners;
mod smtp;
mod usage;
mod validation;
