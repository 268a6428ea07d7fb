//! The bad input catalogue: malformed and hostile requests through a real server (the gateway
//! with its API-key layer), on SQLite and (with `DATABASE_URL`) on PostgreSQL. Each row names the
//! request (or stream, or raw metadata), who sends it, the gRPC code it must get and, for
//! INVALID_ARGUMENT, the exact BadRequest field paths. After every row the store must be
//! unchanged: same number of submissions, same last hash, same idempotency records.
//!
//! RELIABILITY.md's bad-input table is generated from these rows, and checked against them by
//! `reliability_md_shows_the_catalogue`; after changing a row, rewrite it with
//! `UPDATE_RELIABILITY=1 cargo test -p citycredit-tests --test bad_input reliability_md`.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Code, Request, Status};

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::department_registry_service_client::DepartmentRegistryServiceClient;
use citycredit::proto::v1::scoring_service_client::ScoringServiceClient;
use citycredit_core::auth::Role;
use citycredit_store::Db;
use citycredit_tests::h2raw::{self, StreamAnswer};
use citycredit_tests::ingestion::*;
use citycredit_tests::{Backend, both_databases};

/// Who sends a row's request.
#[derive(Clone, Copy)]
enum Who {
    Platform,
    Admin,
    Operator,
    Assessor,
    /// A department principal bound to this department code.
    Dept(&'static str),
    /// No `authorization` header at all.
    Nobody,
    /// This exact `authorization` value, built from a valid platform key.
    Raw(fn(&str) -> Vec<u8>),
}

impl Who {
    fn label(&self) -> String {
        match self {
            Who::Platform => "platform".into(),
            Who::Admin => "admin".into(),
            Who::Operator => "operator".into(),
            Who::Assessor => "assessor".into(),
            Who::Dept(d) => format!("department {d}"),
            Who::Nobody => "no credential".into(),
            Who::Raw(_) => "raw metadata".into(),
        }
    }

    fn principal(&self) -> Option<citycredit_core::auth::Principal> {
        match self {
            Who::Platform => Some(platform()),
            Who::Admin => Some(admin()),
            Who::Operator => Some(principal("operator-1", Role::Operator, None)),
            Who::Assessor => Some(principal("assessor-1", Role::Assessor, None)),
            Who::Dept(d) => Some(principal(&format!("dept-{d}"), Role::Department, Some(d))),
            Who::Nobody | Who::Raw(_) => None,
        }
    }
}

/// A row's call.
enum Call {
    Submit(pb::SubmitValueRequest),
    Batch(Vec<pb::SubmitBatchRequest>),
    /// Over raw HTTP/2, with the key of the row's principal: sends this message without ending
    /// the stream, reads what the server answers for [`PATIENCE`], then gives up.
    BatchAbandoned(pb::SubmitBatchRequest, GiveUp),
    Get(pb::GetSubmissionRequest),
    List(pb::ListSubmissionsRequest),
    Retract(pb::RetractSubmissionRequest),
    Aggregates(pb::QueryAggregatesRequest),
    Watch(pb::WatchChangesRequest),
    Scorecard(pb::GetScorecardRequest),
    Departments(pb::ListDepartmentsRequest),
    CreatePrincipal(pb::CreatePrincipalRequest),
    Audit(Vec<pb::AuditCodesRequest>),
}

impl Call {
    fn rpc(&self) -> &'static str {
        match self {
            Call::Submit(_) => "SubmitValue",
            Call::Batch(_) => "SubmitBatch",
            Call::BatchAbandoned(..) => "SubmitBatch (raw HTTP/2, left open)",
            Call::Get(_) => "GetSubmission",
            Call::List(_) => "ListSubmissions",
            Call::Retract(_) => "RetractSubmission",
            Call::Aggregates(_) => "QueryAggregates",
            Call::Watch(_) => "WatchChanges",
            Call::Scorecard(_) => "GetScorecard",
            Call::Departments(_) => "ListDepartments",
            Call::CreatePrincipal(_) => "CreatePrincipal",
            Call::Audit(_) => "AuditCodes",
        }
    }
}

/// How the client of an abandoned batch gives up.
#[derive(Clone, Copy)]
enum GiveUp {
    /// RST_STREAM CANCEL: the connection stays.
    Reset,
    /// Half of a second gRPC frame (a length prefix promising more than follows), then the TCP
    /// connection is dropped.
    CutMidFrame,
}

/// How long the client of an abandoned batch keeps the stream open, reading, before it gives
/// up. Well below the gateway's request read timeout (10 s), so a server that answers in this
/// time answered the batch itself, not its silence.
const PATIENCE: Duration = Duration::from_millis(500);

/// What a row must get from the server.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// A gRPC status with this code (and the row's field paths, for INVALID_ARGUMENT).
    Code(Code),
    /// Nothing on the stream while the client keeps it open: the server waits for the rest of
    /// the batch, and the client gives up first.
    Nothing,
}

impl From<Code> for Expect {
    fn from(c: Code) -> Expect {
        Expect::Code(c)
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Code(c) => write!(f, "{c:?}"),
            Expect::Nothing => f.write_str("nothing before the client gives up"),
        }
    }
}

/// What the server answered a row.
enum Answer {
    /// A gRPC status (OK included), through tonic or read off a raw stream.
    Status(Status),
    /// Nothing on the raw stream before the client gave up.
    Nothing,
    /// Anything else on a raw stream: a reset, a broken connection, a response without a gRPC
    /// status.
    Raw(StreamAnswer),
}

impl Answer {
    fn status(&self) -> Option<&Status> {
        match self {
            Answer::Status(s) => Some(s),
            Answer::Nothing | Answer::Raw(_) => None,
        }
    }

    fn fields(&self) -> Vec<String> {
        self.status().map(violation_fields).unwrap_or_default()
    }

    fn matches(&self, expect: Expect, fields: &[&str]) -> bool {
        match (self, expect) {
            (Answer::Status(s), Expect::Code(c)) => s.code() == c && self.fields() == fields,
            (Answer::Nothing, Expect::Nothing) => true,
            _ => false,
        }
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Status(s) => {
                let message: String = s.message().chars().take(200).collect();
                write!(f, "{:?} {:?} ({message})", s.code(), self.fields())
            }
            Answer::Nothing => f.write_str("nothing before the client gave up"),
            Answer::Raw(a) => write!(f, "{a}"),
        }
    }
}

struct Row {
    name: &'static str,
    who: Who,
    call: Call,
    expect: Expect,
    fields: &'static [&'static str],
}

