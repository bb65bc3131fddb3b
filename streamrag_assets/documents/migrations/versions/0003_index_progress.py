"""index progress: the last micro-batch of each stream whose documents are committed, so the stream can index
Gold asynchronously and still resume exactly after a crash

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "index_progress",
        sa.Column("stream", sa.String, primary_key=True),
        sa.Column("batch_key", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("index_progress")
