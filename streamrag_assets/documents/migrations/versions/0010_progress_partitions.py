"""index progress per partition: the offset and the newest ingest and event times the indexed batches reached in
each partition of the topic, recorded in the index transactions (`documents.progress`), from which the API tells
every response how current it is (a true low watermark).

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE index_progress ADD COLUMN partitions jsonb NOT NULL DEFAULT '{}'")


def downgrade() -> None:
    op.execute("ALTER TABLE index_progress DROP COLUMN partitions")
