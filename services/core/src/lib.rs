//! citycredit's core: the domain, with no transport and no database. The indicator catalog, the
//! city's organisation, the exact numbers and the rule engine, periods and text rules, and the
//! authorization decision. Every service builds on it; it knows nothing of gRPC, SQL or the
//! async runtime (architecture invariant: `cargo tree -p citycredit-core -e normal` shows no
//! tonic, prost, sqlx or tokio, and `.ci/run` checks it).

use std::future::Future;
use std::pin::Pin;

pub mod auth;
pub mod catalog;
pub mod city;
pub mod clock;
pub mod counters;
pub mod numbers;
pub mod org;
pub mod period;
pub mod projection;
pub mod review;
pub mod rollup;
pub mod rules;
pub mod source;
pub mod text;

/// A boxed future, so traits with async methods (`OrgRefresh`, `AggregateSource`) can be used
/// as trait objects without tying the core to a runtime.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
