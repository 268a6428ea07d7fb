//! The indicator catalog: the national criteria as data (metrics, domain sets, cross-metric
//! checks, the 20 hard indicators and the 12 evaluation items), loaded from a versioned TOML file
//! and validated as a whole before anything uses it.

mod diagnostics;
mod model;
mod versions;
mod words;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

pub use diagnostics::{Diagnostics, LoadError, Problem};
pub use model::*;
pub use versions::{MAX_RULE_VERSIONS, RuleVersions};
pub use words::{Chinese, Lang, Words};

use crate::numbers::Num;

/// The version of the indicator rulebook (shared/spec/INDICATORS.md) whose rules this platform
/// implements; a catalog file says which version it renders (`rulebook_version`) and loading
/// refuses any other.
pub const RULEBOOK_VERSION: u32 = 2;

/// The metric that carries evaluation task statuses.
pub const TASK_STATUS_METRIC: &str = "task.status";

/// The catalog compiled into the binary.
pub const BUILTIN_CATALOG_NAME: &str = "builtin:deploy/catalog/national-2019.toml";
/// Text of the compiled-in catalog.
pub const BUILTIN_CATALOG_TOML: &str =
    include_str!("../../../../deploy/catalog/national-2019.toml");

/// A validated catalog with indexes for lookups.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The rulebook version the file renders (`RULEBOOK_VERSION`).
    pub rulebook_version: u32,
    pub version: String,
    pub title: String,
    /// The catalog's title in English; `title` is the official Chinese title.
    pub title_en: Option<String>,
    /// Where it was loaded from (a path or `builtin:...`).
    pub source: String,
    pub metrics: Vec<Metric>,
    pub domain_sets: Vec<DomainSet>,
    pub checks: Vec<CrossCheck>,
    pub indicators: Vec<Indicator>,
    pub items: Vec<Item>,
    metric_index: HashMap<String, usize>,
    indicator_index: HashMap<String, usize>,
    item_index: HashMap<String, usize>,
    task_index: HashMap<String, (usize, usize)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    rulebook_version: Option<u32>,
    version: String,
    title: String,
    #[serde(default)]
    title_en: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    catalog: Header,
    #[serde(rename = "metric", default)]
    metrics: Vec<Spanned<Metric>>,
    #[serde(rename = "domain_set", default)]
    domain_sets: Vec<Spanned<DomainSet>>,
    #[serde(rename = "check", default)]
    checks: Vec<Spanned<CrossCheck>>,
    #[serde(rename = "indicator", default)]
    indicators: Vec<Spanned<Indicator>>,
    #[serde(rename = "item", default)]
    items: Vec<Spanned<Item>>,
}

impl Catalog {
    /// The catalog compiled into the binary.
    pub fn builtin() -> Result<Catalog, LoadError> {
        Catalog::from_toml(BUILTIN_CATALOG_TOML, BUILTIN_CATALOG_NAME)
    }