fn row(
    name: &'static str,
    who: Who,
    call: Call,
    expect: impl Into<Expect>,
    fields: &'static [&'static str],
) -> Row {
    Row {
        name,
        who,
        call,
        expect: expect.into(),
        fields,
    }
}

const MB: usize = 1024 * 1024;

fn input(
    metric: &str,
    region: &str,
    value: Option<pb::metric_value::Value>,
) -> pb::SubmissionInput {
    pb::SubmissionInput {
        metric_key: metric.into(),
        region_code: region.into(),
        period: "2026".into(),
        value: value.map(|v| pb::MetricValue { value: Some(v) }),
        ..Default::default()
    }
}

fn num(s: &str) -> Option<pb::metric_value::Value> {
    Some(pb::metric_value::Value::Number(s.into()))
}

fn flag(b: bool) -> Option<pb::metric_value::Value> {
    Some(pb::metric_value::Value::Flag(b))
}

fn task(s: i32) -> Option<pb::metric_value::Value> {
    Some(pb::metric_value::Value::TaskStatus(s))
}

/// A COUNT value of `n` for the city.
fn count(n: &str) -> pb::SubmissionInput {
    input("uscc.codes_total", "330800", num(n))
}

fn submit(i: pb::SubmissionInput) -> Call {
    Call::Submit(pb::SubmitValueRequest {
        value: Some(i),
        ..Default::default()
    })
}

/// validate_only: accepted values leave the store unchanged too.
fn check(i: pb::SubmissionInput) -> Call {
    Call::Submit(pb::SubmitValueRequest {
        value: Some(i),
        validate_only: true,
        ..Default::default()
    })
}

fn with(i: pb::SubmissionInput, f: impl FnOnce(&mut pb::SubmissionInput)) -> pb::SubmissionInput {
    let mut i = i;
    f(&mut i);
    i
}

fn period(p: &str) -> pb::SubmissionInput {
    with(count("1"), |i| i.period = p.into())
}

fn batch_msg(
    key: &str,
    validate_only: bool,
    values: Vec<pb::SubmissionInput>,
) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        idempotency_key: key.into(),
        validate_only,
        values,
    }
}

fn bearer(key: &str) -> Vec<u8> {
    format!("Bearer {key}").into_bytes()
}

