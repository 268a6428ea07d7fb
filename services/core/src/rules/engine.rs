//! The rule engine: a pure function from (catalog, aggregated values for one region and period)
//! to a scorecard. Every comparison, cap and sum is exact (big rationals); nothing is rounded
//! here.

use std::collections::BTreeSet;

use crate::catalog::{
    Catalog, Formula, Indicator, IndicatorKind, ItemCheck, MetricKind, Predicate,
    TASK_STATUS_METRIC,
};
use crate::numbers::{Num, Precision};
use crate::rules::scorecard::*;
use crate::rules::{TaskStatus, Values};

/// Scores one region and period.
pub fn score(catalog: &Catalog, values: &Values) -> Scorecard {
    let violations = find_violations(catalog, values);
    let violated: BTreeSet<String> = violations.iter().map(|v| v.numerator.clone()).collect();
    let ctx = Ctx {
        catalog,
        values,
        violated,
        violations: &violations,
    };

    let indicators: Vec<IndicatorResult> = catalog
        .indicators
        .iter()
        .map(|ind| ctx.indicator(ind))
        .collect();

    let basics = || indicators.iter().filter(|r| r.kind == IndicatorKind::Basic);
    let failing_basic: Vec<String> = basics()
        .filter(|r| r.status == Status::Fail)
        .map(|r| r.code.clone())
        .collect();
    let incomplete_basic: Vec<String> = basics()
        .filter(|r| matches!(r.status, Status::MissingData | Status::InvalidData))
        .map(|r| r.code.clone())
        .collect();
    let outcome = if !failing_basic.is_empty() {
        Outcome::Vetoed
    } else if incomplete_basic.is_empty() {
        Outcome::Passed
    } else {
        Outcome::Incomplete
    };
    let guiding_total = indicators.iter().filter_map(|r| r.score.clone()).sum();
    let items = catalog
        .items
        .iter()
        .map(|item| {
            let tasks: Vec<TaskResult> = item
                .tasks
                .iter()
                .map(|task| TaskResult {
                    id: task.id.clone(),
                    status: values.task_status(TASK_STATUS_METRIC, &task.id),
                    checks: task
                        .checks
                        .iter()
                        .map(|c| ctx.item_check(c, &indicators))
                        .collect(),
                })
                .collect();
            let done = tasks.iter().all(|t| {
                t.status == TaskStatus::Done && t.checks.iter().all(|c| c.outcome.is_met())
            });
            ItemResult {
                code: item.code.clone(),
                done,
                tasks,
            }
        })
        .collect();

    Scorecard {
        outcome,
        failing_basic,
        incomplete_basic,
        guiding_total,
        guiding_max: catalog.guiding_max_total(),
        indicators,
        items,
        violations,
        catalog_version: catalog.version.clone(),
    }
}

/// The cross-metric checks the figures violate (both sides reported, numerator above).
fn find_violations(catalog: &Catalog, values: &Values) -> Vec<Violation> {
    catalog
        .checks
        .iter()
        .filter_map(|check| {
            let n = values.number(&check.numerator)?;
            let bound = match (&check.denominator, &check.bound) {
                (Some(den), _) => values.number(den)?.clone(),
                (None, Some(b)) => b.clone(),
                (None, None) => return None,
            };
            (n > &bound).then(|| {
                let affects = catalog
                    .indicators
                    .iter()
                    .filter(|i| i.metrics().contains(&check.numerator.as_str()))
                    .map(|i| i.code.clone())
                    // Items whose checks read the numerator, through an indicator too.
                    .chain(
                        catalog
                            .items
                            .iter()
                            .filter(|i| {
                                catalog
                                    .subject_metrics(&i.code)
                                    .contains(&check.numerator.as_str())
                            })
                            .map(|i| i.code.clone()),
                    )
                    .collect();
                Violation {
                    numerator: check.numerator.clone(),
                    numerator_value: n.clone(),
                    denominator: check.denominator.clone(),
                    bound,
                    affects,
                }
            })
        })
        .collect()
}

struct Ctx<'a> {
    catalog: &'a Catalog,
    values: &'a Values,
    violated: BTreeSet<String>,
    violations: &'a [Violation],
}

/// A predicate evaluated.
struct PredicateOutcome {
    outcome: TermOutcome,
    computed: Option<Num>,
    threshold: Option<Num>,
    missing: Vec<String>,
    gaps: Vec<Gap>,
}

