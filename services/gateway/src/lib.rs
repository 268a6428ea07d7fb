//! The edge: the one front door and the front every service sits behind. Authentication at the
//! edge and the signed internal identity, routing by service name to in-process or remote
//! upstreams, admission control (rate and concurrency limits, the adaptive limit, request
//! bytes), deadlines and body timeouts, the transport under every listener, trace context and
//! metrics. `citycredit_app` assembles it with the services.

pub mod adaptive;
pub mod body;
pub mod coalesce;
pub mod direct;
pub mod edge;
pub mod front;
pub mod headers;
pub mod internal_identity;
pub mod limits;
pub mod metrics;
pub mod rpc_table;
pub mod settings;
pub mod trace_context;
pub mod transport;
pub mod upstream;
