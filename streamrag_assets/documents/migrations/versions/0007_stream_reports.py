"""stream reports: the continuous query's summaries for Dagster go through Postgres (`stream_reports`), read and
removed by a sensor in the code location, instead of the stream's process loading Dagster to write them itself
(~50 MiB of that process, measured).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stream_reports",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("events", JSONB, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("stream_reports")
