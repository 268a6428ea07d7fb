//! The ingestion service: `MetricSubmissionService` and `CodeAuditService`. Not served yet:
//! the ingestion issue implements it (calls return UNIMPLEMENTED until then, as the proto says).