/// A guiding part evaluated.
struct PartOutcome {
    outcome: TermOutcome,
    score: Num,
    max: Num,
    computed: Option<Num>,
    flags: Vec<&'static str>,
    missing: Vec<String>,
    /// The part's next score step: its score after the change, and the change.
    next: Option<(Num, Gap)>,
    /// The changes that bring the part to its max.
    to_max: Vec<Gap>,
}

impl Ctx<'_> {
    fn kind(&self, metric: &str) -> MetricKind {
        self.catalog
            .metric(metric)
            .map_or(MetricKind::Count, |m| m.kind)
    }

    fn missing_of<'m>(&self, metrics: &[&'m str]) -> Vec<&'m str> {
        metrics
            .iter()
            .copied()
            .filter(|m| !self.values.is_reported(m))
            .collect()
    }

    fn indicator(&self, ind: &Indicator) -> IndicatorResult {
        let metrics = ind.metrics();
        let invalid = metrics.iter().any(|m| self.violated.contains(*m));
        let inputs = metrics
            .iter()
            .map(|m| Input {
                metric: (*m).to_owned(),
                value: self.values.get(m).map(|f| f.display()),
                domains: self.values.domains(m).into_iter().collect(),
            })
            .collect();
        let violation_gaps: Vec<Gap> = self
            .violations
            .iter()
            .filter(|v| metrics.contains(&v.numerator.as_str()))
            .map(|v| {
                let over = v.denominator.as_deref().unwrap_or("its bound");
                Gap {
                    term: String::new(),
                    metric: v.numerator.clone(),
                    current: Some(v.numerator_value.to_plain()),
                    required: format!("<= {}", v.bound.to_plain()),
                    change: "correct".into(),
                    description: format!(
                        "{} is {}, above {over} ({}): correct the figures",
                        v.numerator,
                        v.numerator_value.to_plain(),
                        v.bound.to_plain()
                    ),
                }
            })
            .collect();
        match ind.kind {
            IndicatorKind::Basic => self.basic(ind, invalid, inputs, violation_gaps),
            IndicatorKind::Guiding => self.guiding(ind, invalid, inputs, violation_gaps),
        }
    }

    fn basic(
        &self,
        ind: &Indicator,
        invalid: bool,
        inputs: Vec<Input>,
        violation_gaps: Vec<Gap>,
    ) -> IndicatorResult {
        let mut terms = Vec::new();
        let mut gaps = Vec::new();
        for c in &ind.conditions {
            let out = self.predicate(&c.label, &c.predicate);
            gaps.extend(out.gaps);
            terms.push(TermResult {
                label: c.label.clone(),
                summary: c.predicate.summary(),
                outcome: out.outcome,
                computed: out.computed,
                threshold: out.threshold,
                score: None,
                max_score: None,
                flags: Vec::new(),
                missing_metrics: out.missing,
            });
        }
        let any = |o: TermOutcome| terms.iter().any(|t| t.outcome == o);
        let status = if invalid {
            Status::InvalidData
        } else if any(TermOutcome::Unmet) {
            Status::Fail
        } else if any(TermOutcome::Missing) {
            Status::MissingData
        } else {
            Status::Pass
        };
        if invalid {
            gaps.splice(0..0, violation_gaps);
        }
        IndicatorResult {
            code: ind.code.clone(),
            kind: ind.kind,
            status,
            score: None,
            max_score: None,
            terms,
            inputs,
            gaps,
            next_step: None,
            to_max: None,
            flags: Vec::new(),
        }
    }

    fn guiding(
        &self,
        ind: &Indicator,
        invalid: bool,
        inputs: Vec<Input>,
        violation_gaps: Vec<Gap>,
    ) -> IndicatorResult {
        let max = ind.max_score.clone().unwrap_or_default();
        let parts: Vec<(String, String, PartOutcome)> = ind
            .parts
            .iter()
            .map(|p| {
                let mut out = self.formula(&p.label, &p.formula);
                if p.formula
                    .metrics()
                    .iter()
                    .any(|m| self.violated.contains(*m))
                {
                    out.outcome = TermOutcome::Invalid;
                }
                (p.label.clone(), p.formula.summary(), out)
            })
            .collect();
        let missing = parts
            .iter()
            .filter(|(_, _, p)| p.outcome == TermOutcome::Missing)
            .count();
        let status = if invalid {
            Status::InvalidData
        } else if missing == parts.len() {
            Status::MissingData
        } else if missing > 0 {
            Status::Partial
        } else {
            Status::Scored
        };
        let sum: Num = parts.iter().map(|(_, _, p)| p.score.clone()).sum();
        let score = if invalid {
            Num::zero()
        } else {
            sum.min(max.clone())
        };
        let mut flags: Vec<&'static str> = Vec::new();
        for f in parts.iter().flat_map(|(_, _, p)| p.flags.iter()) {
            if !flags.contains(f) {
                flags.push(f);
            }
        }

        let (next_step, to_max) = if invalid {
            let step = Step {
                score: max.clone(),
                description: "correct the figures that break a cross-metric check first".into(),
                changes: violation_gaps.clone(),
            };
            (Some(step.clone()), Some(step))
        } else if score < max {
            (
                next_step(&ind.code, &score, &max, &parts),
                Some(Step {
                    score: max.clone(),
                    changes: parts
                        .iter()
                        .flat_map(|(_, _, p)| p.to_max.clone())
                        .collect(),
                    description: format!("to reach the max {}", max.to_plain()),
                }),
            )
        } else {
            (None, None)
        };

        let terms = parts
            .into_iter()
            .map(|(label, summary, p)| TermResult {
                label,
                summary,
                outcome: p.outcome,
                computed: p.computed,
                threshold: None,
                score: Some(p.score),
                max_score: Some(p.max),
                flags: p.flags,
                missing_metrics: p.missing,
            })
            .collect();
        IndicatorResult {
            code: ind.code.clone(),
            kind: ind.kind,
            status,
            score: Some(score),
            max_score: Some(max),
            terms,
            inputs,
            gaps: if invalid { violation_gaps } else { Vec::new() },
            next_step,
            to_max,
            flags,
        }
    }

    fn predicate(&self, label: &str, p: &Predicate) -> PredicateOutcome {
        let metrics = p.metrics();
        let missing = self.missing_of(&metrics);
        if !missing.is_empty() {
            return PredicateOutcome {
                outcome: TermOutcome::Missing,
                computed: None,
                threshold: None,
                gaps: missing.iter().map(|m| report_gap(label, m)).collect(),
                missing: missing.into_iter().map(str::to_owned).collect(),
            };
        }
        let invalid = metrics.iter().any(|m| self.violated.contains(*m));
        let num = |m: &str| self.values.number(m).cloned().unwrap_or_default();
        let (met, computed, threshold, gap) = match p {
            Predicate::RatioAtLeast {
                numerator,
                denominator,
                threshold,
            }
            | Predicate::RatioBelow {
                numerator,
                denominator,
                threshold,
            } => {
                let (n, d) = (num(numerator), num(denominator));
                if d.is_zero() {
                    return PredicateOutcome {
                        outcome: if invalid {
                            TermOutcome::Invalid
                        } else {
                            TermOutcome::Vacuous
                        },
                        computed: None,
                        threshold: Some(threshold.clone()),
                        missing: Vec::new(),
                        gaps: Vec::new(),
                    };
                }
                let ratio = &n / &d;
                let kind = self.kind(numerator);
                let limit = threshold * &d;
                let (met, required) = if matches!(p, Predicate::RatioAtLeast { .. }) {
                    (ratio >= *threshold, smallest_at_least(kind, &limit))
                } else {
                    (ratio < *threshold, largest_below(kind, &limit))
                };
                (
                    met,
                    Some(ratio),
                    Some(threshold.clone()),
                    change_gap(label, numerator, &n, required),
                )
            }
            Predicate::AtLeast { metric, threshold } => {
                let v = num(metric);
                let required = smallest_at_least(self.kind(metric), threshold);
                (
                    v >= *threshold,
                    Some(v.clone()),
                    Some(threshold.clone()),
                    change_gap(label, metric, &v, required),
                )
            }
            Predicate::Above { metric, threshold } => {
                let v = num(metric);
                let required = smallest_above(self.kind(metric), threshold);
                (
                    v > *threshold,
                    Some(v.clone()),
                    Some(threshold.clone()),
                    change_gap(label, metric, &v, required),
                )
            }
            Predicate::AtMost { metric, threshold } => {
                let v = num(metric);
                let required = largest_at_most(self.kind(metric), threshold);
                (
                    v <= *threshold,
                    Some(v.clone()),
                    Some(threshold.clone()),
                    change_gap(label, metric, &v, required),
                )
            }
            Predicate::IsTrue { metric } => {
                let v = self.values.flag(metric).unwrap_or(false);
                (v, None, None, set_true_gap(label, metric))
            }
            Predicate::Decreased { metric, baseline } => {
                let (v, b) = (num(metric), num(baseline));
                let met = v < b || (v.is_zero() && b.is_zero());
                let required = if b.is_zero() {
                    Num::zero()
                } else {
                    largest_below(self.kind(metric), &b)
                };
                (
                    met,
                    Some(v.clone()),
                    Some(b),
                    change_gap(label, metric, &v, required),
                )
            }
        };
        let outcome = match (invalid, met) {
            (true, _) => TermOutcome::Invalid,
            (false, true) => TermOutcome::Met,
            (false, false) => TermOutcome::Unmet,
        };
        PredicateOutcome {
            outcome,
            computed,
            threshold,
            missing: Vec::new(),
            gaps: if met { Vec::new() } else { vec![gap] },
        }
    }

    fn formula(&self, label: &str, f: &Formula) -> PartOutcome {
        let max = self.catalog.part_max(f);
        let metrics = f.metrics();
        let missing = match f {
            // A domain-flag part with no flags reported counts 0 domains: never missing.
            Formula::CappedDomainCount { .. } | Formula::WeightedDomainCounts { .. } => Vec::new(),
            _ => self.missing_of(&metrics),
        };
        if !missing.is_empty() {
            return PartOutcome {
                outcome: TermOutcome::Missing,
                score: Num::zero(),
                max,
                computed: None,
                flags: Vec::new(),
                next: None,
                to_max: missing.iter().map(|m| report_gap(label, m)).collect(),
                missing: missing.into_iter().map(str::to_owned).collect(),
            };
        }
        let num = |m: &str| self.values.number(m).cloned().unwrap_or_default();
        let mut out = PartOutcome {
            outcome: TermOutcome::Scored,
            score: Num::zero(),
            max: max.clone(),
            computed: None,
            flags: Vec::new(),
            missing: Vec::new(),
            next: None,
            to_max: Vec::new(),
        };
        match f {
            Formula::CappedRatio {
                numerator,
                denominator,
                factor,
                cap,
            } => {
                let (n, d) = (num(numerator), num(denominator));
                if d.is_zero() {
                    out.flags.push(FLAG_UNDEFINED_RATIO);
                    let gap = nonzero_gap(label, denominator);
                    out.to_max = vec![gap.clone()];
                    out.next = None;
                    return out;
                }
                let ratio = &n / &d;
                out.score = (&ratio * factor).min(cap.clone());
                out.computed = Some(ratio);
                if out.score < *cap {
                    let kind = self.kind(numerator);
                    let target = (out.score.floor_to(2) + Num::ratio(1, 100)).min(cap.clone());
                    let need = smallest_at_least(kind, &(&(&target / factor) * &d));
                    let after = (&(&need / &d) * factor).min(cap.clone());
                    out.next = Some((after, change_gap(label, numerator, &n, need)));
                    let need_max = smallest_at_least(kind, &(&(cap / factor) * &d));
                    out.to_max = vec![change_gap(label, numerator, &n, need_max)];
                }
            }
            Formula::CappedDomainCount {
                metric,
                factor,
                cap,
            } => {
                let domains = self.values.domains(metric);
                let n = count(domains.len());
                out.score = (&n * factor).min(cap.clone());
                out.computed = Some(n.clone());
                if out.score < *cap {
                    let hint = self.unflagged_hint(metric, &domains);
                    let next_n = &n + &Num::one();
                    out.next = Some((
                        (&next_n * factor).min(cap.clone()),
                        domain_gap(label, metric, &n, &next_n, &hint),
                    ));
                    let need = (cap / factor).ceil();
                    out.to_max = vec![domain_gap(label, metric, &n, &need, &hint)];
                }
            }
            Formula::Deduction {
                required,
                actual,
                full,
                per_unit,
            } => {
                let (req, act) = (num(required), num(actual));
                let deduct = |a: &Num| {
                    (full - &(per_unit * &(&req - a)))
                        .max(Num::zero())
                        .min(full.clone())
                };
                out.score = deduct(&act);
                out.computed = Some(&req - &act);
                if out.score < *full {
                    let kind = self.kind(actual);
                    let next_act = if out.score.is_zero() {
                        smallest_above(kind, &(&req - &(full / per_unit)))
                    } else {
                        &act + &Num::one()
                    };
                    out.next = Some((deduct(&next_act), change_gap(label, actual, &act, next_act)));
                    out.to_max = vec![change_gap(label, actual, &act, req.clone())];
                }
            }
            Formula::StepBands {
                numerator,
                denominator,
                above,
                base,
                step,
                increment,
                cap,
            } => {
                let (n, d) = (num(numerator), num(denominator));
                if d.is_zero() {
                    out.flags.push(FLAG_UNDEFINED_RATIO);
                    out.to_max = vec![nonzero_gap(label, denominator)];
                    return out;
                }
                let c = &n / &d;
                let band_score = |k: &Num| (base + &(increment * k)).min(cap.clone());
                let band = (c > *above).then(|| (&(&c - above) / step).floor());
                out.score = band.as_ref().map_or_else(Num::zero, band_score);
                out.computed = Some(c);
                if out.score < *cap {
                    let kind = self.kind(numerator);
                    // The numerator that reaches band k (band 0 starts strictly above `above`).
                    let reach = |k: &Num| {
                        if k.is_zero() {
                            smallest_above(kind, &(above * &d))
                        } else {
                            smallest_at_least(kind, &(&(above + &(step * k)) * &d))
                        }
                    };
                    let next_band = band.map_or_else(Num::zero, |k| k + Num::one());
                    let need = reach(&next_band);
                    out.next = Some((
                        band_score(&next_band),
                        change_gap(label, numerator, &n, need),
                    ));
                    let top_band = (&(cap - base) / increment).ceil().max(Num::zero());
                    out.to_max = vec![change_gap(label, numerator, &n, reach(&top_band))];
                }
            }
            Formula::FlagPoints { metric, points } => {
                if self.values.flag(metric) == Some(true) {
                    out.score = points.clone();
                } else {
                    let gap = set_true_gap(label, metric);
                    out.next = Some((points.clone(), gap.clone()));
                    out.to_max = vec![gap];
                }
            }
            Formula::WeightedDomainCounts { terms } => {
                let mut flagged_total = Num::zero();
                let mut best: Option<(&Num, Gap)> = None;
                for t in terms {
                    let flagged = self.values.domains(&t.metric);
                    let set: Vec<&str> = self
                        .catalog
                        .domain_set_of(&t.metric)
                        .map(|s| s.domains.iter().map(|d| d.code.as_str()).collect())
                        .unwrap_or_default();
                    let n = count(set.iter().filter(|d| flagged.contains(**d)).count());
                    out.score = &out.score + &(&t.weight * &n);
                    flagged_total = &flagged_total + &n;
                    let unflagged: Vec<&str> = set
                        .iter()
                        .copied()
                        .filter(|d| !flagged.contains(*d))
                        .collect();
                    if unflagged.is_empty() {
                        continue;
                    }
                    let hint = unflagged.join(", ");
                    let all = &n + &count(unflagged.len());
                    out.to_max
                        .push(domain_gap(label, &t.metric, &n, &all, &hint));
                    if best.as_ref().is_none_or(|(w, _)| t.weight > **w) {
                        let next_n = &n + &Num::one();
                        best = Some((&t.weight, domain_gap(label, &t.metric, &n, &next_n, &hint)));
                    }
                }
                out.computed = Some(flagged_total);
                out.next = best.map(|(w, gap)| ((&out.score + w).min(max.clone()), gap));
            }
            Formula::AssessedScore { metric } => {
                let v = num(metric);
                out.score = v.clone().min(max.clone());
                out.computed = Some(v.clone());
                if out.score < max {
                    let next = (v.floor_to(2) + Num::ratio(1, 100)).min(max.clone());
                    out.next = Some((next.clone(), change_gap(label, metric, &v, next)));
                    out.to_max = vec![change_gap(label, metric, &v, max.clone())];
                }
            }
        }
        out
    }

    /// Catalog domains of the metric's set not yet flagged, as a hint for gaps.
    fn unflagged_hint(&self, metric: &str, flagged: &BTreeSet<String>) -> String {
        self.catalog
            .domain_set_of(metric)
            .map(|s| {
                s.domains
                    .iter()
                    .filter(|d| !flagged.contains(&d.code))
                    .map(|d| d.code.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    }

    fn item_check(&self, check: &ItemCheck, indicators: &[IndicatorResult]) -> CheckResult {
        let mut result = CheckResult {
            summary: check.summary(),
            check_type: check.type_name(),
            outcome: TermOutcome::Missing,
            indicator: None,
            computed: None,
            missing_metrics: Vec::new(),
        };
        match check {
            ItemCheck::IndicatorPasses {
                indicator,
                conditions,
            } => {
                let Some(r) = indicators.iter().find(|r| &r.code == indicator) else {
                    return result;
                };
                result.indicator = Some((indicator.clone(), r.status));
                // The named conditions (every one when none is named), combined as a basic
                // indicator's status is: invalid, then unmet, then missing, then met.
                let terms: Vec<&TermResult> = r
                    .terms
                    .iter()
                    .filter(|t| conditions.is_empty() || conditions.contains(&t.label))
                    .collect();
                let any = |o: TermOutcome| terms.iter().any(|t| t.outcome == o);
                let invalid = if conditions.is_empty() {
                    r.status == Status::InvalidData
                } else {
                    any(TermOutcome::Invalid)
                };
                result.outcome = if invalid {
                    TermOutcome::Invalid
                } else if any(TermOutcome::Unmet) {
                    TermOutcome::Unmet
                } else if any(TermOutcome::Missing) {
                    TermOutcome::Missing
                } else {
                    TermOutcome::Met
                };
                result.missing_metrics = missing_in(terms.iter().copied());
                if let [only] = terms.as_slice() {
                    result.computed.clone_from(&only.computed);
                }
            }
            ItemCheck::IndicatorScores { indicator } => {
                let Some(r) = indicators.iter().find(|r| &r.code == indicator) else {
                    return result;
                };
                result.indicator = Some((indicator.clone(), r.status));
                let above_zero = r.score.as_ref().is_some_and(|s| s > &Num::zero());
                // Every metric the indicator reads that nobody reported, domain flags included
                // (the indicator counts those as 0 domains; the check is missing data).
                let unreported: Vec<String> = self
                    .catalog
                    .indicator(indicator)
                    .map(|ind| self.missing_of(&ind.metrics()))
                    .unwrap_or_default()
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                // A score above 0 is measured even when some parts lack data; a score of 0 is
                // a failure only when every metric was reported.
                result.outcome = match r.status {
                    Status::InvalidData => TermOutcome::Invalid,
                    _ if above_zero => TermOutcome::Met,
                    Status::Scored if unreported.is_empty() => TermOutcome::Unmet,
                    _ => TermOutcome::Missing,
                };
                if !above_zero {
                    result.missing_metrics = unreported;
                }
                result.computed.clone_from(&r.score);
            }
            ItemCheck::AllDomainsFlagged {
                metrics,
                domain_group,
            } => {
                // A check whose metrics nobody reported is missing, not failed (rulebook
                // section 5); a reported metric counts the domains flagged.
                let unreported: Vec<&str> =
                    self.missing_of(&metrics.iter().map(String::as_str).collect::<Vec<_>>());
                if !unreported.is_empty() {
                    result.missing_metrics = unreported.into_iter().map(str::to_owned).collect();
                    return result;
                }
                let mut flagged = 0usize;
                let mut total = 0usize;
                for m in metrics {
                    let have = self.values.domains(m);
                    for d in self
                        .catalog
                        .domain_set_of(m)
                        .into_iter()
                        .flat_map(|s| s.domains.iter())
                        .filter(|d| d.group.as_ref() == Some(domain_group))
                    {
                        total += 1;
                        flagged += usize::from(have.contains(&d.code));
                    }
                }
                result.outcome = if flagged == total {
                    TermOutcome::Met
                } else {
                    TermOutcome::Unmet
                };
                result.computed = Some(count(flagged));
            }
            ItemCheck::Predicate(p) => {
                let out = self.predicate("", p);
                result.outcome = out.outcome;
                result.computed = out.computed;
                result.missing_metrics = out.missing;
            }
        }
        result
    }
}

/// The metrics the terms lack, without repeats, in order.
fn missing_in<'t>(terms: impl Iterator<Item = &'t TermResult>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in terms.flat_map(|t| t.missing_metrics.iter()) {
        if !out.contains(m) {
            out.push(m.clone());
        }
    }
    out
}

/// The indicator's nearest next score step among its parts' next steps.
fn next_step(
    code: &str,
    score: &Num,
    max: &Num,
    parts: &[(String, String, PartOutcome)],
) -> Option<Step> {
    let candidates = parts.iter().filter_map(|(_, _, p)| {
        p.next.as_ref().map(|(after, gap)| {
            let total = (&(score - &p.score) + after).min(max.clone());
            (total, gap)
        })
    });
    let best = candidates
        .filter(|(total, _)| total > score)
        .min_by(|a, b| a.0.cmp(&b.0));
    match best {
        Some((total, gap)) => Some(Step {
            description: format!(
                "{code} rises to {} with: {}",
                total.rounded(Precision::Score),
                gap.description
            ),
            score: total,
            changes: vec![gap.clone()],
        }),
        None => {
            // Nothing computed can step (missing or undefined parts): report the data first.
            let changes: Vec<Gap> = parts
                .iter()
                .filter(|(_, _, p)| p.next.is_none() && !p.to_max.is_empty())
                .flat_map(|(_, _, p)| p.to_max.clone())
                .collect();
            (!changes.is_empty()).then(|| Step {
                score: score.clone(),
                description: format!("{code} needs data before it can score more"),
                changes,
            })
        }
    }
}

fn count(n: usize) -> Num {
    Num::from_int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Smallest value of the metric's kind at or above `x` (whole units for COUNT and RANK,
/// hundredths otherwise).
fn smallest_at_least(kind: MetricKind, x: &Num) -> Num {
    if kind.is_integral() {
        x.ceil()
    } else {
        x.ceil_to(2)
    }
}

/// Smallest value of the metric's kind strictly above `x`.
fn smallest_above(kind: MetricKind, x: &Num) -> Num {
    if kind.is_integral() {
        x.floor() + Num::one()
    } else {
        x.floor_to(2) + Num::ratio(1, 100)
    }
}

/// Largest value of the metric's kind strictly below `x` (never below 0).
fn largest_below(kind: MetricKind, x: &Num) -> Num {
    let v = if kind.is_integral() {
        x.ceil() - Num::one()
    } else {
        x.ceil_to(2) - Num::ratio(1, 100)
    };
    v.max(Num::zero())
}

/// Largest value of the metric's kind at or below `x`.
fn largest_at_most(kind: MetricKind, x: &Num) -> Num {
    if kind.is_integral() {
        x.floor()
    } else {
        x.floor_to(2)
    }
}

fn signed(delta: &Num) -> String {
    if delta.is_negative() {
        delta.to_plain()
    } else {
        format!("+{}", delta.to_plain())
    }
}

fn change_gap(term: &str, metric: &str, current: &Num, required: Num) -> Gap {
    let change = signed(&(&required - current));
    Gap {
        term: term.to_owned(),
        metric: metric.to_owned(),
        current: Some(current.to_plain()),
        description: format!(
            "{metric}: {change} ({} -> {})",
            current.to_plain(),
            required.to_plain()
        ),
        required: required.to_plain(),
        change,
    }
}

fn domain_gap(term: &str, metric: &str, current: &Num, required: &Num, hint: &str) -> Gap {
    let delta = required - current;
    let mut description = format!(
        "{metric}: flag {} more domain{} ({} -> {})",
        delta.to_plain(),
        if delta == Num::one() { "" } else { "s" },
        current.to_plain(),
        required.to_plain()
    );
    if !hint.is_empty() {
        description.push_str(&format!("; not yet flagged: {hint}"));
    }
    Gap {
        term: term.to_owned(),
        metric: metric.to_owned(),
        current: Some(current.to_plain()),
        required: required.to_plain(),
        change: format!("{} domains", signed(&delta)),
        description,
    }
}

fn report_gap(term: &str, metric: &str) -> Gap {
    Gap {
        term: term.to_owned(),
        metric: metric.to_owned(),
        current: None,
        required: "reported".into(),
        change: "report".into(),
        description: format!("{metric}: not reported for this region and period"),
    }
}

fn set_true_gap(term: &str, metric: &str) -> Gap {
    Gap {
        term: term.to_owned(),
        metric: metric.to_owned(),
        current: Some("false".into()),
        required: "true".into(),
        change: "set true".into(),
        description: format!("{metric}: must be true"),
    }
}

fn nonzero_gap(term: &str, metric: &str) -> Gap {
    Gap {
        term: term.to_owned(),
        metric: metric.to_owned(),
        current: Some("0".into()),
        required: "> 0".into(),
        change: "report a non-zero value".into(),
        description: format!("{metric} is 0: the ratio is undefined and scores 0"),
    }
}
