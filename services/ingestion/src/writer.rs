//! The single writer: one task per process owns the hash-chain head. Unary submissions,
//! batches and retractions come to it over a channel; it takes what is queued (a group is
//! flushed at most `window` after its oldest job arrived, or at `max_rows`), writes the whole
//! group in one transaction (on PostgreSQL one statement per table, rows bound as arrays on a
//! native connection; on SQLite multi-row `VALUES` inserts of a few fixed sizes:
//! [`store::WriteConn`]), commits, and only then answers each caller. On PostgreSQL the transaction locks the `chain_head` row first, which serialises the
//! writers of different processes; the head is always read from that row, never from memory.
//!
//! **The next group is prepared while the previous one commits** (PostgreSQL). A group whose
//! statements all ran is left committing in a task of its own, and the writer at once takes
//! the next group and begins its transaction on a second connection: its first statement
//! (the `chain_head` lock) waits in PostgreSQL until the previous commit ends, then sees that
//! commit's head and rows (READ COMMITTED: each later statement reads a new snapshot), so the
//! next group's statements start the moment the lock is free instead of a round trip through
//! this process later. At most one group commits in the background; commits end, and callers
//! are answered and changes published, in group order. Nothing reads state in memory that a
//! commit still in flight could change: if it fails, the next group simply reads the head
//! without it. On SQLite (BEGIN IMMEDIATE would wait in the busy handler's sleeps) the next
//! group begins after the previous commit.
//!
//! **A group never shares one member's failure.** When the group's transaction fails for a
//! reason that is not transient (the database refused one job's input, or a bug), the writer
//! splits the group in halves and writes each half in a transaction of its own, recursively,
//! until the failing jobs stand alone: every other job is committed and every caller is
//! answered once, for itself. Bisection rather than one job at a time: with k bad jobs in a
//! group of n it costs about 2·k·log2(n/k) extra transactions instead of n, and a group under
//! attack (a few poisoned callers among hundreds of innocent ones) is exactly when transactions
//! are precious. A failed attempt rolls back completely, so every retry re-reads the chain head
//! and the idempotency records inside its own transaction: a key is stored at most once however
//! the group is split. Transient failures (connection lost, pool exhausted, serialization
//! failure) and a failed COMMIT (its outcome is unknown) are not split: every job of the
//! attempt gets UNAVAILABLE with RetryInfo and its client retries with its key.
//!
//! Inside the transaction, before anything is written, each job is checked against the stored
//! state: its caller's API key must still stand (a key revoked while its batch streamed in
//! commits nothing), its idempotency key replays or conflicts, and a retraction's target must
//! not be retracted already (also guaranteed by the primary key of `retractions`, which a
//! trigger fills in the statement that inserts the retraction row).
//!
//! Value versions: a value closes the key's current version and opens its own; a retraction of
//! the current value closes it and reopens the latest earlier value of the key that is not
//! retracted, as a new version row (an undo: v1, v2, v3; retract v3 -> v2; retract v2 -> v1;
//! retracting the only value leaves none). A version valid for no instant (opened and closed
//! in the same commit) is not stored. `audit_chain::verify` rebuilds the same versions from the
//! chain and compares.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use citycredit::status::Violation;
use citycredit_core::auth::{CredentialCheck, Principal};
use citycredit_core::text::TextKind;
use citycredit_store::{Db, now_micros};

use crate::audit_chain::row_hash;
use crate::change_feed::{self, BaseChanges, ChangeFeed};
use crate::error::IngestError;
use crate::gate::{self, TimeClasses};
use crate::store::{
    self, IdempotencyRecord, KIND_RETRACTION, KIND_VALUE, StoredRow, Version, VersionRow,
    WriteConn, WriteTx, scoped_key,
};
use crate::validation::NewValue;

/// What a job writes.
#[derive(Debug)]
pub enum Op {
    /// New values (one for SubmitValue, many for a batch), stored with consecutive ids.
    Values(Vec<NewValue>),
    /// A retraction of `target` (a stored value row).
    Retract {
        target: Box<StoredRow>,
        reason: String,
    },
}

impl Op {
    fn rows(&self) -> usize {
        match self {
            Op::Values(v) => v.len(),
            Op::Retract { .. } => 1,
        }
    }
}

/// Where a job's fields sit in its caller's request, to name them when the database refuses
/// one (`value.note`, `values[3].note`, `record.period`, `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldRoot {
    /// SubmitValue: `value.<field>`, `idempotency_key`.
    Value,
    /// SubmitBatch: `values[i].<field>`, `idempotency_key`.
    Values,
    /// A code audit's recording: `record.<field>`, `record.idempotency_key`.
    Record,
    /// RetractSubmission: `reason`, `idempotency_key`.
    Retraction,
}