fn rows() -> Vec<Row> {
    use Code::*;
    use Who::*;
    let v = &["value.value"][..];
    let p = &["value.period"][..];
    vec![
        // Wrong kinds.
        row(
            "count given a flag",
            Platform,
            submit(input("uscc.codes_total", "330800", flag(true))),
            InvalidArgument,
            v,
        ),
        row(
            "bool given a number",
            Platform,
            submit(input(
                "monitoring.township_extension_plan",
                "330800",
                num("1"),
            )),
            InvalidArgument,
            v,
        ),
        row(
            "count given a task status",
            Platform,
            submit(input("uscc.codes_total", "330800", task(3))),
            InvalidArgument,
            v,
        ),
        row(
            "task status given a number",
            Assessor,
            submit(with(input("task.status", "330800", num("3")), |i| {
                i.task_id = "E01.1".into()
            })),
            InvalidArgument,
            v,
        ),
        row(
            "domain flag given a number",
            Platform,
            submit(with(
                input("xinyi_plus.domain_in_service", "330800", num("1")),
                |i| i.domain = "education".into(),
            )),
            InvalidArgument,
            v,
        ),
        row(
            "value missing",
            Platform,
            submit(input("uscc.codes_total", "330800", None)),
            InvalidArgument,
            v,
        ),
        row(
            "MetricValue with no field set",
            Platform,
            submit(with(count("1"), |i| {
                i.value = Some(pb::MetricValue { value: None })
            })),
            InvalidArgument,
            v,
        ),
        // Numbers.
        row(
            "negative count",
            Platform,
            submit(count("-1")),
            InvalidArgument,
            v,
        ),
        row(
            "negative amount",
            Platform,
            submit(input("xinyidai.loan_amount", "330800", num("-0.01"))),
            InvalidArgument,
            v,
        ),
        row(
            "fraction for a COUNT",
            Platform,
            submit(count("1.5")),
            InvalidArgument,
            v,
        ),
        row(
            "fraction for a RANK",
            Platform,
            submit(input("monitoring.city_rank", "330800", num("2.5"))),
            InvalidArgument,
            v,
        ),
        row(
            "RANK 0",
            Platform,
            submit(input("monitoring.city_rank", "330800", num("0"))),
            InvalidArgument,
            v,
        ),
        row(
            "3 fraction digits for an AMOUNT",
            Platform,
            submit(input("xinyidai.loan_amount", "330800", num("12.345"))),
            InvalidArgument,
            v,
        ),
        row(
            "10^30 COUNT is accepted (no magnitude cap, 40 digits)",
            Platform,
            check(count(&format!("1{}", "0".repeat(30)))),
            Ok,
            &[],
        ),
        row(
            "40-digit COUNT is accepted",
            Platform,
            check(count(&"9".repeat(40))),
            Ok,
            &[],
        ),
        row(
            "41-digit COUNT",
            Platform,
            submit(count(&"9".repeat(41))),
            InvalidArgument,
            v,
        ),
        row(
            "41 digits with a fraction",
            Platform,
            submit(input(
                "xinyidai.loan_amount",
                "330800",
                num(&format!("{}.12", "9".repeat(39))),
            )),
            InvalidArgument,
            v,
        ),
        row(
            "1 MB of digits",
            Platform,
            submit(count(&"7".repeat(MB))),
            InvalidArgument,
            v,
        ),
        row(
            "1 MB non-number",
            Platform,
            submit(count(&"x".repeat(MB))),
            InvalidArgument,
            v,
        ),
        row("NaN", Platform, submit(count("NaN")), InvalidArgument, v),
        row(
            "Infinity",
            Platform,
            submit(count("Infinity")),
            InvalidArgument,
            v,
        ),
        row(
            "exponent 1e3",
            Platform,
            submit(count("1e3")),
            InvalidArgument,
            v,
        ),
        row(
            "explicit plus +1",
            Platform,
            submit(count("+1")),
            InvalidArgument,
            v,
        ),
        row(
            "leading space \" 1\"",
            Platform,
            submit(count(" 1")),
            InvalidArgument,
            v,
        ),
        row(
            "trailing newline",
            Platform,
            submit(count("1\n")),
            InvalidArgument,
            v,
        ),
        row(
            "thousands separator 1,000",
            Platform,
            submit(count("1,000")),
            InvalidArgument,
            v,
        ),
        row(
            "hex 0x10",
            Platform,
            submit(count("0x10")),
            InvalidArgument,
            v,
        ),
        row(
            "empty number",
            Platform,
            submit(count("")),
            InvalidArgument,
            v,
        ),
        row(
            "dangling point 1.",
            Platform,
            submit(count("1.")),
            InvalidArgument,
            v,
        ),
        row(
            "full-width digits １２",
            Platform,
            submit(count("１２")),
            InvalidArgument,
            v,
        ),
        row(
            "double minus --1",
            Platform,
            submit(count("--1")),
            InvalidArgument,
            v,
        ),
        row(
            "SCORE above max",
            Assessor,
            submit(input("campaign.integrity_tour", "330800", num("2.01"))),
            InvalidArgument,
            v,
        ),
        row(
            "SCORE with 13 fraction digits",
            Assessor,
            submit(input(
                "campaign.integrity_tour",
                "330800",
                num("1.0000000000001"),
            )),
            InvalidArgument,
            v,
        ),
        row(
            "negative SCORE",
            Assessor,
            submit(input("campaign.integrity_tour", "330800", num("-1"))),
            InvalidArgument,
            v,
        ),
        // Strings.
        row(
            "empty metric key",
            Platform,
            submit(input("", "330800", num("1"))),
            InvalidArgument,
            &["value.metric_key"],
        ),
        row(
            "1 MB metric key",
            Platform,
            submit(input(&"m".repeat(MB), "330800", num("1"))),
            InvalidArgument,
            &["value.metric_key"],
        ),
        row(
            "unknown metric",
            Platform,
            submit(input("no.such_metric", "330800", num("1"))),
            InvalidArgument,
            &["value.metric_key"],
        ),
        row(
            "metric key with NUL",
            Platform,
            submit(input("uscc.codes_total\0", "330800", num("1"))),
            InvalidArgument,
            &["value.metric_key"],
        ),
        row(
            "1 MB note",
            Platform,
            submit(with(count("1"), |i| i.note = "n".repeat(MB))),
            InvalidArgument,
            &["value.note"],
        ),
        row(
            "2,001-character note",
            Platform,
            submit(with(count("1"), |i| i.note = "注".repeat(2001))),
            InvalidArgument,
            &["value.note"],
        ),
        row(
            "1 MB evidence URI",
            Platform,
            submit(with(count("1"), |i| {
                i.evidence_uri = format!("https://e.org/{}", "a".repeat(MB))
            })),
            InvalidArgument,
            &["value.evidence_uri"],
        ),
        row(
            "relative evidence URI",
            Platform,
            submit(with(count("1"), |i| {
                i.evidence_uri = "/reports/1.pdf".into()
            })),
            InvalidArgument,
            &["value.evidence_uri"],
        ),
        row(
            "unparsable evidence URI",
            Platform,
            submit(with(count("1"), |i| i.evidence_uri = "http://[::1".into())),
            InvalidArgument,
            &["value.evidence_uri"],
        ),
        row(
            "evidence URI with spaces",
            Platform,
            submit(with(count("1"), |i| i.evidence_uri = "not a uri".into())),
            InvalidArgument,
            &["value.evidence_uri"],
        ),
        row(
            "javascript: evidence URI",
            Platform,
            submit(with(count("1"), |i| {
                i.evidence_uri = "javascript:alert(1)".into()
            })),
            InvalidArgument,
            &["value.evidence_uri"],
        ),
        row(
            "data: evidence URI",
            Platform,
            submit(with(count("1"), |i| {
                i.evidence_uri = "data:text/html,<script>alert(1)</script>".into()
            })),
            InvalidArgument,
            &["value.evidence_uri"],
        ),
        // Organisation and catalog references.
        row(
            "unknown region",
            Platform,
            submit(input("uscc.codes_total", "999999", num("1"))),
            InvalidArgument,
            &["value.region_code"],
        ),
        row(
            "empty region",
            Platform,
            submit(input("uscc.codes_total", "", num("1"))),
            InvalidArgument,
            &["value.region_code"],
        ),
        row(
            "1 MB region",
            Platform,
            submit(input("uscc.codes_total", &"3".repeat(MB), num("1"))),
            InvalidArgument,
            &["value.region_code"],
        ),
        row(
            "unknown department",
            Platform,
            submit(with(count("1"), |i| i.department_code = "nobody".into())),
            InvalidArgument,
            &["value.department_code"],
        ),
        row(
            "department reporting for another department",
            Dept("samr"),
            submit(with(count("1"), |i| i.department_code = "tax".into())),
            InvalidArgument,
            &["value.department_code"],
        ),
        row(
            "unknown domain",
            Platform,
            submit(with(
                input("joint_rp.domain_implemented", "330800", flag(true)),
                |i| i.domain = "jrp-99".into(),
            )),
            InvalidArgument,
            &["value.domain"],
        ),
        row(
            "domain from another domain set",
            Platform,
            submit(with(
                input("joint_rp.domain_implemented", "330800", flag(true)),
                |i| i.domain = "education".into(),
            )),
            InvalidArgument,
            &["value.domain"],
        ),
        row(
            "DOMAIN_FLAG without domain",
            Platform,
            submit(input("joint_rp.domain_implemented", "330800", flag(true))),
            InvalidArgument,
            &["value.domain"],
        ),
        row(
            "domain on a COUNT metric",
            Platform,
            submit(with(count("1"), |i| i.domain = "jrp-01".into())),
            InvalidArgument,
            &["value.domain"],
        ),
        row(
            "task.status without task id",
            Assessor,
            submit(input("task.status", "330800", task(3))),
            InvalidArgument,
            &["value.task_id"],
        ),
        row(
            "unknown task id",
            Assessor,
            submit(with(input("task.status", "330800", task(3)), |i| {
                i.task_id = "E99.9".into()
            })),
            InvalidArgument,
            &["value.task_id"],
        ),
        row(
            "task id on a COUNT metric",
            Platform,
            submit(with(count("1"), |i| i.task_id = "E01.1".into())),
            InvalidArgument,
            &["value.task_id"],
        ),
        row(
            "TaskStatus 99",
            Assessor,
            submit(with(input("task.status", "330800", task(99)), |i| {
                i.task_id = "E01.1".into()
            })),
            InvalidArgument,
            v,
        ),
        row(
            "TaskStatus -1",
            Assessor,
            submit(with(input("task.status", "330800", task(-1)), |i| {
                i.task_id = "E01.1".into()
            })),
            InvalidArgument,
            v,
        ),
        row(
            "TaskStatus UNSPECIFIED",
            Assessor,
            submit(with(input("task.status", "330800", task(0)), |i| {
                i.task_id = "E01.1".into()
            })),
            InvalidArgument,
            v,
        ),
        // Periods.
        row(
            "period 2026-13",
            Platform,
            submit(period("2026-13")),
            InvalidArgument,
            p,
        ),
        row(
            "period 2026-Q5",
            Platform,
            submit(period("2026-Q5")),
            InvalidArgument,
            p,
        ),
        row(
            "period 2026-00",
            Platform,
            submit(period("2026-00")),
            InvalidArgument,
            p,
        ),
        row(
            "period 26",
            Platform,
            submit(period("26")),
            InvalidArgument,
            p,
        ),
        row(
            "period 2026-1",
            Platform,
            submit(period("2026-1")),
            InvalidArgument,
            p,
        ),
        row(
            "period ２０２６ (full-width)",
            Platform,
            submit(period("２０２６")),
            InvalidArgument,
            p,
        ),
        row(
            "period 2026-q1",
            Platform,
            submit(period("2026-q1")),
            InvalidArgument,
            p,
        ),
        row(
            "period 1948",
            Platform,
            submit(period("1948")),
            InvalidArgument,
            p,
        ),
        row(
            "empty period",
            Platform,
            submit(period("")),
            InvalidArgument,
            p,
        ),
        row(
            "1 MB period",
            Platform,
            submit(period(&"2".repeat(MB))),
            InvalidArgument,
            p,
        ),
        row(
            "every field wrong at once",
            Platform,
            submit(pb::SubmissionInput {
                metric_key: "joint_rp.domain_implemented".into(),
                region_code: "999999".into(),
                period: "2026-13".into(),
                department_code: "nobody".into(),
                task_id: "E01.1".into(),
                value: Some(pb::MetricValue { value: num("1") }),
                evidence_uri: "nope".into(),
                note: "x".repeat(2001),
                ..Default::default()
            }),
            InvalidArgument,
            &[
                "value.region_code",
                "value.period",
                "value.department_code",
                "value.domain",
                "value.task_id",
                "value.value",
                "value.evidence_uri",
                "value.note",
            ],
        ),
        // Who may push what.
        row(
            "county government reports for another county",
            Dept("gov-330802"),
            submit(input("gov.dishonesty_events_total", "330803", num("1"))),
            PermissionDenied,
            &[],
        ),
        row(
            "county government reports for the city",
            Dept("gov-330802"),
            submit(input("gov.dishonesty_events_total", "330800", num("1"))),
            PermissionDenied,
            &[],
        ),
        row(
            "county government for its own county (control)",
            Dept("gov-330802"),
            check(input("gov.dishonesty_events_total", "330802", num("1"))),
            Ok,
            &[],
        ),
        row(
            "operator submits",
            Operator,
            submit(count("1")),
            PermissionDenied,
            &[],
        ),
        row(
            "operator submits validate_only",
            Operator,
            check(count("1")),
            PermissionDenied,
            &[],
        ),
        row(
            "department submits an assessed SCORE",
            Dept("samr"),
            submit(input("campaign.integrity_tour", "330800", num("1"))),
            PermissionDenied,
            &[],
        ),
        row(
            "department submits a task status",
            Dept("samr"),
            submit(with(input("task.status", "330800", task(3)), |i| {
                i.task_id = "E01.1".into()
            })),
            PermissionDenied,
            &[],
        ),
        row(
            "platform submits an assessed SCORE",
            Platform,
            submit(input("campaign.integrity_tour", "330800", num("1"))),
            PermissionDenied,
            &[],
        ),
        row(
            "assessor submits a COUNT",
            Assessor,
            submit(count("1")),
            PermissionDenied,
            &[],
        ),
        row(
            "department outside its duties",
            Dept("quzhou-daily"),
            submit(count("1")),
            PermissionDenied,
            &[],
        ),
        row(
            "operator retracts",
            Operator,
            Call::Retract(pb::RetractSubmissionRequest {
                name: "submissions/1".into(),
                reason: "r".into(),
                idempotency_key: String::new(),
            }),
            PermissionDenied,
            &[],
        ),
        row(
            "non-admin creates a principal",
            Platform,
            Call::CreatePrincipal(pb::CreatePrincipalRequest {
                principal: Some(pb::Principal {
                    id: "x".into(),
                    role: pb::Role::Admin as i32,
                    ..Default::default()
                }),
            }),
            PermissionDenied,
            &[],
        ),
        // Idempotency.
        row(
            "replayed key with a new payload",
            Platform,
            Call::Submit(pb::SubmitValueRequest {
                value: Some(count("2")),
                idempotency_key: "replay-key".into(),
                validate_only: false,
            }),
            AlreadyExists,
            &[],
        ),
        row(
            "replayed key with a new payload in a batch",
            Platform,
            Call::Batch(vec![batch_msg("replay-key", false, vec![count("2")])]),
            AlreadyExists,
            &[],
        ),
        row(
            "129-character idempotency key",
            Platform,
            Call::Submit(pb::SubmitValueRequest {
                value: Some(count("1")),
                idempotency_key: "k".repeat(129),
                validate_only: false,
            }),
            InvalidArgument,
            &["idempotency_key"],
        ),
        row(
            "request without value",
            Platform,
            Call::Submit(pb::SubmitValueRequest::default()),
            InvalidArgument,
            &["value"],
        ),
        // Batches and streams.
        row(
            "oversize batch (10,001 values)",
            Platform,
            Call::Batch(
                (0..11)
                    .map(|i| {
                        batch_msg(
                            if i == 0 { "big" } else { "" },
                            false,
                            vec![count("1"); if i == 10 { 1_001 } else { 1_000 }],
                        )
                    })
                    .collect(),
            ),
            ResourceExhausted,
            &[],
        ),
        row(
            "empty batch stream",
            Platform,
            Call::Batch(vec![]),
            InvalidArgument,
            &["values"],
        ),
        row(
            "batch messages with no values",
            Platform,
            Call::Batch(vec![
                batch_msg("", false, vec![]),
                batch_msg("", false, vec![]),
            ]),
            InvalidArgument,
            &["values"],
        ),
        row(
            "batch: key changes mid-stream",
            Platform,
            Call::Batch(vec![
                batch_msg("a", false, vec![count("1")]),
                batch_msg("b", false, vec![count("1")]),
            ]),
            InvalidArgument,
            &["requests[1].idempotency_key"],
        ),
        row(
            "batch: validate_only only in message 2",
            Platform,
            Call::Batch(vec![
                batch_msg("", false, vec![count("1")]),
                batch_msg("", true, vec![count("1")]),
            ]),
            InvalidArgument,
            &["requests[1].validate_only"],
        ),
        row(
            "batch: bad value indexed across messages",
            Platform,
            Call::Batch(vec![
                batch_msg("", false, vec![count("1"), count("2")]),
                batch_msg("", false, vec![count("3"), count("-4")]),
            ]),
            InvalidArgument,
            &["values[3].value"],
        ),
        row(
            "batch: one good value, one denied",
            Dept("gov-330802"),
            Call::Batch(vec![batch_msg(
                "",
                false,
                vec![
                    input("gov.dishonesty_events_total", "330802", num("1")),
                    input("gov.dishonesty_events_total", "330803", num("1")),
                ],
            )]),
            PermissionDenied,
            &[],
        ),
        row(
            "batch abandoned mid-stream (client resets the stream)",
            Platform,
            Call::BatchAbandoned(
                batch_msg("abandoned", false, vec![count("1"), count("2")]),
                GiveUp::Reset,
            ),
            Expect::Nothing,
            &[],
        ),
        row(
            "batch cut mid-frame (connection dropped)",
            Platform,
            Call::BatchAbandoned(
                batch_msg("cut", false, vec![count("1"), count("2")]),
                GiveUp::CutMidFrame,
            ),
            Expect::Nothing,
            &[],
        ),
        row(
            "batch left open after a bad first message",
            Platform,
            Call::BatchAbandoned(
                batch_msg("open-bad", false, vec![count("1"), count("-2")]),
                GiveUp::Reset,
            ),
            InvalidArgument,
            &["values[1].value"],
        ),
        row(
            "batch left open by a principal who may not submit",
            Operator,
            Call::BatchAbandoned(
                batch_msg("open-denied", false, vec![count("1")]),
                GiveUp::CutMidFrame,
            ),
            PermissionDenied,
            &[],
        ),
        row(
            "message above 4 MiB",
            Platform,
            submit(with(count("1"), |i| i.note = "n".repeat(5 * MB))),
            OutOfRange,
            &[],
        ),
        // Credentials.
        row(
            "no authorization header",
            Nobody,
            submit(count("1")),
            Unauthenticated,
            &[],
        ),
        row(
            "Basic scheme",
            Raw(|_| b"Basic dXNlcjpwYXNz".to_vec()),
            submit(count("1")),
            Unauthenticated,
            &[],
        ),
        row(
            "Bearer without key",
            Raw(|_| b"Bearer".to_vec()),
            submit(count("1")),
            Unauthenticated,
            &[],
        ),
        row(
            "Bearer with empty key",
            Raw(|_| b"Bearer ".to_vec()),
            submit(count("1")),
            Unauthenticated,
            &[],
        ),
        row(
            "lower-case bearer (scheme is case-sensitive)",
            Raw(|k| format!("bearer {k}").into_bytes()),
            submit(count("1")),
            Unauthenticated,
            &[],
        ),
        row(
            "key without scheme",
            Raw(|k| k.as_bytes().to_vec()),
            submit(count("1")),
            Unauthenticated,
            &[],
        ),
        row(
            "invalid UTF-8 in the key",
            Raw(|_| b"Bearer cc_\xff\xfe\xfd".to_vec()),
            submit(count("1")),
            Unauthenticated,
            &[],
        ),
        row(
            "valid key followed by obs-text bytes",
            Raw(|k| [bearer(k), b"\xc3\xa9".to_vec()].concat()),
            submit(count("1")),
            Unauthenticated,
            &[],
        ),
        row(
            "tab instead of space",
            Raw(|k| format!("Bearer\t{k}").into_bytes()),
            submit(count("1")),
            Unauthenticated,
            &[],
        ),
        row(
            "valid key with one character changed",
            Raw(|k| {
                let mut b = bearer(k);
                let n = b.len() - 1;
                b[n] = if b[n] == b'0' { b'1' } else { b'0' };
                b
            }),
            submit(count("1")),
            Unauthenticated,
            &[],
        ),
        row(
            "valid key truncated",
            Raw(|k| bearer(&k[..k.len() - 1])),
            submit(count("1")),
            Unauthenticated,
            &[],
        ),
        row(
            "4 KiB key",
            Raw(|_| bearer(&"k".repeat(4096))),
            submit(count("1")),
            Unauthenticated,
            &[],
        ),
        row(
            "key of another prefix format",
            Raw(|_| {
                bearer(
                    "cc_00000000_0000000000000000000000000000000000000000000000000000000000000000",
                )
            }),
            submit(count("1")),
            Unauthenticated,
            &[],
        ),
        // Reads with bad arguments.
        row(
            "QueryAggregates: unknown region",
            Platform,
            Call::Aggregates(pb::QueryAggregatesRequest {
                region_code: "999999".into(),
                period: "2026".into(),
                as_of: None,
                approved_only: false,
            }),
            InvalidArgument,
            &["region_code"],
        ),
        row(
            "QueryAggregates: bad period",
            Platform,
            Call::Aggregates(pb::QueryAggregatesRequest {
                region_code: "330800".into(),
                period: "2026-13".into(),
                as_of: None,
                approved_only: false,
            }),
            InvalidArgument,
            &["period"],
        ),
        row(
            "QueryAggregates: 1 MB region and empty period",
            Platform,
            Call::Aggregates(pb::QueryAggregatesRequest {
                region_code: "3".repeat(MB),
                period: String::new(),
                as_of: None,
                approved_only: false,
            }),
            InvalidArgument,
            &["region_code", "period"],
        ),
        row(
            "QueryAggregates: no credential",
            Nobody,
            Call::Aggregates(pb::QueryAggregatesRequest {
                region_code: "330800".into(),
                period: "2026".into(),
                as_of: None,
                approved_only: false,
            }),
            Unauthenticated,
            &[],
        ),
        row(
            "GetScorecard: unknown region",
            Platform,
            Call::Scorecard(pb::GetScorecardRequest {
                region_code: "999999".into(),
                period: "2026".into(),
                as_of: None,
                rule_version: String::new(),
                approved_only: false,
            }),
            InvalidArgument,
            &["region_code"],
        ),
        row(
            "GetScorecard: period 2026-Q5",
            Platform,
            Call::Scorecard(pb::GetScorecardRequest {
                region_code: "330800".into(),
                period: "2026-Q5".into(),
                as_of: None,
                rule_version: String::new(),
                approved_only: false,
            }),
            InvalidArgument,
            &["period"],
        ),
        row(
            "GetScorecard: 1 MB region",
            Platform,
            Call::Scorecard(pb::GetScorecardRequest {
                region_code: "3".repeat(MB),
                period: "2026".into(),
                as_of: None,
                rule_version: String::new(),
                approved_only: false,
            }),
            InvalidArgument,
            &["region_code"],
        ),
        row(
            "WatchChanges: unknown region",
            Platform,
            Call::Watch(pb::WatchChangesRequest {
                region_code: "999999".into(),
            }),
            InvalidArgument,
            &["region_code"],
        ),
        row(
            "GetSubmission: not a name",
            Platform,
            Call::Get(pb::GetSubmissionRequest {
                name: "submissions/abc".into(),
            }),
            InvalidArgument,
            &["name"],
        ),
        row(
            "GetSubmission: id 0",
            Platform,
            Call::Get(pb::GetSubmissionRequest {
                name: "submissions/0".into(),
            }),
            InvalidArgument,
            &["name"],
        ),
        row(
            "GetSubmission: id beyond i64",
            Platform,
            Call::Get(pb::GetSubmissionRequest {
                name: "submissions/99999999999999999999".into(),
            }),
            InvalidArgument,
            &["name"],
        ),
        row(
            "GetSubmission: unknown id",
            Platform,
            Call::Get(pb::GetSubmissionRequest {
                name: "submissions/999999".into(),
            }),
            NotFound,
            &[],
        ),
        row(
            "ListSubmissions: token never issued",
            Platform,
            Call::List(pb::ListSubmissionsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            }),
            InvalidArgument,
            &["page_token"],
        ),
        row(
            "ListSubmissions: token with a negative id",
            Platform,
            Call::List(pb::ListSubmissionsRequest {
                page_token: "before:-5".into(),
                ..Default::default()
            }),
            InvalidArgument,
            &["page_token"],
        ),
        row(
            "ListSubmissions: negative page size",
            Platform,
            Call::List(pb::ListSubmissionsRequest {
                page_size: -1,
                ..Default::default()
            }),
            InvalidArgument,
            &["page_size"],
        ),
        row(
            "ListSubmissions: malformed principal filter",
            Platform,
            Call::List(pb::ListSubmissionsRequest {
                principal: "admin-1".into(),
                ..Default::default()
            }),
            InvalidArgument,
            &["principal"],
        ),
        row(
            "ListDepartments: token never issued",
            Platform,
            Call::Departments(pb::ListDepartmentsRequest {
                page_size: 10,
                page_token: "xyz".into(),
            }),
            InvalidArgument,
            &["page_token"],
        ),
        row(
            "ListDepartments: negative page size",
            Platform,
            Call::Departments(pb::ListDepartmentsRequest {
                page_size: -5,
                page_token: String::new(),
            }),
            InvalidArgument,
            &["page_size"],
        ),
        row(
            "RetractSubmission: empty reason",
            Platform,
            Call::Retract(pb::RetractSubmissionRequest {
                name: "submissions/1".into(),
                reason: "  ".into(),
                idempotency_key: String::new(),
            }),
            InvalidArgument,
            &["reason"],
        ),
        row(
            "RetractSubmission: unknown id",
            Platform,
            Call::Retract(pb::RetractSubmissionRequest {
                name: "submissions/999999".into(),
                reason: "r".into(),
                idempotency_key: String::new(),
            }),
            NotFound,
            &[],
        ),
        row(
            "CreatePrincipal: Role 42",
            Admin,
            Call::CreatePrincipal(pb::CreatePrincipalRequest {
                principal: Some(pb::Principal {
                    id: "role-42".into(),
                    role: 42,
                    ..Default::default()
                }),
            }),
            InvalidArgument,
            &["principal.role"],
        ),
        row(
            "AuditCodes: record in the second message",
            Platform,
            Call::Audit(vec![
                pb::AuditCodesRequest {
                    codes: vec!["x".into()],
                    record: None,
                },
                pb::AuditCodesRequest {
                    codes: vec![],
                    record: Some(pb::AuditRecording {
                        region_code: "330800".into(),
                        period: "2026".into(),
                        idempotency_key: String::new(),
                    }),
                },
            ]),
            InvalidArgument,
            &["record"],
        ),
        row(
            "AuditCodes: record with a bad period",
            Platform,
            Call::Audit(vec![pb::AuditCodesRequest {
                codes: vec!["91350100M000100Y43".into()],
                record: Some(pb::AuditRecording {
                    region_code: "330800".into(),
                    period: "2026-13".into(),
                    idempotency_key: String::new(),
                }),
            }]),
            InvalidArgument,
            &["record.period"],
        ),
        row(
            "AuditCodes: operator records totals",
            Operator,
            Call::Audit(vec![pb::AuditCodesRequest {
                codes: vec!["91350100M000100Y43".into()],
                record: Some(pb::AuditRecording {
                    region_code: "330800".into(),
                    period: "2026".into(),
                    idempotency_key: String::new(),
                }),
            }]),
            PermissionDenied,
            &[],
        ),
        row(
            "AuditCodes: hostile codes are only counted",
            Operator,
            Call::Audit(vec![pb::AuditCodesRequest {
                codes: vec![
                    String::new(),
                    "\0".repeat(18),
                    "é".repeat(9),
                    "x".repeat(MB),
                ],
                record: None,
            }]),
            Ok,
            &[],
        ),
    ]
}

