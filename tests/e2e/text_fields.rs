//! Issue 10, point 1: every identifier and free-text field of every request refuses NUL, ESC,
//! a bidi override and a zero-width space with INVALID_ARGUMENT naming the field and the code
//! point (never quoting the text back), on SQLite and PostgreSQL, and stores nothing. Notes and
//! reasons still take line feeds and tabs. One row per field, through the real server (the
//! gateway with its API-key layer), as the bad-input catalogue does for other refusals.

use tonic::{Code, Status};

use citycredit::proto::v1 as pb;
use citycredit_tests::ingestion::*;
use citycredit_tests::{Backend, both_databases};

/// The four characters the issue names.
const HOSTILE: [char; 4] = ['\u{0}', '\u{1b}', '\u{202e}', '\u{200b}'];

enum Req {
    Submit(pb::SubmitValueRequest),
    Batch(pb::SubmitBatchRequest),
    Retract(pb::RetractSubmissionRequest),
    List(pb::ListSubmissionsRequest),
    Get(pb::GetSubmissionRequest),
    Aggregates(pb::QueryAggregatesRequest),
    WatchChanges(pb::WatchChangesRequest),
    Audit(pb::AuditCodesRequest),
    Scorecard(pb::GetScorecardRequest),
    Scorecards(pb::BatchGetScorecardsRequest),
    Explain(pb::ExplainIndicatorRequest),
    WhatIf(pb::WhatIfRequest),
    WatchScorecard(pb::WatchScorecardRequest),
    Compare(pb::CompareCountiesRequest),
    Worklist(pb::GetDepartmentWorklistRequest),
    Completeness(pb::GetCompletenessReportRequest),
    ListRegions(pb::ListRegionsRequest),
    GetRegion(pb::GetRegionRequest),
    CreateRegion(pb::CreateRegionRequest),
    UpdateRegion(pb::UpdateRegionRequest),
    GetDepartment(pb::GetDepartmentRequest),
    UpdateDepartment(pb::UpdateDepartmentRequest),
    UpdateGroup(pb::UpdateGroupMembersRequest),
    ListResponsibilities(pb::ListResponsibilitiesRequest),
    SetResponsibilities(pb::SetResponsibilitiesRequest),
    Duties(pb::GetDepartmentDutiesRequest),
    Responsible(pb::ListResponsibleDepartmentsRequest),
    ListDomains(pb::ListDomainsRequest),
    RegisterDomain(pb::RegisterDomainRequest),
    CreatePrincipal(pb::CreatePrincipalRequest),
    CreateKey(pb::CreateApiKeyRequest),
    ListKeys(pb::ListApiKeysRequest),
    RevokeKey(pb::RevokeApiKeyRequest),
    CreateDuty(pb::CreateReportingDutyRequest),
    DeleteDuty(pb::DeleteReportingDutyRequest),
}

struct Row {
    field: &'static str,
    /// A valid value of the field; the hostile character goes in its middle.
    base: &'static str,
    build: fn(String) -> Req,
}

fn row(field: &'static str, base: &'static str, build: fn(String) -> Req) -> Row {
    Row { field, base, build }
}

fn count() -> pb::SubmissionInput {
    number_input("uscc.codes_total", "330802", "2026", "samr", "1")
}

fn submit(input: pb::SubmissionInput, key: &str) -> Req {
    Req::Submit(pb::SubmitValueRequest {
        value: Some(input),
        idempotency_key: key.to_owned(),
        validate_only: false,
    })
}

