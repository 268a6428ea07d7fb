//! The ingestion service: `MetricSubmissionService` (validated, idempotent, append-only
//! submissions in a hash chain, with aggregates and a change feed for scoring) and
//! `CodeAuditService` (GB 32100 code checks).
//!
//! `Ingestion` is the handle every part shares: the store, the catalog, the organisation
//! snapshot, the single writer and the change feed. The gRPC services are thin layers over it,
//! and it implements `citycredit::aggregates::AggregateSource` so scoring can read figures in
//! process.

pub mod aggregation;
pub mod as_of;
pub mod audit_chain;
pub mod change_feed;
pub mod code_audit;
pub mod code_audit_service;
pub mod current_rows;
pub mod error;
pub mod gate;
pub mod kept_figures;
pub mod key_ids;
pub mod store;
pub mod submission_service;
pub mod table_stats;
pub mod validation;
pub mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::Instrument;

use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use citycredit::aggregates::{AggregateSource, Aggregates, Change, Selection};
use citycredit::org::OrgView;
use citycredit::proto::v1 as pb;
use citycredit::status::Violation;
use citycredit_core::BoxFuture;
use citycredit_core::auth::Principal;
use citycredit_core::catalog::Catalog;
use citycredit_core::period::Period;
use citycredit_core::source::{Problem, SourceError};
use citycredit_core::text::TextKind;
use citycredit_store::{Backend, Db, now_micros};

pub use code_audit_service::CodeAuditApi;
pub use error::IngestError;
pub use submission_service::SubmissionApi;
pub use writer::WriterConfig;

use crate::change_feed::ChangeFeed;
use crate::current_rows::{CurrentRows, PairRows};
use crate::kept_figures::{Figures, KeptFigures};
use crate::store::{StoredRow, VersionRow, scoped_key};
use crate::validation::NewValue;
use crate::writer::{FieldRoot, Idempotency, Op, Outcome, Writer};

/// Call when a client stream has ended, before committing anything from it.
///
/// hyper reports a client's RST_STREAM(CANCEL) on a request stream as a clean end of the body,
/// so a batch the client abandoned looks complete to the handler (found by the bad-input
/// catalogue: an abandoned SubmitBatch was sometimes stored). hyper checks for a reset every
/// time the handler is pending and then drops the handler; the reset has already been received
/// when the body reports its end, so returning Pending once here is enough for a cancelled
/// stream's handler to be dropped before it reaches the writer.
pub async fn ensure_not_cancelled() {
    tokio::task::yield_now().await;
}

/// How ingestion runs.
#[derive(Clone, Debug)]
pub struct IngestionOptions {
    pub writer: WriterConfig,
    /// Most values in one SubmitBatch stream.
    pub max_batch_values: usize,
    /// Most bytes (encoded messages) in one SubmitBatch stream: what one stream can make the
    /// server hold before it commits (RESOURCE_EXHAUSTED `BATCH_TOO_LARGE` beyond).
    pub max_batch_bytes: usize,
    /// Most distinct valid codes one code audit remembers (about 45 bytes each):
    /// RESOURCE_EXHAUSTED `AUDIT_TOO_LARGE` beyond.
    pub max_audit_distinct_codes: usize,
    /// Most code audits running at once in this process (RESOURCE_EXHAUSTED `AUDIT_CAPACITY`
    /// with RetryInfo beyond): with `max_audit_distinct_codes`, bounds the memory audits hold.
    pub max_concurrent_audits: usize,
    /// Most code audits one principal runs at once.
    pub max_audits_per_principal: usize,
    /// How often an open WatchChanges stream asks whether its caller's key still stands.
    pub credential_recheck: Duration,
    /// Largest decoded gRPC message, in bytes.
    pub max_message_bytes: usize,
    /// PostgreSQL only: the URL the change-feed listener connects to (None: no listener, so
    /// only this process's changes are seen, and no current values are kept in memory).
    pub listen_url: Option<String>,
    /// Most current value versions kept in memory for aggregation ([`current_rows`]; about
    /// 350 bytes each), and most source references of the figures kept per metric
    /// ([`kept_figures`]; about 300 bytes each). 0 keeps none of either.
    pub current_rows_max: usize,
    /// PostgreSQL only: the LISTEN/NOTIFY channel (one per database or schema).
    pub notify_channel: String,
    /// Brings the organisation snapshot up to date when a submission names something it lacks
    /// (a domain, region or responsibility added a moment ago in another process).
    pub org_refresh: Option<Arc<dyn citycredit_core::org::OrgRefresh>>,
    /// Tells whether a caller's API key still stands (None: every credential stands), so a
    /// key revoked while its batch stream or watch is open stops it.
    pub credentials: Option<Arc<dyn citycredit_core::auth::CredentialCheck>>,
}

