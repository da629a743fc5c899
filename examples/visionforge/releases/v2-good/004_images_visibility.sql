-- Release v2 (good): a new column with a default; existing rows and the v1 app are unaffected.
ALTER TABLE images ADD COLUMN visibility text NOT NULL DEFAULT 'private';