/// An idempotency key with the fingerprint of the request it came with.
#[derive(Clone, Debug)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: String,
}

/// One caller's write.
#[derive(Debug)]
pub struct Job {
    pub principal: Principal,
    pub idempotency: Option<Idempotency>,
    pub op: Op,
    pub root: FieldRoot,
    pub reply: oneshot::Sender<Result<Outcome, IngestError>>,
}

/// What a caller gets back once its group committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub first_id: i64,
    pub last_id: i64,
    pub accept_micros: i64,
    /// True when the idempotency key had already been used with the same request.
    pub replayed: bool,
    /// The stored row of a one-row write (saves a read for unary calls).
    pub row: Option<StoredRow>,
}

/// Group commit tuning.
#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    /// The longest a job waits for others to share its transaction.
    pub window: Duration,
    /// A group is flushed as soon as it holds this many rows.
    pub max_rows: usize,
    /// Jobs queued before callers wait to enqueue (back-pressure).
    pub queue: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            window: Duration::from_millis(2),
            max_rows: 5_000,
            queue: 4_096,
        }
    }
}

struct Queued {
    job: Job,
    arrived: Instant,
}

/// Handle to the writer task.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Queued>,
}

impl Writer {
    /// Starts the writer task; it ends when every handle is dropped. With `credentials`, a job
    /// whose caller's API key no longer stands is refused inside the transaction.
    pub fn spawn(
        db: Db,
        feed: ChangeFeed,
        notify_channel: Option<String>,
        cfg: WriterConfig,
        credentials: Option<Arc<dyn CredentialCheck>>,
        classes: TimeClasses,
    ) -> Writer {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let task = WriterTask {
            db,
            feed,
            notify_channel,
            cfg,
            credentials,
            classes,
        };
        tokio::spawn(task.run(rx));
        Writer { tx }
    }

    /// Queues a job and waits for its group to commit.
    pub async fn write(
        &self,
        principal: Principal,
        idempotency: Option<Idempotency>,
        op: Op,
        root: FieldRoot,
    ) -> Result<Outcome, IngestError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            principal,
            idempotency,
            op,
            root,
            reply,
        };
        self.tx
            .send(Queued {
                job,
                arrived: Instant::now(),
            })
            .await
            .map_err(|_| IngestError::WriterGone)?;
        rx.await.map_err(|_| IngestError::WriterGone)?
    }
}

struct WriterTask {
    db: Db,
    feed: ChangeFeed,
    notify_channel: Option<String>,
    cfg: WriterConfig,
    credentials: Option<Arc<dyn CredentialCheck>>,
    /// Metric time classes, for the periods a value reaches (the write gate).
    classes: TimeClasses,
}

/// A job without its reply channel.
struct Work {
    principal: Principal,
    idempotency: Option<Idempotency>,
    op: Op,
    root: FieldRoot,
}

/// How one job of an attempt is answered.
enum Plan {
    Write,
    /// Written through the lock exceptions named (used up by this write).
    WriteExcepted(Vec<String>),
    /// Refused by the review cycle's write gate.
    Locked(Box<IngestError>),
    /// Replays a stored idempotency record.
    Replay(Box<Outcome>),
    /// Replays the outcome of an earlier job of the same attempt.
    ReplayOf(usize),
    Conflict(String),
    /// The caller's API key was revoked or expired since the call began.
    Revoked,
    /// The target is retracted already (by this stored submission).
    AlreadyRetracted {
        target: i64,
        by: i64,
    },
    /// The target is retracted by an earlier job of the same attempt.
    RetractedInGroup {
        target: i64,
        by_job: usize,
    },
}

/// An attempt ready to commit.
struct Prepared {
    plans: Vec<Plan>,
    outcomes: Vec<Option<Outcome>>,
    rows: usize,
    base: BaseChanges,
    /// The stored versions the attempt closes (their submission ids), and those it opens: what
    /// the kept current values take once it commits.
    closed: Vec<i64>,
    opened: Vec<VersionRow>,
    now: i64,
}

/// An attempt whose statements all ran in its open transaction: only its COMMIT is left.
struct Staged {
    tx: WriteTx<'static>,
    prepared: Prepared,
}

