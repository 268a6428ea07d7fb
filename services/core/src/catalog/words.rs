//! The rules in Chinese words (issue 14, Chinese first): what `summary()` and `rule_summary()`
//! say in English, for a person of the credit office. Metrics are named by their Chinese title
//! from the catalog, and ratios' thresholds as percentages ("≥ 100%"); the numbers stay exact.

use super::{Catalog, Formula, Indicator, IndicatorKind, ItemCheck, Predicate};
use crate::numbers::Num;

/// Writes a catalog's rules in Chinese.
#[derive(Clone, Copy)]
pub struct Chinese<'a> {
    catalog: &'a Catalog,
}

impl<'a> Chinese<'a> {
    pub fn new(catalog: &'a Catalog) -> Self {
        Chinese { catalog }
    }

    /// A metric's Chinese title, or its key when the catalog has no title for it.
    fn m(&self, key: &str) -> String {
        match self.catalog.metric(key) {
            Some(m) if !m.title.is_empty() => format!("“{}”", m.title),
            _ => key.to_owned(),
        }
    }

    /// The share of `numerator` in `denominator`, in words.
    fn ratio(&self, numerator: &str, denominator: &str) -> String {
        format!("{}占{}的比例", self.m(numerator), self.m(denominator))
    }

    /// A predicate: "“已双公示的行政许可数”占“行政许可总数”的比例 ≥ 100%".
    pub fn predicate(&self, p: &Predicate) -> String {
        match p {
            Predicate::RatioAtLeast {
                numerator,
                denominator,
                threshold,
            } => format!(
                "{} ≥ {}",
                self.ratio(numerator, denominator),
                percent(threshold)
            ),
            Predicate::RatioBelow {
                numerator,
                denominator,
                threshold,
            } => format!(
                "{} < {}",
                self.ratio(numerator, denominator),
                percent(threshold)
            ),
            Predicate::AtLeast { metric, threshold } => {
                format!("{} ≥ {}", self.m(metric), threshold.to_plain())
            }
            Predicate::Above { metric, threshold } => {
                format!("{} > {}", self.m(metric), threshold.to_plain())
            }
            Predicate::AtMost { metric, threshold } => {
                format!("{} ≤ {}（名次）", self.m(metric), threshold.to_plain())
            }
            Predicate::IsTrue { metric } => format!("{}为“是”", self.m(metric)),
            Predicate::Decreased { metric, baseline } => {
                format!("{}低于{}（或两者均为 0）", self.m(metric), self.m(baseline))
            }
        }
    }

    /// A guiding indicator's part: how it scores.
    pub fn formula(&self, f: &Formula) -> String {
        match f {
            Formula::CappedRatio {
                numerator,
                denominator,
                factor,
                cap,
            } => format!(
                "{}与{}之比 × {}，最高 {} 分",
                self.m(numerator),
                self.m(denominator),
                factor.to_plain(),
                cap.to_plain()
            ),
            Formula::CappedDomainCount {
                metric,
                factor,
                cap,
            } => format!(
                "{}已标记的领域数 × {}，最高 {} 分",
                self.m(metric),
                factor.to_plain(),
                cap.to_plain()
            ),
            Formula::Deduction {
                required,
                actual,
                full,
                per_unit,
            } => format!(
                "满分 {}，{}比{}每少 1 扣 {} 分，扣完为止",
                full.to_plain(),
                self.m(actual),
                self.m(required),
                per_unit.to_plain()
            ),
            Formula::StepBands {
                numerator,
                denominator,
                above,
                base,
                step,
                increment,
                cap,
            } => format!(
                "{} 不超过 {} 得 0 分；超过时得 {} 分，每再高 {} 加 {} 分，最高 {} 分",
                self.ratio(numerator, denominator),
                percent(above),
                base.to_plain(),
                percent(step),
                increment.to_plain(),
                cap.to_plain()
            ),
            Formula::FlagPoints { metric, points } => {
                format!("{}为“是”得 {} 分", self.m(metric), points.to_plain())
            }
            Formula::WeightedDomainCounts { terms } => terms
                .iter()
                .map(|t| {
                    format!(
                        "{}已标记的领域数 × {}",
                        self.m(&t.metric),
                        t.weight.to_plain()
                    )
                })
                .collect::<Vec<_>>()
                .join(" + "),
            Formula::AssessedScore { metric } => format!("{}（评审赋分）", self.m(metric)),
        }
    }

