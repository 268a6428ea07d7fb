//! Validation at entry (rulebook section 2): every problem of a request is found and reported
//! at once, one `Violation` per problem with a path to the field (`values[3].value`). A value
//! that passes comes out normalised as a `NewValue` (canonical number text, the department
//! resolved), which is what is stored and fingerprinted.

use citycredit::proto::v1 as pb;
use citycredit::status::Violation;
use citycredit_core::auth::{Action, Denied, Principal, Role};
use citycredit_core::catalog::{Catalog, Metric, MetricKind};
use citycredit_core::org::Org;
use citycredit_core::period::Period;
use citycredit_core::text::{self, TextKind};

/// Longest metric key, region, department, domain, task id or period accepted.
pub const MAX_CODE_CHARS: usize = 128;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;
/// Longest note or retraction reason.
pub const MAX_NOTE_CHARS: usize = 2_000;
/// Longest evidence URI.
pub const MAX_URI_CHARS: usize = 2_048;
/// Most fraction digits a SCORE may carry (kept exact in the canonical text).
pub use citycredit_core::catalog::MAX_SCORE_FRACTION_DIGITS;

/// A validated value, as it is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewValue {
    pub metric: String,
    pub region: String,
    pub period: String,
    /// The department reported for ("" when none).
    pub department: String,
    pub domain: String,
    pub task_id: String,
    /// Canonical text: exact decimal ("12.5"), "true"/"false", or a task status name.
    pub value: String,
    pub evidence_uri: String,
    pub note: String,
}

