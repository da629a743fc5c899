-- migrate:no-transaction
-- Release v2 (invalid index): one file name per user, built without blocking writes.
-- On data with duplicate (user_id, filename) pairs (seed.py makes them) the build fails
-- and PostgreSQL leaves the index behind marked invalid (pg_index.indisvalid = false).
CREATE UNIQUE INDEX CONCURRENTLY images_user_filename_key ON images (user_id, filename);
