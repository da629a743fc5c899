-- Release v2 (failing): the first statements succeed, the last one refers to a column that
-- does not exist, so PostgreSQL aborts the migration and its transaction rolls back whole:
-- neither table tags nor images.tag_id is left behind.
CREATE TABLE tags (
    id    bigserial PRIMARY KEY,
    name  text NOT NULL UNIQUE
);
ALTER TABLE images ADD COLUMN tag_id bigint REFERENCES tags (id);
CREATE INDEX images_tag_idx ON images (tag);
