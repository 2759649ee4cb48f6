"""Core tables: projects, matrices, rules, runs, deliveries, tokens, installations, GitHub calls.

Revision ID: 0001
Revises: 
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=True),
    sa.Column('role', sa.Enum('readonly', 'worker', 'admin', name='token_role', native_enum=False, length=20), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash'))
    )
    op.create_table('installations',
    sa.Column('id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('account_login', sa.String(length=100), nullable=False),
    sa.Column('account_type', sa.String(length=20), nullable=True),
    sa.Column('repositories', sa.JSON(), nullable=False),
    sa.Column('suspended', sa.Boolean(), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_installations'))
    )
    op.create_table('projects',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('github_owner', sa.String(length=100), nullable=False),
    sa.Column('github_repo', sa.String(length=100), nullable=False),
    sa.Column('installation_id', sa.BigInteger(), nullable=True),
    sa.Column('default_branch', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_projects')),
    sa.UniqueConstraint('name', name=op.f('uq_projects_name'))
    )
    # Owner and repo are unique regardless of letter case, as GitHub treats them.
    op.create_index(
        "uq_projects_github_owner_repo_lower",
        "projects",
        [sa.text("lower(github_owner)"), sa.text("lower(github_repo)")],
        unique=True,
    )
    op.create_table('pr_comments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('github_owner', sa.String(length=100), nullable=False),
    sa.Column('github_repo', sa.String(length=100), nullable=False),
    sa.Column('github_pr_number', sa.Integer(), nullable=False),
    sa.Column('comment_id', sa.BigInteger(), nullable=True),
    sa.Column('body_sha256', sa.String(length=64), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_pr_comments_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pr_comments')),
    sa.UniqueConstraint('project_id', 'github_pr_number', name='uq_pr_comments_project_pr')
    )
    op.create_table('test_matrices',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_test_matrices_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_test_matrices')),
    sa.UniqueConstraint('name', name=op.f('uq_test_matrices_name'))
    )
    with op.batch_alter_table('test_matrices', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_test_matrices_project_id'), ['project_id'], unique=False)

    op.create_table('webhook_deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('guid', sa.String(length=100), nullable=False),
    sa.Column('event', sa.String(length=50), nullable=False),
    sa.Column('action', sa.String(length=50), nullable=True),
    sa.Column('repository', sa.String(length=255), nullable=True),
    sa.Column('project_id', sa.Integer(), nullable=True),
    sa.Column('ignored', sa.String(length=500), nullable=True),
    sa.Column('runs_queued', sa.Integer(), nullable=False),
    sa.Column('matrix_run_ids', sa.JSON(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_webhook_deliveries_project_id_projects'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
    sa.UniqueConstraint('guid', name=op.f('uq_webhook_deliveries_guid'))
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_deliveries_received_at'), ['received_at'], unique=False)

    op.create_table('auto_test_rules',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('rule_type', sa.Enum('branch', 'pr', 'tag', name='rule_type', native_enum=False, length=20), nullable=False),
    sa.Column('pattern', sa.String(length=255), nullable=False),
    sa.Column('matrix_id', sa.Integer(), nullable=True),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['matrix_id'], ['test_matrices.id'], name=op.f('fk_auto_test_rules_matrix_id_test_matrices'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_auto_test_rules_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_auto_test_rules'))
    )
    with op.batch_alter_table('auto_test_rules', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_auto_test_rules_matrix_id'), ['matrix_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_auto_test_rules_project_id'), ['project_id'], unique=False)

    op.create_table('test_matrix_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('rule_id', sa.Integer(), nullable=True),
    sa.Column('matrix_id', sa.Integer(), nullable=True),
    sa.Column('matrix_name', sa.String(length=100), nullable=False),
    sa.Column('trigger', sa.String(length=20), nullable=False),
    sa.Column('git_ref', sa.String(length=255), nullable=False),
    sa.Column('github_owner', sa.String(length=100), nullable=False),
    sa.Column('github_repo', sa.String(length=100), nullable=False),
    sa.Column('github_commit_sha', sa.String(length=64), nullable=False),
    sa.Column('github_pr_number', sa.Integer(), nullable=True),
    sa.Column('github_status_url', sa.String(length=500), nullable=True),
    sa.Column('delivery_guid', sa.String(length=100), nullable=True),
    sa.Column('event_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['matrix_id'], ['test_matrices.id'], name=op.f('fk_test_matrix_runs_matrix_id_test_matrices'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_test_matrix_runs_project_id_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rule_id'], ['auto_test_rules.id'], name=op.f('fk_test_matrix_runs_rule_id_auto_test_rules'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_test_matrix_runs'))
    )
    with op.batch_alter_table('test_matrix_runs', schema=None) as batch_op:
        batch_op.create_index('ix_test_matrix_runs_head', ['project_id', 'trigger', 'git_ref'], unique=False)
        batch_op.create_index('ix_test_matrix_runs_pr', ['project_id', 'github_pr_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_test_matrix_runs_project_id'), ['project_id'], unique=False)
        batch_op.create_index('ix_test_matrix_runs_sha', ['github_owner', 'github_repo', 'github_commit_sha'], unique=False)

    op.create_table('github_calls',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.Column('coalesce_key', sa.String(length=500), nullable=False),
    sa.Column('github_owner', sa.String(length=100), nullable=False),
    sa.Column('github_repo', sa.String(length=100), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=True),
    sa.Column('matrix_run_id', sa.Integer(), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('state', sa.Enum('pending', 'done', 'failed', 'superseded', name='call_state', native_enum=False, length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('leased_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lease_owner', sa.String(length=100), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['matrix_run_id'], ['test_matrix_runs.id'], name=op.f('fk_github_calls_matrix_run_id_test_matrix_runs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_github_calls_project_id_projects'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_github_calls'))
    )
    with op.batch_alter_table('github_calls', schema=None) as batch_op:
        batch_op.create_index('ix_github_calls_due', ['state', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_github_calls_key_state', ['coalesce_key', 'state'], unique=False)

    op.create_table('test_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('matrix_run_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('cell', sa.JSON(), nullable=False),
    sa.Column('label', sa.String(length=255), nullable=False),
    sa.Column('status', sa.Enum('queued', 'running', 'passed', 'failed', 'error', 'cancelled', name='run_status', native_enum=False, length=20), nullable=False),
    sa.Column('git_ref', sa.String(length=255), nullable=False),
    sa.Column('github_owner', sa.String(length=100), nullable=False),
    sa.Column('github_repo', sa.String(length=100), nullable=False),
    sa.Column('github_commit_sha', sa.String(length=64), nullable=False),
    sa.Column('github_pr_number', sa.Integer(), nullable=True),
    sa.Column('github_status_url', sa.String(length=500), nullable=True),
    sa.Column('worker', sa.String(length=100), nullable=True),
    sa.Column('reclaims', sa.Integer(), nullable=False),
    sa.Column('result_code', sa.String(length=20), nullable=True),
    sa.Column('test_exec_seconds', sa.Double(), nullable=True),
    sa.Column('stdout', sa.Text(), nullable=True),
    sa.Column('stderr', sa.Text(), nullable=True),
    sa.Column('details', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['matrix_run_id'], ['test_matrix_runs.id'], name=op.f('fk_test_runs_matrix_run_id_test_matrix_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_test_runs_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_test_runs'))
    )
    with op.batch_alter_table('test_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_test_runs_matrix_run_id'), ['matrix_run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_test_runs_project_id'), ['project_id'], unique=False)
        batch_op.create_index('ix_test_runs_status_id', ['status', 'id'], unique=False)



def downgrade() -> None:
    op.drop_index("uq_projects_github_owner_repo_lower", table_name="projects")
    with op.batch_alter_table('test_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_test_runs_status_id')
        batch_op.drop_index(batch_op.f('ix_test_runs_project_id'))
        batch_op.drop_index(batch_op.f('ix_test_runs_matrix_run_id'))

    op.drop_table('test_runs')
    with op.batch_alter_table('github_calls', schema=None) as batch_op:
        batch_op.drop_index('ix_github_calls_key_state')
        batch_op.drop_index('ix_github_calls_due')

    op.drop_table('github_calls')
    with op.batch_alter_table('test_matrix_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_test_matrix_runs_sha')
        batch_op.drop_index(batch_op.f('ix_test_matrix_runs_project_id'))
        batch_op.drop_index('ix_test_matrix_runs_pr')
        batch_op.drop_index('ix_test_matrix_runs_head')

    op.drop_table('test_matrix_runs')
    with op.batch_alter_table('auto_test_rules', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_auto_test_rules_project_id'))
        batch_op.drop_index(batch_op.f('ix_auto_test_rules_matrix_id'))

    op.drop_table('auto_test_rules')
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_deliveries_received_at'))

    op.drop_table('webhook_deliveries')
    with op.batch_alter_table('test_matrices', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_test_matrices_project_id'))

    op.drop_table('test_matrices')
    op.drop_table('pr_comments')
    op.drop_table('projects')
    op.drop_table('installations')
    op.drop_table('api_tokens')