/// Commits a staged attempt, publishes its changes and returns one answer per job. A failed
/// COMMIT's outcome is unknown: the failure is shared by every job ([`Failure::is_shared`]).
async fn finish(
    feed: &ChangeFeed,
    staged: Staged,
) -> Result<Vec<Result<Outcome, IngestError>>, Failure> {
    let Staged {
        tx,
        prepared:
            Prepared {
                plans,
                outcomes,
                rows,
                base,
                closed,
                opened,
                now,
            },
    } = staged;
    if let Err(error) = tx.commit().await {
        // The commit may have landed: whatever is kept of the current values may be stale.
        feed.publish_everything();
        return Err(Failure {
            stage: "commit",
            error,
        });
    }
    citycredit_core::counters::add_ingested_rows(u64::try_from(rows).unwrap_or(0));
    if !base.is_empty() {
        feed.publish_own(&base, now, &closed, &opened);
    }

    let missing = || IngestError::internal("group commit", "missing outcome");
    let mut answers = Vec::with_capacity(plans.len());
    for (i, plan) in plans.into_iter().enumerate() {
        answers.push(match plan {
            Plan::Write | Plan::WriteExcepted(_) => outcomes[i].clone().ok_or_else(missing),
            Plan::Locked(e) => Err(*e),
            Plan::Replay(o) => Ok(*o),
            Plan::ReplayOf(j) => outcomes
                .get(j)
                .and_then(Option::as_ref)
                .map(|o| Outcome {
                    replayed: true,
                    ..o.clone()
                })
                .ok_or_else(missing),
            Plan::Conflict(key) => Err(IngestError::KeyConflict(key)),
            Plan::Revoked => Err(IngestError::Revoked),
            Plan::AlreadyRetracted { target, by } => Err(IngestError::AlreadyRetracted {
                id: target,
                by: Some(by),
            }),
            Plan::RetractedInGroup { target, by_job } => Err(IngestError::AlreadyRetracted {
                id: target,
                by: outcomes
                    .get(by_job)
                    .and_then(Option::as_ref)
                    .map(|o| o.first_id),
            }),
        });
    }
    Ok(answers)
}

/// Answers each caller of a group, in order.
fn answer(
    replies: Vec<oneshot::Sender<Result<Outcome, IngestError>>>,
    answers: Vec<Result<Outcome, IngestError>>,
) {
    for (reply, answer) in replies.into_iter().zip(answers) {
        // A caller that gave up has dropped its receiver: nothing to tell it.
        let _ = reply.send(answer);
    }
}

/// Waits for the group committing in the background, if any, to be committed and answered.
async fn finished(committing: &mut Option<JoinHandle<()>>) {
    if let Some(task) = committing.take()
        && let Err(e) = task.await
    {
        // Its callers' reply channels were dropped with it: they get WriterGone.
        tracing::error!(error = %e, "a group commit task failed");
    }
}

/// Why an attempt failed, and so whether splitting it can help.
#[derive(Debug)]
struct Failure {
    stage: &'static str,
    error: sqlx::Error,
}

impl Failure {
    /// Trouble reaching the database, or a COMMIT whose outcome is unknown: every job of the
    /// attempt shares it and retrying (with its idempotency key) is the cure.
    fn is_shared(&self) -> bool {
        self.stage == "commit" || citycredit_store::is_transient(&self.error)
    }

    fn shared_error(&self) -> IngestError {
        tracing::warn!(error = %self.error, stage = self.stage, "group commit failed; retry");
        IngestError::Unavailable(self.stage.to_owned())
    }

    /// The answer for a job that fails alone.
    fn lone_error(&self, work: &Work) -> IngestError {
        if let Op::Retract { target, .. } = &work.op
            && is_second_retraction(&self.error)
        {
            return IngestError::AlreadyRetracted {
                id: target.id,
                by: None,
            };
        }
        if refuses_input(&self.error) {
            tracing::info!(error = %self.error, principal = %work.principal.id,
                "the database refused a submission's input");
            return IngestError::Invalid(refused_fields(work));
        }
        IngestError::internal(self.stage, &self.error)
    }
}

/// A unique violation of `retractions`' primary key: the target is retracted already (the
/// trigger that fills `retractions` refused the second retraction row).
fn is_second_retraction(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    citycredit_store::is_unique_violation(e)
        && (db.constraint() == Some("retractions_pkey")
            || db.message().contains("retractions.target"))
}

/// The database refused a value in the statement: PostgreSQL data exceptions (class 22: NUL
/// in text, an invalid byte sequence, a value too long) and SQLite's NUL trigger.
fn refuses_input(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    let code = db.code().unwrap_or_default();
    code.starts_with("22") || db.message().starts_with("citycredit: refused")
}