fn rows() -> Vec<Row> {
    vec![
        // MetricSubmissionService.SubmitValue
        row("value.metric_key", "uscc.codes_total", |v| {
            submit(
                pb::SubmissionInput {
                    metric_key: v,
                    ..count()
                },
                "",
            )
        }),
        row("value.region_code", "330802", |v| {
            submit(
                pb::SubmissionInput {
                    region_code: v,
                    ..count()
                },
                "",
            )
        }),
        row("value.period", "2026", |v| {
            submit(
                pb::SubmissionInput {
                    period: v,
                    ..count()
                },
                "",
            )
        }),
        row("value.department_code", "samr", |v| {
            submit(
                pb::SubmissionInput {
                    department_code: v,
                    ..count()
                },
                "",
            )
        }),
        row("value.domain", "production", |v| {
            submit(
                flag_input(
                    "integrity.credit_records",
                    "330802",
                    "2026",
                    "samr",
                    &v,
                    true,
                ),
                "",
            )
        }),
        row("value.task_id", "E07.1", |v| {
            submit(
                pb::SubmissionInput {
                    metric_key: "task.status".into(),
                    region_code: "330800".into(),
                    task_id: v,
                    value: Some(pb::MetricValue {
                        value: Some(pb::metric_value::Value::TaskStatus(
                            pb::TaskStatus::Done as i32,
                        )),
                    }),
                    ..count()
                },
                "",
            )
        }),
        row("value.evidence_uri", "https://example.org/r.pdf", |v| {
            submit(
                pb::SubmissionInput {
                    evidence_uri: v,
                    ..count()
                },
                "",
            )
        }),
        row("value.note", "a note", |v| {
            submit(pb::SubmissionInput { note: v, ..count() }, "")
        }),
        row("idempotency_key", "key-1", |v| submit(count(), &v)),
        // SubmitBatch
        row("values[0].region_code", "330802", |v| {
            Req::Batch(pb::SubmitBatchRequest {
                values: vec![pb::SubmissionInput {
                    region_code: v,
                    ..count()
                }],
                ..Default::default()
            })
        }),
        row("values[0].note", "a note", |v| {
            Req::Batch(pb::SubmitBatchRequest {
                values: vec![pb::SubmissionInput { note: v, ..count() }],
                ..Default::default()
            })
        }),
        row("idempotency_key", "batch-1", |v| {
            Req::Batch(pb::SubmitBatchRequest {
                idempotency_key: v,
                values: vec![count()],
                ..Default::default()
            })
        }),
        // RetractSubmission (submissions/1 exists)
        row("name", "submissions/1", |v| {
            Req::Retract(pb::RetractSubmissionRequest {
                name: v,
                reason: "typo".into(),
                idempotency_key: String::new(),
            })
        }),
        row("reason", "typo", |v| {
            Req::Retract(pb::RetractSubmissionRequest {
                name: "submissions/1".into(),
                reason: v,
                idempotency_key: String::new(),
            })
        }),
        row("idempotency_key", "r-1", |v| {
            Req::Retract(pb::RetractSubmissionRequest {
                name: "submissions/1".into(),
                reason: "typo".into(),
                idempotency_key: v,
            })
        }),
        // ListSubmissions
        row("region_code", "330802", |v| {
            Req::List(pb::ListSubmissionsRequest {
                region_code: v,
                ..Default::default()
            })
        }),
        row("period", "2026", |v| {
            Req::List(pb::ListSubmissionsRequest {
                period: v,
                ..Default::default()
            })
        }),
        row("metric_key", "uscc.codes_total", |v| {
            Req::List(pb::ListSubmissionsRequest {
                metric_key: v,
                ..Default::default()
            })
        }),
        row("department_code", "samr", |v| {
            Req::List(pb::ListSubmissionsRequest {
                department_code: v,
                ..Default::default()
            })
        }),
        row("principal", "principals/platform-1", |v| {
            Req::List(pb::ListSubmissionsRequest {
                principal: v,
                ..Default::default()
            })
        }),
        row("page_token", "before:5", |v| {
            Req::List(pb::ListSubmissionsRequest {
                page_token: v,
                ..Default::default()
            })
        }),
        // GetSubmission, QueryAggregates, WatchChanges
        row("name", "submissions/1", |v| {
            Req::Get(pb::GetSubmissionRequest { name: v })
        }),
        row("region_code", "330800", |v| {
            Req::Aggregates(pb::QueryAggregatesRequest {
                region_code: v,
                period: "2026".into(),
                as_of: None,
                approved_only: false,
            })
        }),
        row("period", "2026", |v| {
            Req::Aggregates(pb::QueryAggregatesRequest {
                region_code: "330800".into(),
                period: v,
                as_of: None,
                approved_only: false,
            })
        }),
        row("region_code", "330800", |v| {
            Req::WatchChanges(pb::WatchChangesRequest { region_code: v })
        }),
        // CodeAuditService.AuditCodes
        row("record.region_code", "330800", |v| {
            Req::Audit(pb::AuditCodesRequest {
                codes: vec!["x".into()],
                record: Some(pb::AuditRecording {
                    region_code: v,
                    period: "2026".into(),
                    idempotency_key: String::new(),
                }),
            })
        }),
        row("record.period", "2026", |v| {
            Req::Audit(pb::AuditCodesRequest {
                codes: vec!["x".into()],
                record: Some(pb::AuditRecording {
                    region_code: "330800".into(),
                    period: v,
                    idempotency_key: String::new(),
                }),
            })
        }),
        row("record.idempotency_key", "audit-1", |v| {
            Req::Audit(pb::AuditCodesRequest {
                codes: vec!["x".into()],
                record: Some(pb::AuditRecording {
                    region_code: "330800".into(),
                    period: "2026".into(),
                    idempotency_key: v,
                }),
            })
        }),
        // ScoringService
        row("region_code", "330800", |v| {
            Req::Scorecard(pb::GetScorecardRequest {
                region_code: v,
                period: "2026".into(),
                as_of: None,
                rule_version: String::new(),
                approved_only: false,
            })
        }),
        row("period", "2026", |v| {
            Req::Scorecard(pb::GetScorecardRequest {
                region_code: "330800".into(),
                period: v,
                as_of: None,
                rule_version: String::new(),
                approved_only: false,
            })
        }),
        row("region_codes[1]", "330802", |v| {
            Req::Scorecards(pb::BatchGetScorecardsRequest {
                region_codes: vec!["330800".into(), v],
                period: "2026".into(),
                as_of: None,
                rule_version: String::new(),
                approved_only: false,
            })
        }),
        row("indicator", "indicators/B01", |v| {
            Req::Explain(pb::ExplainIndicatorRequest {
                region_code: "330800".into(),
                period: "2026".into(),
                indicator: v,
                as_of: None,
                rule_version: String::new(),
                approved_only: false,
            })
        }),
        row("overrides[0].metric_key", "uscc.codes_total", |v| {
            Req::WhatIf(pb::WhatIfRequest {
                region_code: "330800".into(),
                period: "2026".into(),
                overrides: vec![pb::ValueOverride {
                    metric_key: v,
                    value: Some(pb::MetricValue {
                        value: Some(pb::metric_value::Value::Number("1".into())),
                    }),
                    ..Default::default()
                }],
                rule_version: String::new(),
            })
        }),
        row("overrides[0].domains[0]", "production", |v| {
            Req::WhatIf(pb::WhatIfRequest {
                region_code: "330800".into(),
                period: "2026".into(),
                overrides: vec![pb::ValueOverride {
                    metric_key: "integrity.credit_records".into(),
                    domains: vec![v],
                    ..Default::default()
                }],
                rule_version: String::new(),
            })
        }),
        row("region_code", "330800", |v| {
            Req::WatchScorecard(pb::WatchScorecardRequest {
                region_code: v,
                period: "2026".into(),
            })
        }),
        row("period", "2026", |v| {
            Req::Compare(pb::CompareCountiesRequest { period: v })
        }),
        row("department", "departments/samr", |v| {
            Req::Worklist(pb::GetDepartmentWorklistRequest {
                department: v,
                period: "2026".into(),
                region_code: String::new(),
            })
        }),
        row("region_code", "330802", |v| {
            Req::Completeness(pb::GetCompletenessReportRequest {
                region_code: v,
                period: "2026".into(),
            })
        }),
        // DepartmentRegistryService
        row("parent", "regions/330800", |v| {
            Req::ListRegions(pb::ListRegionsRequest {
                parent: v,
                ..Default::default()
            })
        }),
        row("name", "regions/330802", |v| {
            Req::GetRegion(pb::GetRegionRequest { name: v })
        }),
        row("region.display_name", "新区", |v| {
            Req::CreateRegion(pb::CreateRegionRequest {
                region: Some(pb::Region {
                    code: "330899".into(),
                    display_name: v,
                    parent: "regions/330800".into(),
                    ..Default::default()
                }),
            })
        }),
        row("name", "regions/330802", |v| {
            Req::UpdateRegion(pb::UpdateRegionRequest {
                name: v,
                display_name: "柯城".into(),
            })
        }),
        row("name", "departments/samr", |v| {
            Req::GetDepartment(pb::GetDepartmentRequest { name: v })
        }),
        row("display_name", "市场监管局", |v| {
            Req::UpdateDepartment(pb::UpdateDepartmentRequest {
                name: "departments/samr".into(),
                display_name: v,
            })
        }),
        row("members[0]", "gov-330802", |v| {
            Req::UpdateGroup(pb::UpdateGroupMembersRequest {
                name: "groups/county-governments".into(),
                members: vec![v],
            })
        }),
        row("party", "departments/samr", |v| {
            Req::ListResponsibilities(pb::ListResponsibilitiesRequest {
                subject: String::new(),
                party: v,
            })
        }),
        row("parties[0]", "departments/samr", |v| {
            Req::SetResponsibilities(pb::SetResponsibilitiesRequest {
                subject: "indicators/B01".into(),
                parties: vec![v],
            })
        }),
        row("department", "departments/samr", |v| {
            Req::Duties(pb::GetDepartmentDutiesRequest { department: v })
        }),
        row("subject", "indicators/G13", |v| {
            Req::Responsible(pb::ListResponsibleDepartmentsRequest { subject: v })
        }),
        row("domain_set", "integrity_domains", |v| {
            Req::ListDomains(pb::ListDomainsRequest { domain_set: v })
        }),
        row("domain.display_name", "新领域", |v| {
            Req::RegisterDomain(pb::RegisterDomainRequest {
                domain: Some(pb::RegisteredDomain {
                    domain_set: "xinyi_plus".into(),
                    code: "new-domain".into(),
                    display_name: v,
                    builtin: false,
                    display_name_en: String::new(),
                }),
            })
        }),
        row("principal.display_name", "系统", |v| {
            Req::CreatePrincipal(pb::CreatePrincipalRequest {
                principal: Some(pb::Principal {
                    id: "text-check".into(),
                    display_name: v,
                    role: pb::Role::Operator as i32,
                    ..Default::default()
                }),
            })
        }),
        row("principal.department_code", "samr", |v| {
            Req::CreatePrincipal(pb::CreatePrincipalRequest {
                principal: Some(pb::Principal {
                    id: "text-check".into(),
                    role: pb::Role::Department as i32,
                    department_code: v,
                    ..Default::default()
                }),
            })
        }),
        row("principal", "principals/admin-1", |v| {
            Req::CreateKey(pb::CreateApiKeyRequest {
                principal: v,
                expire_time: None,
            })
        }),
        row("principal", "principals/admin-1", |v| {
            Req::ListKeys(pb::ListApiKeysRequest { principal: v })
        }),
        row("name", "cc_12345678", |v| {
            Req::RevokeKey(pb::RevokeApiKeyRequest { name: v })
        }),
        row(
            "reporting_duty.metric_keys[0]",
            "gov.dishonesty_events_total",
            |v| {
                Req::CreateDuty(pb::CreateReportingDutyRequest {
                    reporting_duty: Some(pb::ReportingDuty {
                        id: "housing-events".into(),
                        party: "departments/housing".into(),
                        metric_keys: vec![v],
                        regions: vec!["330800".into()],
                        ..Default::default()
                    }),
                })
            },
        ),
        row("name", "reportingDuties/housing-events", |v| {
            Req::DeleteDuty(pb::DeleteReportingDutyRequest { name: v })
        }),
    ]
}

