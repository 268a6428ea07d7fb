-- The department registry: the city's organisation, principals and API keys, and a log of
-- every write. Seeded from the city file on first start; only the registry writes these tables.

CREATE TABLE regions (
    code          TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL,
    parent        TEXT REFERENCES regions (code),
    create_micros BIGINT NOT NULL
);

CREATE TABLE departments (
    code          TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL,
    -- Other names, one per line.
    aliases       TEXT NOT NULL DEFAULT '',
    governs       TEXT REFERENCES regions (code),
    create_micros BIGINT NOT NULL
);

CREATE TABLE dept_groups (
    code TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL
);

CREATE TABLE group_members (
    group_code TEXT NOT NULL REFERENCES dept_groups (code),
    department TEXT NOT NULL REFERENCES departments (code),
    position   BIGINT NOT NULL,
    PRIMARY KEY (group_code, department)
);

-- subject: an indicator or item code; party: a department or group code; position 0 leads.
CREATE TABLE responsibilities (
    subject  TEXT NOT NULL,
    party    TEXT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (subject, party)
);

-- Domains administrators registered in open domain sets.
CREATE TABLE registered_domains (
    domain_set    TEXT NOT NULL,
    code          TEXT NOT NULL,
    name          TEXT NOT NULL,
    create_micros BIGINT NOT NULL,
    PRIMARY KEY (domain_set, code)
);

CREATE TABLE principals (
    id            TEXT PRIMARY KEY NOT NULL,
    display_name  TEXT NOT NULL,
    role          TEXT NOT NULL,
    department    TEXT REFERENCES departments (code),
    create_micros BIGINT NOT NULL
);

-- Only a SHA-256 hash of each key is kept; the prefix is its visible, loggable name.
CREATE TABLE api_keys (
    prefix        TEXT PRIMARY KEY NOT NULL,
    principal     TEXT NOT NULL REFERENCES principals (id),
    key_hash      BLOB NOT NULL,
    create_micros BIGINT NOT NULL,
    expire_micros BIGINT,
    revoke_micros BIGINT
);

CREATE TABLE registry_changes (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    principal     TEXT NOT NULL,
    action        TEXT NOT NULL,
    resource      TEXT NOT NULL,
    detail        TEXT NOT NULL,
    change_micros BIGINT NOT NULL
);
