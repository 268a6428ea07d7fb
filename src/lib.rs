//! citycredit's contracts: the gRPC code generated from `proto/`, the conversions between the
//! wire and the domain (`status`, `wire`), and what else is bound to the transport or the async
//! runtime: how a principal is found in a request and travels between processes (`auth`), the
//! contract between ingestion and scoring (`aggregates`), the review cycle as scoring reads it
//! (`cycles`), and the shared organisation snapshot (`org`). The domain itself is
//! `citycredit-core`, which knows none of this.

pub mod aggregates;
pub mod auth;
pub mod cycles;
pub mod localize;
pub mod org;
pub mod proto;
pub mod status;
pub mod wire;