/// `base` with `c` in its middle.
fn poisoned(base: &str, c: char) -> String {
    let mid = base
        .char_indices()
        .nth(base.chars().count() / 2)
        .map_or(base.len(), |(i, _)| i);
    format!("{}{c}{}", &base[..mid], &base[mid..])
}

async fn send(s: &IngestionServer, req: Req) -> Result<(), Status> {
    let ch = s.channel(Some(&admin())).await;
    let mut sub =
        pb::metric_submission_service_client::MetricSubmissionServiceClient::new(ch.clone());
    let mut audit = pb::code_audit_service_client::CodeAuditServiceClient::new(ch.clone());
    let mut scoring = pb::scoring_service_client::ScoringServiceClient::new(ch.clone());
    let mut reg = pb::department_registry_service_client::DepartmentRegistryServiceClient::new(ch);
    match req {
        Req::Submit(r) => sub.submit_value(r).await.map(drop),
        Req::Batch(r) => sub
            .submit_batch(tokio_stream::iter(vec![r]))
            .await
            .map(drop),
        Req::Retract(r) => sub.retract_submission(r).await.map(drop),
        Req::List(r) => sub.list_submissions(r).await.map(drop),
        Req::Get(r) => sub.get_submission(r).await.map(drop),
        Req::Aggregates(r) => sub.query_aggregates(r).await.map(drop),
        Req::WatchChanges(r) => sub.watch_changes(r).await.map(drop),
        Req::Audit(r) => audit
            .audit_codes(tokio_stream::iter(vec![r]))
            .await
            .map(drop),
        Req::Scorecard(r) => scoring.get_scorecard(r).await.map(drop),
        Req::Scorecards(r) => scoring.batch_get_scorecards(r).await.map(drop),
        Req::Explain(r) => scoring.explain_indicator(r).await.map(drop),
        Req::WhatIf(r) => scoring.what_if(r).await.map(drop),
        Req::WatchScorecard(r) => scoring.watch_scorecard(r).await.map(drop),
        Req::Compare(r) => scoring.compare_counties(r).await.map(drop),
        Req::Worklist(r) => scoring.get_department_worklist(r).await.map(drop),
        Req::Completeness(r) => scoring.get_completeness_report(r).await.map(drop),
        Req::ListRegions(r) => reg.list_regions(r).await.map(drop),
        Req::GetRegion(r) => reg.get_region(r).await.map(drop),
        Req::CreateRegion(r) => reg.create_region(r).await.map(drop),
        Req::UpdateRegion(r) => reg.update_region(r).await.map(drop),
        Req::GetDepartment(r) => reg.get_department(r).await.map(drop),
        Req::UpdateDepartment(r) => reg.update_department(r).await.map(drop),
        Req::UpdateGroup(r) => reg.update_group_members(r).await.map(drop),
        Req::ListResponsibilities(r) => reg.list_responsibilities(r).await.map(drop),
        Req::SetResponsibilities(r) => reg.set_responsibilities(r).await.map(drop),
        Req::Duties(r) => reg.get_department_duties(r).await.map(drop),
        Req::Responsible(r) => reg.list_responsible_departments(r).await.map(drop),
        Req::ListDomains(r) => reg.list_domains(r).await.map(drop),
        Req::RegisterDomain(r) => reg.register_domain(r).await.map(drop),
        Req::CreatePrincipal(r) => reg.create_principal(r).await.map(drop),
        Req::CreateKey(r) => reg.create_api_key(r).await.map(drop),
        Req::ListKeys(r) => reg.list_api_keys(r).await.map(drop),
        Req::RevokeKey(r) => reg.revoke_api_key(r).await.map(drop),
        Req::CreateDuty(r) => reg.create_reporting_duty(r).await.map(drop),
        Req::DeleteDuty(r) => reg.delete_reporting_duty(r).await.map(drop),
    }
}

