"""alerting changes

Who changed what in alerting: every rule created, replaced, deleted, silenced or
unsilenced and every receiver created, replaced or deleted, with the actor and the spec,
kept in the transaction of the change (control_plane.alerts.store); and on each rule, who
last changed it.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("alert_rules", sa.Column("updated_by", sa.String(length=128), nullable=True))
    op.create_table(
        "alerting_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alerting_changes_kind_name", "alerting_changes", ["kind", "name", "id"])


def downgrade() -> None:
    op.drop_index("ix_alerting_changes_kind_name", table_name="alerting_changes")
    op.drop_table("alerting_changes")
    with op.batch_alter_table("alert_rules") as batch:
        batch.drop_column("updated_by")