/// The default bound of [`IngestionOptions::current_rows_max`]: about 7 MB, several times the
/// current values behind a year's figures at 1 M submissions.
pub const DEFAULT_CURRENT_ROWS_MAX: usize = 20_000;

impl Default for IngestionOptions {
    fn default() -> Self {
        IngestionOptions {
            writer: WriterConfig::default(),
            max_batch_values: 10_000,
            max_batch_bytes: 64 * 1024 * 1024,
            max_audit_distinct_codes: code_audit::DEFAULT_MAX_DISTINCT,
            max_concurrent_audits: 2,
            max_audits_per_principal: 1,
            credential_recheck: Duration::from_millis(250),
            max_message_bytes: 4 * 1024 * 1024,
            listen_url: None,
            current_rows_max: DEFAULT_CURRENT_ROWS_MAX,
            notify_channel: "citycredit_changes".to_owned(),
            org_refresh: None,
            credentials: None,
        }
    }
}

struct Inner {
    db: Db,
    catalog: Arc<Catalog>,
    org: OrgView,
    writer: Writer,
    feed: ChangeFeed,
    /// Each metric's figures, used again while their versions and sign-offs stay the same.
    figures: KeptFigures,
    options: IngestionOptions,
    audits: Mutex<AuditSlots>,
}

/// Code audits running now, in all and per principal.
#[derive(Debug, Default)]
struct AuditSlots {
    total: usize,
    by_principal: HashMap<String, usize>,
}

/// A running code audit's place; freed when dropped (the audit ended, failed or its client
/// went away).
pub struct AuditSlot {
    ing: Ingestion,
    principal: String,
}

impl std::fmt::Debug for AuditSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSlot")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl Drop for AuditSlot {
    fn drop(&mut self) {
        let mut slots = self
            .ing
            .inner
            .audits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.total = slots.total.saturating_sub(1);
        if let Some(n) = slots.by_principal.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                slots.by_principal.remove(&self.principal);
            }
        }
    }
}

/// How long a caller refused for audit capacity is told to wait.
const AUDIT_RETRY: Duration = Duration::from_secs(2);

/// The shared handle.
#[derive(Clone)]
pub struct Ingestion {
    inner: Arc<Inner>,
}

/// The result of a write.
#[derive(Clone, Debug)]
pub struct Written {
    pub first_id: i64,
    pub last_id: i64,
    pub accept_micros: i64,
    pub replayed: bool,
    /// The stored row of a one-row write.
    pub row: Option<StoredRow>,
}

/// Keeps the planner statistics of the tables the writer changes where autovacuum does not
/// ([`table_stats`]), for as long as the service runs.
fn spawn_table_stats(inner: std::sync::Weak<Inner>) {
    tokio::spawn(async move {
        let mut told = false;
        loop {
            tokio::time::sleep(table_stats::EVERY).await;
            let Some(pool) = inner.upgrade().map(|i| i.db.pool.clone()) else {
                return;
            };
            match table_stats::analyze_due(&pool).await {
                Ok(tables) if tables.is_empty() => {}
                Ok(tables) if !told => {
                    told = true;
                    tracing::warn!(
                        ?tables,
                        "autovacuum does not analyze these tables on this server: ingestion analyzes them itself as they grow"
                    );
                }
                Ok(tables) => tracing::debug!(?tables, "analyzed"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not check or analyze the tables' statistics")
                }
            }
        }
    });
}