    /// Loads and validates a catalog file.
    pub fn from_path(path: &Path) -> Result<Catalog, LoadError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| LoadError {
            file: name.clone(),
            problems: vec![Problem {
                line: None,
                key: "file".into(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        Catalog::from_toml(&text, &name)
    }

    /// Parses and validates catalog text; `source` names it in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Catalog, LoadError> {
        let file: CatalogFile =
            toml::from_str(text).map_err(|e| Diagnostics::parse_error(source, text, &e))?;
        let mut d = Diagnostics::new(source, text);
        let catalog = validate(file, source, &mut d);
        d.finish()?;
        Ok(catalog)
    }

    pub fn metric(&self, key: &str) -> Option<&Metric> {
        self.metric_index.get(key).map(|&i| &self.metrics[i])
    }

    pub fn indicator(&self, code: &str) -> Option<&Indicator> {
        self.indicator_index.get(code).map(|&i| &self.indicators[i])
    }

    pub fn item(&self, code: &str) -> Option<&Item> {
        self.item_index.get(code).map(|&i| &self.items[i])
    }

    pub fn task(&self, id: &str) -> Option<&Task> {
        self.task_index
            .get(id)
            .map(|&(i, t)| &self.items[i].tasks[t])
    }

    pub fn domain_set(&self, code: &str) -> Option<&DomainSet> {
        self.domain_sets.iter().find(|s| s.code == code)
    }

    /// The domain set of a DOMAIN_FLAG metric.
    pub fn domain_set_of(&self, metric: &str) -> Option<&DomainSet> {
        self.metric(metric)
            .and_then(|m| m.domain_set.as_deref())
            .and_then(|s| self.domain_set(s))
    }

    /// The most points a guiding part can give (validated at load to sum to the indicator's
    /// max_score).
    pub fn part_max(&self, f: &Formula) -> Num {
        match f {
            Formula::CappedRatio { cap, .. }
            | Formula::CappedDomainCount { cap, .. }
            | Formula::StepBands { cap, .. } => cap.clone(),
            Formula::Deduction { full, .. } => full.clone(),
            Formula::FlagPoints { points, .. } => points.clone(),
            Formula::AssessedScore { metric } => self
                .metric(metric)
                .and_then(|m| m.max.clone())
                .unwrap_or_default(),
            Formula::WeightedDomainCounts { terms } => terms
                .iter()
                .map(|t| {
                    let size = self.domain_set_of(&t.metric).map_or(0, |s| s.domains.len());
                    &t.weight * &Num::from_int(i64::try_from(size).unwrap_or(i64::MAX))
                })
                .sum(),
        }
    }

    /// Sum of the guiding indicators' maxima (54 for the national criteria).
    pub fn guiding_max_total(&self) -> Num {
        self.indicators
            .iter()
            .filter_map(|i| i.max_score.clone())
            .sum()
    }

    /// Splits a responsibility subject: an indicator or item code ("B01", "E01") or an item
    /// section (`E07/rule-of-law`) into the item and the section.
    pub fn split_subject(subject: &str) -> (&str, Option<&str>) {
        match subject.split_once('/') {
            Some((item, section)) => (item, Some(section)),
            None => (subject, None),
        }
    }

    /// An item section by subject (`E07/rule-of-law`).
    pub fn section(&self, subject: &str) -> Option<&Section> {
        let (item, Some(code)) = Catalog::split_subject(subject) else {
            return None;
        };
        self.item(item)?
            .sections()
            .into_iter()
            .find(|s| s.code == code)
    }

    /// True for the subjects responsibilities are given for: indicators, items without
    /// sections and item sections (an item with sections takes its sections' lists).
    pub fn is_responsibility_subject(&self, subject: &str) -> bool {
        match Catalog::split_subject(subject) {
            (code, None) => {
                self.indicator(code).is_some()
                    || self.item(code).is_some_and(|i| i.sections().is_empty())
            }
            _ => self.section(subject).is_some(),
        }
    }

    /// Every responsibility subject in catalog order: B01..G20, then each item or its sections
    /// in source order.
    pub fn responsibility_subjects(&self) -> Vec<String> {
        self.indicators
            .iter()
            .map(|i| i.code.clone())
            .chain(self.items.iter().flat_map(Item::subjects))
            .collect()
    }

    /// Metrics an indicator, item or item section (`E07/rule-of-law`) reads directly: an
    /// indicator's rules, or task.status and the metrics the item's (section's) task checks
    /// name, not those of indicators the checks refer to.
    pub fn subject_direct_metrics(&self, code: &str) -> Vec<&str> {
        if let Some(ind) = self.indicator(code) {
            return ind.metrics();
        }
        let (item, section) = Catalog::split_subject(code);
        self.item(item)
            .map(|i| i.section_metrics(section))
            .unwrap_or_default()
    }

    /// Metrics read by an indicator, item or item section (`E07/rule-of-law`), including, for
    /// an item or section, the metrics its checks read through indicators (only the named
    /// conditions' metrics where a check names conditions: E03.3 does not read B10's rank).
    pub fn subject_metrics(&self, code: &str) -> Vec<&str> {
        if let Some(ind) = self.indicator(code) {
            return ind.metrics();
        }
        let (item_code, section) = Catalog::split_subject(code);
        let Some(item) = self.item(item_code) else {
            return Vec::new();
        };
        let mut out = item.section_metrics(section);
        for m in item
            .tasks_in(section)
            .into_iter()
            .flat_map(|t| t.checks.iter())
            .flat_map(|c| self.check_metrics(c))
        {
            if !out.contains(&m) {
                out.push(m);
            }
        }
        out
    }

    /// Every metric a task check reads, through its indicator's conditions or parts too.
    pub fn check_metrics<'a>(&'a self, check: &'a ItemCheck) -> Vec<&'a str> {
        let mut out: Vec<&str> = Vec::new();
        let all: Vec<&str> = match check {
            ItemCheck::IndicatorPasses {
                indicator,
                conditions,
            } => self
                .indicator(indicator)
                .map(|ind| {
                    ind.conditions
                        .iter()
                        .filter(|c| conditions.is_empty() || conditions.contains(&c.label))
                        .flat_map(|c| c.predicate.metrics())
                        .collect()
                })
                .unwrap_or_default(),
            ItemCheck::IndicatorScores { indicator } => self
                .indicator(indicator)
                .map(Indicator::metrics)
                .unwrap_or_default(),
            other => other.metrics(),
        };
        for m in all {
            if !out.contains(&m) {
                out.push(m);
            }
        }
        out
    }

    /// The cross-metric checks whose numerator is one of `metrics`.
    pub fn checks_on<'a>(&'a self, metrics: &'a [&str]) -> impl Iterator<Item = &'a CrossCheck> {
        self.checks
            .iter()
            .filter(move |c| metrics.contains(&c.numerator.as_str()))
    }
}

/// One human-readable text of the catalog (a title or a task's description) in both languages
/// (issue 14, Chinese first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogText<'a> {
    /// Where the text is, e.g. `metric uscc.codes_total`, `item E07, section rule-of-law`,
    /// `task E02.2, description`.
    pub place: String,
    /// The official Chinese text.
    pub zh: &'a str,
    /// The English text, when the catalog gives one.
    pub en: Option<&'a str>,
}

impl Catalog {
    /// Every title and description of the catalog in file order, each section once: what a
    /// person reads, so what must exist in Chinese and English.
    pub fn texts(&self) -> Vec<CatalogText<'_>> {
        fn text<'a>(place: String, zh: &'a str, en: &'a Option<String>) -> CatalogText<'a> {
            CatalogText {
                place,
                zh,
                en: en.as_deref(),
            }
        }
        let mut out = vec![text("catalog".to_owned(), &self.title, &self.title_en)];
        for m in &self.metrics {
            out.push(text(format!("metric {}", m.key), &m.title, &m.title_en));
        }
        for set in &self.domain_sets {
            for dom in &set.domains {
                out.push(text(
                    format!("domain_set {}, domain {}", set.code, dom.code),
                    &dom.title,
                    &dom.title_en,
                ));
            }
        }
        for ind in &self.indicators {
            out.push(text(
                format!("indicator {}", ind.code),
                &ind.title,
                &ind.title_en,
            ));
        }
        for item in &self.items {
            out.push(text(
                format!("item {}", item.code),
                &item.title,
                &item.title_en,
            ));
            for sec in item.sections() {
                out.push(text(
                    format!("item {}, section {}", item.code, sec.code),
                    &sec.title,
                    &sec.title_en,
                ));
            }
            for task in &item.tasks {
                out.push(text(
                    format!("task {}", task.id),
                    &task.title,
                    &task.title_en,
                ));
                if let Some(description) = &task.description {
                    out.push(text(
                        format!("task {}, description", task.id),
                        description,
                        &task.description_en,
                    ));
                }
            }
        }
        out
    }
}

