//! The application: what the `citycredit` binary runs. The command line, configuration in
//! layers, telemetry, the key generator of split deployments, health reporting, and the
//! assembly of every mode (`server`: the gateway in front of every service in one process, or
//! one part alone) from the edge (`citycredit_gateway`), the services and the store, and the
//! read-only web pages served on the same port (`web`).

pub mod cli;
pub mod config;
pub mod health;
pub mod keys;
pub mod server;
pub mod telemetry;
pub mod web;

pub use config::Config;
