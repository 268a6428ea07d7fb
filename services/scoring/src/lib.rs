//! The scoring service: the indicator catalog (`IndicatorService`) and, from the scoring issue
//! on, scorecards computed by the rule engine from ingestion's aggregates (`ScoringService`).

pub mod indicator_service;

pub use indicator_service::IndicatorApi;
