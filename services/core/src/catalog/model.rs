//! The catalog's types. They are what the catalog file deserializes into and, once
//! `load` has validated every reference and kind, what the rule engine reads.

use serde::Deserialize;

use crate::numbers::Num;

/// What values a metric takes (rulebook section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MetricKind {
    Count,
    Amount,
    Bool,
    Rank,
    Score,
    DomainFlag,
    TaskStatus,
}

/// Which regions' values a metric's figure for a region takes (rulebook section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregationScope {
    /// The region itself and every region below it (the default for COUNT, AMOUNT, BOOL and
    /// DOMAIN_FLAG).
    #[default]
    Subtree,
    /// The region itself only: G13's units (policy, rulebook section 2) and, always, RANK, SCORE
    /// and TASK_STATUS.
    Region,
}

impl AggregationScope {
    pub fn as_str(self) -> &'static str {
        match self {
            AggregationScope::Subtree => "subtree",
            AggregationScope::Region => "region",
        }
    }
}

/// How a metric's values reach a period (rulebook v2, INDICATORS.md section 2 "Time").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeClass {
    /// A state at a point in time: a period without its own value takes the latest value of a
    /// period ending no later than its end and at most 12 months before it (the default).
    #[default]
    Level,
    /// An amount over a span of time: a period without its own value takes the sum over the
    /// finest granularity reported inside it.
    Flow,
}

impl TimeClass {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeClass::Level => "level",
            TimeClass::Flow => "flow",
        }
    }
}

/// How the current values of a metric combine for a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Aggregation {
    Sum,
    AnyTrue,
    AtRegion,
    LatestAtRegion,
    DomainUnion,
}

impl MetricKind {
    /// The rulebook's aggregation for the kind.
    pub fn aggregation(self) -> Aggregation {
        match self {
            MetricKind::Count | MetricKind::Amount => Aggregation::Sum,
            MetricKind::Bool => Aggregation::AnyTrue,
            MetricKind::Rank => Aggregation::AtRegion,
            MetricKind::Score | MetricKind::TaskStatus => Aggregation::LatestAtRegion,
            MetricKind::DomainFlag => Aggregation::DomainUnion,
        }
    }

    /// Kinds whose figure is always the value at the region itself.
    pub fn is_at_region(self) -> bool {
        matches!(
            self,
            MetricKind::Rank | MetricKind::Score | MetricKind::TaskStatus
        )
    }

    /// Kinds whose values are numbers that can be divided (ratio numerators and denominators).
    pub fn is_quantity(self) -> bool {
        matches!(self, MetricKind::Count | MetricKind::Amount)
    }

    /// Kinds whose values are numbers at all.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            MetricKind::Count | MetricKind::Amount | MetricKind::Rank | MetricKind::Score
        )
    }

    /// Integer-valued kinds: gaps in them are whole units.
    pub fn is_integral(self) -> bool {
        matches!(self, MetricKind::Count | MetricKind::Rank)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Count => "COUNT",
            MetricKind::Amount => "AMOUNT",
            MetricKind::Bool => "BOOL",
            MetricKind::Rank => "RANK",
            MetricKind::Score => "SCORE",
            MetricKind::DomainFlag => "DOMAIN_FLAG",
            MetricKind::TaskStatus => "TASK_STATUS",
        }
    }
}

/// One reported quantity.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    pub key: String,
    pub kind: MetricKind,
    pub title: String,
    /// The title in English (issue 14, Chinese first); `title` is the official Chinese title.
    /// Optional so that catalogs without English still load.
    #[serde(default)]
    pub title_en: Option<String>,
    /// DOMAIN_FLAG: the domain set its domains come from.
    #[serde(default)]
    pub domain_set: Option<String>,
    /// SCORE: the highest valid value.
    #[serde(default)]
    pub max: Option<Num>,
    /// `scope = "region"`: the figure for a region takes the values reported at the region
    /// itself, not at the regions below it. Unset means the kind's default (see `scope()`).
    #[serde(default, rename = "scope")]
    pub declared_scope: Option<AggregationScope>,
    /// `time = "flow"`: how values reach a period; unset means LEVEL.
    #[serde(default, rename = "time")]
    pub time: TimeClass,
    /// Indicators and items whose rules read the metric (filled in by the loader).
    #[serde(skip)]
    pub used_by: Vec<String>,
}

