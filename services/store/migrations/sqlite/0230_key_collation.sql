-- Opaque keys compared byte by byte (issue 15). PostgreSQL moves `vkey` and
-- `idempotency.scoped_key` to the "C" collation here; SQLite's default collation (BINARY)
-- compares bytes already, so there is nothing to change.
SELECT 1;
