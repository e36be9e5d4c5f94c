"""labeler token endpoints

A label source's token may name the one endpoint whose feedback it posts: labels steer that
endpoint's accuracy gate, so a leaked token of one label source steers no other endpoint
(serving.feedback_auth). Tokens from before name none and keep posting to any endpoint.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_tokens", sa.Column("endpoint", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("endpoint")
