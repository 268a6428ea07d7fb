//! `citycredit.v1.CodeAuditService`: streams codes through `code_audit::Audit` and, when asked,
//! records the totals as `uscc.codes_total` and `uscc.codes_duplicate_or_invalid` through the
//! normal submission path (validated, authorized, idempotent).

use tonic::{Request, Response, Status, Streaming};

use citycredit::auth::{self, Principal};
use citycredit::proto::v1 as pb;
use citycredit::proto::v1::code_audit_service_server::CodeAuditService;
use citycredit::status::Violation;

use crate::Ingestion;
use crate::code_audit::{Audit, MAX_DISTINCT};
use crate::error::IngestError;
use crate::submission_service::SubmissionApi;
use crate::validation;

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
        let mut audit = Audit::new();
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
                    limit: MAX_DISTINCT,
                })?;
            }
        }
        crate::ensure_not_cancelled().await;
        if !violations.is_empty() {
            return Err(IngestError::Invalid(violations));
        }
        let mut recorded = Vec::new();
        if let Some(r) = record {
            let input = |metric: &str, n: u64| pb::SubmissionInput {
                metric_key: metric.to_owned(),
                region_code: r.region_code.clone(),
                period: r.period.clone(),
                value: Some(pb::MetricValue {
                    value: Some(pb::metric_value::Value::Number(n.to_string())),
                }),
                note: format!("code audit of {} codes", audit.total),
                ..Default::default()
            };
            let inputs = [
                input(CODES_TOTAL, audit.total),
                input(CODES_BAD, audit.invalid_or_duplicate()),
            ];
            let mut v = Vec::new();
            validation::check_idempotency_key(&r.idempotency_key, "record.idempotency_key", &mut v);
            let values = match self.ing.check_fresh(principal, &inputs, false).await {
                Ok(values) if v.is_empty() => values,
                Ok(_) => return Err(IngestError::Invalid(v)),
                Err(IngestError::Invalid(more)) => {
                    // Both values share the recording's fields: report them once, by name.
                    for m in more
                        .into_iter()
                        .filter(|m| m.field.starts_with("values[0]."))
                    {
                        let field = m.field.replacen("values[0].", "record.", 1);
                        v.push(Violation::new(field, m.description));
                    }
                    return Err(IngestError::Invalid(v));
                }
                Err(e) => return Err(e),
            };
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

#[tonic::async_trait]
impl CodeAuditService for CodeAuditApi {
    async fn audit_codes(
        &self,
        request: Request<Streaming<pb::AuditCodesRequest>>,
    ) -> Result<Response<pb::AuditCodesResponse>, Status> {
        let principal = auth::principal(&request)?.clone();
        let out = self.audit(&principal, request.into_inner()).await?;
        Ok(Response::new(out))
    }
}