/// What the store holds: submission count, last hash, idempotency records.
async fn store_state(db: &Db) -> (i64, String, i64) {
    let (count, last): (i64, String) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE((SELECT hash FROM submissions ORDER BY id DESC LIMIT 1), '') \
         FROM submissions",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap_or_else(|e| panic!("read the store: {e}"));
    let (keys,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM idempotency")
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("read idempotency: {e}"));
    (count, last, keys)
}

fn request<T>(who: Who, raw_key: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Who::Raw(f) = who {
        let value = MetadataValue::<Ascii>::try_from(&f(raw_key)[..])
            .unwrap_or_else(|e| panic!("not a header value: {e}"));
        r.metadata_mut().insert("authorization", value);
    }
    r
}

async fn run(s: &IngestionServer, raw_key: &str, r: &Row) -> Answer {
    if let Call::BatchAbandoned(msg, give_up) = &r.call {
        let principal = r
            .who
            .principal()
            .unwrap_or_else(|| panic!("{}: an abandoned batch needs a principal", r.name));
        return abandon_batch(s.server.addr, &s.key(&principal).await, msg, *give_up).await;
    }
    match call(s, raw_key, r).await {
        Ok(()) => Answer::Status(Status::ok("")),
        Err(status) => Answer::Status(status),
    }
}

