"""documents table with HNSW cosine index, full-text column and filter indexes; index dead letters

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "documents",
        sa.Column("doc_id", sa.String, primary_key=True),
        sa.Column("embedding", Vector(384), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("page_url", sa.Text),
        sa.Column("diff_url", sa.Text),
        sa.Column("wiki", sa.String, nullable=False),
        sa.Column("lang", sa.String, nullable=False),
        sa.Column("namespace", sa.Integer, nullable=False),
        sa.Column("type", sa.String, nullable=False),
        sa.Column("op", sa.String, nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("bot", sa.Boolean, nullable=False),
        sa.Column("quality_flags", postgresql.ARRAY(sa.String), nullable=False, server_default="{}"),
        sa.Column("content_hash", sa.String, nullable=False),
        sa.Column("event_id", sa.String, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True)),
        sa.Column("transform_version", sa.String, nullable=False),
        sa.Column("model_name", sa.String, nullable=False),
        sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default="false"),
        sa.Column(
            "search",
            postgresql.TSVECTOR,
            sa.Computed("to_tsvector('simple', coalesce(title, '') || ' ' || coalesce(text, ''))", persisted=True),
        ),
    )
    op.create_index(
        "documents_embedding_hnsw",
        "documents",
        ["embedding"],
        postgresql_using="hnsw",
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )
    op.create_index("documents_search_gin", "documents", ["search"], postgresql_using="gin")
    op.create_index("documents_wiki_title", "documents", ["wiki", "title"])
    op.create_index("documents_event_time", "documents", ["event_time"])
    op.create_index("documents_filters", "documents", ["lang", "namespace", "type", "bot"])
    op.create_table(
        "index_dead_letters",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("doc_id", sa.String, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("index_dead_letters")
    op.drop_table("documents")
