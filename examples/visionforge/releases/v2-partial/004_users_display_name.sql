-- Release v2 (partial), first migration: every user gets a display name, backfilled from
-- the name. It succeeds and is recorded in knex_migrations: the schema and every users row
-- are changed.
ALTER TABLE users ADD COLUMN display_name text;
UPDATE users SET display_name = split_part(name, ' ', 1);
