//! The scoring service: the indicator catalog (`IndicatorService`) and scorecards computed by
//! the rule engine from ingestion's aggregates (`ScoringService`).

pub mod convert;
pub mod early_warning;
pub mod error;
pub mod indicator_service;
pub mod remote_source;
pub mod rule_versions;
pub mod scoring_service;
pub mod wording;

pub use error::ScoringError;
pub use indicator_service::IndicatorApi;
pub use remote_source::RemoteAggregates;
pub use scoring_service::ScoringApi;