/// The fields of a refused job that break the text rules (what a database refuses in text), or
/// the job as a whole when none does.
fn refused_fields(work: &Work) -> Vec<Violation> {
    let mut out = Vec::new();
    let key_path = match work.root {
        FieldRoot::Record => "record.idempotency_key",
        _ => "idempotency_key",
    };
    if let Some(i) = &work.idempotency {
        crate::validation::check_text(key_path, &i.key, TextKind::Identifier, &mut out);
    }
    match &work.op {
        Op::Values(values) => {
            for (i, v) in values.iter().enumerate() {
                let prefix = match work.root {
                    FieldRoot::Values => format!("values[{i}]"),
                    FieldRoot::Record => "record".to_owned(),
                    FieldRoot::Value | FieldRoot::Retraction => "value".to_owned(),
                };
                for (name, text, kind) in [
                    ("metric_key", &v.metric, TextKind::Identifier),
                    ("region_code", &v.region, TextKind::Identifier),
                    ("period", &v.period, TextKind::Identifier),
                    ("department_code", &v.department, TextKind::Identifier),
                    ("domain", &v.domain, TextKind::Identifier),
                    ("task_id", &v.task_id, TextKind::Identifier),
                    ("evidence_uri", &v.evidence_uri, TextKind::Identifier),
                    ("note", &v.note, TextKind::FreeText),
                ] {
                    let path = format!("{prefix}.{name}");
                    if !out.iter().any(|x: &Violation| x.field == path) {
                        crate::validation::check_text(&path, text, kind, &mut out);
                    }
                }
            }
        }
        Op::Retract { reason, .. } => {
            crate::validation::check_text("reason", reason, TextKind::FreeText, &mut out);
        }
    }
    if out.is_empty() {
        let path = match work.root {
            FieldRoot::Value => "value",
            FieldRoot::Values => "values",
            FieldRoot::Record => "record",
            FieldRoot::Retraction => "reason",
        };
        out.push(Violation::new(
            path,
            "the database refused this input (a character or value it cannot store)",
        ));
    }
    out
}

/// The value versions a group changes, with the in-group ones not yet stored.
#[derive(Default)]
struct Versions {
    /// vkey -> (current submission id, index of its version when opened in this group).
    current: HashMap<String, (i64, Option<usize>)>,
    /// Versions opened in this group; None when closed in the same commit (valid for no
    /// instant: not stored).
    opened: Vec<Option<Version>>,
    /// Stored current versions (by submission id) this group closes.
    closes: Vec<i64>,
}

impl Versions {
    /// Closes the current version of `key` (only when it is `only_if`, if given); stored ones
    /// are closed at the commit's time. Returns whether one was closed.
    fn close(&mut self, key: &str, only_if: Option<i64>) -> bool {
        let Some(&(id, in_group)) = self.current.get(key) else {
            return false;
        };
        if only_if.is_some_and(|want| want != id) {
            return false;
        }
        match in_group {
            // Opened in this commit too: valid for no instant.
            Some(ix) => self.opened[ix] = None,
            None => self.closes.push(id),
        }
        self.current.remove(key);
        true
    }

    fn open(&mut self, version: Version) {
        let key = version.vkey.clone();
        let id = version.submission_id;
        self.opened.push(Some(version));
        self.current.insert(key, (id, Some(self.opened.len() - 1)));
    }
}

impl WriterTask {
    /// Whether the next group may be prepared while the previous one commits: on PostgreSQL,
    /// where its transaction waits on `chain_head`'s row lock (held by the committing group)
    /// and goes on the moment that commit ends. SQLite's BEGIN IMMEDIATE would wait on the
    /// busy handler's sleeps instead: there the next group begins after the previous commit.
    fn pipelined(&self) -> bool {
        self.db.bulk.is_some()
    }

    async fn run(self, mut rx: mpsc::Receiver<Queued>) {
        // The group committing in the background: at most one, so at most two transactions
        // (one committing, one being prepared) and two groups of jobs are held at a time.
        let mut committing: Option<JoinHandle<()>> = None;
        while let Some(group) = self.collect(&mut rx).await {
            let (work, replies): (Vec<_>, Vec<_>) = group
                .into_iter()
                .map(|j| {
                    (
                        Work {
                            principal: j.principal,
                            idempotency: j.idempotency,
                            op: j.op,
                            root: j.root,
                        },
                        j.reply,
                    )
                })
                .unzip();
            if !self.pipelined() {
                finished(&mut committing).await;
            }
            match self.stage(&work).await {
                Ok(staged) => {
                    // Commits end in group order: the previous group's callers are answered
                    // and its changes published before this one commits.
                    finished(&mut committing).await;
                    let feed = self.feed.clone();
                    committing = Some(tokio::spawn(async move {
                        let answers = match finish(&feed, staged).await {
                            Ok(answers) => answers,
                            // A failed COMMIT is shared by the whole attempt: never split.
                            Err(failure) => {
                                let e = failure.shared_error();
                                replies.iter().map(|_| Err(e.clone())).collect()
                            }
                        };
                        answer(replies, answers);
                    }));
                }
                Err(failure) => {
                    finished(&mut committing).await;
                    let answers = self.commit_isolating(&work, failure).await;
                    answer(replies, answers);
                }
            }
        }
        finished(&mut committing).await;
    }

