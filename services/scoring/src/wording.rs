//! Gaps and steps in the caller's language (issue 14, Chinese first). The engine writes each gap
//! in English with its parts kept apart (metric, current, required, change); for a zh-CN caller
//! the scoring service writes the description again from those parts, naming the metric by its
//! Chinese title from the catalog (and its key, which department systems use); for an English
//! caller it names the metric by its English title before the key. The language is
//! the one the gateway negotiated (it forwards `accept-language` with the chosen tag).

use citycredit::localize::Locale;
use citycredit::proto::v1 as pb;
use citycredit_core::catalog::{self, Catalog, Lang, Words};
use tonic::metadata::MetadataMap;

/// The caller's language, from the `accept-language` the gateway forwards (zh-CN when absent).
pub fn locale_of(metadata: &MetadataMap) -> Locale {
    Locale::negotiate(
        metadata
            .get("accept-language")
            .and_then(|v| v.to_str().ok()),
        Locale::ZhCn,
    )
}

/// "不良贷款余额（finance.npl_balance）", or the key alone for a metric the catalog lacks.
fn named(catalog: &Catalog, metric: &str) -> String {
    match catalog.metric(metric) {
        Some(m) if !m.title.is_empty() => format!("{}（{metric}）", m.title),
        _ => metric.to_owned(),
    }
}

/// The gap's description in `locale` (English: the engine's own).
pub fn gap_text(catalog: &Catalog, gap: &pb::Gap, locale: Locale) -> String {
    if locale == Locale::En {
        // The engine's words, the metric named by its English title before its key.
        let key = gap.metric_key.as_str();
        return match catalog.metric(key).and_then(|m| m.title_en.as_deref()) {
            Some(title) if !key.is_empty() && gap.description.starts_with(key) => {
                format!("{title} ({key}){}", &gap.description[key.len()..])
            }
            _ => gap.description.clone(),
        };
    }
    let name = named(catalog, &gap.metric_key);
    let change = gap.change.as_str();
    match change {
        "report" => format!("{name}：本地区本期尚未报送"),
        "set true" => format!("{name}：须为“是”"),
        "correct" => format!(
            "{name}为 {}，超出上限（{}）：请核对并更正数据",
            gap.current,
            gap.required.trim_start_matches("<= ")
        ),
        "report a non-zero value" => format!("{name}为 0：比值无法计算，该项得 0 分"),
        _ => {
            if let Some(n) = change
                .strip_suffix(" domains")
                .and_then(|d| d.strip_prefix('+'))
            {
                let hint = gap
                    .description
                    .split_once("; not yet flagged: ")
                    .map(|(_, h)| format!("；尚未标记：{h}"))
                    .unwrap_or_default();
                format!(
                    "{name}：还需标记 {n} 个领域（{} → {}）{hint}",
                    gap.current, gap.required
                )
            } else if let Some(n) = change.strip_prefix('+') {
                format!("{name}：需增加 {n}（{} → {}）", gap.current, gap.required)
            } else if let Some(n) = change.strip_prefix('-') {
                format!("{name}：需减少 {n}（{} → {}）", gap.current, gap.required)
            } else {
                gap.description.clone()
            }
        }
    }
}

fn gaps(catalog: &Catalog, gaps: &mut [pb::Gap], locale: Locale) {
    for g in gaps {
        g.description = gap_text(catalog, g, locale);
    }
}

fn step(catalog: &Catalog, code: &str, step: Option<&mut pb::ScoreStep>, locale: Locale) {
    let Some(s) = step else { return };
    gaps(catalog, &mut s.changes, locale);
    if locale == Locale::En {
        return;
    }
    s.description = if s.description.starts_with("correct the figures") {
        "请先更正违反交叉校验的数据".to_owned()
    } else if s.description.starts_with("to reach the max") {
        format!("达到满分 {}", s.score)
    } else if s
        .description
        .ends_with("needs data before it can score more")
    {
        format!("{code} 需先报送数据才能继续得分")
    } else if let [first] = s.changes.as_slice() {
        format!("{code} 可升至 {} 分：{}", s.score, first.description)
    } else {
        s.description.clone()
    };
}

/// The words of `locale` for a catalog's rules.
fn words(catalog: &Catalog, locale: Locale) -> Words<'_> {
    Words::of(
        catalog,
        match locale {
            Locale::ZhCn => Lang::Zh,
            Locale::En => Lang::En,
        },
    )
}

/// A catalog's rules in the caller's language (`catalog::Words`: metrics named by their
/// titles; the engine's `summary()` formulas over metric keys stay in the catalog's own
/// structured form).
#[derive(Clone, Copy)]
pub struct Rules<'a> {
    words: Words<'a>,
}

