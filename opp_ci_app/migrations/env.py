"""Alembic environment: runs on the connection the app hands over (see opp_ci_app.db.upgrade)."""

from alembic import context

from opp_ci_app.models import Base

target_metadata = Base.metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise SystemExit("run migrations with `opp_ci db upgrade`")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
