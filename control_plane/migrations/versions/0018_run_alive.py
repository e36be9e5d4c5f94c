"""run alive

When a run's job driver last said it was alive (``POST /runs/{id}/alive``, once a minute):
a run whose driver fell silent on another host, or whose job another Ray cluster ran, was
left ``running`` for good, its job's end unseen by the control plane's sweep.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("alive_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("alive_at")
