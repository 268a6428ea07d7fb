//! The rules in words for a person of the credit office (issue 14), in Chinese or English:
//! what the engine's `summary()` and `rule_summary()` write as formulas over metric keys.
//! Metrics are named by their title from the catalog (the Chinese title, or the English one,
//! falling back to the key when the catalog has none), and ratios' thresholds as percentages
//! ("≥ 100%"); the numbers stay exact.

use super::{Catalog, Formula, Indicator, IndicatorKind, ItemCheck, Predicate};
use crate::numbers::Num;

/// The language the rules are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

/// Writes a catalog's rules in one language.
#[derive(Clone, Copy)]
pub struct Words<'a> {
    catalog: &'a Catalog,
    lang: Lang,
}

/// The rules in Chinese (the city's default).
pub type Chinese<'a> = Words<'a>;

impl<'a> Words<'a> {
    /// Chinese words.
    pub fn new(catalog: &'a Catalog) -> Self {
        Words::of(catalog, Lang::Zh)
    }

    /// English words.
    pub fn english(catalog: &'a Catalog) -> Self {
        Words::of(catalog, Lang::En)
    }

    pub fn of(catalog: &'a Catalog, lang: Lang) -> Self {
        Words { catalog, lang }
    }

    /// Picks the phrase of the language.
    fn say(&self, zh: String, en: String) -> String {
        match self.lang {
            Lang::Zh => zh,
            Lang::En => en,
        }
    }

    /// A metric's title in quotes, or its key when the catalog has no title in the language.
    fn m(&self, key: &str) -> String {
        let metric = self.catalog.metric(key);
        match self.lang {
            Lang::Zh => match metric {
                Some(m) if !m.title.is_empty() => format!("“{}”", m.title),
                _ => key.to_owned(),
            },
            Lang::En => match metric.and_then(|m| m.title_en.as_deref()) {
                Some(t) if !t.is_empty() => format!("\"{t}\""),
                _ => key.to_owned(),
            },
        }
    }

