-- The review cycle's sign-off (services/review): one row per (department, region, period) part
-- that ever left OPEN, its state and revision; every transition appends an event; lock
-- exceptions let writes through an approved or closed part. Ingestion's write gate reads
-- `review_signoffs`, `review_deadlines` (0300) and `review_lock_exceptions` inside the writer's
-- transaction and marks an exception used in it.

-- The current state of a part: SUBMITTED, APPROVED, RETURNED or OPEN (after an unapproval; no
-- row means OPEN too). `revision` counts its transitions: a transition is a compare-and-set on
-- (state, revision), and its event's primary key refuses a second event of one revision.
CREATE TABLE review_signoffs (
    department_code TEXT NOT NULL,
    region          TEXT NOT NULL,
    period          TEXT NOT NULL,
    state           TEXT NOT NULL,
    revision        BIGINT NOT NULL,
    update_micros   BIGINT NOT NULL,
    PRIMARY KEY (department_code, region, period)
);

-- Every transition, append-only: who (principal id), when, why (a return's comment, an
-- unapproval's reason), from which state to which.
CREATE TABLE review_events (
    department_code TEXT NOT NULL,
    region          TEXT NOT NULL,
    period          TEXT NOT NULL,
    revision        BIGINT NOT NULL,
    transition      TEXT NOT NULL,
    from_state      TEXT NOT NULL,
    to_state        TEXT NOT NULL,
    principal       TEXT NOT NULL,
    event_micros    BIGINT NOT NULL,
    comment         TEXT NOT NULL,
    PRIMARY KEY (department_code, region, period, revision)
);
CREATE INDEX review_events_time ON review_events (event_micros);

-- The history of cycles and their deadlines, append-only: the creation and every SetDeadlines
-- with the deadlines it set (JSON), since `review_deadlines` holds only the current ones.
CREATE TABLE review_cycle_events (
    cycle_id     TEXT NOT NULL REFERENCES review_cycles (id),
    seq          BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    principal    TEXT NOT NULL,
    event_micros BIGINT NOT NULL,
    detail       TEXT NOT NULL,
    PRIMARY KEY (cycle_id, seq)
);

-- An administrator's lock exception: writes to exactly (department, region, period) pass the
-- gate until `expire_micros` or until one write (one SubmitValue, SubmitBatch or retraction)
-- used it (`used_micros`, `used_by`: the first submission id it let through).
CREATE TABLE review_lock_exceptions (
    id              TEXT PRIMARY KEY NOT NULL,
    department_code TEXT NOT NULL,
    region          TEXT NOT NULL,
    period          TEXT NOT NULL,
    reason          TEXT NOT NULL,
    granted_by      TEXT NOT NULL,
    grant_micros    BIGINT NOT NULL,
    expire_micros   BIGINT NOT NULL,
    used_micros     BIGINT,
    used_by         BIGINT
);
CREATE INDEX review_lock_exceptions_part ON review_lock_exceptions (department_code, region, period);
