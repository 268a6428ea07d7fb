//! The published golden cases (`tests/fixtures/golden/public-cases.json`, computed by an
//! independent reference implementation) run through the engine.

use serde_json::Value as Json;

use crate::catalog::Catalog;
use crate::numbers::Num;
use crate::rules::{Values, score};

pub(crate) const GOLDEN: &str = include_str!("../../../../tests/fixtures/golden/public-cases.json");

/// The values of one golden case as engine input.
pub(crate) fn case_values(case: &Json) -> Values {
    let mut values = Values::new();
    for (key, v) in case["values"].as_object().into_iter().flatten() {
        match v {
            Json::Bool(b) => values.set_flag(key, *b),
            Json::Number(n) => values.set_number(
                key,
                Num::parse_decimal(&n.to_string()).unwrap_or_else(|e| panic!("{key}: {e}")),
            ),
            Json::String(s) => values.set_number(
                key,
                Num::parse_decimal(s).unwrap_or_else(|e| panic!("{key}: {e}")),
            ),
            other => panic!("{key}: unexpected value {other}"),
        };
    }
    for (key, v) in case["domain_flags"].as_object().into_iter().flatten() {
        let domains = v.as_array().into_iter().flatten().filter_map(Json::as_str);
        values.set_domains(key, domains);
    }
    values
}

pub(crate) fn cases() -> Vec<Json> {
    match serde_json::from_str::<Json>(GOLDEN) {
        Ok(Json::Array(cases)) => cases,
        other => panic!("golden file is not a list: {other:?}"),
    }
}

#[test]
fn every_public_golden_case_matches() {
    let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let cases = cases();
    assert_eq!(cases.len(), 101);
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap_or("?");
        let card = score(&catalog, &case_values(case));
        let expect = &case["expect"];
        if card.outcome.as_str() != expect["outcome"] {
            failures.push(format!(
                "{name}: outcome {} want {}",
                card.outcome.as_str(),
                expect["outcome"]
            ));
        }
        if card.guiding_total.to_fixed(2) != expect["guiding_total"] {
            failures.push(format!(
                "{name}: total {} want {}",
                card.guiding_total.to_fixed(2),
                expect["guiding_total"]
            ));
        }
        for (code, want) in expect["indicators"].as_object().into_iter().flatten() {
            let Some(got) = card.indicator(code) else {
                failures.push(format!("{name}: no indicator {code}"));
                continue;
            };
            if got.status.as_str() != want["status"] {
                failures.push(format!(
                    "{name}: {code} status {} want {}",
                    got.status.as_str(),
                    want["status"]
                ));
            }
            if let Some(want_score) = want.get("score") {
                let got_score = got
                    .score
                    .as_ref()
                    .map(|s| s.to_fixed(2))
                    .unwrap_or_default();
                if got_score != *want_score {
                    failures.push(format!(
                        "{name}: {code} score {got_score} want {want_score}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
