-- Reminders and notifications (owned by services/notify): webhook subscriptions, the outbox of
-- notices, one delivery per notice and subscription, the items waiting for a daily digest, and
-- the last outcome seen per basic indicator (so a restart does not announce a FAIL again).

-- Webhook subscriptions. A deleted one keeps its row (deleted_micros): its deliveries name it.
CREATE TABLE notify_subscriptions (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    -- A department code, 'credit_office', or '*' for every recipient.
    recipient      TEXT   NOT NULL,
    url            TEXT   NOT NULL,
    -- 'JSON' | 'DINGTALK'
    format         TEXT   NOT NULL,
    -- The HMAC secret: write-only through the API.
    secret         TEXT   NOT NULL,
    -- 'EACH' | 'DAILY_DIGEST'
    mode           TEXT   NOT NULL,
    created_by     TEXT   NOT NULL,
    create_micros  BIGINT NOT NULL,
    deleted_micros BIGINT
);

-- The outbox: every notice, once (dedupe_key is unique; enqueueing it again does nothing).
CREATE TABLE notify_notices (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe_key    TEXT   NOT NULL UNIQUE,
    kind          TEXT   NOT NULL,
    -- A department code or 'credit_office'.
    recipient     TEXT   NOT NULL,
    title_zh      TEXT   NOT NULL,
    body_zh       TEXT   NOT NULL,
    title_en      TEXT   NOT NULL,
    body_en       TEXT   NOT NULL,
    payload       TEXT   NOT NULL,
    create_micros BIGINT NOT NULL
);
CREATE INDEX notify_notices_recipient ON notify_notices (recipient, id);

-- One notice to one subscription. Pending: delivered_micros and dead_micros both NULL; the
-- worker claims a due one by moving next_micros past a lease and counting the attempt, so a
-- delivery claimed by a process that died is attempted again once the lease is over.
CREATE TABLE notify_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    notice_id        BIGINT NOT NULL REFERENCES notify_notices (id),
    subscription_id  BIGINT NOT NULL REFERENCES notify_subscriptions (id),
    attempts         BIGINT NOT NULL,
    next_micros      BIGINT NOT NULL,
    delivered_micros BIGINT,
    dead_micros      BIGINT,
    last_error       TEXT   NOT NULL,
    UNIQUE (notice_id, subscription_id)
);
CREATE INDEX notify_deliveries_due ON notify_deliveries (next_micros)
    WHERE delivered_micros IS NULL AND dead_micros IS NULL;

-- Notices waiting for a DAILY_DIGEST subscription's summary of their day (Asia/Shanghai,
-- YYYY-MM-DD); digest_id is the digest notice that carried them.
CREATE TABLE notify_digest_items (
    subscription_id BIGINT NOT NULL REFERENCES notify_subscriptions (id),
    notice_id       BIGINT NOT NULL REFERENCES notify_notices (id),
    day             TEXT   NOT NULL,
    digest_id       BIGINT,
    PRIMARY KEY (subscription_id, notice_id)
);

-- The last outcome the notifier saw per basic indicator, region and period ('PASS', 'FAIL',
-- 'NO_DATA'): a FAIL is announced when it follows another outcome or none, once.
CREATE TABLE notify_outcomes (
    region        TEXT   NOT NULL,
    period        TEXT   NOT NULL,
    indicator     TEXT   NOT NULL,
    outcome       TEXT   NOT NULL,
    update_micros BIGINT NOT NULL,
    PRIMARY KEY (region, period, indicator)
);
