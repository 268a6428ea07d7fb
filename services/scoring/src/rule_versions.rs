//! CompareRuleVersions: the same aggregated figures scored under two loaded rule versions
//! (catalogs), and how every indicator differs. Metrics are shared (ingestion aggregates by the
//! primary catalog's declarations), so one read of the figures feeds both scorecards: a
//! difference is the rules' doing, never the data's.

use citycredit::localize::Locale;
use citycredit::proto::v1 as pb;
use citycredit_core::catalog::{Catalog, IndicatorKind};
use citycredit_core::numbers::{Num, Precision};
use citycredit_core::rules::{self, IndicatorResult, Scorecard, TermResult};

use crate::convert;
use crate::indicator_service::indicator_kind;

/// A scorecard's summary under one version.
pub fn outcome(catalog: &Catalog, card: &Scorecard) -> pb::RuleVersionOutcome {
    pb::RuleVersionOutcome {
        version: catalog.version.clone(),
        outcome: convert::outcome(card.outcome) as i32,
        guiding_total: card.guiding_total.rounded(Precision::Score),
        guiding_max: card.guiding_max.rounded(Precision::Score),
        failing_basic: card.failing_basic.clone(),
        incomplete_basic: card.incomplete_basic.clone(),
    }
}

/// Scores `values` under both catalogs and lists the indicators that differ: version a's
/// order, then those only in b.
pub fn compare(
    a: &Catalog,
    b: &Catalog,
    values: &rules::Values,
    locale: Locale,
) -> (Scorecard, Scorecard, Vec<pb::RuleVersionDifference>) {
    let card_a = rules::score(a, values);
    let card_b = rules::score(b, values);
    let mut out = Vec::new();
    for ra in &card_a.indicators {
        let rule_a = a
            .indicator(&ra.code)
            .map(|i| i.rule_summary())
            .unwrap_or_default();
        match card_b.indicator(&ra.code) {
            None => out.push(one_sided(ra, rule_a, Side::A, locale)),
            Some(rb) => {
                let rule_b = b
                    .indicator(&rb.code)
                    .map(|i| i.rule_summary())
                    .unwrap_or_default();
                if let Some(d) = both(ra, rb, rule_a, rule_b, locale) {
                    out.push(d);
                }
            }
        }
    }
    for rb in &card_b.indicators {
        if card_a.indicator(&rb.code).is_none() {
            let rule_b = b
                .indicator(&rb.code)
                .map(|i| i.rule_summary())
                .unwrap_or_default();
            out.push(one_sided(rb, rule_b, Side::B, locale));
        }
    }
    (card_a, card_b, out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

fn score_text(r: &IndicatorResult) -> String {
    if r.kind == IndicatorKind::Guiding {
        r.score
            .as_ref()
            .map(|s| s.rounded(Precision::Score))
            .unwrap_or_default()
    } else {
        String::new()
    }
}

fn max_text(r: &IndicatorResult) -> String {
    r.max_score
        .as_ref()
        .map(|s| s.rounded(Precision::Score))
        .unwrap_or_default()
}

fn term_score(t: &TermResult) -> String {
    t.score
        .as_ref()
        .map(|s| s.rounded(Precision::Score))
        .unwrap_or_default()
}

fn threshold(t: &TermResult) -> String {
    t.threshold.as_ref().map(Num::to_plain).unwrap_or_default()
}

fn computed(t: &TermResult) -> String {
    t.computed
        .as_ref()
        .map(|c| c.rounded(Precision::Ratio))
        .unwrap_or_default()
}

/// An indicator in one version only.
fn one_sided(
    r: &IndicatorResult,
    rule: String,
    side: Side,
    locale: Locale,
) -> pb::RuleVersionDifference {
    let status = convert::status(r.status) as i32;
    let (presence, description) = match (side, locale) {
        (Side::A, Locale::ZhCn) => (
            pb::VersionPresence::OnlyA,
            format!("{}：仅见于版本 A（版本 B 已删除）", r.code),
        ),
        (Side::A, Locale::En) => (
            pb::VersionPresence::OnlyA,
            format!("{}: only in version a (removed in b)", r.code),
        ),
        (Side::B, Locale::ZhCn) => (
            pb::VersionPresence::OnlyB,
            format!("{}：版本 B 新增", r.code),
        ),
        (Side::B, Locale::En) => (
            pb::VersionPresence::OnlyB,
            format!("{}: new in version b", r.code),
        ),
    };
    let terms = r
        .terms
        .iter()
        .map(|t| {
            let mut d = pb::TermDifference {
                label: t.label.clone(),
                computed: computed(t),
                ..Default::default()
            };
            if side == Side::A {
                d.summary_a = t.summary.clone();
                d.outcome_a = convert::term_outcome(t.outcome) as i32;
                d.threshold_a = threshold(t);
                d.score_a = term_score(t);
            } else {
                d.summary_b = t.summary.clone();
                d.outcome_b = convert::term_outcome(t.outcome) as i32;
                d.threshold_b = threshold(t);
                d.score_b = term_score(t);
            }
            d
        })
        .collect();
    let mut d = pb::RuleVersionDifference {
        code: r.code.clone(),
        kind: indicator_kind(r.kind) as i32,
        presence: presence as i32,
        terms,
        description,
        ..Default::default()
    };
    if side == Side::A {
        d.status_a = status;
        d.score_a = score_text(r);
        d.max_score_a = max_text(r);
        d.rule_a = rule;
    } else {
        d.status_b = status;
        d.score_b = score_text(r);
        d.max_score_b = max_text(r);
        d.rule_b = rule;
    }
    d
}

/// An indicator in both versions, when its rule, status or score differs.
fn both(
    ra: &IndicatorResult,
    rb: &IndicatorResult,
    rule_a: String,
    rule_b: String,
    locale: Locale,
) -> Option<pb::RuleVersionDifference> {
    let mut terms = Vec::new();
    for ta in &ra.terms {
        let tb = rb.terms.iter().find(|t| t.label == ta.label);
        let same = tb.is_some_and(|tb| {
            tb.summary == ta.summary && tb.outcome == ta.outcome && tb.score == ta.score
        });
        if same {
            continue;
        }
        terms.push(pb::TermDifference {
            label: ta.label.clone(),
            summary_a: ta.summary.clone(),
            summary_b: tb.map(|t| t.summary.clone()).unwrap_or_default(),
            outcome_a: convert::term_outcome(ta.outcome) as i32,
            outcome_b: tb.map_or(pb::TermOutcome::Unspecified as i32, |t| {
                convert::term_outcome(t.outcome) as i32
            }),
            threshold_a: threshold(ta),
            threshold_b: tb.map(threshold).unwrap_or_default(),
            computed: tb.map_or_else(|| computed(ta), computed),
            score_a: term_score(ta),
            score_b: tb.map(term_score).unwrap_or_default(),
        });
    }
    for tb in rb
        .terms
        .iter()
        .filter(|tb| ra.terms.iter().all(|ta| ta.label != tb.label))
    {
        terms.push(pb::TermDifference {
            label: tb.label.clone(),
            summary_b: tb.summary.clone(),
            outcome_b: convert::term_outcome(tb.outcome) as i32,
            threshold_b: threshold(tb),
            computed: computed(tb),
            score_b: term_score(tb),
            ..Default::default()
        });
    }
    let status_changed = ra.status != rb.status;
    let score_changed = ra.score != rb.score || ra.max_score != rb.max_score;
    let rule_changed = rule_a != rule_b || ra.kind != rb.kind;
    if !(status_changed || score_changed || rule_changed || !terms.is_empty()) {
        return None;
    }
    let guiding = ra.kind == IndicatorKind::Guiding && rb.kind == IndicatorKind::Guiding;
    let score_change = match (&ra.score, &rb.score) {
        (Some(a), Some(b)) if guiding => convert::signed_score(&(b - a)),
        _ => String::new(),
    };
    let mut said = Vec::new();
    if rule_changed {
        said.push(match locale {
            Locale::ZhCn => "规则改变".to_owned(),
            Locale::En => "rule changed".to_owned(),
        });
        for t in terms
            .iter()
            .filter(|t| t.threshold_a != t.threshold_b && !t.summary_a.is_empty())
        {
            said.push(match locale {
                Locale::ZhCn => format!(
                    "条件 {} 阈值 {} → {}",
                    t.label, t.threshold_a, t.threshold_b
                ),
                Locale::En => format!(
                    "condition {} threshold {} -> {}",
                    t.label, t.threshold_a, t.threshold_b
                ),
            });
        }
    }
    if status_changed {
        said.push(match locale {
            Locale::ZhCn => format!("状态 {} → {}", ra.status.as_str(), rb.status.as_str()),
            Locale::En => format!("status {} -> {}", ra.status.as_str(), rb.status.as_str()),
        });
    }
    if guiding && score_changed {
        said.push(match locale {
            Locale::ZhCn => format!(
                "得分 {} → {}（满分 {} → {}）",
                score_text(ra),
                score_text(rb),
                max_text(ra),
                max_text(rb)
            ),
            Locale::En => format!(
                "score {} -> {} (max {} -> {})",
                score_text(ra),
                score_text(rb),
                max_text(ra),
                max_text(rb)
            ),
        });
    }
    let sep = if locale == Locale::ZhCn { "；" } else { "; " };
    let colon = if locale == Locale::ZhCn { "：" } else { ": " };
    Some(pb::RuleVersionDifference {
        code: ra.code.clone(),
        kind: indicator_kind(rb.kind) as i32,
        presence: pb::VersionPresence::Both as i32,
        status_a: convert::status(ra.status) as i32,
        status_b: convert::status(rb.status) as i32,
        score_a: score_text(ra),
        score_b: score_text(rb),
        max_score_a: max_text(ra),
        max_score_b: max_text(rb),
        score_change,
        rule_a,
        rule_b,
        terms,
        description: format!("{}{colon}{}", ra.code, said.join(sep)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use citycredit_core::rules::Values;

    fn draft() -> Catalog {
        Catalog::from_toml(
            include_str!("../../../tests/fixtures/catalogs/national-2026-draft.toml"),
            "draft",
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_draft_differs_exactly_where_it_says() {
        let a = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        let b = draft();
        let mut v = Values::new();
        // 85% submit a credit report: B06 passes at 80%, fails at 90%.
        v.set_number("credit_report.target_entities", Num::from_int(100));
        v.set_number("credit_report.submitted", Num::from_int(85));
        v.set_number("market_entities.in_operation", Num::from_int(5000));
        let (card_a, card_b, diff) = compare(&a, &b, &v, Locale::En);
        let codes: Vec<&str> = diff.iter().map(|d| d.code.as_str()).collect();
        assert_eq!(codes, ["B06", "G14", "B11"]);
        let b06 = &diff[0];
        assert_eq!(b06.presence, pb::VersionPresence::Both as i32);
        assert_eq!(b06.status_a, pb::IndicatorStatus::Pass as i32);
        assert_eq!(b06.status_b, pb::IndicatorStatus::Fail as i32);
        assert_eq!(b06.terms.len(), 1);
        assert_eq!(
            (
                b06.terms[0].threshold_a.as_str(),
                b06.terms[0].threshold_b.as_str()
            ),
            ("0.8", "0.9")
        );
        assert_eq!(b06.terms[0].computed, "0.850000");
        assert!(
            b06.description.contains("threshold 0.8 -> 0.9")
                && b06.description.contains("status PASS -> FAIL"),
            "{}",
            b06.description
        );
        assert_eq!(diff[1].presence, pb::VersionPresence::OnlyA as i32);
        assert_eq!(diff[1].max_score_a, "4.00");
        assert_eq!(diff[2].presence, pb::VersionPresence::OnlyB as i32);
        // 85 of 5000 is 1.7%: B11 passes.
        assert_eq!(diff[2].status_b, pb::IndicatorStatus::Pass as i32);
        assert_eq!(card_a.guiding_max, Num::from_int(54));
        assert_eq!(card_b.guiding_max, Num::from_int(50));
        assert_eq!(card_b.failing_basic, ["B06"]);
    }

    #[test]
    fn a_version_against_itself_has_no_differences() {
        let a = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        let mut v = Values::new();
        v.set_number("credit_report.target_entities", Num::from_int(100));
        v.set_number("credit_report.submitted", Num::from_int(85));
        let (_, _, diff) = compare(&a, &a, &v, Locale::ZhCn);
        assert!(diff.is_empty());
    }
}