async fn submissions(s: &IngestionServer) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM submissions")
        .fetch_one(&s.db.pool)
        .await
        .unwrap_or_else(|e| panic!("count: {e}"))
}

async fn nul_esc_bidi_and_zero_width_are_refused_in_every_text_field(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    // submissions/1, for the retraction rows.
    send(&s, submit(count(), "first"))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut failures = Vec::new();
    for r in rows() {
        for c in HOSTILE {
            let cp = format!("U+{:04X}", u32::from(c));
            let value = poisoned(r.base, c);
            let result = send(&s, (r.build)(value)).await;
            let ok = match &result {
                Err(e) => {
                    e.code() == Code::InvalidArgument
                        && violation_fields(e) == [r.field]
                        && e.message().contains(&cp)
                        && !e.message().contains(c)
                }
                Ok(()) => false,
            };
            if !ok {
                failures.push(format!("{} with {cp}: {result:?}", r.field));
            }
        }
        // The row's valid value is not what is refused.
        let control = send(&s, (r.build)(r.base.to_owned())).await;
        if let Err(e) = &control
            && violation_fields(e).iter().any(|f| f == r.field)
        {
            failures.push(format!("{}: the valid value is refused: {e:?}", r.field));
        }
    }
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
    let stored = submissions(&s).await;
    assert!(stored >= 1, "{name}");
    // Only the control rows that are valid writes stored anything: no hostile value is stored.
    let hostile: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM submissions WHERE note LIKE '%' || $1 || '%' \
         OR evidence_uri LIKE '%' || $1 || '%' OR idempotency_key LIKE '%' || $1 || '%'",
    )
    .bind("\u{202e}")
    .fetch_one(&s.db.pool)
    .await
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(hostile, 0, "{name}");
}

