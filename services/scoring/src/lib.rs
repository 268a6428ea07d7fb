//! The scoring service: the indicator catalog (`IndicatorService`) and scorecards computed by
//! the rule engine from ingestion's aggregates (`ScoringService`).

pub mod convert;
pub mod indicator_service;
pub mod scoring_service;

pub use indicator_service::IndicatorApi;
pub use scoring_service::ScoringApi;
