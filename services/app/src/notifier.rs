//! The notifier in the application: basic indicators' outcomes from the scoring service in
//! this process (its cache follows the change feed), for `citycredit_notify`'s producers.

use std::sync::Arc;

use citycredit_core::catalog::{Catalog, IndicatorKind};
use citycredit_core::rules::Status;
use citycredit_notify::{BasicOutcome, Outcome, OutcomeSource};
use citycredit_scoring::ScoringApi;

/// Scores (region, period) with the in-process scoring service.
pub struct ScoringOutcomes {
    pub scoring: ScoringApi,
    pub catalog: Arc<Catalog>,
}

#[tonic::async_trait]
impl OutcomeSource for ScoringOutcomes {
    async fn basic_outcomes(
        &self,
        region: &str,
        period: &str,
    ) -> Result<Vec<BasicOutcome>, String> {
        let scored = self
            .scoring
            .scored(region, period, None)
            .await
            .map_err(|s| s.message().to_owned())?;
        Ok(scored
            .card
            .indicators
            .iter()
            .filter(|i| i.kind == IndicatorKind::Basic)
            .map(|i| BasicOutcome {
                indicator: i.code.clone(),
                title: self
                    .catalog
                    .indicator(&i.code)
                    .map(|d| d.title.clone())
                    .unwrap_or_default(),
                outcome: match i.status {
                    Status::Pass => Outcome::Pass,
                    Status::Fail => Outcome::Fail,
                    _ => Outcome::NoData,
                },
            })
            .collect())
    }
}