impl<'a> Rules<'a> {
    pub fn new(catalog: &'a Catalog, locale: Locale) -> Self {
        Rules {
            words: words(catalog, locale),
        }
    }

    pub fn predicate(&self, p: &catalog::Predicate) -> String {
        self.words.predicate(p)
    }

    pub fn formula(&self, f: &catalog::Formula) -> String {
        self.words.formula(f)
    }

    pub fn check(&self, c: &catalog::ItemCheck) -> String {
        self.words.check(c)
    }

    pub fn rule(&self, ind: &catalog::Indicator) -> String {
        self.words.rule(ind)
    }
}

/// A result's condition and part summaries in `locale`, matched by label.
fn terms(catalog: &Catalog, r: &mut pb::IndicatorResult, locale: Locale) {
    let Some(ind) = catalog.indicator(&r.code) else {
        return;
    };
    let words = words(catalog, locale);
    for t in &mut r.terms {
        if let Some(c) = ind.conditions.iter().find(|c| c.label == t.label) {
            t.summary = words.predicate(&c.predicate);
        } else if let Some(p) = ind.parts.iter().find(|p| p.label == t.label) {
            t.summary = words.formula(&p.formula);
        }
    }
}

/// One indicator's rule terms, gaps and steps in `locale`.
pub fn indicator(catalog: &Catalog, r: &mut pb::IndicatorResult, locale: Locale) {
    terms(catalog, r, locale);
    gaps(catalog, &mut r.gaps, locale);
    step(catalog, &r.code, r.next_step.as_mut(), locale);
    step(catalog, &r.code, r.to_max.as_mut(), locale);
}

/// Every indicator and item check of a scorecard in `locale`.
pub fn scorecard(catalog: &Catalog, card: &mut pb::Scorecard, locale: Locale) {
    for r in &mut card.indicators {
        indicator(catalog, r, locale);
    }
    let words = words(catalog, locale);
    for t in card.items.iter_mut().flat_map(|i| i.tasks.iter_mut()) {
        let Some(task) = catalog.task(&t.id) else {
            continue;
        };
        // The engine writes a task's check results in the catalog's order.
        for (result, check) in t.checks.iter_mut().zip(&task.checks) {
            result.summary = words.check(check);
        }
    }
}

/// A worklist entry's gaps in `locale`.
pub fn entry(catalog: &Catalog, e: &mut pb::WorklistEntry, locale: Locale) {
    gaps(catalog, &mut e.gaps, locale);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(
        metric: &str,
        current: &str,
        required: &str,
        change: &str,
        description: &str,
    ) -> pb::Gap {
        pb::Gap {
            condition: "1".into(),
            metric_key: metric.into(),
            current: current.into(),
            required: required.into(),
            change: change.into(),
            description: description.into(),
        }
    }

    #[test]
    fn gaps_are_written_in_chinese_with_the_metrics_title() {
        let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        let zh = |g: &pb::Gap| gap_text(&catalog, g, Locale::ZhCn);
        let more = gap(
            "uscc.stock_codes_converted",
            "43000",
            "44234",
            "+1234",
            "uscc.stock_codes_converted: +1234 (43000 -> 44234)",
        );
        let title = catalog
            .metric("uscc.stock_codes_converted")
            .map(|m| m.title.clone())
            .unwrap_or_default();
        assert!(!title.is_empty());
        assert_eq!(
            zh(&more),
            format!("{title}（uscc.stock_codes_converted）：需增加 1234（43000 → 44234）")
        );
        assert_eq!(
            gap_text(&catalog, &more, Locale::En),
            "Legacy codes converted to unified social credit codes (uscc.stock_codes_converted): +1234 (43000 -> 44234)"
        );
        let report = gap("monitoring.city_rank", "", "reported", "report", "");
        assert!(zh(&report).ends_with("（monitoring.city_rank）：本地区本期尚未报送"));
        let fewer = gap("monitoring.city_rank", "120", "100", "-20", "");
        assert!(
            zh(&fewer).ends_with("：需减少 20（120 → 100）"),
            "{}",
            zh(&fewer)
        );
        let domains = gap(
            "integrity.credit_records",
            "3",
            "5",
            "+2 domains",
            "integrity.credit_records: flag 2 more domains (3 -> 5); not yet flagged: 建筑, 交通",
        );
        assert!(
            zh(&domains).ends_with("：还需标记 2 个领域（3 → 5）；尚未标记：建筑, 交通"),
            "{}",
            zh(&domains)
        );
        let unknown = gap("x.y", "", "", "something new", "in English");
        assert_eq!(
            zh(&unknown),
            "in English",
            "an unknown shape keeps the engine's words"
        );
    }
}
