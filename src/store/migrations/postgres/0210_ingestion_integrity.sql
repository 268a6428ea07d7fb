-- Ingestion integrity (issue 10).
--
-- A submission is retracted at most once. The writer checks inside its transaction; this
-- index makes a second retraction impossible even for a writer with a bug, or two processes.
DROP INDEX submissions_retracts;
CREATE UNIQUE INDEX submissions_retracted_once ON submissions (retracts) WHERE retracts IS NOT NULL;

-- (SQLite gets a trigger refusing NUL in text here; PostgreSQL refuses it by itself.)

-- Retracting the current value reopens the previous one as a new version row of that
-- submission, so a submission can have several versions (one per time it became current): the
-- key is (submission_id, valid_from). accepted_micros is the submission's own accept time
-- (valid_from is when the version became current). Versions valid for no instant (opened and
-- closed by one commit) are no longer stored; the old ones are dropped here (derived data: no
-- query could see them).
DELETE FROM value_versions WHERE valid_to IS NOT NULL AND valid_to <= valid_from;
ALTER TABLE value_versions ADD COLUMN accepted_micros BIGINT;
UPDATE value_versions SET accepted_micros = valid_from;
ALTER TABLE value_versions ALTER COLUMN accepted_micros SET NOT NULL;
ALTER TABLE value_versions DROP CONSTRAINT value_versions_pkey;
ALTER TABLE value_versions ADD PRIMARY KEY (submission_id, valid_from);
