-- Ingestion integrity (issue 10).
--
-- A submission is retracted at most once. The writer checks inside its transaction; this
-- index makes a second retraction impossible even for a writer with a bug, or two processes.
DROP INDEX submissions_retracts;
CREATE UNIQUE INDEX submissions_retracted_once ON submissions (retracts) WHERE retracts IS NOT NULL;

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
