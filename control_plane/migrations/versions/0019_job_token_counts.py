"""job token counts

What a trainer token uploaded to the artifact store and the metric points it logged,
counted against its allowances (``MODELPLANE_TRAINER_UPLOAD_MB``, and
``control_plane.tracking.MAX_TRAINER_METRIC_POINTS``): a leaked job token uploaded and
logged without end.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_tokens", sa.Column("uploaded_bytes", sa.BigInteger(), nullable=False,
                                          server_default="0"))
    op.add_column("api_tokens", sa.Column("metric_points", sa.BigInteger(), nullable=False,
                                          server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("metric_points")
        batch.drop_column("uploaded_bytes")
