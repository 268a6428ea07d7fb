//! The single writer: one task per process owns the hash-chain head. Unary submissions,
//! batches and retractions come to it over a channel; it takes what is queued (a group is
//! flushed at most `window` after its oldest job arrived, or at `max_rows`), writes the whole
//! group in one transaction with multi-row statements, commits, and only then answers each
//! caller. On PostgreSQL the transaction locks the `chain_head` row first, which serialises the
//! writers of different processes; the head is always read from that row, never from memory.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sqlx::Connection;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use citycredit::store::{Backend, Db, now_micros};

use crate::audit_chain::row_hash;
use crate::change_feed::{self, BaseChanges, ChangeFeed};
use crate::error::IngestError;
use crate::store::{
    self, IdempotencyRecord, KIND_RETRACTION, KIND_VALUE, StoredRow, Version, scoped_key,
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

/// An idempotency key with the fingerprint of the request it came with.
#[derive(Clone, Debug)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: String,
}

/// One caller's write.
#[derive(Debug)]
pub struct Job {
    pub principal: String,
    pub idempotency: Option<Idempotency>,
    pub op: Op,
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
    /// Starts the writer task; it ends when every handle is dropped.
    pub fn spawn(
        db: Db,
        feed: ChangeFeed,
        notify_channel: Option<String>,
        cfg: WriterConfig,
    ) -> Writer {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let task = WriterTask {
            db,
            feed,
            notify_channel,
            cfg,
        };
        tokio::spawn(task.run(rx));
        Writer { tx }
    }

    /// Queues a job and waits for its group to commit.
    pub async fn write(
        &self,
        principal: String,
        idempotency: Option<Idempotency>,
        op: Op,
    ) -> Result<Outcome, IngestError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            principal,
            idempotency,
            op,
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
}

/// How one job of a group is answered.
enum Plan {
    Write,
    /// Replays a stored idempotency record.
    Replay(Box<Outcome>),
    /// Replays the outcome of an earlier job of the same group.
    ReplayOf(usize),
    Conflict(String),
}

impl WriterTask {
    async fn run(self, mut rx: mpsc::Receiver<Queued>) {
        while let Some(first) = rx.recv().await {
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
            self.commit(group).await;
        }
    }

