"""registrant and approver subjects; a rollout's pending follow-ups

The rule "the approver is not the registrant" compares subjects (the person or service a
token was issued to), so a version records its registrant's subject and an approval its
approver's. A rollout that ends records the follow-ups still owed (reject the candidate,
raise the rollback alert) in the same transaction as its terminal state, so the next pass
after a crash finishes them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("created_by_subject", sa.String(length=128), nullable=True))
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("approver_subject", sa.String(length=128), nullable=True))
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("followups", sa.JSON(), nullable=True))
    # Before subjects existed the token's name stood for its holder: take the subject of the
    # token of that name where it still exists, the name itself otherwise.
    for table, name_column, subject_column in (
            ("model_versions", "created_by", "created_by_subject"),
            ("approvals", "approver", "approver_subject")):
        op.execute(
            f"UPDATE {table} SET {subject_column} = COALESCE("
            f"(SELECT api_tokens.subject FROM api_tokens WHERE api_tokens.name = "
            f"{table}.{name_column}), {table}.{name_column})")


def downgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("followups")
    with op.batch_alter_table("approvals") as batch:
        batch.drop_column("approver_subject")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("created_by_subject")
