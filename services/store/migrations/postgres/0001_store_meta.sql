-- Facts about the store itself, e.g. which city file seeded it and when.
CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