/// At most this many fraction digits in a SCORE value (keeps the stored text exact and short).
pub const MAX_SCORE_FRACTION_DIGITS: usize = 12;

impl Metric {
    /// Which regions' values the metric's figure for a region takes.
    pub fn scope(&self) -> AggregationScope {
        if self.kind.is_at_region() {
            AggregationScope::Region
        } else {
            self.declared_scope.unwrap_or_default()
        }
    }

    /// A number written for this metric, checked against its kind (rulebook section 2): the
    /// exact value, or every problem with it. Used for submissions and for what-if overrides.
    pub fn parse_number(&self, text: &str) -> Result<Num, Vec<String>> {
        let kind = self.kind;
        let n = Num::parse_decimal(text).map_err(|e| vec![e.to_string()])?;
        let mut problems = Vec::new();
        if !kind.is_numeric() {
            problems.push(format!("a {} metric takes no number", kind.as_str()));
        }
        if n.is_negative() {
            problems.push(format!("a {} is never negative", kind.as_str()));
        }
        match kind {
            MetricKind::Count | MetricKind::Rank if !n.is_integer() => {
                problems.push(format!(
                    "a {} is a whole number, not `{text}`",
                    kind.as_str()
                ));
            }
            MetricKind::Rank if n.is_zero() => problems.push("a RANK starts at 1".to_owned()),
            MetricKind::Amount if Num::fraction_digits(text) > 2 => {
                problems.push(format!(
                    "an AMOUNT has at most 2 fraction digits, not `{text}`"
                ));
            }
            MetricKind::Score => {
                if Num::fraction_digits(text) > MAX_SCORE_FRACTION_DIGITS {
                    problems.push(format!(
                        "a SCORE has at most {MAX_SCORE_FRACTION_DIGITS} fraction digits"
                    ));
                }
                if let Some(max) = &self.max
                    && &n > max
                {
                    problems.push(format!(
                        "`{}` scores at most {}, not `{text}`",
                        self.key,
                        max.to_plain()
                    ));
                }
            }
            _ => {}
        }
        if problems.is_empty() {
            Ok(n)
        } else {
            Err(problems)
        }
    }
}

/// A named list of domains.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSet {
    pub code: String,
    /// Open sets accept domains an administrator registers.
    pub open: bool,
    #[serde(default)]
    pub domains: Vec<Domain>,
}

/// One domain of a set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    pub code: String,
    pub title: String,
    /// The title in English (issue 14, Chinese first); `title` is the official Chinese title.
    /// Optional so that catalogs without English still load.
    #[serde(default)]
    pub title_en: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
}

/// A cross-metric check: after aggregation the numerator must not exceed the denominator (or a
/// fixed bound). A violation makes the indicators using the numerator `INVALID_DATA`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossCheck {
    pub numerator: String,
    #[serde(default)]
    pub denominator: Option<String>,
    #[serde(default)]
    pub bound: Option<Num>,
}

/// Basic indicator or guiding indicator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndicatorKind {
    Basic,
    Guiding,
}

/// A yes/no test over metric values: the conditions of basic indicators and the quantitative
/// checks of evaluation items.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Predicate {
    /// ratio(numerator, denominator) >= threshold; a zero denominator is met vacuously.
    RatioAtLeast {
        numerator: String,
        denominator: String,
        threshold: Num,
    },
    /// ratio(numerator, denominator) < threshold (strict); a zero denominator is met vacuously.
    RatioBelow {
        numerator: String,
        denominator: String,
        threshold: Num,
    },
    /// metric >= threshold.
    AtLeast { metric: String, threshold: Num },
    /// metric > threshold (strict): "a metric above 0".
    Above { metric: String, threshold: Num },
    /// metric <= threshold (ranks: 1 is best).
    AtMost { metric: String, threshold: Num },
    /// metric is true.
    IsTrue { metric: String },
    /// metric < baseline, or both are 0 (a growth rate below 0%).
    Decreased { metric: String, baseline: String },
}

