//! The front door: the `citycredit` binary's configuration, the assembly of the platform and
//! serving it. Later the gateway proper (edge authentication, routing by service name to
//! in-process or remote upstreams, rate limits) lives here too.

pub mod adaptive;
pub mod body;
pub mod config;
pub mod edge;
pub mod front;
pub mod health;
pub mod internal_identity;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod rpc_table;
pub mod server;
pub mod telemetry;
pub mod transport;
pub mod upstream;

pub use config::Config;
