"""store identity (ownership of Serve applications) and token subjects

A store has one identity row, created on first start: every Serve application the store's
control plane creates carries it, and a control plane never changes applications of
another identity. A token carries the subject (person or service) it was issued to, so
that rules such as "the approver is not the registrant" compare people, not token names.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "store_identity",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("store_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("store_id"),
    )
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("subject", sa.String(length=128), nullable=True))
    # Existing tokens were issued to whoever holds them: their name is the best subject known.
    op.execute("UPDATE api_tokens SET subject = name WHERE subject IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("subject")
    op.drop_table("store_identity")