/// One scored part of a guiding indicator.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Formula {
    /// min(ratio(numerator, denominator) x factor, cap); a zero denominator scores 0 with the
    /// flag UNDEFINED_RATIO.
    CappedRatio {
        numerator: String,
        denominator: String,
        factor: Num,
        cap: Num,
    },
    /// min(n x factor, cap), n = number of domains flagged in the metric.
    CappedDomainCount {
        metric: String,
        factor: Num,
        cap: Num,
    },
    /// max(0, full - per_unit x (required - actual)).
    Deduction {
        required: String,
        actual: String,
        full: Num,
        per_unit: Num,
    },
    /// c = ratio(numerator, denominator); c <= above: 0; otherwise
    /// min(base + increment x floor((c - above) / step), cap).
    StepBands {
        numerator: String,
        denominator: String,
        above: Num,
        base: Num,
        step: Num,
        increment: Num,
        cap: Num,
    },
    /// points when the BOOL metric is true, else 0.
    FlagPoints { metric: String, points: Num },
    /// sum over terms of weight x number of domains flagged in the term's metric.
    WeightedDomainCounts { terms: Vec<WeightedTerm> },
    /// The assessed SCORE metric's value (0..its max).
    AssessedScore { metric: String },
}

/// One term of a weighted domain count.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedTerm {
    pub metric: String,
    pub weight: Num,
}

/// A labelled condition of a basic indicator.
// No `deny_unknown_fields` here: serde does not support it with `flatten`; the tagged enum
// inside rejects unknown fields itself.
#[derive(Clone, Debug, Deserialize)]
pub struct Condition {
    pub label: String,
    #[serde(flatten)]
    pub predicate: Predicate,
}

/// A labelled part of a guiding indicator.
// No `deny_unknown_fields` here: serde does not support it with `flatten`; the tagged enum
// inside rejects unknown fields itself.
#[derive(Clone, Debug, Deserialize)]
pub struct Part {
    pub label: String,
    #[serde(flatten)]
    pub formula: Formula,
}

/// One hard indicator.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Indicator {
    pub code: String,
    pub source_number: u32,
    pub kind: IndicatorKind,
    pub title: String,
    /// The title in English (issue 14, Chinese first); `title` is the official Chinese title.
    /// Optional so that catalogs without English still load.
    #[serde(default)]
    pub title_en: Option<String>,
    /// Guiding indicators: the cap on the summed parts.
    #[serde(default)]
    pub max_score: Option<Num>,
    /// Basic indicators: every condition must hold.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Guiding indicators: the parts, summed and capped.
    #[serde(default)]
    pub parts: Vec<Part>,
}

/// A check measuring an evaluation task (rulebook section 5). In the catalog file every check
/// names its `type`: `indicator_passes`, `indicator_scores`, `all_domains_flagged`, or one of
/// the condition types of basic indicators (`ratio_at_least`, `above`, `is_true`, ...).
#[derive(Clone, Debug, PartialEq)]
pub enum ItemCheck {
    /// A basic indicator passes; with `conditions`, only those of its conditions must hold
    /// (E03.3 reads B10's conditions 1 and 2, not the rank).
    IndicatorPasses {
        indicator: String,
        /// Condition labels; empty means every condition.
        conditions: Vec<String>,
    },
    /// A guiding indicator scores above 0.
    IndicatorScores { indicator: String },
    /// Every domain of a group of the set is flagged in every one of the metrics.
    AllDomainsFlagged {
        metrics: Vec<String>,
        domain_group: String,
    },
    /// A condition over metric values.
    Predicate(Predicate),
}

/// The check types of the catalog file, in the order the loader lists them.
pub const CHECK_TYPES: &[&str] = &[
    "indicator_passes",
    "indicator_scores",
    "all_domains_flagged",
    "ratio_at_least",
    "ratio_below",
    "at_least",
    "above",
    "at_most",
    "is_true",
    "decreased",
];

/// The check types that are not predicates, as the file spells them.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum IndicatorOrDomainCheck {
    IndicatorPasses {
        indicator: String,
        #[serde(default)]
        conditions: Vec<String>,
    },
    IndicatorScores {
        indicator: String,
    },
    AllDomainsFlagged {
        metrics: Vec<String>,
        domain_group: String,
    },
}

