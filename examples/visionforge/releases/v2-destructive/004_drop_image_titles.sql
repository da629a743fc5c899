-- Release v2 (destructive): it succeeds, and the data is gone for good.
-- "Titles move to a separate service": every image title is dropped with its column.
ALTER TABLE images DROP COLUMN title;
-- "Keep 30 days of audit log": the sign is wrong (meant now() - interval '30 days'),
-- so every audit_log row is deleted.
DELETE FROM audit_log WHERE created_at < now() + interval '30 days';