/// Checks one input; pushes a violation per problem under `path` and returns the normalised
/// value when there were none.
pub fn check_input(
    catalog: &Catalog,
    org: &Org,
    principal: &Principal,
    input: Option<&pb::SubmissionInput>,
    path: &str,
    out: &mut Vec<Violation>,
) -> Option<NewValue> {
    let before = out.len();
    let Some(input) = input else {
        out.push(Violation::new(path, "required"));
        return None;
    };
    let field = |name: &str| format!("{path}.{name}");
    let bounded = |name: &str, text: &str, max: usize, out: &mut Vec<Violation>| {
        let ok = text.chars().count() <= max;
        if !ok {
            out.push(Violation::new(
                field(name),
                format!("at most {max} characters"),
            ));
        }
        ok
    };
    // Text rules first: a field that breaks them is reported once and not quoted back in any
    // later message ("unknown region ...").
    let clean = |name: &str, value: &str, kind: TextKind, out: &mut Vec<Violation>| {
        check_text(&field(name), value, kind, out)
    };
    let metric_clean = clean("metric_key", &input.metric_key, TextKind::Identifier, out);
    let region_clean = clean("region_code", &input.region_code, TextKind::Identifier, out);
    let period_clean = clean("period", &input.period, TextKind::Identifier, out);
    let department_clean = clean(
        "department_code",
        &input.department_code,
        TextKind::Identifier,
        out,
    );
    let domain_clean = clean("domain", &input.domain, TextKind::Identifier, out);
    let task_clean = clean("task_id", &input.task_id, TextKind::Identifier, out);
    let uri_clean = clean(
        "evidence_uri",
        &input.evidence_uri,
        TextKind::Identifier,
        out,
    );
    clean("note", &input.note, TextKind::FreeText, out);

    // Metric.
    let mut metric: Option<&Metric> = None;
    if !metric_clean {
    } else if input.metric_key.is_empty() {
        out.push(Violation::new(field("metric_key"), "required"));
    } else if bounded("metric_key", &input.metric_key, MAX_CODE_CHARS, out) {
        metric = catalog.metric(&input.metric_key);
        if metric.is_none() {
            out.push(Violation::new(
                field("metric_key"),
                format!("unknown metric `{}`", input.metric_key),
            ));
        }
    }

    // Region.
    if !region_clean {
    } else if input.region_code.is_empty() {
        out.push(Violation::new(field("region_code"), "required"));
    } else if bounded("region_code", &input.region_code, MAX_CODE_CHARS, out)
        && org.city.region(&input.region_code).is_none()
    {
        out.push(Violation::new(
            field("region_code"),
            format!("unknown region `{}`", input.region_code),
        ));
    } else if metric.is_some_and(|m| m.kind == MetricKind::Rank)
        && input.region_code != org.city.code
    {
        // A rank is the city's place among prefecture-level cities (rulebook section 2).
        out.push(Violation::new(
            field("region_code"),
            format!(
                "a RANK metric is reported for the city ({}) only",
                org.city.code
            ),
        ));
    }

    // Period.
    let period = if !period_clean {
        None
    } else if input.period.is_empty() {
        out.push(Violation::new(field("period"), "required"));
        None
    } else if bounded("period", &input.period, MAX_CODE_CHARS, out) {
        match input.period.parse::<Period>() {
            Ok(p) => Some(p.to_string()),
            Err(e) => {
                out.push(Violation::new(field("period"), e.to_string()));
                None
            }
        }
    } else {
        None
    };

    // Department.
    let department = if department_clean {
        check_department(org, principal, &input.department_code, &field, out)
    } else {
        None
    };

    // Domain and task id, by kind.
    let kind = metric.map(|m| m.kind);
    if domain_clean && bounded("domain", &input.domain, MAX_CODE_CHARS, out) {
        match kind {
            Some(MetricKind::DomainFlag) if input.domain.is_empty() => {
                out.push(Violation::new(
                    field("domain"),
                    "required for a DOMAIN_FLAG metric",
                ));
            }
            Some(MetricKind::DomainFlag)
                if !org.domain_known(catalog, &input.metric_key, &input.domain) =>
            {
                let set = catalog
                    .domain_set_of(&input.metric_key)
                    .map_or("", |s| s.code.as_str());
                out.push(Violation::new(
                    field("domain"),
                    format!("unknown domain `{}` in domain set `{set}`", input.domain),
                ));
            }
            Some(MetricKind::DomainFlag) => {}
            Some(_) if !input.domain.is_empty() => {
                out.push(Violation::new(
                    field("domain"),
                    "only DOMAIN_FLAG metrics take a domain",
                ));
            }
            _ => {}
        }
    }
    if task_clean && bounded("task_id", &input.task_id, MAX_CODE_CHARS, out) {
        match kind {
            Some(MetricKind::TaskStatus) if input.task_id.is_empty() => {
                out.push(Violation::new(
                    field("task_id"),
                    "required for a TASK_STATUS metric",
                ));
            }
            Some(MetricKind::TaskStatus) if catalog.task(&input.task_id).is_none() => {
                out.push(Violation::new(
                    field("task_id"),
                    format!("unknown task `{}`", input.task_id),
                ));
            }
            Some(MetricKind::TaskStatus) => {}
            Some(_) if !input.task_id.is_empty() => {
                out.push(Violation::new(
                    field("task_id"),
                    "only TASK_STATUS metrics take a task id",
                ));
            }
            _ => {}
        }
    }

    // Value.
    let value = metric.and_then(|m| check_value(m, input.value.as_ref(), &field("value"), out));

    // Evidence and note.
    let mut evidence_uri = String::new();
    if uri_clean
        && !input.evidence_uri.is_empty()
        && bounded("evidence_uri", &input.evidence_uri, MAX_URI_CHARS, out)
    {
        match evidence_uri_normalised(&input.evidence_uri) {
            Ok(u) => evidence_uri = u,
            Err(why) => out.push(Violation::new(field("evidence_uri"), why)),
        }
    }
    bounded("note", &input.note, MAX_NOTE_CHARS, out);

    if out.len() > before {
        return None;
    }
    Some(NewValue {
        metric: input.metric_key.clone(),
        region: input.region_code.clone(),
        period: period?,
        department: department?,
        domain: input.domain.clone(),
        task_id: input.task_id.clone(),
        value: value?,
        evidence_uri,
        note: input.note.clone(),
    })
}

/// Checks `value` against the text rules of `kind` (`citycredit_core::text`); pushes a violation
/// naming the code point and returns false when it breaks them.
pub fn check_text(path: &str, value: &str, kind: TextKind, out: &mut Vec<Violation>) -> bool {
    match text::check(value, kind) {
        Ok(()) => true,
        Err(refused) => {
            out.push(Violation::new(path, refused.to_string()));
            false
        }
    }
}

