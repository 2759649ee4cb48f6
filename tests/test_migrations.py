"""Migrations: they build exactly the models' schema, and go down and up again, on both databases."""

import warnings

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from opp_ci_app.db import alembic_config, upgrade
from opp_ci_app.models import Base


def _differences(connection):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # expression indexes cannot be reflected; compared below by name
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    return [d for d in diff if not (d[0] in ("add_index", "remove_index") and d[1].name == "uq_projects_github_owner_repo_lower")]


async def test_migrated_schema_matches_the_models(engine):
    async with engine.connect() as connection:
        assert await connection.run_sync(_differences) == []


async def test_downgrade_to_nothing_and_up_again(engine):
    def downgrade(sync_connection):
        cfg = alembic_config(str(engine.url))
        cfg.attributes["connection"] = sync_connection
        command.downgrade(cfg, "base")

    async with engine.begin() as connection:
        await connection.run_sync(downgrade)
    await upgrade(engine)
    async with engine.connect() as connection:
        assert await connection.run_sync(_differences) == []
