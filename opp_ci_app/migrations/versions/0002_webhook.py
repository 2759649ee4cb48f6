"""Webhook ingest: projects.rules_version, bumped by triggers when rules or matrices change.

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BUMP = "UPDATE projects SET rules_version = rules_version + 1 WHERE id IN ({ids})"

SQLITE_TRIGGERS = {
    "trg_auto_test_rules_insert_version": ("AFTER INSERT ON auto_test_rules", "NEW.project_id"),
    "trg_auto_test_rules_update_version": ("AFTER UPDATE ON auto_test_rules", "OLD.project_id, NEW.project_id"),
    "trg_auto_test_rules_delete_version": ("AFTER DELETE ON auto_test_rules", "OLD.project_id"),
    "trg_test_matrices_update_version": ("AFTER UPDATE ON test_matrices", "OLD.project_id, NEW.project_id"),
}

PG_FUNCTION = """
CREATE FUNCTION opp_ci_bump_rules_version() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE projects SET rules_version = rules_version + 1 WHERE id = OLD.project_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE projects SET rules_version = rules_version + 1 WHERE id = NEW.project_id;
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""

PG_TRIGGERS = {
    "trg_auto_test_rules_version": "AFTER INSERT OR UPDATE OR DELETE ON auto_test_rules",
    "trg_test_matrices_version": "AFTER UPDATE ON test_matrices",
}


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch_op:
        batch_op.add_column(sa.Column("rules_version", sa.Integer(), nullable=False, server_default="0"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        for name, when in PG_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {when} FOR EACH ROW EXECUTE FUNCTION opp_ci_bump_rules_version()")
    else:
        for name, (when, ids) in SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {when} BEGIN {BUMP.format(ids=ids)}; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, when in PG_TRIGGERS.items():
            table = when.split(" ON ")[1]
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        op.execute("DROP FUNCTION IF EXISTS opp_ci_bump_rules_version()")
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    with op.batch_alter_table("projects") as batch_op:
        batch_op.drop_column("rules_version")
    if op.get_bind().dialect.name == "sqlite":
        # SQLite's batch mode rebuilds the table without expression indexes: put 0001's back.
        op.create_index(
            "uq_projects_github_owner_repo_lower",
            "projects",
            [sa.text("lower(github_owner)"), sa.text("lower(github_repo)")],
            unique=True,
        )