/// An evidence URI is an absolute `http` or `https` URI with a host. Other schemes are refused:
/// the URI is shown to reviewers as a link, and `javascript:` or `data:` links are an attack on
/// them, not evidence.
pub fn is_evidence_uri(text: &str) -> bool {
    evidence_uri_normalised(text).is_ok()
}

/// The stored form of an evidence URI: parsed and written back by the `url` crate (WHATWG
/// rules: scheme and host lower-cased, default port dropped, spaces and other unsafe characters
/// percent-encoded, `/` after a bare host), so that the link reviewers click is the link that
/// was checked. Refused rather than repaired: control characters anywhere (the parser would
/// silently drop tabs and newlines), surrounding spaces (the parser would trim them: a client
/// that pads its URIs has a bug worth seeing), credentials (`user:pass@` would publish a
/// password to every reader), and anything but an absolute http(s) URI with a host.
pub fn evidence_uri_normalised(text: &str) -> Result<String, String> {
    if let Err(refused) = text::check_identifier(text) {
        return Err(refused.to_string());
    }
    if text.trim() != text {
        return Err("no spaces before or after the URI".to_owned());
    }
    let url = url::Url::parse(text).map_err(|_| {
        "not an absolute http or https URI (e.g. https://example.org/report.pdf)".to_owned()
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(
            "not an absolute http or https URI (e.g. https://example.org/report.pdf)".to_owned(),
        );
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("no user name or password in the URI (`user:pass@`)".to_owned());
    }
    let normalised = url.as_str().to_owned();
    if normalised.chars().count() > MAX_URI_CHARS {
        return Err(format!(
            "at most {MAX_URI_CHARS} characters once normalised"
        ));
    }
    Ok(normalised)
}

fn check_department(
    org: &Org,
    principal: &Principal,
    given: &str,
    field: &dyn Fn(&str) -> String,
    out: &mut Vec<Violation>,
) -> Option<String> {
    if given.chars().count() > MAX_CODE_CHARS {
        out.push(Violation::new(
            field("department_code"),
            format!("at most {MAX_CODE_CHARS} characters"),
        ));
        return None;
    }
    match (principal.role, principal.department.as_deref()) {
        (Role::Department, Some(own)) => {
            if given.is_empty() || given == own {
                Some(own.to_owned())
            } else {
                out.push(Violation::new(
                    field("department_code"),
                    format!("a department principal reports for its own department `{own}`"),
                ));
                None
            }
        }
        _ => {
            if given.is_empty() || org.city.department(given).is_some() {
                Some(given.to_owned())
            } else {
                out.push(Violation::new(
                    field("department_code"),
                    format!("unknown department `{given}`"),
                ));
                None
            }
        }
    }
}

/// Checks a value against its metric's kind; returns the canonical text.
fn check_value(
    metric: &Metric,
    value: Option<&pb::MetricValue>,
    path: &str,
    out: &mut Vec<Violation>,
) -> Option<String> {
    use pb::metric_value::Value as V;
    let kind = metric.kind;
    let wrong_field = |out: &mut Vec<Violation>| {
        let want = match kind {
            MetricKind::Count | MetricKind::Amount | MetricKind::Rank | MetricKind::Score => {
                "`number`"
            }
            MetricKind::Bool | MetricKind::DomainFlag => "`flag`",
            MetricKind::TaskStatus => "`task_status`",
        };
        out.push(Violation::new(
            path,
            format!("a {} metric takes {want}", kind.as_str()),
        ));
        None
    };
    match (kind, value.and_then(|v| v.value.as_ref())) {
        (
            MetricKind::Count | MetricKind::Amount | MetricKind::Rank | MetricKind::Score,
            Some(V::Number(text)),
        ) => match metric.parse_number(text) {
            Ok(n) => Some(n.to_plain()),
            Err(problems) => {
                out.extend(problems.into_iter().map(|p| Violation::new(path, p)));
                None
            }
        },
        (MetricKind::Bool | MetricKind::DomainFlag, Some(V::Flag(b))) => Some(b.to_string()),
        (MetricKind::TaskStatus, Some(V::TaskStatus(s))) => match pb::TaskStatus::try_from(*s) {
            Ok(pb::TaskStatus::Unspecified) | Err(_) => {
                out.push(Violation::new(
                    path,
                    "task_status must be NOT_STARTED, IN_PROGRESS or DONE",
                ));
                None
            }
            Ok(s) => Some(task_status_name(s).to_owned()),
        },
        _ => wrong_field(out),
    }
}

fn task_status_name(s: pb::TaskStatus) -> &'static str {
    match s {
        pb::TaskStatus::NotStarted => "NOT_STARTED",
        pb::TaskStatus::InProgress => "IN_PROGRESS",
        pb::TaskStatus::Done => "DONE",
        pb::TaskStatus::Unspecified => "",
    }
}