// By hand rather than `untagged`: an untagged enum answers every mistake with "did not match
// any variant"; this names the unknown type or the misspelt field.
impl<'de> Deserialize<'de> for ItemCheck {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = toml::Value::deserialize(deserializer)?;
        let Some(kind) = value.get("type").and_then(toml::Value::as_str) else {
            return Err(D::Error::custom(format!(
                "a check needs `type`, one of: {}",
                CHECK_TYPES.join(", ")
            )));
        };
        if !CHECK_TYPES.contains(&kind) {
            return Err(D::Error::custom(format!(
                "unknown check type `{kind}`, expected one of: {}",
                CHECK_TYPES.join(", ")
            )));
        }
        if matches!(
            kind,
            "indicator_passes" | "indicator_scores" | "all_domains_flagged"
        ) {
            let check = IndicatorOrDomainCheck::deserialize(value).map_err(D::Error::custom)?;
            Ok(match check {
                IndicatorOrDomainCheck::IndicatorPasses {
                    indicator,
                    conditions,
                } => ItemCheck::IndicatorPasses {
                    indicator,
                    conditions,
                },
                IndicatorOrDomainCheck::IndicatorScores { indicator } => {
                    ItemCheck::IndicatorScores { indicator }
                }
                IndicatorOrDomainCheck::AllDomainsFlagged {
                    metrics,
                    domain_group,
                } => ItemCheck::AllDomainsFlagged {
                    metrics,
                    domain_group,
                },
            })
        } else {
            Predicate::deserialize(value)
                .map(ItemCheck::Predicate)
                .map_err(D::Error::custom)
        }
    }
}

/// One work task of an evaluation item.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub id: String,
    pub title: String,
    /// The title in English (issue 14, Chinese first); `title` is the official Chinese title.
    /// Optional so that catalogs without English still load.
    #[serde(default)]
    pub title_en: Option<String>,
    /// The item section (开展内容) the task belongs to, in items that have sections: it gives
    /// the task its responsible departments (rulebook section 5, v2).
    #[serde(default)]
    pub section: Option<Section>,
    /// What the source enumerates under the task (sub-criteria, examples) and how the rulebook
    /// reads words that cannot be met literally, for whoever reports the task's status.
    #[serde(default)]
    pub description: Option<String>,
    /// The description in English; `description` is the official Chinese text.
    #[serde(default)]
    pub description_en: Option<String>,
    #[serde(default)]
    pub checks: Vec<ItemCheck>,
}

/// A section of an evaluation item (E07 信用环境 / 法治环境 / 政策环境, ...): a group of its
/// tasks with their own responsible departments.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// A stable short English slug, unique within the item ("rule-of-law").
    pub code: String,
    /// The source's heading ("法治环境").
    pub title: String,
    /// The heading in English ("Rule-of-law environment").
    #[serde(default)]
    pub title_en: Option<String>,
}

/// The subject code of an item section in responsibilities: `{item}/{section}` ("E07/rule-of-law").
pub fn section_subject(item: &str, section: &str) -> String {
    format!("{item}/{section}")
}

/// One evaluation item (Annex 2).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub code: String,
    pub title: String,
    /// The title in English (issue 14, Chinese first); `title` is the official Chinese title.
    /// Optional so that catalogs without English still load.
    #[serde(default)]
    pub title_en: Option<String>,
    #[serde(rename = "task")]
    pub tasks: Vec<Task>,
}

impl Predicate {
    /// Metrics the predicate reads, in the order they appear.
    pub fn metrics(&self) -> Vec<&str> {
        match self {
            Predicate::RatioAtLeast {
                numerator,
                denominator,
                ..
            }
            | Predicate::RatioBelow {
                numerator,
                denominator,
                ..
            } => vec![numerator, denominator],
            Predicate::AtLeast { metric, .. }
            | Predicate::Above { metric, .. }
            | Predicate::AtMost { metric, .. }
            | Predicate::IsTrue { metric } => vec![metric],
            Predicate::Decreased { metric, baseline } => vec![metric, baseline],
        }
    }