/// A row's call through tonic.
async fn call(s: &IngestionServer, raw_key: &str, r: &Row) -> Result<(), Status> {
    let who = r.who;
    let channel = s.channel(who.principal().as_ref()).await;
    let mut sub =
        pb::metric_submission_service_client::MetricSubmissionServiceClient::new(channel.clone())
            .max_encoding_message_size(64 * MB);
    match &r.call {
        Call::Submit(m) => sub
            .submit_value(request(who, raw_key, m.clone()))
            .await
            .map(drop),
        Call::Batch(msgs) => sub
            .submit_batch(request(who, raw_key, tokio_stream::iter(msgs.clone())))
            .await
            .map(drop),
        Call::BatchAbandoned(..) => unreachable!("sent over raw HTTP/2 by `run`"),
        Call::Get(m) => sub
            .get_submission(request(who, raw_key, m.clone()))
            .await
            .map(drop),
        Call::List(m) => sub
            .list_submissions(request(who, raw_key, m.clone()))
            .await
            .map(drop),
        Call::Retract(m) => sub
            .retract_submission(request(who, raw_key, m.clone()))
            .await
            .map(drop),
        Call::Aggregates(m) => sub
            .query_aggregates(request(who, raw_key, m.clone()))
            .await
            .map(drop),
        Call::Watch(m) => sub
            .watch_changes(request(who, raw_key, m.clone()))
            .await
            .map(drop),
        Call::Scorecard(m) => ScoringServiceClient::new(channel)
            .get_scorecard(request(who, raw_key, m.clone()))
            .await
            .map(drop),
        Call::Departments(m) => DepartmentRegistryServiceClient::new(channel)
            .list_departments(request(who, raw_key, m.clone()))
            .await
            .map(drop),
        Call::CreatePrincipal(m) => DepartmentRegistryServiceClient::new(channel)
            .create_principal(request(who, raw_key, m.clone()))
            .await
            .map(drop),
        Call::Audit(msgs) => pb::code_audit_service_client::CodeAuditServiceClient::new(channel)
            .max_encoding_message_size(64 * MB)
            .audit_codes(request(who, raw_key, tokio_stream::iter(msgs.clone())))
            .await
            .map(drop),
    }
}

