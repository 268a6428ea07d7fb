-- The replay guard shared by every replica of a service: the nonce of each internal identity
-- that changed state, kept until its window has passed (then pruned by time).
CREATE TABLE identity_nonces (
    nonce TEXT PRIMARY KEY,
    expire_micros BIGINT NOT NULL
);
CREATE INDEX identity_nonces_expire ON identity_nonces (expire_micros);
