//! End-to-end tests against real Postgres, RabbitMQ, moto (EC2) and an SMTP
//! server; the behaviour tests also in embedded mode (SQLite, in-process queue,
//! simulated cloud, file mailer).

#[macro_use]
mod helpers;

mod agent;
mod auth;
mod bench;
mod budget;
mod cancel;
mod console;
mod cost;
mod describe;
mod durability;
mod ec2events;
mod events;
mod embedded;
mod faults;
mod fuzz;
mod images;
mod metrics;
mod observer;
mod prices;
mod proxy;
mod reconcile;
mod recovery;
mod runners;
mod sim_ec2api;
mod smtp;
mod usage;
mod validation;
