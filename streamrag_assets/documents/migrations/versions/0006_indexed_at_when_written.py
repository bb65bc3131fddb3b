"""indexed_at when written: a document's `indexed_at` defaults to the time its row is written (`clock_timestamp()`)
instead of the time its transaction began (`now()`). The stream's micro-batch embeds, waits for Gold and only then
writes, in one transaction: with `now()` each document dated from before that work, and /freshness, the UI and
`streamrag_*` figures computed from `indexed_at - ingested_at` understated ingested -> searchable by the batch's
embedding and Gold wait (~0.5-0.8 s a batch at 50 events/s; 23 s for the first batch after `up`, measured).

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE documents ALTER COLUMN indexed_at SET DEFAULT clock_timestamp()")


def downgrade() -> None:
    op.execute("ALTER TABLE documents ALTER COLUMN indexed_at SET DEFAULT now()")
