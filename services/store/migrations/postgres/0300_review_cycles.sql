-- Evaluation cycles (the review cycle): the year's work towards the review, scored by one pinned
-- rule version (a catalog version; a later catalog does not change it), covering some periods,
-- with a review date, the grace days after a deadline before writes close, and the days after a
-- period's end within which a value counts as on time. Owned by the review service
-- (services/review); ingestion's write gate and the notifier read it.
CREATE TABLE review_cycles (
    id             TEXT PRIMARY KEY NOT NULL,
    title          TEXT NOT NULL,
    rule_version   TEXT NOT NULL,
    -- The periods the cycle covers, one per line (YYYY, YYYY-Qn or YYYY-MM).
    periods        TEXT NOT NULL,
    -- The review date, YYYY-MM-DD (Asia/Shanghai).
    review_date    TEXT NOT NULL,
    grace_days     BIGINT NOT NULL,
    on_time_days   BIGINT NOT NULL,
    created_by     TEXT NOT NULL,
    create_micros  BIGINT NOT NULL
);

-- Deadlines and milestones of a cycle (E11.3 "明确责任单位和进度要求"): a department owes its
-- figures for `period` by `due_micros`. `subject` is '' for everything the department reports
-- for the period, else one metric key or one task id, whose own deadline then applies to it.
CREATE TABLE review_deadlines (
    cycle_id        TEXT NOT NULL REFERENCES review_cycles (id),
    department_code TEXT NOT NULL,
    subject         TEXT NOT NULL,
    period          TEXT NOT NULL,
    due_micros      BIGINT NOT NULL,
    milestone       TEXT NOT NULL,
    PRIMARY KEY (cycle_id, department_code, subject, period)
);
CREATE INDEX review_deadlines_due ON review_deadlines (due_micros);