impl Ingestion {
    /// Starts the writer (and, on PostgreSQL with a listen URL, the change-feed listener). The
    /// store must be migrated.
    pub fn start(db: Db, catalog: Arc<Catalog>, org: OrgView, options: IngestionOptions) -> Self {
        let postgres = db.backend == Backend::Postgres;
        // On PostgreSQL other processes may write: without a listener their commits would go
        // unheard, so nothing is kept.
        let keep = if postgres && options.listen_url.is_none() {
            0
        } else {
            options.current_rows_max
        };
        let feed = ChangeFeed::new(org.clone(), Arc::new(CurrentRows::new(keep)));
        let notify = postgres.then(|| options.notify_channel.clone());
        if let (true, Some(url)) = (postgres, options.listen_url.clone()) {
            change_feed::spawn_listener(url, options.notify_channel.clone(), feed.clone());
        }
        let writer = Writer::spawn(
            db.clone(),
            feed.clone(),
            notify,
            options.writer,
            options.credentials.clone(),
            gate::TimeClasses::of(&catalog),
        );
        let inner = Arc::new(Inner {
            db,
            catalog,
            org,
            writer,
            feed,
            figures: KeptFigures::new(options.current_rows_max),
            options,
            audits: Mutex::new(AuditSlots::default()),
        });
        if postgres {
            spawn_table_stats(Arc::downgrade(&inner));
        }
        Ingestion { inner }
    }

    /// Whether the API key `principal` called with still stands (always, without a
    /// credential check or for a principal without a key).
    pub fn credential_stands(&self, principal: &Principal) -> bool {
        self.inner
            .options
            .credentials
            .as_ref()
            .is_none_or(|c| c.still_valid(principal, now_micros()))
    }