/// The wire form of a stored canonical value of a metric of `kind`.
pub fn wire_value(kind: Option<MetricKind>, text: &str) -> Option<pb::MetricValue> {
    use pb::metric_value::Value as V;
    let value = match kind? {
        MetricKind::Count | MetricKind::Amount | MetricKind::Rank | MetricKind::Score => {
            V::Number(text.to_owned())
        }
        MetricKind::Bool | MetricKind::DomainFlag => V::Flag(text == "true"),
        MetricKind::TaskStatus => V::TaskStatus(match text {
            "NOT_STARTED" => pb::TaskStatus::NotStarted,
            "IN_PROGRESS" => pb::TaskStatus::InProgress,
            "DONE" => pb::TaskStatus::Done,
            _ => pb::TaskStatus::Unspecified,
        } as i32),
    };
    Some(pb::MetricValue { value: Some(value) })
}

/// Checks an idempotency key's text and length.
pub fn check_idempotency_key(key: &str, path: &str, out: &mut Vec<Violation>) {
    if !check_text(path, key, TextKind::Identifier, out) {
        return;
    }
    if key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS {
        out.push(Violation::new(
            path,
            format!("at most {MAX_IDEMPOTENCY_KEY_CHARS} characters"),
        ));
    }
}

/// May `principal` submit `value`?
pub fn authorize(org: &Org, principal: &Principal, value: &NewValue) -> Result<(), Denied> {
    org.access.decide(
        principal,
        Action::Submit {
            metric: &value.metric,
            region: &value.region,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use citycredit_core::city::City;

    fn setup() -> (Catalog, Org) {
        let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        let city = City::builtin(&catalog).unwrap_or_else(|e| panic!("{e}"));
        let org = Org::new(&catalog, city);
        (catalog, org)
    }

    fn platform() -> Principal {
        Principal {
            id: "p".into(),
            role: Role::Platform,
            department: None,
            credential: None,
        }
    }

    fn number(n: &str) -> Option<pb::MetricValue> {
        Some(pb::MetricValue {
            value: Some(pb::metric_value::Value::Number(n.into())),
        })
    }

    fn input(metric: &str, value: Option<pb::MetricValue>) -> pb::SubmissionInput {
        pb::SubmissionInput {
            metric_key: metric.into(),
            region_code: "330800".into(),
            period: "2026".into(),
            value,
            ..Default::default()
        }
    }

    fn problems(i: &pb::SubmissionInput) -> Vec<Violation> {
        let (c, o) = setup();
        let mut out = Vec::new();
        check_input(&c, &o, &platform(), Some(i), "value", &mut out);
        out
    }

    #[test]
    fn kinds_are_enforced() {
        let cases: &[(&str, &str, bool)] = &[
            ("uscc.codes_total", "12", true),
            ("uscc.codes_total", "12.0", true),
            ("uscc.codes_total", "1.5", false),
            ("uscc.codes_total", "-1", false),
            ("uscc.codes_total", "1e3", false),
            ("uscc.codes_total", "NaN", false),
            ("xinyidai.loan_amount", "12.50", true),
            ("xinyidai.loan_amount", "12.505", false),
            ("monitoring.city_rank", "0", false),
            ("monitoring.city_rank", "3", true),
            ("campaign.integrity_tour", "2", true),
            ("campaign.integrity_tour", "2.01", false),
        ];
        for (metric, v, ok) in cases {
            let got = problems(&input(metric, number(v)));
            assert_eq!(got.is_empty(), *ok, "{metric} {v}: {got:?}");
            if !ok {
                assert!(got.iter().all(|p| p.field == "value.value"), "{got:?}");
            }
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let i = pb::SubmissionInput {
            metric_key: "joint_rp.domain_implemented".into(),
            region_code: "999999".into(),
            period: "2026-13".into(),
            department_code: "nobody".into(),
            domain: String::new(),
            task_id: "E01.1".into(),
            value: number("1"),
            evidence_uri: "not a uri".into(),
            note: "x".repeat(2001),
        };
        let got: Vec<String> = problems(&i).into_iter().map(|v| v.field).collect();
        assert_eq!(
            got,
            [
                "value.region_code",
                "value.period",
                "value.department_code",
                "value.domain",
                "value.task_id",
                "value.value",
                "value.evidence_uri",
                "value.note"
            ]
        );
    }

    #[test]
    fn evidence_uris_are_http_or_https() {
        // Regression (bad-input catalogue): `javascript:` and `data:` URIs were stored.
        for ok in ["https://example.org/r.pdf", "http://10.0.0.1:8080/a?b=c#d"] {
            assert!(is_evidence_uri(ok), "{ok}");
        }
        for bad in [
            "javascript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "file:///etc/passwd",
            "mailto:a@b.c",
            "https://",
            "/relative",
            "not a uri",
        ] {
            assert!(!is_evidence_uri(bad), "{bad}");
        }
    }

    #[test]
    fn evidence_uris_are_normalised_or_refused() {
        for (given, stored) in [
            (
                "HTTPS://Example.ORG:443/a b?x=1#f",
                "https://example.org/a%20b?x=1#f",
            ),
            ("http://example.org", "http://example.org/"),
        ] {
            assert_eq!(evidence_uri_normalised(given).as_deref(), Ok(stored));
        }
        let idn = evidence_uri_normalised("https://衢州.example/报告.pdf").unwrap_or_default();
        assert!(idn.starts_with("https://xn--"), "{idn}");
        assert!(idn.ends_with(".example/%E6%8A%A5%E5%91%8A.pdf"), "{idn}");
        for (bad, why) in [
            (" https://example.org/r.pdf", "spaces"),
            ("https://example.org/r.pdf ", "spaces"),
            ("https://example.org/r\n.pdf", "U+000A"),
            ("https://example.org/\u{1b}[31mred", "U+001B"),
            ("https://user:pass@example.org/r.pdf", "password"),
            ("https://user@example.org/r.pdf", "user name"),
            ("https://example.org/\u{202E}fdp.exe", "U+202E"),
        ] {
            let got = evidence_uri_normalised(bad);
            assert!(
                got.as_ref().is_err_and(|e| e.contains(why)),
                "{bad:?}: {got:?}"
            );
        }
    }

    #[test]
    fn text_rules_apply_to_every_field_without_quoting_it() {
        let i = pb::SubmissionInput {
            metric_key: "uscc.codes_total\0".into(),
            region_code: "3308\u{1b}02".into(),
            period: "\u{202E}2026".into(),
            department_code: "sa\u{200B}mr".into(),
            domain: "\0".into(),
            task_id: "\0".into(),
            value: number("1"),
            evidence_uri: "https://e.org/\0".into(),
            note: "line one\nline two\ttab\0".into(),
        };
        let got = problems(&i);
        let fields: Vec<&str> = got.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "value.metric_key",
                "value.region_code",
                "value.period",
                "value.department_code",
                "value.domain",
                "value.task_id",
                "value.evidence_uri",
                "value.note",
            ]
        );
        assert!(got[0].description.starts_with("U+0000"), "{got:?}");
        assert!(got[1].description.starts_with("U+001B"), "{got:?}");
        assert!(got[7].description.contains("at character 22"), "{got:?}");
        // A note with line breaks and tabs is fine.
        let mut ok = input("uscc.codes_total", number("1"));
        ok.note = "第一行\n第二行\t备注".into();
        assert!(problems(&ok).is_empty());
    }

    #[test]
    fn canonical_numbers() {
        let (c, o) = setup();
        let mut out = Vec::new();
        let v = check_input(
            &c,
            &o,
            &platform(),
            Some(&input("xinyidai.loan_amount", number("0012.50"))),
            "value",
            &mut out,
        );
        assert_eq!(v.map(|v| v.value).as_deref(), Some("12.5"), "{out:?}");
    }
}