    async fn commit(&self, group: Vec<Job>) {
        let (jobs, replies): (Vec<_>, Vec<_>) = group
            .into_iter()
            .map(|j| ((j.principal, j.idempotency, j.op), j.reply))
            .unzip();
        match self.write(&jobs).await {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    async fn write(
        &self,
        jobs: &[(String, Option<Idempotency>, Op)],
    ) -> Result<Vec<Result<Outcome, IngestError>>, IngestError> {
        let db_err =
            |context: &'static str| move |e: sqlx::Error| IngestError::storage(context, &e);
        let mut conn = self.db.pool.acquire().await.map_err(db_err("acquire"))?;
        let mut tx = conn.begin().await.map_err(db_err("begin"))?;
        let postgres = self.db.backend == Backend::Postgres;
        let head = store::lock_head(&mut tx, postgres)
            .await
            .map_err(db_err("read chain head"))?;
        // Strictly increasing per commit, so `as_of` tells commits apart.
        let now = now_micros().max(head.last_micros + 1);

        // Idempotency: stored records, then keys repeated inside the group.
        let scoped: Vec<Option<String>> = jobs
            .iter()
            .map(|(p, idem, _)| idem.as_ref().map(|i| scoped_key(p, &i.key)))
            .collect();
        let wanted: Vec<String> = scoped.iter().flatten().cloned().collect();
        let stored: HashMap<String, IdempotencyRecord> = if wanted.is_empty() {
            HashMap::new()
        } else {
            store::idempotency_records(&mut tx, &wanted)
                .await
                .map_err(db_err("read idempotency keys"))?
                .into_iter()
                .map(|r| (r.scoped_key.clone(), r))
                .collect()
        };
        let mut first_in_group: HashMap<&str, usize> = HashMap::new();
        let mut plans = Vec::with_capacity(jobs.len());
        for (i, (_, idem, _)) in jobs.iter().enumerate() {
            let plan = match (idem, &scoped[i]) {
                (Some(idem), Some(sk)) => {
                    if let Some(rec) = stored.get(sk) {
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
                    } else if let Some(&j) = first_in_group.get(sk.as_str()) {
                        let same = jobs[j].1.as_ref().map(|x| x.fingerprint.as_str())
                            == Some(idem.fingerprint.as_str());
                        if same {
                            Plan::ReplayOf(j)
                        } else {
                            Plan::Conflict(idem.key.clone())
                        }
                    } else {
                        first_in_group.insert(sk, i);
                        Plan::Write
                    }
                }
                _ => Plan::Write,
            };
            plans.push(plan);
        }

        // Current versions of every key the writes touch.
        let mut keys: Vec<String> = Vec::new();
        for ((_, _, op), plan) in jobs.iter().zip(&plans) {
            if !matches!(plan, Plan::Write) {
                continue;
            }
            match op {
                Op::Values(values) => keys.extend(values.iter().map(new_vkey)),
                Op::Retract { target, .. } => keys.push(target.vkey()),
            }
        }
        keys.sort_unstable();
        keys.dedup();
        // vkey -> (current submission id, index of its version when written in this group)
        let mut current: HashMap<String, (i64, Option<usize>)> =
            store::current_of_keys(&mut tx, &keys)
                .await
                .map_err(db_err("read current values"))?
                .into_iter()
                .map(|(k, id)| (k, (id, None)))
                .collect();

        let mut rows: Vec<StoredRow> = Vec::new();
        let mut versions: Vec<Version> = Vec::new();
        let mut closes: Vec<i64> = Vec::new();
        let mut records: Vec<IdempotencyRecord> = Vec::new();
        let mut base = BaseChanges::new();
        let mut next_id = head.last_id + 1;
        let mut prev = head.last_hash.clone();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; jobs.len()];

        let mut close = |key: &str,
                         current: &mut HashMap<String, (i64, Option<usize>)>,
                         versions: &mut Vec<Version>,
                         only_if: Option<i64>| {
            if let Some(&(id, in_group)) = current.get(key) {
                if only_if.is_some_and(|want| want != id) {
                    return;
                }
                match in_group {
                    Some(ix) => versions[ix].valid_to = Some(now),
                    None => closes.push(id),
                }
                current.remove(key);
            }
        };

        for (i, ((principal, idem, op), plan)) in jobs.iter().zip(&plans).enumerate() {
            if !matches!(plan, Plan::Write) {
                continue;
            }
            let first = next_id;
            let key_text = idem.as_ref().map(|x| x.key.clone()).unwrap_or_default();
            match op {
                Op::Values(values) => {
                    for v in values {
                        let mut row = StoredRow {
                            id: next_id,
                            principal: principal.clone(),
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
                        close(&key, &mut current, &mut versions, None);
                        versions.push(Version {
                            submission_id: next_id,
                            vkey: key.clone(),
                            metric: v.metric.clone(),
                            region: v.region.clone(),
                            period: v.period.clone(),
                            department: v.department.clone(),
                            domain: v.domain.clone(),
                            task_id: v.task_id.clone(),
                            value: v.value.clone(),
                            valid_from: now,
                            valid_to: None,
                        });
                        current.insert(key, (next_id, Some(versions.len() - 1)));
                        note_change(&mut base, &row);
                        rows.push(row);
                        next_id += 1;
                    }
                }
                Op::Retract { target, reason } => {
                    let mut row = StoredRow {
                        id: next_id,
                        principal: principal.clone(),
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
                    // Only a retraction of the current value changes what is current; older
                    // superseded values do not come back.
                    close(&target.vkey(), &mut current, &mut versions, Some(target.id));
                    note_change(&mut base, &row);
                    rows.push(row);
                    next_id += 1;
                }
            }
            let last = next_id - 1;
            if let (Some(idem), Some(sk)) = (idem, &scoped[i]) {
                records.push(IdempotencyRecord {
                    scoped_key: sk.clone(),
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

        if !rows.is_empty() {
            store::insert_submissions(&mut tx, &rows)
                .await
                .map_err(db_err("insert submissions"))?;
            store::close_versions(&mut tx, &closes, now)
                .await
                .map_err(db_err("close superseded values"))?;
            store::insert_versions(&mut tx, &versions)
                .await
                .map_err(db_err("insert value versions"))?;
            store::insert_idempotency(&mut tx, &records)
                .await
                .map_err(db_err("insert idempotency keys"))?;
            let new_head = store::Head {
                last_id: next_id - 1,
                last_hash: prev,
                last_micros: now,
            };
            store::set_head(&mut tx, &new_head)
                .await
                .map_err(db_err("move chain head"))?;
            if let Some(channel) = &self.notify_channel {
                for payload in change_feed::payloads(&self.feed.origin, &base, now) {
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(channel.as_str())
                        .bind(payload)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err("notify"))?;
                }
            }
        }
        tx.commit().await.map_err(db_err("commit"))?;
        citycredit::counters::add_ingested_rows(u64::try_from(rows.len()).unwrap_or(0));
        if !base.is_empty() {
            self.feed.publish(&base, now);
        }

        let mut answers = Vec::with_capacity(jobs.len());
        for (i, plan) in plans.into_iter().enumerate() {
            answers.push(match plan {
                Plan::Write => outcomes[i]
                    .clone()
                    .ok_or_else(|| IngestError::internal("group commit", "missing outcome")),
                Plan::Replay(o) => Ok(*o),
                Plan::ReplayOf(j) => outcomes
                    .get(j)
                    .and_then(Option::as_ref)
                    .map(|o| Outcome {
                        replayed: true,
                        ..o.clone()
                    })
                    .ok_or_else(|| IngestError::internal("group commit", "missing outcome")),
                Plan::Conflict(key) => Err(IngestError::KeyConflict(key)),
            });
        }
        Ok(answers)
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