/// An English text, when given, says something: a blank one is a mistake (leave the key out for
/// "none"), and English without the Chinese it renders has nothing to render.
fn check_english(
    d: &mut Diagnostics<'_>,
    span: &std::ops::Range<usize>,
    key: &str,
    field: &str,
    zh: Option<&str>,
    en: Option<&str>,
) {
    match (zh, en) {
        (_, Some(en)) if en.trim().is_empty() => d.at(
            span,
            key,
            format!("`{field}` is blank: leave it out when there is no English text"),
        ),
        (None, Some(_)) => d.at(
            span,
            key,
            format!("`{field}` without the Chinese text it renders"),
        ),
        _ => {}
    }
}

/// Checks every reference and kind, filling `d` with each problem found.
fn validate(file: CatalogFile, source: &str, d: &mut Diagnostics<'_>) -> Catalog {
    if file.catalog.version.trim().is_empty() {
        d.nowhere("catalog.version", "must not be empty");
    }
    if file
        .catalog
        .title_en
        .as_ref()
        .is_some_and(|t| t.trim().is_empty())
    {
        d.nowhere(
            "catalog.title_en",
            "is blank: leave it out when there is no English text",
        );
    }
    match file.catalog.rulebook_version {
        Some(RULEBOOK_VERSION) => {}
        Some(v) => d.nowhere(
            "catalog.rulebook_version",
            format!(
                "the catalog renders rulebook version {v}; this platform implements version {RULEBOOK_VERSION}"
            ),
        ),
        None => d.nowhere(
            "catalog.rulebook_version",
            format!(
                "is required: the version of the rulebook the catalog renders ({RULEBOOK_VERSION})"
            ),
        ),
    }

    // Domain sets first: metrics refer to them.
    let mut set_codes = BTreeSet::new();
    for set in &file.domain_sets {
        let span = set.span();
        let key = format!("domain_set {}", set.get_ref().code);
        if !set_codes.insert(set.get_ref().code.clone()) {
            d.at(&span, &key, "duplicate domain set code");
        }
        let mut seen = BTreeSet::new();
        for dom in &set.get_ref().domains {
            if !seen.insert(dom.code.as_str()) {
                d.at(&span, &key, format!("duplicate domain `{}`", dom.code));
            }
            check_english(
                d,
                &span,
                &format!("{key}, domain {}", dom.code),
                "title_en",
                Some(&dom.title),
                dom.title_en.as_deref(),
            );
        }
        if !set.get_ref().open && set.get_ref().domains.is_empty() {
            d.at(&span, &key, "a closed domain set needs its domains");
        }
    }

    let mut kinds: HashMap<String, MetricKind> = HashMap::new();
    for m in &file.metrics {
        let span = m.span();
        let m = m.get_ref();
        let key = format!("metric {}", m.key);
        if m.key.is_empty()
            || !m
                .key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
        {
            d.at(
                &span,
                &key,
                "keys use lowercase letters, digits, '.' and '_'",
            );
        }
        if kinds.insert(m.key.clone(), m.kind).is_some() {
            d.at(&span, &key, "duplicate metric key");
        }
        check_english(
            d,
            &span,
            &key,
            "title_en",
            Some(&m.title),
            m.title_en.as_deref(),
        );
        match (m.kind, &m.domain_set) {
            (MetricKind::DomainFlag, None) => {
                d.at(&span, &key, "a DOMAIN_FLAG metric needs domain_set")
            }
            (MetricKind::DomainFlag, Some(s)) if !set_codes.contains(s) => {
                d.at(&span, &key, format!("unknown domain set `{s}`"));
            }
            (MetricKind::DomainFlag, Some(_)) => {}
            (_, Some(_)) => d.at(&span, &key, "only DOMAIN_FLAG metrics take domain_set"),
            (_, None) => {}
        }
        if m.kind.is_at_region() && m.declared_scope == Some(AggregationScope::Subtree) {
            d.at(
                &span,
                &key,
                format!(
                    "a {} metric always takes the value at the region itself",
                    m.kind.as_str()
                ),
            );
        }
        if m.time == TimeClass::Flow && !matches!(m.kind, MetricKind::Count | MetricKind::Amount) {
            d.at(
                &span,
                &key,
                format!(
                    "only COUNT and AMOUNT metrics can be time = \"flow\" (sub-periods add up); \
                     a {} metric is a level",
                    m.kind.as_str()
                ),
            );
        }
        match (m.kind, &m.max) {
            (MetricKind::Score, None) => d.at(&span, &key, "a SCORE metric needs max"),
            (MetricKind::Score, Some(max)) if max <= &Num::zero() => {
                d.at(&span, &key, "max must be positive");
            }
            (MetricKind::Score, Some(_)) | (_, None) => {}
            (_, Some(_)) => d.at(&span, &key, "only SCORE metrics take max"),
        }
    }
    match kinds.get(TASK_STATUS_METRIC) {
        Some(MetricKind::TaskStatus) => {}
        Some(_) => d.nowhere(
            format!("metric {TASK_STATUS_METRIC}"),
            "must have kind TASK_STATUS",
        ),
        None => d.nowhere(
            format!("metric {TASK_STATUS_METRIC}"),
            "is required (evaluation task statuses)",
        ),
    }

    let checker = KindChecker { kinds: &kinds };
    for c in &file.checks {
        let span = c.span();
        let c = c.get_ref();
        let key = format!("check {}", c.numerator);
        checker.expect(d, &span, &key, "numerator", &c.numerator, Want::Quantity);
        match (&c.denominator, &c.bound) {
            (Some(den), None) => checker.expect(d, &span, &key, "denominator", den, Want::Quantity),
            (None, Some(_)) => {}
            _ => d.at(&span, &key, "give exactly one of denominator and bound"),
        }
    }

    let mut indicator_codes = BTreeSet::new();
    for ind in &file.indicators {
        let span = ind.span();
        let ind = ind.get_ref();
        let key = format!("indicator {}", ind.code);
        if !indicator_codes.insert(ind.code.clone()) {
            d.at(&span, &key, "duplicate indicator code");
        }
        check_english(
            d,
            &span,
            &key,
            "title_en",
            Some(&ind.title),
            ind.title_en.as_deref(),
        );
        let mut labels = BTreeSet::new();
        for label in ind
            .conditions
            .iter()
            .map(|c| &c.label)
            .chain(ind.parts.iter().map(|p| &p.label))
        {
            if !labels.insert(label) {
                d.at(&span, &key, format!("duplicate label `{label}`"));
            }
        }
        match ind.kind {
            IndicatorKind::Basic => {
                if ind.conditions.is_empty() {
                    d.at(&span, &key, "a basic indicator needs conditions");
                }
                if !ind.parts.is_empty() || ind.max_score.is_some() {
                    d.at(
                        &span,
                        &key,
                        "a basic indicator takes conditions, not parts or max_score",
                    );
                }
                for c in &ind.conditions {
                    let key = format!("{key}, condition {}", c.label);
                    checker.predicate(d, &span, &key, &c.predicate);
                }
            }
            IndicatorKind::Guiding => {
                if ind.parts.is_empty() {
                    d.at(&span, &key, "a guiding indicator needs parts");
                }
                if !ind.conditions.is_empty() {
                    d.at(
                        &span,
                        &key,
                        "a guiding indicator takes parts, not conditions",
                    );
                }
                let mut sum = Some(Num::zero());
                for p in &ind.parts {
                    let pkey = format!("{key}, part {}", p.label);
                    checker.formula(d, &span, &pkey, &p.formula);
                    let part_max = part_max(&p.formula, &file.metrics, &file.domain_sets);
                    if part_max.is_none() {
                        d.at(&span, &pkey, "its maximum cannot be known (weighted domain counts need closed domain sets)");
                    }
                    sum = sum.zip(part_max).map(|(a, b)| a + b);
                }
                match (&ind.max_score, sum) {
                    (None, _) => d.at(&span, &key, "a guiding indicator needs max_score"),
                    (Some(max), Some(sum)) if *max != sum => d.at(
                        &span,
                        &key,
                        format!("max_score {max} differs from the sum of its parts' maxima {sum}"),
                    ),
                    _ => {}
                }
            }
        }
    }

    // Indicator code -> (kind, condition labels), for the checks of tasks.
    let indicator_shapes: HashMap<&str, (IndicatorKind, Vec<&str>)> = file
        .indicators
        .iter()
        .map(Spanned::get_ref)
        .map(|i| {
            let labels = i.conditions.iter().map(|c| c.label.as_str()).collect();
            (i.code.as_str(), (i.kind, labels))
        })
        .collect();
    let mut item_codes = BTreeSet::new();
    let mut task_ids = BTreeSet::new();
    for item in &file.items {
        let span = item.span();
        let item = item.get_ref();
        let key = format!("item {}", item.code);
        if !item_codes.insert(item.code.clone()) {
            d.at(&span, &key, "duplicate item code");
        }
        check_english(
            d,
            &span,
            &key,
            "title_en",
            Some(&item.title),
            item.title_en.as_deref(),
        );
        if item.tasks.is_empty() {
            d.at(&span, &key, "an item needs tasks");
        }
        // Sections (v2): every task of a sectioned item names one; a code is a slug and keeps
        // one title.
        let sections = item.sections();
        if !sections.is_empty() && item.tasks.iter().any(|t| t.section.is_none()) {
            d.at(
                &span,
                &key,
                "when some tasks name a section, every task of the item must",
            );
        }
        for t in &item.tasks {
            let Some(sec) = &t.section else { continue };
            let slug = !sec.code.is_empty()
                && sec
                    .code
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase())
                && sec
                    .code
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !slug {
                d.at(
                    &span,
                    &key,
                    format!(
                        "task {}: section code `{}` is not a slug (lowercase letters, digits, '-')",
                        t.id, sec.code
                    ),
                );
            }
            if let Some(first) = sections.iter().find(|s| s.code == sec.code)
                && first.title_en != sec.title_en
            {
                d.at(
                    &span,
                    &key,
                    format!(
                        "task {}: section `{}` is titled `{}` in English elsewhere, not `{}`",
                        t.id,
                        sec.code,
                        first.title_en.as_deref().unwrap_or_default(),
                        sec.title_en.as_deref().unwrap_or_default()
                    ),
                );
            }
            if let Some(first) = sections.iter().find(|s| s.code == sec.code)
                && first.title != sec.title
            {
                d.at(
                    &span,
                    &key,
                    format!(
                        "task {}: section `{}` is titled `{}` elsewhere, not `{}`",
                        t.id, sec.code, first.title, sec.title
                    ),
                );
            }
            if sections
                .iter()
                .any(|s| s.title == sec.title && s.code != sec.code)
            {
                d.at(
                    &span,
                    &key,
                    format!("task {}: section title `{}` has two codes", t.id, sec.title),
                );
            }
        }
        for (n, task) in item.tasks.iter().enumerate() {
            let want = format!("{}.{}", item.code, n + 1);
            if task.id != want {
                d.at(
                    &span,
                    &key,
                    format!(
                        "task `{}` should be `{want}` (ids number tasks in order)",
                        task.id
                    ),
                );
            }
            if !task_ids.insert(task.id.clone()) {
                d.at(&span, &key, format!("duplicate task id `{}`", task.id));
            }
            // Problems in a task's checks point at the task's own line.
            let task_span = d.span_of_text(&span, &format!("id = \"{}\"", task.id));
            let tkey = format!("{key}, task {}", task.id);
            check_english(
                d,
                &task_span,
                &tkey,
                "title_en",
                Some(&task.title),
                task.title_en.as_deref(),
            );
            check_english(
                d,
                &task_span,
                &tkey,
                "description_en",
                task.description.as_deref(),
                task.description_en.as_deref(),
            );
            if let Some(sec) = &task.section {
                check_english(
                    d,
                    &task_span,
                    &format!("{tkey}, section {}", sec.code),
                    "title_en",
                    Some(&sec.title),
                    sec.title_en.as_deref(),
                );
            }
            for (n, check) in task.checks.iter().enumerate() {
                let ckey = format!("{key}, task {}, check {}", task.id, n + 1);
                let span = &task_span;
                match check {
                    ItemCheck::IndicatorPasses {
                        indicator,
                        conditions,
                    } => match indicator_shapes.get(indicator.as_str()) {
                        None => d.at(span, &ckey, format!("unknown indicator `{indicator}`")),
                        Some((IndicatorKind::Guiding, _)) => d.at(
                            span,
                            &ckey,
                            format!(
                                "`{indicator}` is a guiding indicator: it scores, it does not pass (use indicator_scores)"
                            ),
                        ),
                        Some((IndicatorKind::Basic, labels)) => {
                            let mut seen = BTreeSet::new();
                            for c in conditions {
                                if !labels.contains(&c.as_str()) {
                                    d.at(
                                        span,
                                        format!("{ckey}, conditions"),
                                        format!(
                                            "indicator `{indicator}` has no condition `{c}` (it has {})",
                                            labels.join(", ")
                                        ),
                                    );
                                }
                                if !seen.insert(c) {
                                    d.at(
                                        span,
                                        format!("{ckey}, conditions"),
                                        format!("condition `{c}` is named twice"),
                                    );
                                }
                            }
                        }
                    },
                    ItemCheck::IndicatorScores { indicator } => {
                        match indicator_shapes.get(indicator.as_str()) {
                            None => {
                                d.at(span, &ckey, format!("unknown indicator `{indicator}`"));
                            }
                            Some((IndicatorKind::Basic, _)) => d.at(
                                span,
                                &ckey,
                                format!(
                                    "`{indicator}` is a basic indicator: it passes, it does not score (use indicator_passes)"
                                ),
                            ),
                            Some((IndicatorKind::Guiding, _)) => {}
                        }
                    }
                    ItemCheck::Predicate(p) => checker.predicate(d, span, &ckey, p),
                    ItemCheck::AllDomainsFlagged {
                        metrics,
                        domain_group,
                    } => {
                        if metrics.is_empty() {
                            d.at(span, &ckey, "all_domains_flagged needs metrics");
                        }
                        for m in metrics {
                            checker.expect(
                                d,
                                span,
                                &ckey,
                                "metrics",
                                m,
                                Want::Kind(MetricKind::DomainFlag),
                            );
                            let set = file
                                .metrics
                                .iter()
                                .map(Spanned::get_ref)
                                .find(|x| &x.key == m)
                                .and_then(|x| x.domain_set.as_ref())
                                .and_then(|s| {
                                    file.domain_sets
                                        .iter()
                                        .map(Spanned::get_ref)
                                        .find(|x| &x.code == s)
                                });
                            if let Some(set) = set
                                && !set
                                    .domains
                                    .iter()
                                    .any(|x| x.group.as_ref() == Some(domain_group))
                            {
                                d.at(
                                    span,
                                    &ckey,
                                    format!(
                                        "domain set `{}` has no domain in group `{domain_group}`",
                                        set.code
                                    ),
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    // Build the catalog (even when invalid; the caller discards it then).
    let mut metrics: Vec<Metric> = file.metrics.into_iter().map(Spanned::into_inner).collect();
    let indicators: Vec<Indicator> = file
        .indicators
        .into_iter()
        .map(Spanned::into_inner)
        .collect();
    let items: Vec<Item> = file.items.into_iter().map(Spanned::into_inner).collect();
    for m in &mut metrics {
        m.used_by = indicators
            .iter()
            .filter(|i| i.metrics().contains(&m.key.as_str()))
            .map(|i| i.code.clone())
            .chain(
                items
                    .iter()
                    .filter(|i| i.metrics().contains(&m.key.as_str()))
                    .map(|i| i.code.clone()),
            )
            .collect();
    }
    if !d.has_problems() {
        for m in &metrics {
            if m.used_by.is_empty() && m.key != TASK_STATUS_METRIC {
                d.nowhere(format!("metric {}", m.key), "no indicator or item uses it");
            }
        }
    }
    let metric_index = metrics
        .iter()
        .enumerate()
        .map(|(i, m)| (m.key.clone(), i))
        .collect();
    let indicator_index = indicators
        .iter()
        .enumerate()
        .map(|(i, x)| (x.code.clone(), i))
        .collect();
    let item_index = items
        .iter()
        .enumerate()
        .map(|(i, x)| (x.code.clone(), i))
        .collect();
    let task_index = items
        .iter()
        .enumerate()
        .flat_map(|(i, item)| {
            item.tasks
                .iter()
                .enumerate()
                .map(move |(t, task)| (task.id.clone(), (i, t)))
        })
        .collect();
    Catalog {
        rulebook_version: file.catalog.rulebook_version.unwrap_or_default(),
        version: file.catalog.version,
        title: file.catalog.title,
        title_en: file.catalog.title_en,
        source: source.to_owned(),
        metrics,
        domain_sets: file
            .domain_sets
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        checks: file.checks.into_iter().map(Spanned::into_inner).collect(),
        indicators,
        items,
        metric_index,
        indicator_index,
        item_index,
        task_index,
    }
}

/// The most points a part can give, when that can be known from the catalog alone.
fn part_max(f: &Formula, metrics: &[Spanned<Metric>], sets: &[Spanned<DomainSet>]) -> Option<Num> {
    match f {
        Formula::CappedRatio { cap, .. }
        | Formula::CappedDomainCount { cap, .. }
        | Formula::StepBands { cap, .. } => Some(cap.clone()),
        Formula::Deduction { full, .. } => Some(full.clone()),
        Formula::FlagPoints { points, .. } => Some(points.clone()),
        Formula::AssessedScore { metric } => metrics
            .iter()
            .map(Spanned::get_ref)
            .find(|m| &m.key == metric)
            .and_then(|m| m.max.clone()),
        Formula::WeightedDomainCounts { terms } => terms
            .iter()
            .map(|t| {
                let set = metrics
                    .iter()
                    .map(Spanned::get_ref)
                    .find(|m| m.key == t.metric)
                    .and_then(|m| m.domain_set.as_ref())
                    .and_then(|s| sets.iter().map(Spanned::get_ref).find(|x| &x.code == s))?;
                if set.open {
                    return None;
                }
                Some(&t.weight * &Num::from_int(i64::try_from(set.domains.len()).ok()?))
            })
            .sum::<Option<Num>>(),
    }
}

enum Want {
    Quantity,
    Numeric,
    Kind(MetricKind),
}

struct KindChecker<'a> {
    kinds: &'a HashMap<String, MetricKind>,
}

impl KindChecker<'_> {
    fn expect(
        &self,
        d: &mut Diagnostics<'_>,
        span: &std::ops::Range<usize>,
        key: &str,
        field: &str,
        metric: &str,
        want: Want,
    ) {
        let Some(&kind) = self.kinds.get(metric) else {
            d.at(
                span,
                format!("{key}, {field}"),
                format!("unknown metric `{metric}`"),
            );
            return;
        };
        let (ok, wanted) = match want {
            Want::Quantity => (kind.is_quantity(), "COUNT or AMOUNT".to_owned()),
            Want::Numeric => (kind.is_numeric(), "COUNT, AMOUNT, RANK or SCORE".to_owned()),
            Want::Kind(k) => (kind == k, k.as_str().to_owned()),
        };
        if !ok {
            d.at(
                span,
                format!("{key}, {field}"),
                format!(
                    "metric `{metric}` is {}, this rule needs {wanted}",
                    kind.as_str()
                ),
            );
        }
    }

    fn predicate(
        &self,
        d: &mut Diagnostics<'_>,
        span: &std::ops::Range<usize>,
        key: &str,
        p: &Predicate,
    ) {
        match p {
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
                self.expect(d, span, key, "numerator", numerator, Want::Quantity);
                self.expect(d, span, key, "denominator", denominator, Want::Quantity);
                if threshold.is_negative() {
                    d.at(span, key, "threshold must not be negative");
                }
            }
            Predicate::AtLeast { metric, .. }
            | Predicate::Above { metric, .. }
            | Predicate::AtMost { metric, .. } => {
                self.expect(d, span, key, "metric", metric, Want::Numeric);
            }
            Predicate::IsTrue { metric } => {
                self.expect(d, span, key, "metric", metric, Want::Kind(MetricKind::Bool))
            }
            Predicate::Decreased { metric, baseline } => {
                self.expect(d, span, key, "metric", metric, Want::Quantity);
                self.expect(d, span, key, "baseline", baseline, Want::Quantity);
            }
        }
    }

    fn formula(
        &self,
        d: &mut Diagnostics<'_>,
        span: &std::ops::Range<usize>,
        key: &str,
        f: &Formula,
    ) {
        let non_negative = |d: &mut Diagnostics<'_>, name: &str, v: &Num| {
            if v.is_negative() {
                d.at(span, key, format!("{name} must not be negative"));
            }
        };
        // The engine divides by these to find gaps.
        let positive = |d: &mut Diagnostics<'_>, name: &str, v: &Num| {
            if v <= &Num::zero() {
                d.at(span, key, format!("{name} must be positive"));
            }
        };
        match f {
            Formula::CappedRatio {
                numerator,
                denominator,
                factor,
                cap,
            } => {
                self.expect(d, span, key, "numerator", numerator, Want::Quantity);
                self.expect(d, span, key, "denominator", denominator, Want::Quantity);
                positive(d, "factor", factor);
                non_negative(d, "cap", cap);
            }
            Formula::CappedDomainCount {
                metric,
                factor,
                cap,
            } => {
                self.expect(
                    d,
                    span,
                    key,
                    "metric",
                    metric,
                    Want::Kind(MetricKind::DomainFlag),
                );
                positive(d, "factor", factor);
                non_negative(d, "cap", cap);
            }
            Formula::Deduction {
                required,
                actual,
                full,
                per_unit,
            } => {
                self.expect(
                    d,
                    span,
                    key,
                    "required",
                    required,
                    Want::Kind(MetricKind::Count),
                );
                self.expect(
                    d,
                    span,
                    key,
                    "actual",
                    actual,
                    Want::Kind(MetricKind::Count),
                );
                non_negative(d, "full", full);
                positive(d, "per_unit", per_unit);
            }
            Formula::StepBands {
                numerator,
                denominator,
                step,
                increment,
                cap,
                ..
            } => {
                self.expect(d, span, key, "numerator", numerator, Want::Quantity);
                self.expect(d, span, key, "denominator", denominator, Want::Quantity);
                positive(d, "step", step);
                positive(d, "increment", increment);
                non_negative(d, "cap", cap);
            }
            Formula::FlagPoints { metric, points } => {
                self.expect(d, span, key, "metric", metric, Want::Kind(MetricKind::Bool));
                non_negative(d, "points", points);
            }
            Formula::WeightedDomainCounts { terms } => {
                if terms.is_empty() {
                    d.at(span, key, "weighted_domain_counts needs terms");
                }
                for t in terms {
                    self.expect(
                        d,
                        span,
                        key,
                        "terms.metric",
                        &t.metric,
                        Want::Kind(MetricKind::DomainFlag),
                    );
                    non_negative(d, "weight", &t.weight);
                }
            }
            Formula::AssessedScore { metric } => {
                self.expect(
                    d,
                    span,
                    key,
                    "metric",
                    metric,
                    Want::Kind(MetricKind::Score),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