    /// The predicate in words.
    pub fn summary(&self) -> String {
        match self {
            Predicate::RatioAtLeast {
                numerator,
                denominator,
                threshold,
            } => format!("ratio({numerator}, {denominator}) >= {threshold}"),
            Predicate::RatioBelow {
                numerator,
                denominator,
                threshold,
            } => format!("ratio({numerator}, {denominator}) < {threshold}"),
            Predicate::AtLeast { metric, threshold } => format!("{metric} >= {threshold}"),
            Predicate::Above { metric, threshold } => format!("{metric} > {threshold}"),
            Predicate::AtMost { metric, threshold } => format!("{metric} <= {threshold}"),
            Predicate::IsTrue { metric } => format!("{metric} is true"),
            Predicate::Decreased { metric, baseline } => {
                format!("{metric} < {baseline}, or both 0")
            }
        }
    }
}

impl Formula {
    /// Metrics the formula reads, in the order they appear.
    pub fn metrics(&self) -> Vec<&str> {
        match self {
            Formula::CappedRatio {
                numerator,
                denominator,
                ..
            }
            | Formula::StepBands {
                numerator,
                denominator,
                ..
            } => vec![numerator, denominator],
            Formula::CappedDomainCount { metric, .. }
            | Formula::FlagPoints { metric, .. }
            | Formula::AssessedScore { metric } => vec![metric],
            Formula::Deduction {
                required, actual, ..
            } => vec![required, actual],
            Formula::WeightedDomainCounts { terms } => {
                terms.iter().map(|t| t.metric.as_str()).collect()
            }
        }
    }

    /// The formula in words.
    pub fn summary(&self) -> String {
        match self {
            Formula::CappedRatio {
                numerator,
                denominator,
                factor,
                cap,
            } => format!("min(ratio({numerator}, {denominator}) x {factor}, {cap})"),
            Formula::CappedDomainCount {
                metric,
                factor,
                cap,
            } => format!("min(domains in {metric} x {factor}, {cap})"),
            Formula::Deduction {
                required,
                actual,
                full,
                per_unit,
            } => format!("max(0, {full} - {per_unit} x ({required} - {actual}))"),
            Formula::StepBands {
                numerator,
                denominator,
                above,
                base,
                step,
                increment,
                cap,
            } => format!(
                "c = ratio({numerator}, {denominator}); c <= {above}: 0; else min({base} + {increment} x floor((c - {above}) / {step}), {cap})"
            ),
            Formula::FlagPoints { metric, points } => format!("{points} if {metric}"),
            Formula::WeightedDomainCounts { terms } => terms
                .iter()
                .map(|t| format!("{} x domains in {}", t.weight, t.metric))
                .collect::<Vec<_>>()
                .join(" + "),
            Formula::AssessedScore { metric } => format!("{metric} (assessed)"),
        }
    }
}

impl ItemCheck {
    /// The check's type as the catalog file names it.
    pub fn type_name(&self) -> &'static str {
        match self {
            ItemCheck::IndicatorPasses { .. } => "indicator_passes",
            ItemCheck::IndicatorScores { .. } => "indicator_scores",
            ItemCheck::AllDomainsFlagged { .. } => "all_domains_flagged",
            ItemCheck::Predicate(p) => p.type_name(),
        }
    }

    /// The check in words.
    pub fn summary(&self) -> String {
        match self {
            ItemCheck::IndicatorPasses {
                indicator,
                conditions,
            } if conditions.is_empty() => format!("indicator {indicator} passes"),
            ItemCheck::IndicatorPasses {
                indicator,
                conditions,
            } => format!(
                "indicator {indicator} conditions ({}) hold",
                conditions.join(", ")
            ),
            ItemCheck::IndicatorScores { indicator } => {
                format!("indicator {indicator} scores above 0")
            }
            ItemCheck::AllDomainsFlagged {
                metrics,
                domain_group,
            } => format!(
                "every {domain_group} domain flagged in {}",
                metrics.join(", ")
            ),
            ItemCheck::Predicate(p) => p.summary(),
        }
    }

    /// The indicator the check reads, if any.
    pub fn indicator(&self) -> Option<&str> {
        match self {
            ItemCheck::IndicatorPasses { indicator, .. }
            | ItemCheck::IndicatorScores { indicator } => Some(indicator),
            _ => None,
        }
    }

    /// Metrics the check reads directly (an indicator check reads through the indicator:
    /// `Catalog::check_metrics` resolves those).
    pub fn metrics(&self) -> Vec<&str> {
        match self {
            ItemCheck::IndicatorPasses { .. } | ItemCheck::IndicatorScores { .. } => Vec::new(),
            ItemCheck::AllDomainsFlagged { metrics, .. } => {
                metrics.iter().map(String::as_str).collect()
            }
            ItemCheck::Predicate(p) => p.metrics(),
        }
    }
}

