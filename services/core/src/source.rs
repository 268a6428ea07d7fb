//! What a source of figures (ingestion, in this process or another) answers when it has no
//! figures to give: the domain's error for `citycredit::aggregates::AggregateSource`. The
//! service that asked turns it into its own answer to the caller.

use std::error::Error;

/// One problem with the region or period asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The request field at fault (`region_code`, `period`).
    pub field: String,
    pub description: String,
}

/// Why a source gave no figures.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The region or period does not name figures the source can have: one entry per problem.
    #[error("invalid region or period ({} problems)", .0.len())]
    Invalid(Vec<Problem>),
    /// The source's storage is unreachable or busy; retrying helps. `context` names the read.
    #[error("storage unavailable: {context}")]
    Unavailable { context: String },
    /// A bug or an unexpected storage error in the source; the detail is for the log.
    #[error("{context}: {detail}")]
    Internal { context: String, detail: String },
    /// A source in another process answered with an error of its own (or could not be
    /// reached); it is passed on to the caller as it came.
    #[error("remote source: {0}")]
    Remote(Box<dyn Error + Send + Sync>),
}
