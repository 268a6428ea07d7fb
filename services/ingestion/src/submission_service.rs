//! `citycredit.v1.MetricSubmissionService` over the `Ingestion` handle.

use std::pin::Pin;

use citycredit::status::Reason;
pub use citycredit::wire::{micros, timestamp};
use citycredit_core::text::TextKind;
use futures::{Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status, Streaming};

use citycredit::aggregates::{PeriodMarker, Selection, SourceRef};
use citycredit::auth::{authorize, caller};
use citycredit::proto::v1 as pb;
use citycredit::proto::v1::metric_submission_service_server::MetricSubmissionService;
use citycredit::status::{self, Violation};
use citycredit_core::auth::{Action, Principal};

use crate::error::IngestError;
use crate::store::{self, KIND_RETRACTION, ListFilter, StoredRow};
use crate::validation::{self, MAX_CODE_CHARS, MAX_NOTE_CHARS, NewValue, wire_value};
use crate::{Ingestion, Written};

/// Serves submissions.
#[derive(Clone)]
pub struct SubmissionApi {
    ing: Ingestion,
}

impl SubmissionApi {
    pub fn new(ing: Ingestion) -> Self {
        SubmissionApi { ing }
    }

    /// The wire form of a stored row.
    pub fn submission(&self, r: &StoredRow) -> pb::Submission {
        let kind = self.ing.catalog().metric(&r.metric).map(|m| m.kind);
        let retraction = r.kind == KIND_RETRACTION;
        pb::Submission {
            name: format!("submissions/{}", r.id),
            id: u64::try_from(r.id).unwrap_or(0),
            input: Some(pb::SubmissionInput {
                metric_key: r.metric.clone(),
                region_code: r.region.clone(),
                period: r.period.clone(),
                department_code: r.department.clone(),
                domain: r.domain.clone(),
                task_id: r.task_id.clone(),
                value: if retraction {
                    None
                } else {
                    wire_value(kind, &r.value)
                },
                evidence_uri: r.evidence_uri.clone(),
                note: r.note.clone(),
            }),
            principal: format!("principals/{}", r.principal),
            idempotency_key: r.idempotency_key.clone(),
            accept_time: Some(timestamp(r.accept_micros)),
            retracts: r
                .retracts
                .map(|id| format!("submissions/{id}"))
                .unwrap_or_default(),
            retraction_reason: r.reason.clone(),
            prev_hash: r.prev_hash.clone(),
            hash: r.hash.clone(),
        }
    }

    async fn row_of(&self, w: &Written) -> Result<StoredRow, IngestError> {
        match &w.row {
            Some(r) => Ok(r.clone()),
            None => self.ing.get(w.first_id).await,
        }
    }

