"""Matrix runs that GitHub is not told of (test-webhook), and runs looked up by project and commit.

Revision ID: 0003
Revises: 0002
"""

from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (with a constant default) works on SQLite too: no table rebuild.
    op.add_column("test_matrix_runs", sa.Column("report_to_github", sa.Boolean(), nullable=False, server_default=sa.true()))
    op.create_index("ix_test_runs_project_commit", "test_runs", ["project_id", "github_commit_sha"])


def downgrade() -> None:
    op.drop_index("ix_test_runs_project_commit", table_name="test_runs")
    with op.batch_alter_table("test_matrix_runs") as batch_op:
        batch_op.drop_column("report_to_github")
