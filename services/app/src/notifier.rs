//! The notifier in the application: basic indicators' outcomes and the veto-risk early
//! warning from the scoring service in this process (its cache follows the change feed), for
//! `citycredit_notify`'s producers.

use std::sync::Arc;

use citycredit_core::catalog::{Catalog, IndicatorKind};
use citycredit_core::rules::Status;
use citycredit_notify::{
    BasicOutcome, DepartmentShortfall, Outcome, OutcomeSource, VetoRisk, WarningQuery,
    WarningSource,
};
use citycredit_scoring::ScoringApi;
use citycredit_scoring::early_warning::{self, BilingualWarning};

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

/// The early warning (GetVetoRiskWarnings' reading and projection) of the in-process scoring
/// service.
pub struct ScoringWarnings {
    pub scoring: ScoringApi,
}

#[tonic::async_trait]
impl WarningSource for ScoringWarnings {
    async fn veto_risks(&self, q: &WarningQuery) -> Result<Vec<VetoRisk>, String> {
        let review = early_warning::review_month(&q.review_date)?;
        let warnings = early_warning::region_warnings(
            &self.scoring,
            &q.region,
            review,
            q.last_month,
            q.history_months,
            &q.rule_version,
        )
        .await
        .map_err(|s| s.message().to_owned())?;
        Ok(warnings.into_iter().map(veto_risk).collect())
    }
}

fn veto_risk(w: BilingualWarning) -> VetoRisk {
    let BilingualWarning { zh, en } = w;
    let departments = zh
        .departments
        .iter()
        .zip(&en.departments)
        .map(|(z, e)| DepartmentShortfall {
            code: z.department_code.clone(),
            shortfall: z.shortfall.clone(),
            description_zh: z.description.clone(),
            description_en: e.description.clone(),
        })
        .collect();
    VetoRisk {
        indicator: zh.indicator_code,
        condition: zh.condition,
        at_risk: zh.at_risk,
        current_failing: zh.current_failing,
        threshold: zh.threshold,
        current: zh.current,
        current_period: zh.current_period,
        projected: zh.projected,
        shortfall_metric: zh.shortfall_metric,
        description_zh: zh.description,
        description_en: en.description,
        departments,
    }
}
