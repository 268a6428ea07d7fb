-- The replay guard shared by every replica of a service: the nonce of each internal identity
-- that changed state, kept until its window has passed (then pruned by time).
-- UNLOGGED: a claim costs a round trip, not a WAL flush (about 6 ms here with WAL, the cost of
-- a commit). The price: a PostgreSQL crash empties the table, so an identity issued in the
-- 30 s before the crash could be presented once more on another replica; with mTLS between
-- the gateway and the services none can be captured to begin with.
CREATE UNLOGGED TABLE identity_nonces (
    nonce TEXT PRIMARY KEY,
    expire_micros BIGINT NOT NULL
);
CREATE INDEX identity_nonces_expire ON identity_nonces (expire_micros);
