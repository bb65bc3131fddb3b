"""pipeline heartbeats: each long-running component's last sign of life and status, for /health; an index on
documents.indexed_at for the freshness figures and the live feed

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pipeline_heartbeats",
        sa.Column("component", sa.String, primary_key=True),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("detail", postgresql.JSONB, nullable=False, server_default="{}"),
    )
    op.create_index("documents_indexed_at", "documents", ["indexed_at"])


def downgrade() -> None:
    op.drop_index("documents_indexed_at", "documents")
    op.drop_table("pipeline_heartbeats")
