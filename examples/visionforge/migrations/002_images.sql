-- Release v1: uploaded images; an image belongs to a user and goes with them.
CREATE TABLE images (
    id            bigserial PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    filename      text NOT NULL,
    title         text,
    content_type  text NOT NULL DEFAULT 'image/jpeg',
    size_bytes    bigint NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX images_user_id_idx ON images (user_id);
