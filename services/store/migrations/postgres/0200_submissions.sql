-- Ingestion (owned by services/ingestion). Append-only submissions linked in a SHA-256 chain;
-- value_versions is derived from them in the same transaction (current values have
-- valid_to NULL); chain_head is the one row the single writer reads and moves.
CREATE TABLE submissions (
    id              BIGINT PRIMARY KEY NOT NULL, -- assigned by the writer: head + 1, contiguous
    principal       TEXT    NOT NULL,
    department      TEXT    NOT NULL,
    region          TEXT    NOT NULL,
    period          TEXT    NOT NULL,
    metric          TEXT    NOT NULL,
    domain          TEXT    NOT NULL,
    task_id         TEXT    NOT NULL,
    value           TEXT    NOT NULL, -- canonical text ("" for a retraction)
    evidence_uri    TEXT    NOT NULL,
    note            TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    accept_micros   BIGINT  NOT NULL,
    kind            TEXT    NOT NULL, -- 'value' | 'retraction'
    retracts        BIGINT,
    reason          TEXT    NOT NULL,
    prev_hash       TEXT    NOT NULL,
    hash            TEXT    NOT NULL
);
CREATE INDEX submissions_filter ON submissions (period, region, metric);
CREATE INDEX submissions_retracts ON submissions (retracts) WHERE retracts IS NOT NULL;

CREATE TABLE value_versions (
    submission_id BIGINT PRIMARY KEY NOT NULL,
    vkey          TEXT   NOT NULL, -- canonical (metric, region, period, department, domain, task_id)
    metric        TEXT   NOT NULL,
    region        TEXT   NOT NULL,
    period        TEXT   NOT NULL,
    department    TEXT   NOT NULL,
    domain        TEXT   NOT NULL,
    task_id       TEXT   NOT NULL,
    value         TEXT   NOT NULL,
    valid_from    BIGINT NOT NULL,
    valid_to      BIGINT
);
CREATE UNIQUE INDEX value_versions_current_key ON value_versions (vkey) WHERE valid_to IS NULL;
CREATE INDEX value_versions_current ON value_versions (period, region) WHERE valid_to IS NULL;
CREATE INDEX value_versions_as_of ON value_versions (period, region, valid_from);

CREATE TABLE idempotency (
    scoped_key    TEXT   PRIMARY KEY NOT NULL, -- length-prefixed principal and key
    fingerprint   TEXT   NOT NULL,
    first_id      BIGINT NOT NULL,
    last_id       BIGINT NOT NULL,
    accept_micros BIGINT NOT NULL
);

CREATE TABLE chain_head (
    id            BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    last_id       BIGINT NOT NULL,
    last_hash     TEXT   NOT NULL,
    last_micros   BIGINT NOT NULL
);
INSERT INTO chain_head (id, last_id, last_hash, last_micros)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0);
