-- Value keys for as_of reads (issue 15).
--
-- A read "as of t" wants, for each value key at some periods and regions, the version valid at
-- t. Walking every version of those periods and regions costs the whole history; instead
-- `value_keys` lists each key once (with its period and region), and the version valid at t is
-- the one of that key with the latest valid_from <= t (a key's intervals never overlap: a new
-- version closes the old one as it opens, a retraction closes without a successor), kept when
-- it is still open at t. One index lookup per key: O(keys x log versions).
CREATE TABLE value_keys (
    vkey   TEXT NOT NULL PRIMARY KEY, -- canonical (metric, region, period, department, domain, task_id)
    period TEXT NOT NULL,
    region TEXT NOT NULL
);
INSERT INTO value_keys (vkey, period, region)
SELECT DISTINCT vkey, period, region FROM value_versions;
CREATE INDEX value_keys_period_region ON value_keys (period, region);

-- The latest version of a key at t; submission_id orders two versions opened at the same
-- instant (the first one closed at once). It replaces (period, region, valid_from), which only
-- the old as_of read used: one index fewer to maintain on the history table.
CREATE INDEX value_versions_key_from ON value_versions (vkey, valid_from, submission_id);
DROP INDEX value_versions_as_of;
