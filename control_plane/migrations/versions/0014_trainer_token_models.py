"""trainer token models

A training job's token names the one model it trains: it registers versions of that model
and points that model's aliases, and no other's (control_plane.auth, control_plane.registry).
Tokens from before carry none and keep their wider reach until they expire.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_tokens", sa.Column("model", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("model")
