//! citycredit's shared core: the gRPC contracts, the domain types, the indicator catalog, the
//! city's organisation, and the exact rule engine. Every service crate builds on this one.

pub mod aggregates;
pub mod auth;
pub mod catalog;
pub mod city;
pub mod counters;
pub mod numbers;
pub mod org;
pub mod period;
pub mod proto;
pub mod rules;
pub mod status;
pub mod text;
pub mod wire;
