-- Opaque keys compared byte by byte (issue 15: ingest throughput).
--
-- `vkey` (value_versions, value_keys) and `idempotency.scoped_key` are keys the platform builds
-- itself; they are only ever compared for equality (lookups and the as_of join), never sorted for
-- a reader. Under the database's collation every comparison inside their indexes goes through the
-- C library's strcoll on copied, NUL-terminated strings (PostgreSQL takes its byte-wise fast path
-- only for the "C" and "POSIX" collations, not for C.UTF-8 or en_US.UTF-8); each value written
-- inserts into four such indexes. Under "C" they compare bytes. Equality is the same under any
-- deterministic collation, so every read answers as before; only the order inside these indexes
-- changes, and nothing reads them in order. The indexes are rebuilt by these statements.
ALTER TABLE value_versions ALTER COLUMN vkey TYPE TEXT COLLATE "C";
ALTER TABLE value_keys ALTER COLUMN vkey TYPE TEXT COLLATE "C";
ALTER TABLE idempotency ALTER COLUMN scoped_key TYPE TEXT COLLATE "C";