    async fn submit_batch_inner(
        &self,
        principal: &Principal,
        mut stream: Streaming<pb::SubmitBatchRequest>,
    ) -> Result<pb::SubmitBatchResponse, IngestError> {
        use prost::Message;
        let limit = self.ing.options().max_batch_values;
        let max_bytes = self.ing.options().max_batch_bytes;
        // Each message is validated and authorized as it arrives. A batch to be stored ends at
        // its first message with a problem: a caller who may not submit, or whose values are
        // wrong, is told at once instead of after streaming everything, and the server holds
        // only checked values (never more than `max_batch_bytes` of messages). A batch that is
        // only checked (`validate_only`, known from the first message) goes on to the end and
        // answers with every problem, as its caller asked; it holds no values, only the first
        // problems a status can list and their count. Either way a caller who may not submit a
        // value it sent is refused at once.
        let mut values: Vec<NewValue> = Vec::new();
        let mut seen = 0usize;
        let mut key: Option<String> = None;
        let mut validate_only: Option<bool> = None;
        let mut problems: Vec<Violation> = Vec::new();
        let mut problem_count = 0usize;
        let mut bytes = 0usize;
        let mut message = 0usize;
        let mut locked: Option<IngestError> = None;
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                // A stream that breaks off stores nothing.
                Err(s) => return Err(IngestError::ClientStream(s.message().to_owned())),
            };
            if !self.ing.credential_stands(principal) {
                return Err(IngestError::Revoked);
            }
            bytes = bytes.saturating_add(msg.encoded_len());
            if bytes > max_bytes {
                return Err(IngestError::TooLarge {
                    what: "bytes in a batch stream",
                    limit: max_bytes,
                    reason: Reason::BatchTooLarge,
                });
            }
            let mut violations = Vec::new();
            match (&key, msg.idempotency_key.as_str()) {
                (None, k) => {
                    validation::check_idempotency_key(k, "idempotency_key", &mut violations);
                    key = Some(k.to_owned());
                }
                (Some(_), "") => {}
                (Some(k), other) if k == other => {}
                (Some(_), _) => violations.push(Violation::new(
                    format!("requests[{message}].idempotency_key"),
                    "must repeat the first message's key or be empty",
                )),
            }
            match (validate_only, msg.validate_only) {
                (None, v) => validate_only = Some(v),
                (Some(true), _) | (Some(false), false) => {}
                (Some(false), true) => violations.push(Violation::new(
                    format!("requests[{message}].validate_only"),
                    "must be set in the first message",
                )),
            }
            let dry_run = validate_only == Some(true);
            if seen + msg.values.len() > limit {
                return Err(IngestError::TooLarge {
                    what: "values in a batch",
                    limit,
                    reason: Reason::BatchTooLarge,
                });
            }
            let first = seen;
            seen += msg.values.len();
            match self
                .ing
                .check_fresh_at(principal, &msg.values, Some(first))
                .await
            {
                Ok(checked) if violations.is_empty() && !dry_run => values.extend(checked),
                // A checked batch reports the write gate's refusal too (the first one).
                Ok(checked) if dry_run && locked.is_none() => {
                    if let Err(e) = self.ing.gate_check(&checked).await {
                        locked = Some(e);
                    }
                }
                Ok(_) => {}
                Err(IngestError::Invalid(mut more)) => violations.append(&mut more),
                Err(e) if violations.is_empty() => return Err(e),
                // A denial behind this message's own problems: the problems are the answer.
                Err(_) => {}
            }
            if !violations.is_empty() {
                if !dry_run {
                    return Err(IngestError::Invalid(violations));
                }
                problem_count += violations.len();
                let room = status::MAX_VIOLATIONS.saturating_sub(problems.len());
                problems.extend(violations.into_iter().take(room));
            }
            message += 1;
        }
        crate::ensure_not_cancelled().await;
        if seen == 0 {
            problem_count += 1;
            if problems.len() < status::MAX_VIOLATIONS {
                problems.push(Violation::new("values", "a batch needs at least one value"));
            }
        }
        if problem_count > 0 {
            return Err(IngestError::InvalidMany {
                first: problems,
                total: problem_count,
            });
        }
        let count = u32::try_from(seen).unwrap_or(u32::MAX);
        if let Some(e) = locked {
            return Err(e);
        }
        if validate_only == Some(true) {
            return Ok(pb::SubmitBatchResponse {
                accepted_count: count,
                ..Default::default()
            });
        }
        let key = key.unwrap_or_default();
        let w = self
            .ing
            .write_values(principal, values, &key, "batch")
            .await?;
        Ok(pb::SubmitBatchResponse {
            accepted_count: u32::try_from(w.last_id - w.first_id + 1).unwrap_or(count),
            first_submission_id: u64::try_from(w.first_id).unwrap_or(0),
            last_submission_id: u64::try_from(w.last_id).unwrap_or(0),
            replayed: w.replayed,
            accept_time: Some(timestamp(w.accept_micros)),
        })
    }
}

/// Parses "submissions/{id}".
fn submission_id(field: &str, name: &str) -> Result<i64, IngestError> {
    let mut v = Vec::new();
    if !validation::check_text(field, name, TextKind::Identifier, &mut v) {
        return Err(IngestError::Invalid(v));
    }
    name.strip_prefix("submissions/")
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            IngestError::Invalid(vec![Violation::new(
                field,
                "must be `submissions/{id}` with a positive id",
            )])
        })
}