    /// A place for one more code audit by `principal`, or RESOURCE_EXHAUSTED (`AUDIT_CAPACITY`,
    /// RetryInfo) when the process or the principal runs as many as allowed.
    pub fn start_audit(&self, principal: &Principal) -> Result<AuditSlot, IngestError> {
        let o = &self.inner.options;
        let mut slots = self
            .inner
            .audits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mine = slots.by_principal.get(&principal.id).copied().unwrap_or(0);
        if mine >= o.max_audits_per_principal {
            return Err(IngestError::Busy {
                what: "code audits per principal",
                limit: o.max_audits_per_principal,
                retry: AUDIT_RETRY,
            });
        }
        if slots.total >= o.max_concurrent_audits {
            return Err(IngestError::Busy {
                what: "code audits in all",
                limit: o.max_concurrent_audits,
                retry: AUDIT_RETRY,
            });
        }
        slots.total += 1;
        *slots.by_principal.entry(principal.id.clone()).or_default() += 1;
        Ok(AuditSlot {
            ing: self.clone(),
            principal: principal.id.clone(),
        })
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The review cycle's write gate for values only checked (`validate_only`): the refusal
    /// a write of them would get now (a lock exception counts, and is not used up).
    pub async fn gate_check(&self, values: &[validation::NewValue]) -> Result<(), IngestError> {
        let mut departments: Vec<String> = values.iter().map(|v| v.department.clone()).collect();
        departments.sort_unstable();
        departments.dedup();
        let now = now_micros();
        let mut conn = store::WritePooled::acquire(&self.inner.db)
            .await
            .map_err(|e| IngestError::storage("read the review gate", &e))?;
        let g = gate::load(&mut conn.conn(), &departments, now)
            .await
            .map_err(|e| IngestError::storage("read the review gate", &e))?;
        let classes = gate::TimeClasses::of(&self.inner.catalog);
        gate::check(
            &g,
            &classes,
            values.iter().map(gate::Target::of_value),
            &[],
            now,
        )
        .map(|_| ())
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn org(&self) -> &OrgView {
        &self.inner.org
    }

    pub fn options(&self) -> &IngestionOptions {
        &self.inner.options
    }

    /// `MetricSubmissionService`, with the message size limit applied.
    pub fn submission_service(
        &self,
    ) -> pb::metric_submission_service_server::MetricSubmissionServiceServer<SubmissionApi> {
        pb::metric_submission_service_server::MetricSubmissionServiceServer::new(
            SubmissionApi::new(self.clone()),
        )
        .max_decoding_message_size(self.inner.options.max_message_bytes)
    }

    /// `CodeAuditService`, with the message size limit applied.
    pub fn code_audit_service(
        &self,
    ) -> pb::code_audit_service_server::CodeAuditServiceServer<CodeAuditApi> {
        pb::code_audit_service_server::CodeAuditServiceServer::new(CodeAuditApi::new(self.clone()))
            .max_decoding_message_size(self.inner.options.max_message_bytes)
    }

    /// Validates `inputs` (paths `values[first + i]`, or `value` for one unary value) and
    /// authorizes each for `principal`: every violation at once, then the first denial.
    /// [`Ingestion::check`], and if it refuses, once more after bringing the organisation
    /// snapshot up to date (when it changed).
    pub async fn check_fresh(
        &self,
        principal: &Principal,
        inputs: &[pb::SubmissionInput],
        unary: bool,
    ) -> Result<Vec<NewValue>, IngestError> {
        self.check_fresh_at(principal, inputs, (!unary).then_some(0))
            .await
    }

    /// [`Ingestion::check_fresh`] with paths `values[first + i]` (`first` None: unary).
    pub async fn check_fresh_at(
        &self,
        principal: &Principal,
        inputs: &[pb::SubmissionInput],
        first: Option<usize>,
    ) -> Result<Vec<NewValue>, IngestError> {
        let checked = self.check_at(principal, inputs, first);
        match (&checked, &self.inner.options.org_refresh) {
            (Err(IngestError::Invalid(_) | IngestError::Denied(_)), Some(refresh)) => {
                if refresh.refresh().await {
                    self.check_at(principal, inputs, first)
                } else {
                    checked
                }
            }
            _ => checked,
        }
    }

    pub fn check(
        &self,
        principal: &Principal,
        inputs: &[pb::SubmissionInput],
        unary: bool,
    ) -> Result<Vec<NewValue>, IngestError> {
        self.check_at(principal, inputs, (!unary).then_some(0))
    }

    fn check_at(
        &self,
        principal: &Principal,
        inputs: &[pb::SubmissionInput],
        first: Option<usize>,
    ) -> Result<Vec<NewValue>, IngestError> {
        let org = self.inner.org.borrow().clone();
        let mut violations: Vec<Violation> = Vec::new();
        let mut values = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            let path = match first {
                None => "value".to_owned(),
                Some(first) => format!("values[{}]", first + i),
            };
            if let Some(v) = validation::check_input(
                &self.inner.catalog,
                &org,
                principal,
                Some(input),
                &path,
                &mut violations,
            ) {
                values.push(v);
            }
        }
        if !violations.is_empty() {
            return Err(IngestError::Invalid(violations));
        }
        for v in &values {
            validation::authorize(&org, principal, v)?;
        }
        Ok(values)
    }

    /// Stores checked values as one all-or-nothing write, idempotent under `key`.
    pub async fn write_values(
        &self,
        principal: &Principal,
        values: Vec<NewValue>,
        key: &str,
        what: &str,
    ) -> Result<Written, IngestError> {
        let idem = (!key.is_empty()).then(|| Idempotency {
            key: key.to_owned(),
            fingerprint: fingerprint_values(what, &values),
        });
        let root = match what {
            "batch" => FieldRoot::Values,
            "code-audit" => FieldRoot::Record,
            _ => FieldRoot::Value,
        };
        self.write(principal, idem, Op::Values(values), root).await
    }

    /// Retracts a stored value (checks done by the caller).
    pub async fn write_retraction(
        &self,
        principal: &Principal,
        target: StoredRow,
        reason: String,
        key: &str,
    ) -> Result<Written, IngestError> {
        let idem = (!key.is_empty()).then(|| Idempotency {
            key: key.to_owned(),
            fingerprint: retraction_fingerprint(target.id, &reason),
        });
        self.write(
            principal,
            idem,
            Op::Retract {
                target: Box::new(target),
                reason,
            },
            FieldRoot::Retraction,
        )
        .await
    }

    async fn write(
        &self,
        principal: &Principal,
        idem: Option<Idempotency>,
        op: Op,
        root: FieldRoot,
    ) -> Result<Written, IngestError> {
        // Fast path for retries: answered from the stored key without queueing a write.
        if let Some(i) = &idem
            && let Some(w) = self.replay(principal, &i.key, &i.fingerprint).await?
        {
            return Ok(w);
        }
        let o: Outcome = self
            .inner
            .writer
            .write(principal.clone(), idem, op, root)
            .await?;
        Ok(Written {
            first_id: o.first_id,
            last_id: o.last_id,
            accept_micros: o.accept_micros,
            replayed: o.replayed,
            row: o.row,
        })
    }

    /// A stored result for `key` when the request is the same; ALREADY_EXISTS when not.
    pub async fn replay(
        &self,
        principal: &Principal,
        key: &str,
        fingerprint: &str,
    ) -> Result<Option<Written>, IngestError> {
        let rec = store::idempotency_record(&self.inner.db, &scoped_key(&principal.id, key))
            .await
            .map_err(|e| IngestError::storage("read idempotency key", &e))?;
        match rec {
            None => Ok(None),
            Some(r) if r.fingerprint == fingerprint => Ok(Some(Written {
                first_id: r.first_id,
                last_id: r.last_id,
                accept_micros: r.accept_micros,
                replayed: true,
                row: None,
            })),
            Some(_) => Err(IngestError::KeyConflict(key.to_owned())),
        }
    }

    /// One stored submission.
    pub async fn get(&self, id: i64) -> Result<StoredRow, IngestError> {
        store::get(&self.inner.db, id)
            .await
            .map_err(|e| IngestError::storage("read submission", &e))?
            .ok_or_else(|| IngestError::NotFound(format!("submissions/{id}")))
    }

    /// The figures for `region` and `period` (validated by the caller), from every value.
    pub async fn aggregates_of(
        &self,
        region: &str,
        period: &str,
        as_of: Option<i64>,
    ) -> Result<Aggregates, IngestError> {
        self.aggregates_selected(region, period, as_of, Selection::All)
            .await
    }

    /// The figures for `region` and `period` (validated by the caller), from the values
    /// `selection` names, each source with the approved part that covers it (sign-offs as
    /// they stand now). As of an instant: the current values corrected by what was accepted
    /// after it ([`as_of`]), or, when more than that, every value read as of it.
    pub async fn aggregates_selected(
        &self,
        region: &str,
        period: &str,
        as_of: Option<i64>,
        selection: Selection,
    ) -> Result<Aggregates, IngestError> {
        let regions = self.inner.org.borrow().subtree(region);
        let asked: Period = period
            .parse()
            .map_err(|e: citycredit_core::period::PeriodError| {
                IngestError::Invalid(vec![Violation::new("period", e.to_string())])
            })?;
        let periods: Vec<String> = asked.reached_by().iter().map(ToString::to_string).collect();
        let approvals =
            gate::approvals(&self.inner.db, &regions, &asked).instrument(tracing::info_span!(
                "db.query",
                db.system = self.inner.db.backend.as_str(),
                db.operation = "select review_signoffs",
                regions = regions.len(),
            ));
        // The two reads run together, each on a pooled connection of its own.
        let (current, approvals) = tokio::join!(self.current_values(&regions, &periods), approvals);
        let current = current?;
        let approvals = approvals.map_err(|e| IngestError::storage("read sign-offs", &e))?;
        let figures = &self.inner.figures;
        // Pairs of current values (each metric run under its tag) and other rows.
        let aggregate = |pairs: &[Arc<PairRows>], rest: Vec<&VersionRow>, at, figures| {
            aggregation::aggregate_pairs(
                &self.inner.catalog,
                region,
                &asked,
                at,
                pairs,
                rest,
                &approvals,
                selection,
                figures,
            )
        };
        let Some(t) = as_of else {
            return Ok(aggregate(
                &current,
                Vec::new(),
                now_micros(),
                Figures::UseAndKeep(figures),
            ));
        };
        // Correcting more versions than there are current values costs more than reading every
        // value as of `t`.
        let limit = current.iter().map(|s| s.len()).sum::<usize>().max(256);
        let changes = as_of::changes_after(&self.inner.db, &regions, &periods, t, limit)
            .instrument(tracing::info_span!(
                "db.query",
                db.system = self.inner.db.backend.as_str(),
                db.operation = "select value_versions closed after as_of",
            ))
            .await
            .map_err(|e| IngestError::storage("read what changed after as_of", &e))?;
        Ok(match changes {
            // The values at `t` are the current ones, and so are their figures.
            Some(c) if c.none_in(&current) => {
                aggregate(&current, Vec::new(), t, Figures::UseAndKeep(figures))
            }
            // Figures of the past are used where they match, never kept: they would replace
            // the current ones under the same key. The pairs no change names are taken whole,
            // under their tags.
            Some(c) => {
                let (whole, rest) = c.split(&current);
                aggregate(&whole, rest, t, Figures::Use(figures))
            }
            None => {
                let rows = store::versions(&self.inner.db, &regions, &periods, Some(t))
                    .instrument(tracing::info_span!(
                        "db.query",
                        db.system = self.inner.db.backend.as_str(),
                        db.operation = "select value_versions as_of",
                        regions = regions.len(),
                        periods = periods.len(),
                    ))
                    .await
                    .map_err(|e| IngestError::storage("read values as_of", &e))?;
                aggregate(&[], rows.iter().collect(), t, Figures::Use(figures))
            }
        })
    }

    /// The current values of every (region, period) pair of `regions` and `periods`: those
    /// kept in memory, and a read of the rest (kept for the next time unless a commit changed
    /// them meanwhile).
    pub async fn current_values(
        &self,
        regions: &[String],
        periods: &[String],
    ) -> Result<Vec<Arc<PairRows>>, IngestError> {
        let rows = self.inner.feed.rows();
        let kept = rows.lookup(regions, periods);
        let mut out = if kept.regions.is_empty() {
            Vec::new()
        } else {
            let read = store::versions(&self.inner.db, &kept.regions, &kept.periods, None)
                .instrument(tracing::info_span!(
                    "db.query",
                    db.system = self.inner.db.backend.as_str(),
                    db.operation = "select value_versions",
                    regions = kept.regions.len(),
                    periods = kept.periods.len(),
                ))
                .await
                .map_err(|e| IngestError::storage("read current values", &e))?;
            rows.fill(kept.ticket, &kept.regions, &kept.periods, read)
        };
        out.extend(kept.kept);
        out.retain(|s| !s.is_empty());
        Ok(out)
    }

    /// Checks a region and period for an aggregate query.
    pub fn check_region_period(&self, region: &str, period: &str) -> Result<String, IngestError> {
        let mut v = Vec::new();
        let region_clean =
            validation::check_text("region_code", region, TextKind::Identifier, &mut v);
        let period_clean = validation::check_text("period", period, TextKind::Identifier, &mut v);
        if !region_clean {
        } else if self.inner.org.borrow().city.region(region).is_none() {
            v.push(Violation::new(
                "region_code",
                format!(
                    "unknown region `{}`",
                    region.chars().take(64).collect::<String>()
                ),
            ));
        }
        let period = match period.parse::<citycredit_core::period::Period>() {
            Ok(p) => p.to_string(),
            Err(e) => {
                if period_clean {
                    v.push(Violation::new("period", e.to_string()));
                }
                String::new()
            }
        };
        if v.is_empty() {
            Ok(period)
        } else {
            Err(IngestError::Invalid(v))
        }
    }

    /// The current values kept in memory for aggregation.
    pub fn current_rows(&self) -> &Arc<CurrentRows> {
        self.inner.feed.rows()
    }

    /// The figures kept per metric for aggregation.
    pub fn kept_figures(&self) -> &KeptFigures {
        &self.inner.figures
    }

    /// A new subscription to the change feed.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.feed.subscribe()
    }
}

