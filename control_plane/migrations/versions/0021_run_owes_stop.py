"""run owes stop

An indexed flag on pipeline runs whose stage's work is owed a stop, so the control loop
finds each one however many runs ended after it (it scanned the newest 500 ended runs of
the last day, and an owed stop older than those was never tried again).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pipeline_runs") as batch:
        batch.add_column(sa.Column("owes_stop", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.create_index("ix_pipeline_runs_owes_stop", ["owes_stop"])
    runs = sa.table("pipeline_runs", sa.column("id", sa.Integer), sa.column("state", sa.String),
                    sa.column("stages", sa.JSON), sa.column("owes_stop", sa.Boolean))
    connection = op.get_bind()
    ended = connection.execute(sa.select(runs.c.id, runs.c.stages).where(
        runs.c.state.in_(("cancelled", "failed")))).all()
    for run_id, stages in ended:
        if isinstance(stages, str):
            stages = json.loads(stages)
        if any(isinstance(stage, dict) and stage.get("stop_owed") for stage in stages or []):
            connection.execute(sa.update(runs).where(runs.c.id == run_id).values(owes_stop=True))


def downgrade() -> None:
    with op.batch_alter_table("pipeline_runs") as batch:
        batch.drop_index("ix_pipeline_runs_owes_stop")
        batch.drop_column("owes_stop")