both_databases!(nul_esc_bidi_and_zero_width_are_refused_in_every_text_field);

async fn free_text_keeps_line_feeds_and_tabs(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let mut c = s.client(Some(&platform())).await;
    let note = "第一行\n第二行\t备注";
    let stored = c
        .submit_value(pb::SubmitValueRequest {
            value: Some(pb::SubmissionInput {
                note: note.into(),
                ..count()
            }),
            idempotency_key: String::new(),
            validate_only: false,
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner()
        .submission
        .unwrap_or_default();
    assert_eq!(stored.input.map(|i| i.note).as_deref(), Some(note));
    let reason = "录入错误\n见附件\t第3行";
    let r = c
        .retract_submission(pb::RetractSubmissionRequest {
            name: stored.name.clone(),
            reason: reason.into(),
            idempotency_key: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    assert_eq!(
        r.retraction.map(|x| x.retraction_reason).as_deref(),
        Some(reason)
    );
    // CR is refused even in free text: line breaks travel as LF.
    let err = c
        .submit_value(pb::SubmitValueRequest {
            value: Some(pb::SubmissionInput {
                note: "a\r\nb".into(),
                ..count()
            }),
            idempotency_key: String::new(),
            validate_only: false,
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: CR accepted"));
    assert_eq!(violation_fields(&err), ["value.note"]);
    assert!(err.message().contains("U+000D"), "{}", err.message());
}

both_databases!(free_text_keeps_line_feeds_and_tabs);