    /// The next group: what is queued, waiting at most `window` after the oldest job arrived
    /// and stopping at `max_rows`. None when every handle is dropped and the queue is empty.
    async fn collect(&self, rx: &mut mpsc::Receiver<Queued>) -> Option<Vec<Job>> {
        let first = rx.recv().await?;
        let deadline = first.arrived + self.cfg.window;
        let mut rows = first.job.op.rows();
        let mut group = vec![first.job];
        while rows < self.cfg.max_rows {
            match rx.try_recv() {
                Ok(q) => {
                    rows += q.job.op.rows();
                    group.push(q.job);
                }
                Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(q)) => {
                        rows += q.job.op.rows();
                        group.push(q.job);
                    }
                    Ok(None) | Err(_) => break,
                },
            }
        }
        Some(group)
    }

    /// Writes `work`, whose first attempt (all of it) failed with `first`, in as few
    /// transactions as its failures allow (see the module comment) and returns one answer per
    /// job, in order.
    async fn commit_isolating(
        &self,
        work: &[Work],
        first: Failure,
    ) -> Vec<Result<Outcome, IngestError>> {
        let mut answers: Vec<Option<Result<Outcome, IngestError>>> =
            (0..work.len()).map(|_| None).collect();
        // Ranges still to write, the next one on top: halves are written in arrival order.
        let mut todo: Vec<Range<usize>> = Vec::with_capacity(8);
        let mut failed = Some(first);
        loop {
            let (range, result) = match failed.take() {
                Some(f) => (0..work.len(), Err(f)),
                None => {
                    let Some(range) = todo.pop() else { break };
                    let result = self.attempt(&work[range.clone()]).await;
                    (range, result)
                }
            };
            match result {
                Ok(done) => {
                    for (slot, answer) in answers[range].iter_mut().zip(done) {
                        *slot = Some(answer);
                    }
                }
                Err(failure) if failure.is_shared() => {
                    let e = failure.shared_error();
                    for slot in &mut answers[range] {
                        *slot = Some(Err(e.clone()));
                    }
                }
                Err(failure) if range.len() == 1 => {
                    answers[range.start] = Some(Err(failure.lone_error(&work[range.start])));
                }
                Err(failure) => {
                    tracing::info!(error = %failure.error, stage = failure.stage,
                        jobs = range.len(), "group commit failed; isolating the failing jobs");
                    let mid = range.start + range.len() / 2;
                    todo.push(mid..range.end);
                    todo.push(range.start..mid);
                }
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(IngestError::internal("group commit", "no answer"))))
            .collect()
    }

    /// One transaction over `jobs`, committed before it returns.
    async fn attempt(&self, jobs: &[Work]) -> Result<Vec<Result<Outcome, IngestError>>, Failure> {
        let staged = self.stage(jobs).await?;
        finish(&self.feed, staged).await
    }

    /// Begins a transaction and runs every statement of an attempt over `jobs` in it: all
    /// that is left is its COMMIT. A failed attempt is rolled back before this returns.
    async fn stage(&self, jobs: &[Work]) -> Result<Staged, Failure> {
        let db_err = |stage: &'static str| move |error: sqlx::Error| Failure { stage, error };
        // PostgreSQL: a native connection (array parameters); SQLite: the `Any` pool.
        let mut tx = WriteTx::begin_owned(&self.db)
            .await
            .map_err(db_err("begin"))?;
        match self.prepare(&mut tx.conn(), jobs).await {
            Ok(prepared) => Ok(Staged { tx, prepared }),
            Err(failure) => {
                // Finished before the next attempt begins (a dropped transaction rolls back
                // in the background).
                if let Err(e) = tx.rollback().await {
                    tracing::warn!(error = %e, "rollback of a failed group commit");
                }
                Err(failure)
            }
        }
    }

    /// Everything of an attempt before its COMMIT: plans, rows, versions, the new head.
    async fn prepare(&self, tx: &mut WriteConn<'_>, jobs: &[Work]) -> Result<Prepared, Failure> {
        let db_err = |stage: &'static str| move |error: sqlx::Error| Failure { stage, error };
        let head = store::lock_head(tx)
            .await
            .map_err(db_err("read chain head"))?;
        // Strictly increasing per commit, so `as_of` tells commits apart.
        let now = now_micros().max(head.last_micros + 1);

        let plans = self.plan(tx, jobs, now).await?;

        // Current versions of every key the writes touch.
        let mut keys: Vec<String> = Vec::new();
        for (job, plan) in jobs.iter().zip(&plans) {
            if !plan.writes() {
                continue;
            }
            match &job.op {
                Op::Values(values) => keys.extend(values.iter().map(new_vkey)),
                Op::Retract { target, .. } => keys.push(target.vkey()),
            }
        }
        keys.sort_unstable();
        keys.dedup();
        let stored = store::current_of_keys(tx, &keys)
            .await
            .map_err(db_err("read current values"))?;
        // The keys with no current version: the only ones `value_keys` may not list yet.
        let unlisted: HashSet<&str> = {
            let current: HashSet<&str> = stored.iter().map(|(k, _)| k.as_str()).collect();
            keys.iter()
                .map(String::as_str)
                .filter(|k| !current.contains(k))
                .collect()
        };
        let mut versions = Versions {
            current: stored.into_iter().map(|(k, id)| (k, (id, None))).collect(),
            ..Versions::default()
        };

        let mut rows: Vec<StoredRow> = Vec::new();
        let mut records: Vec<IdempotencyRecord> = Vec::new();
        let mut base = BaseChanges::new();
        let mut next_id = head.last_id + 1;
        let mut prev = head.last_hash.clone();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; jobs.len()];
        // Targets retracted by this attempt (their earlier values must not come back).
        let mut retracted_here: HashSet<i64> = HashSet::new();

        // Lock exceptions used, with the first submission of the write that used them.
        let mut exceptions_used: Vec<(String, i64)> = Vec::new();
        for (i, (job, plan)) in jobs.iter().zip(&plans).enumerate() {
            if !plan.writes() {
                continue;
            }
            let first = next_id;
            if let Plan::WriteExcepted(ids) = plan {
                exceptions_used.extend(ids.iter().map(|id| (id.clone(), first)));
            }
            let key_text = job
                .idempotency
                .as_ref()
                .map(|x| x.key.clone())
                .unwrap_or_default();
            match &job.op {
                Op::Values(values) => {
                    for v in values {
                        let mut row = StoredRow {
                            id: next_id,
                            principal: job.principal.id.clone(),
                            department: v.department.clone(),
                            region: v.region.clone(),
                            period: v.period.clone(),
                            metric: v.metric.clone(),
                            domain: v.domain.clone(),
                            task_id: v.task_id.clone(),
                            value: v.value.clone(),
                            evidence_uri: v.evidence_uri.clone(),
                            note: v.note.clone(),
                            idempotency_key: key_text.clone(),
                            accept_micros: now,
                            kind: KIND_VALUE.to_owned(),
                            retracts: None,
                            reason: String::new(),
                            prev_hash: std::mem::take(&mut prev),
                            hash: String::new(),
                        };
                        row.hash = row_hash(&row);
                        prev = row.hash.clone();
                        let key = new_vkey(v);
                        versions.close(&key, None);
                        versions.open(Version::of(&row, key, now));
                        note_change(&mut base, &row);
                        rows.push(row);
                        next_id += 1;
                    }
                }
                Op::Retract { target, reason } => {
                    let mut row = StoredRow {
                        id: next_id,
                        principal: job.principal.id.clone(),
                        department: target.department.clone(),
                        region: target.region.clone(),
                        period: target.period.clone(),
                        metric: target.metric.clone(),
                        domain: target.domain.clone(),
                        task_id: target.task_id.clone(),
                        value: String::new(),
                        evidence_uri: String::new(),
                        note: String::new(),
                        idempotency_key: key_text.clone(),
                        accept_micros: now,
                        kind: KIND_RETRACTION.to_owned(),
                        retracts: Some(target.id),
                        reason: reason.clone(),
                        prev_hash: std::mem::take(&mut prev),
                        hash: String::new(),
                    };
                    row.hash = row_hash(&row);
                    prev = row.hash.clone();
                    retracted_here.insert(target.id);
                    let key = target.vkey();
                    // Retracting the current value is an undo: the latest earlier value of the
                    // key that is not retracted becomes current again. Retracting an older,
                    // superseded value changes nothing current.
                    if versions.close(&key, Some(target.id))
                        && let Some(earlier) = store::previous_value(tx, target, &retracted_here)
                            .await
                            .map_err(db_err("read the previous value"))?
                    {
                        versions.open(Version::of(&earlier, key, now));
                    }
                    note_change(&mut base, &row);
                    rows.push(row);
                    next_id += 1;
                }
            }
            let last = next_id - 1;
            if let Some(idem) = &job.idempotency {
                records.push(IdempotencyRecord {
                    scoped_key: scoped_key(&job.principal.id, &idem.key),
                    fingerprint: idem.fingerprint.clone(),
                    first_id: first,
                    last_id: last,
                    accept_micros: now,
                });
            }
            outcomes[i] = Some(Outcome {
                first_id: first,
                last_id: last,
                accept_micros: now,
                replayed: false,
                row: None,
            });
        }
        // One-row writes get their row back.
        let mut at = 0;
        for o in outcomes.iter_mut().flatten() {
            let n = usize::try_from(o.last_id - o.first_id + 1).unwrap_or(0);
            if n == 1 {
                o.row = rows.get(at).cloned();
            }
            at += n;
        }

        let (mut closed, mut opened_rows) = (Vec::new(), Vec::new());
        if !rows.is_empty() {
            let opened: Vec<Version> = versions.opened.into_iter().flatten().collect();
            store::insert_submissions(tx, &rows)
                .await
                .map_err(db_err("insert submissions"))?;
            store::close_versions(tx, &versions.closes, now)
                .await
                .map_err(db_err("close superseded values"))?;
            store::insert_versions(tx, &opened)
                .await
                .map_err(db_err("insert value versions"))?;
            let new_keys: Vec<&Version> = opened
                .iter()
                .filter(|v| unlisted.contains(v.vkey.as_str()))
                .collect();
            store::insert_value_keys(tx, &new_keys)
                .await
                .map_err(db_err("list new value keys"))?;
            store::insert_idempotency(tx, &records)
                .await
                .map_err(db_err("insert idempotency keys"))?;
            let new_head = store::Head {
                last_id: next_id - 1,
                last_hash: prev,
                last_micros: now,
            };
            store::set_head(tx, &new_head)
                .await
                .map_err(db_err("move chain head"))?;
            for (id, first) in &exceptions_used {
                gate::mark_used(tx, std::slice::from_ref(id), *first, now)
                    .await
                    .map_err(db_err("use lock exception"))?;
            }
            if let Some(channel) = &self.notify_channel {
                for payload in change_feed::payloads(&self.feed.origin, &base, now) {
                    store::notify(tx, channel, &payload)
                        .await
                        .map_err(db_err("notify"))?;
                }
            }
            closed = versions.closes;
            opened_rows = opened.into_iter().map(Version::into_row).collect();
        }
        Ok(Prepared {
            plans,
            outcomes,
            rows: rows.len(),
            base,
            closed,
            opened: opened_rows,
            now,
        })
    }

    /// Decides each job's answer from the stored state, inside the transaction: credentials,
    /// idempotency records (stored, or repeated inside the attempt), retractions already made.
    async fn plan(
        &self,
        tx: &mut WriteConn<'_>,
        jobs: &[Work],
        now: i64,
    ) -> Result<Vec<Plan>, Failure> {
        let stored: HashMap<String, IdempotencyRecord> = {
            let wanted: Vec<String> = jobs
                .iter()
                .filter_map(|j| {
                    j.idempotency
                        .as_ref()
                        .map(|i| scoped_key(&j.principal.id, &i.key))
                })
                .collect();
            if wanted.is_empty() {
                HashMap::new()
            } else {
                store::idempotency_records(tx, &wanted)
                    .await
                    .map_err(|error| Failure {
                        stage: "read idempotency keys",
                        error,
                    })?
                    .into_iter()
                    .map(|r| (r.scoped_key.clone(), r))
                    .collect()
            }
        };
        let targets: Vec<i64> = jobs
            .iter()
            .filter_map(|j| match &j.op {
                Op::Retract { target, .. } => Some(target.id),
                Op::Values(_) => None,
            })
            .collect();
        let retracted: HashMap<i64, i64> = if targets.is_empty() {
            HashMap::new()
        } else {
            store::retractions_of(tx, &targets)
                .await
                .map_err(|error| Failure {
                    stage: "read retractions",
                    error,
                })?
                .into_iter()
                .collect()
        };

        let mut first_in_group: HashMap<String, usize> = HashMap::new();
        let mut retracting: HashMap<i64, usize> = HashMap::new();
        let mut plans = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.iter().enumerate() {
            let revoked = self
                .credentials
                .as_ref()
                .is_some_and(|c| !c.still_valid(&job.principal, now));
            let mut plan = if revoked {
                Plan::Revoked
            } else if let Some(idem) = &job.idempotency {
                let sk = scoped_key(&job.principal.id, &idem.key);
                if let Some(rec) = stored.get(&sk) {
                    if rec.fingerprint == idem.fingerprint {
                        Plan::Replay(Box::new(Outcome {
                            first_id: rec.first_id,
                            last_id: rec.last_id,
                            accept_micros: rec.accept_micros,
                            replayed: true,
                            row: None,
                        }))
                    } else {
                        Plan::Conflict(idem.key.clone())
                    }
                } else if let Some(&j) = first_in_group.get(&sk) {
                    let same = jobs[j].idempotency.as_ref().map(|x| &x.fingerprint)
                        == Some(&idem.fingerprint);
                    if same {
                        Plan::ReplayOf(j)
                    } else {
                        Plan::Conflict(idem.key.clone())
                    }
                } else {
                    first_in_group.insert(sk, i);
                    Plan::Write
                }
            } else {
                Plan::Write
            };
            if let (Plan::Write, Op::Retract { target, .. }) = (&plan, &job.op) {
                if let Some(&by) = retracted.get(&target.id) {
                    plan = Plan::AlreadyRetracted {
                        target: target.id,
                        by,
                    };
                } else if let Some(&by_job) = retracting.get(&target.id) {
                    plan = Plan::RetractedInGroup {
                        target: target.id,
                        by_job,
                    };
                } else {
                    retracting.insert(target.id, i);
                }
            }
            plans.push(plan);
        }
        self.gate(tx, jobs, &mut plans, now).await?;
        Ok(plans)
    }

    /// The review cycle's write gate over the jobs still to write: one query for every
    /// department they write for; a refused job is answered alone, the others go on.
    async fn gate(
        &self,
        tx: &mut WriteConn<'_>,
        jobs: &[Work],
        plans: &mut [Plan],
        now: i64,
    ) -> Result<(), Failure> {
        let mut departments: Vec<String> = Vec::new();
        for (job, plan) in jobs.iter().zip(plans.iter()) {
            if !plan.writes() {
                continue;
            }
            match &job.op {
                Op::Values(values) => {
                    departments.extend(values.iter().map(|v| v.department.clone()))
                }
                Op::Retract { target, .. } => departments.push(target.department.clone()),
            }
        }
        departments.sort_unstable();
        departments.dedup();
        let g = gate::load(tx, &departments, now)
            .await
            .map_err(|error| Failure {
                stage: "read the review gate",
                error,
            })?;
        if g.is_empty() {
            return Ok(());
        }
        let mut used: Vec<String> = Vec::new();
        for (job, plan) in jobs.iter().zip(plans.iter_mut()) {
            if !plan.writes() {
                continue;
            }
            let verdict = match &job.op {
                Op::Values(values) => gate::check(
                    &g,
                    &self.classes,
                    values.iter().map(gate::Target::of_value),
                    &used,
                    now,
                ),
                Op::Retract { target, .. } => gate::check(
                    &g,
                    &self.classes,
                    [gate::Target {
                        department: &target.department,
                        region: &target.region,
                        period: &target.period,
                        metric: &target.metric,
                        task_id: &target.task_id,
                    }],
                    &used,
                    now,
                ),
            };
            *plan = match verdict {
                Ok(ids) if ids.is_empty() => Plan::Write,
                Ok(ids) => {
                    used.extend(ids.iter().cloned());
                    Plan::WriteExcepted(ids)
                }
                Err(e) => Plan::Locked(Box::new(e)),
            };
        }
        Ok(())
    }
}

impl Plan {
    /// Whether the job writes rows in this attempt.
    fn writes(&self) -> bool {
        matches!(self, Plan::Write | Plan::WriteExcepted(_))
    }
}

impl Version {
    /// The version of `row` (a value) that becomes current at `now`.
    fn of(row: &StoredRow, vkey: String, now: i64) -> Version {
        Version {
            submission_id: row.id,
            vkey,
            metric: row.metric.clone(),
            region: row.region.clone(),
            period: row.period.clone(),
            department: row.department.clone(),
            domain: row.domain.clone(),
            task_id: row.task_id.clone(),
            value: row.value.clone(),
            valid_from: now,
            valid_to: None,
            accepted_micros: row.accept_micros,
        }
    }
}

fn new_vkey(v: &NewValue) -> String {
    store::vkey(
        &v.metric,
        &v.region,
        &v.period,
        &v.department,
        &v.domain,
        &v.task_id,
    )
}

fn note_change(base: &mut BTreeMap<(String, String), u64>, row: &StoredRow) {
    let e = base
        .entry((row.region.clone(), row.period.clone()))
        .or_insert(0);
    *e = (*e).max(u64::try_from(row.id).unwrap_or(0));
}
