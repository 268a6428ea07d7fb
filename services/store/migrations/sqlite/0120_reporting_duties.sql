-- Explicit reporting duties (rulebook v2 section 9): a department or group (party) is expected
-- to report the metrics for the regions, each list one code per line. Seeded from the city file;
-- administrators add and remove them through the registry.
CREATE TABLE reporting_duties (
    id            TEXT PRIMARY KEY NOT NULL,
    party         TEXT NOT NULL,
    metrics       TEXT NOT NULL,
    regions       TEXT NOT NULL,
    create_micros BIGINT NOT NULL
);
