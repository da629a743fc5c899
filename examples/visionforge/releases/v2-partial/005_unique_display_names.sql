-- Release v2 (partial), second migration: display names must be present and unique. The
-- backfill of 004 gave most users the same one ("User"), so the unique index cannot be built:
-- this migration fails and rolls back, while 004 stays applied. The database is left half-way
-- between v1 and v2, which only a restore undoes.
ALTER TABLE users ALTER COLUMN display_name SET NOT NULL;
CREATE UNIQUE INDEX users_display_name_key ON users (display_name);
