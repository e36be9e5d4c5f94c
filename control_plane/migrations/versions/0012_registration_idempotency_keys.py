"""registration idempotency keys

A registration may carry a key of the registrant's: asked again with it (an answer lost
to a timeout or a restart), the registry answers the version it registered rather than a
second one (control_plane.registry).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("model_versions", sa.Column("idempotency_key", sa.String(length=64),
                                              nullable=True))
    op.create_index("uq_model_version_idempotency_key", "model_versions",
                    ["model_id", "idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_model_version_idempotency_key", table_name="model_versions")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("idempotency_key")