impl Predicate {
    /// The predicate's type as the catalog file names it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Predicate::RatioAtLeast { .. } => "ratio_at_least",
            Predicate::RatioBelow { .. } => "ratio_below",
            Predicate::AtLeast { .. } => "at_least",
            Predicate::Above { .. } => "above",
            Predicate::AtMost { .. } => "at_most",
            Predicate::IsTrue { .. } => "is_true",
            Predicate::Decreased { .. } => "decreased",
        }
    }
}

impl Indicator {
    /// Every metric the indicator reads, without repeats, in order of appearance.
    pub fn metrics(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let all = self
            .conditions
            .iter()
            .flat_map(|c| c.predicate.metrics())
            .chain(self.parts.iter().flat_map(|p| p.formula.metrics()));
        for m in all {
            if !out.contains(&m) {
                out.push(m);
            }
        }
        out
    }

    /// The rule in words.
    pub fn rule_summary(&self) -> String {
        match self.kind {
            IndicatorKind::Basic => self
                .conditions
                .iter()
                .map(|c| format!("({}) {}", c.label, c.predicate.summary()))
                .collect::<Vec<_>>()
                .join("; "),
            IndicatorKind::Guiding => {
                let parts = self
                    .parts
                    .iter()
                    .map(|p| format!("{}: {}", p.label, p.formula.summary()))
                    .collect::<Vec<_>>()
                    .join("; ");
                let max = self
                    .max_score
                    .as_ref()
                    .map(Num::to_plain)
                    .unwrap_or_default();
                format!("{parts}; score = min(sum of parts, {max})")
            }
        }
    }
}

impl Item {
    /// The item's sections in source order (each once); empty when the item has none.
    pub fn sections(&self) -> Vec<&Section> {
        let mut out: Vec<&Section> = Vec::new();
        for s in self.tasks.iter().filter_map(|t| t.section.as_ref()) {
            if !out.iter().any(|o| o.code == s.code) {
                out.push(s);
            }
        }
        out
    }

    /// The responsibility subjects of the item: its sections (`E07/rule-of-law`) when it has
    /// them, else the item itself.
    pub fn subjects(&self) -> Vec<String> {
        let sections = self.sections();
        if sections.is_empty() {
            vec![self.code.clone()]
        } else {
            sections
                .iter()
                .map(|s| section_subject(&self.code, &s.code))
                .collect()
        }
    }

    /// The tasks of one section (all tasks when `section` is None).
    pub fn tasks_in(&self, section: Option<&str>) -> Vec<&Task> {
        self.tasks
            .iter()
            .filter(|t| match section {
                None => true,
                Some(code) => t.section.as_ref().is_some_and(|s| s.code == code),
            })
            .collect()
    }

    /// Every metric the tasks of one section (all tasks when None) read directly: task.status
    /// plus their checks' metrics.
    pub fn section_metrics(&self, section: Option<&str>) -> Vec<&str> {
        let mut out: Vec<&str> = vec![crate::catalog::TASK_STATUS_METRIC];
        for m in self
            .tasks_in(section)
            .into_iter()
            .flat_map(|t| t.checks.iter())
            .flat_map(ItemCheck::metrics)
        {
            if !out.contains(&m) {
                out.push(m);
            }
        }
        out
    }

    /// Indicators the checks of one section's tasks (all tasks when None) read.
    pub fn section_indicators(&self, section: Option<&str>) -> Vec<&str> {
        self.tasks_in(section)
            .into_iter()
            .flat_map(|t| t.checks.iter())
            .filter_map(ItemCheck::indicator)
            .collect()
    }

    /// Every metric the item reads directly (task.status plus its checks' metrics).
    pub fn metrics(&self) -> Vec<&str> {
        self.section_metrics(None)
    }

    /// Indicators the item's checks read.
    pub fn indicators(&self) -> Vec<&str> {
        self.section_indicators(None)
    }
}
