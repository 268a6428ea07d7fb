//! The application: what the `citycredit` binary runs. The command line, configuration in
//! layers, telemetry, the key generator of split deployments, health reporting, and the
//! assembly of every mode (`server`: the gateway in front of every service in one process, or
//! one part alone) from the edge (`citycredit_gateway`), the services and the store, and the
//! read-only web pages served on the same port (`web`); and the clients of a running platform
//! for people's spreadsheets (`import`, `template`, over `remote`, reading and naming columns in
//! `sheet`).

pub mod cli;
pub mod config;
pub mod health;
pub mod import;
pub mod keys;
pub mod notifier;
pub mod remote;
pub mod server;
pub mod sheet;
pub mod telemetry;
pub mod template;
pub mod web;

pub use config::Config;
