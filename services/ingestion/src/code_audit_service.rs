//! `citycredit.v1.CodeAuditService`: streams codes through `code_audit::Audit` and, when asked,
//! records the totals as `uscc.codes_total` and `uscc.codes_duplicate_or_invalid` through the
//! normal submission path (validated, authorized, idempotent).

use tonic::{Request, Response, Status, Streaming};

use citycredit::auth::caller;
use citycredit::proto::v1 as pb;
use citycredit::proto::v1::code_audit_service_server::CodeAuditService;
use citycredit::status::Violation;
use citycredit_core::auth::Principal;

use crate::Ingestion;
use citycredit::status::Reason;

use crate::code_audit::Audit;
use crate::error::IngestError;
use crate::submission_service::SubmissionApi;
use crate::validation::{self, NewValue};

pub const CODES_TOTAL: &str = "uscc.codes_total";
pub const CODES_BAD: &str = "uscc.codes_duplicate_or_invalid";

/// Serves code audits.
#[derive(Clone)]
pub struct CodeAuditApi {
    ing: Ingestion,
}

impl CodeAuditApi {
    pub fn new(ing: Ingestion) -> Self {
        CodeAuditApi { ing }
    }

    async fn audit(
        &self,
        principal: &Principal,
        mut stream: Streaming<pb::AuditCodesRequest>,
    ) -> Result<pb::AuditCodesResponse, IngestError> {
        // Held until the audit ends or its client goes away: bounds the audits (and so the
        // memory) in flight, in all and per principal.
        let _slot = self.ing.start_audit(principal)?;
        let limit = self.ing.options().max_audit_distinct_codes;
        let mut audit = Audit::with_limit(limit);
        let mut record: Option<pb::AuditRecording> = None;
        let mut first = true;
        let mut violations = Vec::new();
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(s) => return Err(IngestError::ClientStream(s.message().to_owned())),
            };
            if let Some(r) = msg.record {
                if first {
                    // Refused before any code is read: a caller who may not record (or whose
                    // recording is malformed) learns it at the first message.
                    self.check_recording(principal, &r, 0, 0).await?;
                    record = Some(r);
                } else {
                    violations.push(Violation::new(
                        "record",
                        "set only in the first message of the stream",
                    ));
                }
            }
            first = false;
            for code in &msg.codes {
                audit.push(code).map_err(|_| IngestError::TooLarge {
                    what: "distinct codes in an audit",
                    limit,
                    reason: Reason::AuditTooLarge,
                })?;
            }
        }
        crate::ensure_not_cancelled().await;
        if !violations.is_empty() {
            return Err(IngestError::Invalid(violations));
        }
        let mut recorded = Vec::new();
        if let Some(r) = record {
            let values = self
                .check_recording(principal, &r, audit.total, audit.invalid_or_duplicate())
                .await?;
            let w = self
                .ing
                .write_values(principal, values, &r.idempotency_key, "code-audit")
                .await?;
            let api = SubmissionApi::new(self.ing.clone());
            let rows = crate::store::range(self.ing.db(), w.first_id, w.last_id)
                .await
                .map_err(|e| IngestError::storage("read recorded submissions", &e))?;
            recorded = rows.iter().map(|row| api.submission(row)).collect();
        }
        Ok(pb::AuditCodesResponse {
            total: audit.total,
            valid: audit.valid,
            malformed: audit.malformed,
            bad_check_character: audit.bad_check_character,
            bad_organisation_check: audit.bad_organisation_check,
            duplicate: audit.duplicate,
            samples: audit
                .samples
                .into_iter()
                .map(|p| pb::CodeProblem {
                    index: p.index,
                    code: p.code,
                    reason: p.reason,
                })
                .collect(),
            recorded,
        })
    }
}

impl CodeAuditApi {
    /// The two values a recording stores, validated and authorized for `principal`.
    async fn check_recording(
        &self,
        principal: &Principal,
        r: &pb::AuditRecording,
        total: u64,
        bad: u64,
    ) -> Result<Vec<NewValue>, IngestError> {
        let input = |metric: &str, n: u64| pb::SubmissionInput {
            metric_key: metric.to_owned(),
            region_code: r.region_code.clone(),
            period: r.period.clone(),
            value: Some(pb::MetricValue {
                value: Some(pb::metric_value::Value::Number(n.to_string())),
            }),
            note: format!("code audit of {total} codes"),
            ..Default::default()
        };
        let inputs = [input(CODES_TOTAL, total), input(CODES_BAD, bad)];
        let mut v = Vec::new();
        validation::check_idempotency_key(&r.idempotency_key, "record.idempotency_key", &mut v);
        match self.ing.check_fresh(principal, &inputs, false).await {
            Ok(values) if v.is_empty() => Ok(values),
            Ok(_) => Err(IngestError::Invalid(v)),
            Err(IngestError::Invalid(more)) => {
                // Both values share the recording's fields: report them once, by name.
                for m in more
                    .into_iter()
                    .filter(|m| m.field.starts_with("values[0]."))
                {
                    let field = m.field.replacen("values[0].", "record.", 1);
                    v.push(Violation::new(field, m.description));
                }
                Err(IngestError::Invalid(v))
            }
            Err(e) => Err(e),
        }
    }
}

#[tonic::async_trait]
impl CodeAuditService for CodeAuditApi {
    async fn audit_codes(
        &self,
        request: Request<Streaming<pb::AuditCodesRequest>>,
    ) -> Result<Response<pb::AuditCodesResponse>, Status> {
        let principal = caller(&request)?.clone();
        let out = self.audit(&principal, request.into_inner()).await?;
        Ok(Response::new(out))
    }
}
