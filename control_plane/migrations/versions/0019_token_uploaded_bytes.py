"""token uploaded bytes

What a trainer token uploaded to the artifact store, counted against its allowance
(``MODELPLANE_TRAINER_UPLOAD_MB``): a leaked job token uploaded without end.

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


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("uploaded_bytes")
