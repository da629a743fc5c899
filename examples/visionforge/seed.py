"""Insert sample VisionForge data: users, their images, and an audit_log row for each.

    python examples/visionforge/seed.py --dsn DSN --users N --images M

Users get new e-mail addresses on every run (``userK@example.com``, K after the existing
count), so seeding twice adds more rows. Images go round-robin to all users, and each user's
file names cycle through ``image-0.jpg`` .. ``image-2.jpg``: a user with four images or more
has duplicate file names, which is what ``releases/v2-invalid-index`` trips over.
Everything is inserted in one transaction.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import psycopg
from psycopg.rows import TupleRow

Conn = psycopg.Connection[TupleRow]

INSERT_USERS = """
WITH new_users AS (
    INSERT INTO users (email, name)
    SELECT 'user' || g || '@example.com', 'User ' || g
    FROM generate_series(%(first)s::bigint, %(first)s::bigint + %(count)s - 1) AS g
    RETURNING id
)
INSERT INTO audit_log (user_id, action, entity, entity_id, detail)
SELECT id, 'user.create', 'user', id, '{"source": "seed"}'::jsonb FROM new_users
"""

INSERT_IMAGES = """
WITH owners AS (
    SELECT array_agg(id ORDER BY id) AS ids, count(*) AS n FROM users
), new_images AS (
    INSERT INTO images (user_id, filename, title, content_type, size_bytes)
    SELECT owners.ids[1 + g %% owners.n],
           'image-' || ((g / owners.n) %% 3) || '.jpg',
           'Picture ' || g,
           'image/jpeg',
           (g * 7919) %% 5000000
    FROM owners, generate_series(0, %(count)s - 1) AS g
    RETURNING id, user_id
)
INSERT INTO audit_log (user_id, action, entity, entity_id, detail)
SELECT user_id, 'image.create', 'image', id, '{"source": "seed"}'::jsonb FROM new_images
"""


def seed(conn: Conn, users: int, images: int) -> None:
    with conn.transaction():
        row = conn.execute("SELECT count(*) FROM users").fetchone()
        existing = int(row[0]) if row else 0
        if users:
            conn.execute(INSERT_USERS, {"first": existing + 1, "count": users})
        if images:
            if existing + users == 0:
                raise ValueError("images need at least one user: pass --users")
            conn.execute(INSERT_IMAGES, {"count": images})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Insert sample VisionForge data.")
    parser.add_argument("--dsn", required=True, help="libpq connection string")
    parser.add_argument("--users", type=int, default=10, help="users to add (default 10)")
    parser.add_argument("--images", type=int, default=50, help="images to add (default 50)")
    args = parser.parse_args(argv)
    if args.users < 0 or args.images < 0:
        parser.error("--users and --images must be >= 0")
    try:
        with psycopg.connect(args.dsn, connect_timeout=5, application_name="visionforge-seed",
                             options="-c statement_timeout=600000") as conn:
            seed(conn, args.users, args.images)
    except (psycopg.Error, ValueError) as exc:
        print(f"seed: {str(exc).strip()}", file=sys.stderr)
        return 1
    print(f"seeded {args.users} users and {args.images} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