    /// The share of `numerator` in `denominator`, in words.
    fn ratio(&self, numerator: &str, denominator: &str) -> String {
        let (n, d) = (self.m(numerator), self.m(denominator));
        self.say(
            format!("{n}占{d}的比例"),
            format!("the share of {n} in {d}"),
        )
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
                let (m, t) = (self.m(metric), threshold.to_plain());
                self.say(format!("{m} ≤ {t}（名次）"), format!("{m} ≤ {t} (rank)"))
            }
            Predicate::IsTrue { metric } => {
                let m = self.m(metric);
                self.say(format!("{m}为“是”"), format!("{m} is yes"))
            }
            Predicate::Decreased { metric, baseline } => {
                let (m, b) = (self.m(metric), self.m(baseline));
                self.say(
                    format!("{m}低于{b}（或两者均为 0）"),
                    format!("{m} below {b} (or both 0)"),
                )
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
            } => {
                let (n, d) = (self.m(numerator), self.m(denominator));
                let (x, c) = (factor.to_plain(), cap.to_plain());
                self.say(
                    format!("{n}与{d}之比 × {x}，最高 {c} 分"),
                    format!("{n} / {d} × {x}, at most {c} points"),
                )
            }
            Formula::CappedDomainCount {
                metric,
                factor,
                cap,
            } => {
                let m = self.m(metric);
                let (x, c) = (factor.to_plain(), cap.to_plain());
                self.say(
                    format!("{m}已标记的领域数 × {x}，最高 {c} 分"),
                    format!("domains flagged in {m} × {x}, at most {c} points"),
                )
            }
            Formula::Deduction {
                required,
                actual,
                full,
                per_unit,
            } => {
                let (a, r) = (self.m(actual), self.m(required));
                let (f, u) = (full.to_plain(), per_unit.to_plain());
                self.say(
                    format!("满分 {f}，{a}比{r}每少 1 扣 {u} 分，扣完为止"),
                    format!(
                        "{f} points, less {u} for each 1 that {a} falls short of {r}, down to 0"
                    ),
                )
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
                let r = self.ratio(numerator, denominator);
                let (a, s) = (percent(above), percent(step));
                let (b, i, c) = (base.to_plain(), increment.to_plain(), cap.to_plain());
                self.say(
                    format!("{r} 不超过 {a} 得 0 分；超过时得 {b} 分，每再高 {s} 加 {i} 分，最高 {c} 分"),
                    format!("{r} at most {a}: 0 points; above it {b} points, {i} more for each further {s}, at most {c} points"),
                )
            }
            Formula::FlagPoints { metric, points } => {
                let (m, p) = (self.m(metric), points.to_plain());
                self.say(
                    format!("{m}为“是”得 {p} 分"),
                    format!("{p} points if {m} is yes"),
                )
            }
            Formula::WeightedDomainCounts { terms } => terms
                .iter()
                .map(|t| {
                    let (m, w) = (self.m(&t.metric), t.weight.to_plain());
                    self.say(
                        format!("{m}已标记的领域数 × {w}"),
                        format!("domains flagged in {m} × {w}"),
                    )
                })
                .collect::<Vec<_>>()
                .join(" + "),
            Formula::AssessedScore { metric } => {
                let m = self.m(metric);
                self.say(format!("{m}（评审赋分）"), format!("{m} (assessed)"))
            }
        }
    }

    /// An evaluation item's check.
    pub fn check(&self, c: &ItemCheck) -> String {
        match c {
            ItemCheck::IndicatorPasses {
                indicator,
                conditions,
            } if conditions.is_empty() => self.say(
                format!("硬指标 {indicator} 达标"),
                format!("hard indicator {indicator} passes"),
            ),
            ItemCheck::IndicatorPasses {
                indicator,
                conditions,
            } => self.say(
                format!("硬指标 {indicator} 的条件（{}）成立", conditions.join("、")),
                format!(
                    "conditions ({}) of hard indicator {indicator} hold",
                    conditions.join(", ")
                ),
            ),
            ItemCheck::IndicatorScores { indicator } => self.say(
                format!("硬指标 {indicator} 得分大于 0"),
                format!("hard indicator {indicator} scores above 0"),
            ),
            ItemCheck::AllDomainsFlagged {
                metrics,
                domain_group,
            } => {
                let names: Vec<String> = metrics.iter().map(|m| self.m(m)).collect();
                self.say(
                    format!(
                        "“{domain_group}”组的每个领域在{}中均已标记",
                        names.join("、")
                    ),
                    format!(
                        "every domain of the \"{domain_group}\" group flagged in {}",
                        names.join(", ")
                    ),
                )
            }
            ItemCheck::Predicate(p) => self.predicate(p),
        }
    }

    /// An indicator's whole rule: its conditions (basic) or its parts and the cap (guiding).
    pub fn rule(&self, ind: &Indicator) -> String {
        let sep = self.say("；".into(), "; ".into());
        match ind.kind {
            IndicatorKind::Basic => ind
                .conditions
                .iter()
                .map(|c| {
                    let p = self.predicate(&c.predicate);
                    self.say(format!("（{}）{p}", c.label), format!("({}) {p}", c.label))
                })
                .collect::<Vec<_>>()
                .join(&sep),
            IndicatorKind::Guiding => {
                let parts = ind
                    .parts
                    .iter()
                    .map(|p| {
                        let f = self.formula(&p.formula);
                        self.say(format!("{}：{f}", p.label), format!("{}: {f}", p.label))
                    })
                    .collect::<Vec<_>>()
                    .join(&sep);
                let max = ind
                    .max_score
                    .as_ref()
                    .map(Num::to_plain)
                    .unwrap_or_default();
                if ind.parts.len() == 1 {
                    parts
                } else {
                    self.say(
                        format!("{parts}；得分为各部分之和，最高 {max} 分"),
                        format!("{parts}; the score is the sum of the parts, at most {max} points"),
                    )
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
    fn every_rule_of_the_builtin_catalog_reads_in_english_with_metric_titles() {
        let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        let en = Words::english(&catalog);
        for ind in &catalog.indicators {
            let rule = en.rule(ind);
            for m in ind.metrics() {
                let metric = catalog.metric(m).unwrap_or_else(|| panic!("{m}"));
                // A metric with an English title is named by it, never by its key.
                if let Some(title) = metric.title_en.as_deref().filter(|t| !t.is_empty()) {
                    assert!(rule.contains(title), "{}: {rule}", ind.code);
                    assert!(!rule.contains(m), "{}: the key {m} in {rule}", ind.code);
                }
            }
            let cjk = |c: char| ('\u{4e00}'..='\u{9fff}').contains(&c);
            assert!(!rule.chars().any(cjk), "{}: Chinese in {rule}", ind.code);
        }
        let p = Predicate::RatioAtLeast {
            numerator: "uscc.stock_codes_converted".into(),
            denominator: "uscc.stock_codes_total".into(),
            threshold: Num::parse_decimal("0.99").unwrap_or_else(|e| panic!("{e}")),
        };
        let text = en.predicate(&p);
        assert!(text.starts_with("the share of \""), "{text}");
        assert!(text.ends_with(" ≥ 99%"), "{text}");
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
