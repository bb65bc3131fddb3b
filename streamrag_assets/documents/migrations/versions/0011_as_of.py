"""as of: when each document was first written and when it was tombstoned, so that a search can ask for the index as
it stood at an earlier time (`queries.AS_OF`). Both columns are added without a value for the rows already there (no
table rewrite: `first_indexed_at`'s default applies to new rows only); the as-of clause falls back to `indexed_at`.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE documents ADD COLUMN first_indexed_at timestamptz, ADD COLUMN deleted_at timestamptz")
    op.execute("ALTER TABLE documents ALTER COLUMN first_indexed_at SET DEFAULT clock_timestamp()")


def downgrade() -> None:
    op.execute("ALTER TABLE documents DROP COLUMN first_indexed_at, DROP COLUMN deleted_at")