async fn bad_input_catalogue(backend: Backend) {
    let rows = rows();
    assert!(rows.len() >= 60, "{} rows", rows.len());
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    // One stored value with a known idempotency key, for the replay rows.
    s.client(Some(&platform()))
        .await
        .submit_value(pb::SubmitValueRequest {
            value: Some(count("1")),
            idempotency_key: "replay-key".into(),
            validate_only: false,
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: seed: {e}"));
    let raw_key = s
        .server
        .create_principal("raw-caller", pb::Role::Platform, None)
        .await;
    let mut failures = Vec::new();
    for r in &rows {
        let before = store_state(&s.db).await;
        let got = run(&s, &raw_key, r).await;
        let after = store_state(&s.db).await;
        if before != after {
            let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
                "SELECT id, principal, idempotency_key, value FROM submissions \
                 ORDER BY id DESC LIMIT 3",
            )
            .fetch_all(&s.db.pool)
            .await
            .unwrap_or_default();
            eprintln!("{name}: {}: {before:?} -> {after:?}: {rows:?}", r.name);
        }
        if !got.matches(r.expect, r.fields) || before != after {
            failures.push(format!(
                "{name}: {:?}: want {} {:?}, got {got}; store {}",
                r.name,
                r.expect,
                r.fields,
                if before == after {
                    "unchanged"
                } else {
                    "CHANGED"
                }
            ));
        }
        // Error messages stay small whatever the input was.
        let message = got.status().map_or(0, |st| st.message().len());
        assert!(
            message < 4096,
            "{name}: {}: message of {message} bytes",
            r.name
        );
    }
    // The server is still healthy and serving after all of it.
    s.client(Some(&platform()))
        .await
        .submit_value(pb::SubmitValueRequest {
            value: Some(count("1")),
            validate_only: true,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: server unhealthy after the catalogue: {e}"));
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

both_databases!(bad_input_catalogue);

/// Raw HTTP/2: an `authorization` value with control bytes that no HTTP library would send.
/// The HTTP/2 layer refuses the stream before any service sees it; the connection's other
/// requests and the server are unaffected.
async fn control_bytes_in_metadata_are_refused_by_the_http2_layer(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let before = store_state(&s.db).await;
    for value in [
        &b"Bearer \x01\x02\x7f"[..],
        b"Bearer a\r\nx-injected: 1",
        b"Bearer \0",
    ] {
        let outcome = raw_h2_submit(s.server.addr, value).await;
        assert!(
            outcome.starts_with("rst_stream")
                || outcome.starts_with("goaway")
                || outcome.contains("grpc-status"),
            "{name}: {outcome}"
        );
    }
    assert_eq!(store_state(&s.db).await, before, "{name}: store changed");
    s.client(Some(&platform()))
        .await
        .submit_value(pb::SubmitValueRequest {
            value: Some(count("1")),
            validate_only: true,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: server unhealthy: {e}"));
}

both_databases!(control_bytes_in_metadata_are_refused_by_the_http2_layer);

/// HPACK "literal header field without indexing, new name", no Huffman coding.
fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    fn int7(out: &mut Vec<u8>, mut n: usize) {
        if n < 127 {
            out.push(u8::try_from(n).unwrap_or(0));
            return;
        }
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push(u8::try_from(n % 128).unwrap_or(0) | 0x80);
            n /= 128;
        }
        out.push(u8::try_from(n).unwrap_or(0));
    }
    out.push(0);
    int7(out, name.len());
    out.extend_from_slice(name);
    int7(out, value.len());
    out.extend_from_slice(value);
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The client preface, empty SETTINGS and the HEADERS of a gRPC call on stream 1.
fn h2_open(path: &[u8], authorization: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    for (n, v) in [
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"authorization", authorization),
    ] {
        hpack_literal(&mut block, n, v);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(1, 0x4, 1, &block));
    out
}

/// Starts a SubmitBatch with `msg` over raw HTTP/2 and does not end the stream: reads the
/// server's answer for [`PATIENCE`], then gives up as `give_up` says, and returns what the
/// server answered before that.
async fn abandon_batch(
    addr: std::net::SocketAddr,
    key: &str,
    msg: &pb::SubmitBatchRequest,
    give_up: GiveUp,
) -> Answer {
    let mut conn = h2raw::connect(addr, 65_535)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let request = h2raw::grpc_request(
        "/citycredit.v1.MetricSubmissionService/SubmitBatch",
        Some(key),
    );
    let (response, mut stream) = conn
        .start(request, None)
        .await
        .unwrap_or_else(|e| panic!("start the batch: {e}"));
    stream
        .send_data(h2raw::grpc_frame(msg), false)
        .unwrap_or_else(|e| panic!("send the first message: {e}"));
    if let GiveUp::CutMidFrame = give_up {
        stream
            .send_data(Bytes::from_static(&[0, 0, 0, 1, 0, 10, 3]), false)
            .unwrap_or_else(|e| panic!("send half a frame: {e}"));
    }
    let got = match tokio::time::timeout(PATIENCE, h2raw::answer(response)).await {
        Err(_) => Answer::Nothing,
        Ok(StreamAnswer::Status(status)) => Answer::Status(status),
        Ok(other) => Answer::Raw(other),
    };
    match give_up {
        GiveUp::Reset => stream.send_reset(h2::Reason::CANCEL),
        GiveUp::CutMidFrame => conn.cut(),
    }
    // Give the server time to notice and (wrongly) commit, if it were to.
    tokio::time::sleep(Duration::from_millis(300)).await;
    got
}

/// Sends one SubmitValue with `authorization: <value>` over a hand-made HTTP/2 connection and
/// says how the server answered stream 1: "rst_stream <code>", "goaway <code>", or
/// "headers ..." (the raw header block, which contains "grpc-status" when not Huffman-coded).
async fn raw_h2_submit(addr: std::net::SocketAddr, value: &[u8]) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let mut out = h2_open(b"/citycredit.v1.MetricSubmissionService/SubmitValue", value);
    out.extend(frame(0, 0x1, 1, &[0, 0, 0, 0, 0]));
    tcp.write_all(&out)
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let read = async {
        let mut buf = Vec::new();
        loop {
            while buf.len() >= 9 {
                let len =
                    (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                let kind = buf[3];
                let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                let payload: Vec<u8> = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                match (kind, stream) {
                    (3, 1) => return format!("rst_stream {:?}", payload),
                    (7, _) => return format!("goaway {:?}", payload.get(4..8)),
                    (1, 1) => {
                        return format!("headers {}", String::from_utf8_lossy(&payload));
                    }
                    _ => {}
                }
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return "closed".to_owned(),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| "timeout".to_owned())
}

// ---------------------------------------------------------------------------------------------
// RELIABILITY.md shows the catalogue: generated text, checked (STYLE habit 14).

const RELIABILITY_MD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../RELIABILITY.md");
const README_MD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
/// The table sits between these lines of RELIABILITY.md.
const TABLE_BEGIN: &str = "<!-- bad-input table: generated from tests/e2e/bad_input.rs -->";
const TABLE_END: &str = "<!-- end of the bad-input table -->";
/// The documents give the number of rows as "<n> malformed or hostile requests".
const COUNTED: &str = " malformed or hostile requests";
const REGENERATE: &str =
    "UPDATE_RELIABILITY=1 cargo test -p citycredit-tests --test bad_input reliability_md";

/// The catalogue as the Markdown table of RELIABILITY.md.
fn table() -> String {
    let mut out = String::from(
        "| # | name | rpc | principal | expected answer | field violations |\n\
         |---|---|---|---|---|---|\n",
    );
    for (i, r) in rows().iter().enumerate() {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            i + 1,
            r.name.replace('|', "\\|"),
            r.call.rpc(),
            r.who.label(),
            r.expect,
            r.fields.join(", ")
        ));
    }
    out
}

/// The byte ranges of the numbers in "<n> malformed or hostile requests".
fn row_counts(text: &str) -> Vec<std::ops::Range<usize>> {
    text.match_indices(COUNTED)
        .map(|(at, _)| {
            let digits = text[..at]
                .bytes()
                .rev()
                .take_while(u8::is_ascii_digit)
                .count();
            at - digits..at
        })
        .collect()
}

/// `text` with its table (between the markers) and its row counts made current.
fn regenerated(name: &str, text: &str, table: Option<&str>, rows: usize) -> String {
    let mut out = text.to_owned();
    for range in row_counts(text).into_iter().rev() {
        out.replace_range(range, &rows.to_string());
    }
    if let Some(table) = table {
        let begin = out
            .find(TABLE_BEGIN)
            .unwrap_or_else(|| panic!("{name}: no line {TABLE_BEGIN:?}"))
            + TABLE_BEGIN.len();
        let end = out[begin..]
            .find(TABLE_END)
            .unwrap_or_else(|| panic!("{name}: no line {TABLE_END:?} after the table"))
            + begin;
        out.replace_range(begin..end, &format!("\n{table}"));
    }
    out
}

/// A line diff of `old` (the document) and `new` (what it should say), by longest common
/// subsequence: `-` lines only in the document (with their line number), `+` lines only in the
/// catalogue.
fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut common = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            common[i][j] = if a[i] == b[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || common[i + 1][j] >= common[i][j + 1]) {
            out.push_str(&format!("{:>5} - {}\n", i + 1, a[i]));
            i += 1;
        } else {
            out.push_str(&format!("{:>5} + {}\n", "", b[j]));
            j += 1;
        }
    }
    out
}

/// RELIABILITY.md's bad-input table is the catalogue, and RELIABILITY.md and README.md give
/// its number of rows. On a difference this fails with a diff and the command that rewrites
/// them (`UPDATE_RELIABILITY=1`).
#[test]
fn reliability_md_shows_the_catalogue() {
    let rows = rows().len();
    let table = table();
    let update = std::env::var_os("UPDATE_RELIABILITY").is_some_and(|v| v == "1");
    let mut problems = Vec::new();
    for (path, table) in [(RELIABILITY_MD, Some(table.as_str())), (README_MD, None)] {
        let name = path.rsplit('/').next().unwrap_or(path);
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            !row_counts(&text).is_empty(),
            "{name} no longer gives the number of rows as \"<n>{COUNTED}\""
        );
        let want = regenerated(name, &text, table, rows);
        if want == text {
            continue;
        }
        if update {
            std::fs::write(path, &want).unwrap_or_else(|e| panic!("{path}: {e}"));
            eprintln!("{name}: rewritten from the catalogue ({rows} rows)");
        } else {
            problems.push(format!(
                "{name} (line, - document, + catalogue):\n{}",
                line_diff(&text, &want)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the documents differ from the catalogue in tests/e2e/bad_input.rs:\n\n{}\n\
         If the catalogue is right, rewrite them with:\n    {REGENERATE}",
        problems.join("\n")
    );
}
