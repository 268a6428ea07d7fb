//! Submission validation on arbitrary `SubmissionInput`s from arbitrary principals: never
//! panics; a value that passes is canonical (its number re-parses to itself, its period is
//! canonical, its references exist) and every violation names a field under the input's path
//! with a short description.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use citycredit_core::auth::{Principal, Role};
use citycredit_core::catalog::Catalog;
use citycredit_core::city::City;
use citycredit_core::numbers::Num;
use citycredit_core::org::Org;
use citycredit_core::period::Period;
use citycredit::proto::v1 as pb;
use citycredit_ingestion::validation::check_input;
use libfuzzer_sys::fuzz_target;

/// A string that is often a real code (picked from `choices`) and sometimes arbitrary text.
#[derive(Arbitrary, Debug)]
enum Pick {
    Known(u8),
    Text(String),
    Empty,
}

#[derive(Arbitrary, Debug)]
enum FuzzValue {
    None,
    Unset,
    Number(Pick),
    Flag(bool),
    TaskStatus(i32),
}

#[derive(Arbitrary, Debug)]
struct FuzzInput {
    role: u8,
    principal_department: Pick,
    metric: Pick,
    region: Pick,
    period: Pick,
    department: Pick,
    domain: Pick,
    task_id: Pick,
    value: FuzzValue,
    evidence_uri: Pick,
    note: String,
    missing: bool,
}

struct World {
    catalog: Catalog,
    org: Org,
    metrics: Vec<String>,
    regions: Vec<String>,
    departments: Vec<String>,
    domains: Vec<String>,
    tasks: Vec<String>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let catalog = Catalog::builtin().expect("builtin catalog");
        let city = City::builtin(&catalog).expect("builtin city");
        let regions = city.regions.iter().map(|r| r.code.clone()).collect();
        let departments = city.departments.iter().map(|d| d.code.clone()).collect();
        let metrics = catalog.metrics.iter().map(|m| m.key.clone()).collect();
        let domains = catalog
            .domain_sets
            .iter()
            .flat_map(|s| s.domains.iter().map(|d| d.code.clone()))
            .collect();
        let tasks = catalog
            .items
            .iter()
            .flat_map(|i| i.tasks.iter().map(|t| t.id.clone()))
            .collect();
        let org = Org::new(&catalog, city);
        World {
            catalog,
            org,
            metrics,
            regions,
            departments,
            domains,
            tasks,
        }
    })
}

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "12",
    "12.5",
    "12.50",
    "-1",
    "1.5",
    "2",
    "2.01",
    "0.001",
    "1e3",
    "NaN",
    "+1",
    "99999999999999999999999999999999999999999",
    "0012.50",
    "1.000000000001",
];
const PERIODS: &[&str] = &[
    "2026", "2026-Q1", "2026-12", "2026-13", "26", "1948", "2999",
];
const URIS: &[&str] = &[
    "https://e.org/r.pdf",
    "/rel",
    "javascript:alert(1)",
    "http://[::1",
];

fn pick(p: &Pick, choices: &[String]) -> String {
    match p {
        Pick::Known(i) if !choices.is_empty() => choices[usize::from(*i) % choices.len()].clone(),
        Pick::Known(_) | Pick::Empty => String::new(),
        Pick::Text(t) => t.clone(),
    }
}

fn strs(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| (*s).to_owned()).collect()
}

fuzz_target!(|f: FuzzInput| {
    let w = world();
    let role = match f.role % 5 {
        0 => Role::Department,
        1 => Role::Platform,
        2 => Role::Assessor,
        3 => Role::Operator,
        _ => Role::Admin,
    };
    let principal = Principal {
        id: "fuzz".into(),
        role,
        // A principal's department comes from the registry: always a known code (an arbitrary
        // one made descriptions quote up to megabytes; the wire clips them anyway).
        department: (role == Role::Department).then(|| match &f.principal_department {
            Pick::Known(i) => w.departments[usize::from(*i) % w.departments.len()].clone(),
            _ => w.departments[0].clone(),
        }),
    };
    let value = match &f.value {
        FuzzValue::None => None,
        FuzzValue::Unset => Some(pb::MetricValue { value: None }),
        FuzzValue::Number(p) => Some(pb::MetricValue {
            value: Some(pb::metric_value::Value::Number(pick(p, &strs(NUMBERS)))),
        }),
        FuzzValue::Flag(b) => Some(pb::MetricValue {
            value: Some(pb::metric_value::Value::Flag(*b)),
        }),
        FuzzValue::TaskStatus(s) => Some(pb::MetricValue {
            value: Some(pb::metric_value::Value::TaskStatus(*s)),
        }),
    };
    let input = pb::SubmissionInput {
        metric_key: pick(&f.metric, &w.metrics),
        region_code: pick(&f.region, &w.regions),
        period: pick(&f.period, &strs(PERIODS)),
        department_code: pick(&f.department, &w.departments),
        domain: pick(&f.domain, &w.domains),
        task_id: pick(&f.task_id, &w.tasks),
        value,
        evidence_uri: pick(&f.evidence_uri, &strs(URIS)),
        note: f.note.clone(),
    };
    let mut out = Vec::new();
    let given = (!f.missing).then_some(&input);
    let got = check_input(&w.catalog, &w.org, &principal, given, "values[7]", &mut out);
    assert_eq!(got.is_some(), out.is_empty(), "{out:?}");
    for v in &out {
        assert!(v.field.starts_with("values[7]"), "{v:?}");
        assert!(
            v.description.chars().count() <= 512,
            "long description for {}",
            v.field
        );
    }
    if let Some(v) = got {
        let metric = w.catalog.metric(&v.metric).expect("a known metric");
        assert!(w.org.city.region(&v.region).is_some());
        let p: Period = v.period.parse().expect("a canonical period");
        assert_eq!(p.to_string(), v.period);
        use citycredit_core::catalog::MetricKind as K;
        match metric.kind {
            K::Count | K::Amount | K::Rank | K::Score => {
                let n = Num::parse_decimal(&v.value).expect("canonical number");
                assert_eq!(n.to_plain(), v.value);
                assert!(!n.is_negative());
                if matches!(metric.kind, K::Count | K::Rank) {
                    assert!(n.is_integer());
                }
                if metric.kind == K::Rank {
                    assert!(!n.is_zero());
                }
                if let (K::Score, Some(max)) = (metric.kind, &metric.max) {
                    assert!(&n <= max);
                }
            }
            K::Bool | K::DomainFlag => assert!(v.value == "true" || v.value == "false"),
            K::TaskStatus => {
                assert!(["NOT_STARTED", "IN_PROGRESS", "DONE"].contains(&v.value.as_str()))
            }
        }
        if !v.evidence_uri.is_empty() {
            assert!(
                v.evidence_uri.starts_with("http://") || v.evidence_uri.starts_with("https://"),
                "{}",
                v.evidence_uri
            );
        }
    }
});
