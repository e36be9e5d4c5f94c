"""pipeline authors

The subject of whoever last applied a pipeline's spec (its training code and data), kept
on the pipeline and on each run (a run keeps the spec it began with): a run's job token
acts for that subject, so the versions it registers are the author's, and the author
cannot approve them (control_plane.pipelines).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("pipelines", "pipeline_runs"):
        op.add_column(table, sa.Column("author_subject", sa.String(length=128), nullable=True))
    # Who last applied a spec was not kept: its creator is the author known, by the subject
    # of the token of that name where it still exists, the name itself otherwise. Runs
    # under way act for their pipeline's.
    op.execute(
        "UPDATE pipelines SET author_subject = COALESCE((SELECT api_tokens.subject FROM "
        "api_tokens WHERE api_tokens.name = pipelines.created_by), pipelines.created_by)")
    op.execute(
        "UPDATE pipeline_runs SET author_subject = (SELECT pipelines.author_subject FROM "
        "pipelines WHERE pipelines.name = pipeline_runs.pipeline)")


def downgrade() -> None:
    for table in ("pipelines", "pipeline_runs"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("author_subject")
