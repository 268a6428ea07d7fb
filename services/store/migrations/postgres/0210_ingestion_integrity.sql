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
CREATE FUNCTION submissions_retracted_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO retractions (target, by_id) VALUES (NEW.retracts, NEW.id);
  RETURN NULL;
END;
$$;
CREATE TRIGGER submissions_retracted_once AFTER INSERT ON submissions
FOR EACH ROW WHEN (NEW.retracts IS NOT NULL) EXECUTE FUNCTION submissions_retracted_once();

-- Until this migration, retracting the current value left the key without one; since, it
-- reopens the latest earlier value that is not retracted (an undo). Retractions stored before
-- keep the meaning they had when they were made (what scorecards and `as_of` answered then):
-- the value versions of a store written before this migration stay as they are, and
-- VerifyAuditChain rebuilds them with the rule of each retraction's time. The first
-- submission id under the new rule:
INSERT INTO store_meta (key, value)
SELECT 'ingestion.retraction_undo_from_id', CAST(last_id + 1 AS TEXT) FROM chain_head;

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
