"""inline rows: a document row (~2.4 kB: a 1.5 kB vector, text, full-text vector, URLs) stays in the table's page
instead of having its vector moved to the TOAST table. Over the default 2 kB target Postgres stores the vector apart
(pgvector's type is `STORAGE external`), and every search then reads each hit's vector back through the TOAST index
to compute its similarity: ~230 more buffer accesses per hybrid search at 100k documents, and inline rows cut
Postgres' CPU per hybrid search by ~45% (3.1 -> 1.7 ms; benchmarks/RESULTS.md, API latency eighth round).

Rows written before this migration stay as they are until they are written again (an upsert, a rename, a
tombstone) or pruned by retention; `VACUUM FULL documents` moves them all now, under an exclusive lock.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The largest target Postgres accepts (a page less its header): a row is only compressed or moved out of line when
# it would not fit a page.
INLINE_TARGET = 8160


def upgrade() -> None:
    op.execute(f"ALTER TABLE documents SET (toast_tuple_target = {INLINE_TARGET})")


def downgrade() -> None:
    op.execute("ALTER TABLE documents RESET (toast_tuple_target)")