/// A request timestamp as a store instant; a violation on `field` when out of range.
fn instant(
    field: &str,
    ts: Option<&prost_types::Timestamp>,
    out: &mut Vec<Violation>,
) -> Option<i64> {
    match ts.map(citycredit::wire::checked_micros) {
        None => None,
        Some(Ok(m)) => Some(m),
        Some(Err(why)) => {
            out.push(Violation::new(field, why));
            None
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchChangesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl MetricSubmissionService for SubmissionApi {
    async fn submit_value(
        &self,
        request: Request<pb::SubmitValueRequest>,
    ) -> Result<Response<pb::SubmitValueResponse>, Status> {
        let principal = caller(&request)?.clone();
        let req = request.into_inner();
        let mut violations = Vec::new();
        validation::check_idempotency_key(&req.idempotency_key, "idempotency_key", &mut violations);
        let Some(input) = req.value else {
            violations.push(Violation::new("value", "required"));
            return Err(IngestError::Invalid(violations).into());
        };
        let values = match self
            .ing
            .check_fresh(&principal, std::slice::from_ref(&input), true)
            .await
        {
            Ok(v) if violations.is_empty() => v,
            Err(IngestError::Invalid(mut more)) => {
                violations.append(&mut more);
                return Err(IngestError::Invalid(violations).into());
            }
            Ok(_) => return Err(IngestError::Invalid(violations).into()),
            Err(e) => return Err(e.into()),
        };
        if req.validate_only {
            self.ing.gate_check(&values).await?;
            return Ok(Response::new(pb::SubmitValueResponse::default()));
        }
        let w = self
            .ing
            .write_values(&principal, values, &req.idempotency_key, "value")
            .await?;
        let row = self.row_of(&w).await?;
        Ok(Response::new(pb::SubmitValueResponse {
            submission: Some(self.submission(&row)),
            replayed: w.replayed,
        }))
    }

    async fn submit_batch(
        &self,
        request: Request<Streaming<pb::SubmitBatchRequest>>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let principal = caller(&request)?.clone();
        let out = self
            .submit_batch_inner(&principal, request.into_inner())
            .await?;
        Ok(Response::new(out))
    }

    async fn get_submission(
        &self,
        request: Request<pb::GetSubmissionRequest>,
    ) -> Result<Response<pb::GetSubmissionResponse>, Status> {
        authorize(&request, &self.ing.org().borrow().access, Action::Read)?;
        let id = submission_id("name", &request.get_ref().name)?;
        let row = self.ing.get(id).await?;
        Ok(Response::new(pb::GetSubmissionResponse {
            submission: Some(self.submission(&row)),
        }))
    }

    async fn list_submissions(
        &self,
        request: Request<pb::ListSubmissionsRequest>,
    ) -> Result<Response<pb::ListSubmissionsResponse>, Status> {
        authorize(&request, &self.ing.org().borrow().access, Action::Read)?;
        let req = request.get_ref();
        let mut violations = Vec::new();
        if req.page_size < 0 {
            violations.push(Violation::new("page_size", "must not be negative"));
        }
        let limit = match usize::try_from(req.page_size).unwrap_or(0) {
            0 => 100,
            n => n.min(1_000),
        };
        let token_clean = validation::check_text(
            "page_token",
            &req.page_token,
            TextKind::Identifier,
            &mut violations,
        );
        let before_id = if req.page_token.is_empty() || !token_clean {
            None
        } else {
            match req
                .page_token
                .strip_prefix("before:")
                .and_then(|n| n.parse::<i64>().ok())
                .filter(|id| *id > 0)
            {
                Some(id) => Some(id),
                None => {
                    violations.push(Violation::new(
                        "page_token",
                        "not a token from a previous response",
                    ));
                    None
                }
            }
        };
        let mut filters_clean = true;
        for (name, v) in [
            ("region_code", &req.region_code),
            ("period", &req.period),
            ("metric_key", &req.metric_key),
            ("department_code", &req.department_code),
            ("principal", &req.principal),
        ] {
            if !validation::check_text(name, v, TextKind::Identifier, &mut violations) {
                filters_clean = false;
            } else if v.chars().count() > MAX_CODE_CHARS {
                violations.push(Violation::new(
                    name,
                    format!("at most {MAX_CODE_CHARS} characters"),
                ));
            }
        }
        let principal_filter = if req.principal.is_empty() || !filters_clean {
            String::new()
        } else {
            match req.principal.strip_prefix("principals/") {
                Some(p) if !p.is_empty() => p.to_owned(),
                _ => {
                    violations.push(Violation::new("principal", "must be `principals/{id}`"));
                    String::new()
                }
            }
        };
        let start_micros = instant("start_time", req.start_time.as_ref(), &mut violations);
        let end_micros = instant("end_time", req.end_time.as_ref(), &mut violations);
        if !violations.is_empty() {
            return Err(IngestError::Invalid(violations).into());
        }
        let filter = ListFilter {
            region: req.region_code.clone(),
            period: req.period.clone(),
            metric: req.metric_key.clone(),
            department: req.department_code.clone(),
            principal: principal_filter,
            start_micros,
            end_micros,
            before_id,
        };
        // One more than asked tells whether there is a next page.
        let mut rows = store::list_submissions(self.ing.db(), &filter, limit + 1)
            .await
            .map_err(|e| IngestError::storage("list submissions", &e))?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => format!("before:{}", last.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListSubmissionsResponse {
            submissions: rows.iter().map(|r| self.submission(r)).collect(),
            next_page_token,
        }))
    }

    async fn retract_submission(
        &self,
        request: Request<pb::RetractSubmissionRequest>,
    ) -> Result<Response<pb::RetractSubmissionResponse>, Status> {
        let principal = caller(&request)?.clone();
        let req = request.into_inner();
        let mut violations = Vec::new();
        let id = match submission_id("name", &req.name) {
            Ok(id) => id,
            Err(IngestError::Invalid(mut v)) => {
                violations.append(&mut v);
                0
            }
            Err(e) => return Err(e.into()),
        };
        if !validation::check_text("reason", &req.reason, TextKind::FreeText, &mut violations) {
        } else if req.reason.trim().is_empty() {
            violations.push(Violation::new("reason", "required"));
        } else if req.reason.chars().count() > MAX_NOTE_CHARS {
            violations.push(Violation::new(
                "reason",
                format!("at most {MAX_NOTE_CHARS} characters"),
            ));
        }
        validation::check_idempotency_key(&req.idempotency_key, "idempotency_key", &mut violations);
        if !violations.is_empty() {
            return Err(IngestError::Invalid(violations).into());
        }
        if !req.idempotency_key.is_empty()
            && let Some(w) = self
                .ing
                .replay(
                    &principal,
                    &req.idempotency_key,
                    &crate::retraction_fingerprint(id, &req.reason),
                )
                .await?
        {
            let row = self.row_of(&w).await?;
            return Ok(Response::new(pb::RetractSubmissionResponse {
                retraction: Some(self.submission(&row)),
                replayed: true,
            }));
        }
        let target = self.ing.get(id).await?;
        // The retraction's action names its stored target: decided per value (see
        // `citycredit::auth`).
        self.ing
            .org()
            .borrow()
            .access
            .decide(
                &principal,
                Action::Retract {
                    metric: &target.metric,
                    region: &target.region,
                    department: &target.department,
                },
            )
            .map_err(IngestError::from)?;
        if target.kind == KIND_RETRACTION {
            return Err(IngestError::NotRetractable(id).into());
        }
        // A fast answer for the common case; the writer checks again inside its transaction
        // (and the primary key of `retractions` behind it), so of concurrent retractions of
        // one value exactly one is stored.
        let already = store::retraction_of(self.ing.db(), id)
            .await
            .map_err(|e| IngestError::storage("read retractions", &e))?;
        if let Some(by) = already {
            return Err(IngestError::AlreadyRetracted { id, by: Some(by) }.into());
        }
        let w = self
            .ing
            .write_retraction(&principal, target, req.reason, &req.idempotency_key)
            .await?;
        let row = self.row_of(&w).await?;
        Ok(Response::new(pb::RetractSubmissionResponse {
            retraction: Some(self.submission(&row)),
            replayed: w.replayed,
        }))
    }

    async fn query_aggregates(
        &self,
        request: Request<pb::QueryAggregatesRequest>,
    ) -> Result<Response<pb::QueryAggregatesResponse>, Status> {
        authorize(&request, &self.ing.org().borrow().access, Action::Read)?;
        let req = request.get_ref();
        let mut violations = Vec::new();
        let as_of = instant("as_of", req.as_of.as_ref(), &mut violations);
        let period = match self.ing.check_region_period(&req.region_code, &req.period) {
            Ok(p) if violations.is_empty() => p,
            Ok(_) => return Err(IngestError::Invalid(violations).into()),
            Err(IngestError::Invalid(mut more)) => {
                more.append(&mut violations);
                return Err(IngestError::Invalid(more).into());
            }
            Err(e) => return Err(e.into()),
        };
        let selection = if req.approved_only {
            Selection::Approved
        } else {
            Selection::All
        };
        let agg = self
            .ing
            .aggregates_selected(&req.region_code, &period, as_of, selection)
            .await?;
        let mut metrics = Vec::new();
        for m in &self.ing.catalog().metrics {
            let Some(figure) = agg.values.get(&m.key) else {
                continue;
            };
            use citycredit_core::rules::Figure;
            let mut out = pb::AggregatedMetric {
                metric_key: m.key.clone(),
                ..Default::default()
            };
            match figure {
                Figure::Number(n) => {
                    out.value = Some(pb::MetricValue {
                        value: Some(pb::metric_value::Value::Number(n.to_plain())),
                    });
                }
                Figure::Flag(b) => {
                    out.value = Some(pb::MetricValue {
                        value: Some(pb::metric_value::Value::Flag(*b)),
                    });
                }
                Figure::Domains(d) => out.domains = d.iter().cloned().collect(),
                Figure::Tasks(t) => {
                    out.task_statuses = t
                        .iter()
                        .map(|(id, s)| {
                            let s = match s {
                                citycredit_core::rules::TaskStatus::NotStarted => {
                                    pb::TaskStatus::NotStarted
                                }
                                citycredit_core::rules::TaskStatus::InProgress => {
                                    pb::TaskStatus::InProgress
                                }
                                citycredit_core::rules::TaskStatus::Done => pb::TaskStatus::Done,
                            };
                            (id.clone(), s as i32)
                        })
                        .collect();
                }
            }
            let sources = agg.sources.get(&m.key).into_iter().flat_map(|s| s.iter());
            out.approvals = sources
                .clone()
                .filter_map(|s| {
                    Some(pb::SourceApproval {
                        submission: format!("submissions/{}", s.submission_id),
                        approved_period: s.approved_period.clone()?,
                    })
                })
                .collect();
            out.sources = sources.map(SourceRef::wire).collect();
            out.markers = agg
                .markers
                .get(&m.key)
                .map(|m| m.iter().map(PeriodMarker::wire).collect())
                .unwrap_or_default();
            metrics.push(out);
        }
        Ok(Response::new(pb::QueryAggregatesResponse {
            region_code: agg.region,
            period: agg.period,
            metrics,
            as_of: Some(timestamp(agg.as_of_micros)),
            approved_only: agg.approved_only,
        }))
    }

    type WatchChangesStream = WatchStream;

    async fn watch_changes(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let principal = authorize(&request, &self.ing.org().borrow().access, Action::Read)?;
        let principal = principal.clone();
        let region = request.get_ref().region_code.clone();
        let mut violations = Vec::new();
        if !validation::check_text(
            "region_code",
            &region,
            TextKind::Identifier,
            &mut violations,
        ) {
            return Err(IngestError::Invalid(violations).into());
        }
        if !region.is_empty() && self.ing.org().borrow().city.region(&region).is_none() {
            return Err(IngestError::Invalid(vec![Violation::new(
                "region_code",
                format!(
                    "unknown region `{}`",
                    region.chars().take(64).collect::<String>()
                ),
            )])
            .into());
        }
        let rx = self.ing.subscribe();
        let ing = self.ing.clone();
        // The caller's key is asked about on every event and at least this often: a revoked
        // key's watch ends within this interval after the revocation reaches this process.
        let recheck = self.ing.options().credential_recheck;
        let stream = futures::stream::unfold((rx, false), move |(mut rx, done)| {
            let region = region.clone();
            let ing = ing.clone();
            let principal = principal.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    let event = tokio::select! {
                        event = rx.recv() => Some(event),
                        () = tokio::time::sleep(recheck) => None,
                    };
                    if !ing.credential_stands(&principal) {
                        return Some((Err(Status::from(IngestError::Revoked)), (rx, true)));
                    }
                    match event {
                        None => {}
                        Some(Ok(c)) if region.is_empty() || c.region == region => {
                            let item = pb::WatchChangesResponse {
                                region_code: c.region,
                                period: c.period,
                                last_submission_id: c.last_submission_id,
                                commit_time: Some(timestamp(c.commit_micros)),
                            };
                            return Some((Ok(item), (rx, false)));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(RecvError::Lagged(n))) => {
                            let status = Status::from(IngestError::Lagged(n));
                            return Some((Err(status), (rx, true)));
                        }
                        Some(Err(RecvError::Closed)) => return None,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream.boxed())))
    }

    async fn verify_audit_chain(
        &self,
        request: Request<pb::VerifyAuditChainRequest>,
    ) -> Result<Response<pb::VerifyAuditChainResponse>, Status> {
        authorize(
            &request,
            &self.ing.org().borrow().access,
            Action::Administer,
        )?;
        let v = crate::audit_chain::verify(self.ing.db())
            .await
            .map_err(|e| IngestError::storage("verify audit chain", &e))?;
        Ok(Response::new(pb::VerifyAuditChainResponse {
            intact: v.intact,
            rows_checked: v.rows_checked,
            first_bad_submission_id: v.first_bad,
            problem: v.problem,
            versions_checked: v.versions_checked,
        }))
    }
}