/// SHA-256 over the canonical (normalised, length-prefixed) values of a request.
pub fn fingerprint_values(what: &str, values: &[NewValue]) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    field(what.as_bytes());
    for v in values {
        for f in [
            &v.metric,
            &v.region,
            &v.period,
            &v.department,
            &v.domain,
            &v.task_id,
            &v.value,
            &v.evidence_uri,
            &v.note,
        ] {
            field(f.as_bytes());
        }
    }
    hex::encode(h.finalize())
}

/// SHA-256 over a retraction request.
pub fn retraction_fingerprint(id: i64, reason: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"retract\0");
    h.update(id.to_be_bytes());
    h.update(reason.as_bytes());
    hex::encode(h.finalize())
}

impl AggregateSource for Ingestion {
    fn aggregates<'a>(
        &'a self,
        region: &'a str,
        period: &'a str,
        as_of_micros: Option<i64>,
        selection: Selection,
    ) -> BoxFuture<'a, Result<Aggregates, SourceError>> {
        Box::pin(async move {
            let period = self
                .check_region_period(region, period)
                .map_err(source_error)?;
            self.aggregates_selected(region, &period, as_of_micros, selection)
                .await
                .map_err(source_error)
        })
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.subscribe()
    }
}

/// An ingestion error as the domain's answer of a figures source: validation and storage
/// errors, the only ones a read of figures meets.
fn source_error(e: IngestError) -> SourceError {
    match e {
        IngestError::Invalid(v) => SourceError::Invalid(
            v.into_iter()
                .map(|v| Problem {
                    field: v.field,
                    description: v.description,
                })
                .collect(),
        ),
        IngestError::Unavailable(context) => SourceError::Unavailable { context },
        IngestError::Internal { context, detail } => SourceError::Internal {
            context: context.to_owned(),
            detail,
        },
        other => SourceError::Internal {
            context: "read aggregates".to_owned(),
            detail: other.to_string(),
        },
    }
}