    /// An evaluation item's check.
    pub fn check(&self, c: &ItemCheck) -> String {
        match c {
            ItemCheck::IndicatorPasses {
                indicator,
                conditions,
            } if conditions.is_empty() => format!("硬指标 {indicator} 达标"),
            ItemCheck::IndicatorPasses {
                indicator,
                conditions,
            } => format!("硬指标 {indicator} 的条件（{}）成立", conditions.join("、")),
            ItemCheck::IndicatorScores { indicator } => {
                format!("硬指标 {indicator} 得分大于 0")
            }
            ItemCheck::AllDomainsFlagged {
                metrics,
                domain_group,
            } => format!(
                "“{domain_group}”组的每个领域在{}中均已标记",
                metrics
                    .iter()
                    .map(|m| self.m(m))
                    .collect::<Vec<_>>()
                    .join("、")
            ),
            ItemCheck::Predicate(p) => self.predicate(p),
        }
    }

    /// An indicator's whole rule: its conditions (basic) or its parts and the cap (guiding).
    pub fn rule(&self, ind: &Indicator) -> String {
        match ind.kind {
            IndicatorKind::Basic => ind
                .conditions
                .iter()
                .map(|c| format!("（{}）{}", c.label, self.predicate(&c.predicate)))
                .collect::<Vec<_>>()
                .join("；"),
            IndicatorKind::Guiding => {
                let parts = ind
                    .parts
                    .iter()
                    .map(|p| format!("{}：{}", p.label, self.formula(&p.formula)))
                    .collect::<Vec<_>>()
                    .join("；");
                let max = ind
                    .max_score
                    .as_ref()
                    .map(Num::to_plain)
                    .unwrap_or_default();
                if ind.parts.len() == 1 {
                    parts
                } else {
                    format!("{parts}；得分为各部分之和，最高 {max} 分")
                }
            }
        }
    }
}

/// A ratio as a percentage, exactly: 1 → "100%", 0.925 → "92.5%", 1/3 → "100/3%".
fn percent(ratio: &Num) -> String {
    format!("{}%", (ratio.clone() * Num::from_int(100)).to_plain())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_of_the_builtin_catalog_reads_in_chinese() {
        let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        let zh = Chinese::new(&catalog);
        for ind in &catalog.indicators {
            let rule = zh.rule(ind);
            assert!(!rule.is_empty(), "{}", ind.code);
            // Every metric it reads is named by its Chinese title, never by its key alone.
            for m in ind.metrics() {
                let title = &catalog.metric(m).unwrap_or_else(|| panic!("{m}")).title;
                assert!(rule.contains(title.as_str()), "{}: {rule}", ind.code);
                assert!(!rule.contains(m), "{}: the key {m} in {rule}", ind.code);
            }
        }
        for item in &catalog.items {
            for t in &item.tasks {
                for c in &t.checks {
                    assert!(!zh.check(c).is_empty());
                }
            }
        }
    }

    #[test]
    fn thresholds_of_ratios_read_as_exact_percentages() {
        assert_eq!(percent(&Num::one()), "100%");
        assert_eq!(
            percent(&Num::parse_decimal("0.925").unwrap_or_else(|e| panic!("{e}"))),
            "92.5%"
        );
        let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        let zh = Chinese::new(&catalog);
        let p = Predicate::RatioAtLeast {
            numerator: "uscc.stock_codes_converted".into(),
            denominator: "uscc.stock_codes_total".into(),
            threshold: Num::parse_decimal("0.99").unwrap_or_else(|e| panic!("{e}")),
        };
        let text = zh.predicate(&p);
        assert!(text.ends_with("的比例 ≥ 99%"), "{text}");
        assert!(text.starts_with('“'), "{text}");
    }
}
