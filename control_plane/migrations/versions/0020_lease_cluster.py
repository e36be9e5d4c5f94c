"""lease cluster

The Ray cluster (its session) of the control loops' lease holder: `modelplane up` on
another cluster, with the same store, made its control plane lead every endpoint there
once the first one restarted, and left the first cluster's unreconciled.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("leases", sa.Column("cluster", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("cluster")
