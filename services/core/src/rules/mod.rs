//! The rule engine and its input and output types.
//!
//! `score` is a pure function: the same catalog and values always give the same scorecard, with
//! exact arithmetic throughout. The services call it with figures aggregated by ingestion;
//! what-ifs call it with overridden figures; the golden tests call it with the published cases.

mod engine;
mod scorecard;
mod values;

pub use engine::score;
pub use scorecard::*;
pub use values::{Figure, TaskStatus, Values};

#[cfg(test)]
mod check_tests;
#[cfg(test)]
mod golden_tests;
#[cfg(test)]
mod property_tests;
