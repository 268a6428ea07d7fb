-- Ingestion integrity (issue 10).
--
-- A submission is retracted at most once. `retractions` holds, for each retracted submission,
-- the retraction that counts. A unique index on `submissions(retracts)` would say the same, but
-- a store written before this migration may hold several retractions of one submission (two
-- concurrent calls could both pass the old check) and creating that index would fail, leaving
-- the store unable to start. History is append-only, so those rows stay; the first retraction
-- of each submission is the one that counts and the later ones are no-ops (for the value
-- versions too: `audit_chain::rebuild`).
CREATE TABLE retractions (
    target BIGINT PRIMARY KEY NOT NULL, -- the retracted submission
    by_id  BIGINT NOT NULL UNIQUE       -- the retraction that counts (the first one)
);
INSERT INTO retractions (target, by_id)
SELECT retracts, MIN(id) FROM submissions WHERE retracts IS NOT NULL GROUP BY retracts;

-- Every retraction row inserted from now on enters `retractions` in the same statement, so a
-- second retraction of a submission fails on the primary key whoever inserts it (the writer
-- checks first, inside its transaction, and answers ALREADY_RETRACTED; this is the last line,
-- for a writer with a bug or two processes), and the table can never disagree with the chain.
CREATE TRIGGER submissions_retracted_once AFTER INSERT ON submissions
WHEN NEW.retracts IS NOT NULL
BEGIN
  INSERT INTO retractions (target, by_id) VALUES (NEW.retracts, NEW.id);
END;

-- Until this migration, retracting the current value left the key without one; since, it
-- reopens the latest earlier value that is not retracted (an undo). Retractions stored before
-- keep the meaning they had when they were made (what scorecards and `as_of` answered then):
-- the value versions of a store written before this migration stay as they are, and
-- VerifyAuditChain rebuilds them with the rule of each retraction's time. The first
-- submission id under the new rule:
INSERT INTO store_meta (key, value)
SELECT 'ingestion.retraction_undo_from_id', CAST(last_id + 1 AS TEXT) FROM chain_head;

-- PostgreSQL refuses NUL in text; SQLite would store it. The same input must get the same
-- answer on both databases, so SQLite refuses it too (the writer then names the field and
-- answers INVALID_ARGUMENT for that submission alone). Request validation refuses NUL long
-- before this; this is the last line.
CREATE TRIGGER submissions_refuse_nul BEFORE INSERT ON submissions
WHEN instr(CAST(NEW.principal AS BLOB), x'00') > 0
  OR instr(CAST(NEW.department AS BLOB), x'00') > 0
  OR instr(CAST(NEW.region AS BLOB), x'00') > 0
  OR instr(CAST(NEW.period AS BLOB), x'00') > 0
  OR instr(CAST(NEW.metric AS BLOB), x'00') > 0
  OR instr(CAST(NEW.domain AS BLOB), x'00') > 0
  OR instr(CAST(NEW.task_id AS BLOB), x'00') > 0
  OR instr(CAST(NEW.value AS BLOB), x'00') > 0
  OR instr(CAST(NEW.evidence_uri AS BLOB), x'00') > 0
  OR instr(CAST(NEW.note AS BLOB), x'00') > 0
  OR instr(CAST(NEW.idempotency_key AS BLOB), x'00') > 0
  OR instr(CAST(NEW.reason AS BLOB), x'00') > 0
BEGIN
  SELECT RAISE(ABORT, 'citycredit: refused NUL in a text column of submissions');
END;

-- Retracting the current value reopens the previous one as a new version row of that
-- submission, so a submission can have several versions (one per time it became current): the
-- key is (submission_id, valid_from). accepted_micros is the submission's own accept time
-- (valid_from is when the version became current). Versions valid for no instant (opened and
-- closed by one commit) are no longer stored; the old ones are dropped here (derived data: no
-- query could see them).
CREATE TABLE value_versions_0210 (
    submission_id   BIGINT NOT NULL,
    vkey            TEXT   NOT NULL,
    metric          TEXT   NOT NULL,
    region          TEXT   NOT NULL,
    period          TEXT   NOT NULL,
    department      TEXT   NOT NULL,
    domain          TEXT   NOT NULL,
    task_id         TEXT   NOT NULL,
    value           TEXT   NOT NULL,
    valid_from      BIGINT NOT NULL,
    valid_to        BIGINT,
    accepted_micros BIGINT NOT NULL,
    PRIMARY KEY (submission_id, valid_from)
);
INSERT INTO value_versions_0210 (submission_id, vkey, metric, region, period, department,
    domain, task_id, value, valid_from, valid_to, accepted_micros)
SELECT submission_id, vkey, metric, region, period, department, domain, task_id, value,
    valid_from, valid_to, valid_from
FROM value_versions WHERE valid_to IS NULL OR valid_to > valid_from;
DROP TABLE value_versions;
ALTER TABLE value_versions_0210 RENAME TO value_versions;
CREATE UNIQUE INDEX value_versions_current_key ON value_versions (vkey) WHERE valid_to IS NULL;
CREATE INDEX value_versions_current ON value_versions (period, region) WHERE valid_to IS NULL;
CREATE INDEX value_versions_as_of ON value_versions (period, region, valid_from);
