"""The `opp_ci` command line: serve, migrate, and manage projects, matrices, rules and tokens."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncSession

from . import catalog, tokens
from .catalog import CatalogError
from .config import ConfigError, Settings, load_settings
from .db import create_engine, sessionmaker, upgrade
from .matrix import MatrixError, expand, parse_assignments, parse_axis

T = TypeVar("T")
EXIT_USAGE = 2
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from `extra=`.
STANDARD_LOG_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class ExtraFormatter(logging.Formatter):
    """The usual log line followed by the record's `extra=` fields as ` key=value`."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = "".join(
            f" {key}={_log_value(value)}" for key, value in vars(record).items() if key not in STANDARD_LOG_FIELDS
        )
        return super().formatMessage(record) + fields


def _log_value(value: Any) -> str:
    """`value` as text, quoted when it is empty or holds spaces, quotes or control characters."""
    text = str(value)
    if not text or any(c.isspace() or c in "\"=" or not c.isprintable() for c in text):
        return json.dumps(text)
    return text


class Failure(click.ClickException):
    """A one-line error; the command exits 2."""

    exit_code = EXIT_USAGE


def settings_from_env() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise Failure(str(exc)) from None


def run_in_session(work: Callable[[AsyncSession], Awaitable[T]], *, commit: bool = True) -> T:
    """Run `work` in one transaction on the configured database (migrated first)."""
    settings = settings_from_env()

    async def main() -> T:
        engine = create_engine(settings.database_url)
        try:
            await upgrade(engine)
            maker = sessionmaker(engine)
            async with maker() as session:
                result = await work(session)
                if commit:
                    await session.commit()
                return result
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except (CatalogError, MatrixError) as exc:
        raise Failure(str(exc)) from None
    except OSError as exc:
        raise Failure(f"cannot reach the database ({settings.database_url.split('@')[-1]}): {exc}") from None


def echo_table(rows: list[list[Any]], headers: list[str]) -> None:
    """Print rows as aligned columns."""
    text = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in text:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


@click.group(context_settings=CONTEXT_SETTINGS)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """opp_ci: the GitHub side of the OMNeT++/INET CI coordinator.

    Every command works on the database named by OPP_CI_DATABASE_URL
    (default: SQLite at var/opp_ci.db) and migrates it first.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(ExtraFormatter(LOG_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    if not verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)


@cli.command()
@click.option("--host", default=None, help="Address to listen on [default: OPP_CI_HOST or 127.0.0.1].")
@click.option("--port", default=None, type=click.IntRange(0, 65535), help="Port [default: OPP_CI_PORT or 8080].")
def serve(host: str | None, port: int | None) -> None:
    """Migrate the database and serve the app (webhook, API, web pages)."""
    from .serve import serve as run_server

    settings = settings_from_env()
    run_server(settings.replace(host=host or settings.host, port=port if port is not None else settings.port))


@cli.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration to the configured database."""

    async def nothing(_session: AsyncSession) -> None:
        return None

    run_in_session(nothing, commit=False)
    click.echo("database is up to date")


# Projects


@cli.group()
def project() -> None:
    """Projects: one per GitHub repository."""


@project.command("create")
@click.option("--name", required=True, help="Project name, e.g. inet.")
@click.option("--github", "github", required=True, metavar="OWNER/REPO", help="The GitHub repository.")
def project_create(name: str, github: str) -> None:
    """Create a project for a GitHub repository.

    Example: opp_ci project create --name inet --github inet-framework/inet
    """
    owner, repo = catalog.parse_github_repo(github) if "/" in github else (None, None)
    if owner is None:
        raise Failure(f"--github must be OWNER/REPO, got {github!r}")

    async def work(session: AsyncSession):
        return await catalog.create_project(session, name, owner, repo)

    created = run_in_session(work)
    click.echo(f"created project {created.name} (id {created.id}) for {created.full_name}")


@project.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def project_list(as_json: bool) -> None:
    """List projects."""

    async def work(session: AsyncSession):
        return [catalog.project_json(p) for p in await catalog.list_projects(session)]

    rows = run_in_session(work, commit=False)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo("no projects yet: opp_ci project create --name NAME --github OWNER/REPO")
    else:
        echo_table([[p["id"], p["name"], f"{p['github_owner']}/{p['github_repo']}"] for p in rows], ["ID", "NAME", "GITHUB"])


# Matrices


def build_matrix_config(axes: tuple[str, ...], excludes: tuple[str, ...], includes: tuple[str, ...], config_file: Path | None) -> dict[str, Any]:
    """A matrix config from --config FILE.json and/or --axis/--exclude/--include options."""
    config: dict[str, Any] = {"axes": {}, "exclude": [], "include": []}
    if config_file is not None:
        try:
            loaded = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Failure(f"--config {config_file}: {exc}") from None
        if not isinstance(loaded, dict):
            raise Failure(f"--config {config_file}: must hold a JSON object")
        config = {"axes": {}, "exclude": [], "include": [], **loaded}
    try:
        for text in axes:
            name, values = parse_axis(text)
            if name in config["axes"]:
                raise Failure(f"--axis {name} given twice")
            config["axes"][name] = values
        config["exclude"] = list(config["exclude"]) + [parse_assignments(t) for t in excludes]
        config["include"] = list(config["include"]) + [parse_assignments(t) for t in includes]
    except MatrixError as exc:
        raise Failure(str(exc)) from None
    return config


@cli.group()
def matrix() -> None:
    """Test matrices: axes of values whose cross product gives the test runs."""


@matrix.command("create")
@click.option("--project", required=True, help="Project the matrix belongs to.")
@click.option("--name", required=True, help="Matrix name; also the commit status context suffix.")
@click.option("--axis", "axes", multiple=True, metavar="NAME=V1,V2", help="An axis and its values (repeatable).")
@click.option("--exclude", "excludes", multiple=True, metavar="K=V,K=V", help="Drop cells matching all of these (repeatable).")
@click.option("--include", "includes", multiple=True, metavar="K=V,K=V", help="Add one extra cell (repeatable).")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), help="Matrix config JSON file.")
def matrix_create(project: str, name: str, axes, excludes, includes, config_file: Path | None) -> None:
    """Create a test matrix.

    Example (3 cells):

      opp_ci matrix create --project inet --name inet-full
        --axis kind=smoke,fingerprint --axis mode=release,debug
        --exclude kind=smoke,mode=debug
    """
    config = build_matrix_config(axes, excludes, includes, config_file)

    async def work(session: AsyncSession):
        created = await catalog.create_matrix(session, project, name, config)
        return created, [c.label for c in expand(created.config)]

    created, labels = run_in_session(work)
    click.echo(f"created matrix {created.name} (id {created.id}) with {len(labels)} cells: {', '.join(labels)}")


@matrix.command("list")
@click.option("--project", default=None, help="Only this project's matrices.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def matrix_list(project: str | None, as_json: bool) -> None:
    """List matrices and their cells."""

    async def work(session: AsyncSession):
        return [catalog.matrix_json(m) for m in await catalog.list_matrices(session, project)]

    rows = run_in_session(work, commit=False)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo("no matrices yet: opp_ci matrix create --project P --name N --axis kind=smoke,fingerprint")
    else:
        echo_table([[m["id"], m["name"], m["project_name"], len(m["cells"]), ", ".join(m["cells"])] for m in rows], ["ID", "NAME", "PROJECT", "CELLS", "LABELS"])


@matrix.command("delete")
@click.argument("name")
def matrix_delete(name: str) -> None:
    """Delete a matrix (refused while a rule uses it)."""

    async def work(session: AsyncSession):
        await catalog.delete_matrix(session, name)

    run_in_session(work)
    click.echo(f"deleted matrix {name}")


# Rules


@cli.group()
def rule() -> None:
    """Auto-test rules: which branches, tags and PRs queue which matrix."""


@rule.command("create")
@click.option("--project", required=True, help="Project name.")
@click.option("--type", "rule_type", required=True, type=click.Choice(["branch", "pr", "tag"]), help="What the pattern is matched against.")
@click.option("--pattern", required=True, help="fnmatch glob (case-sensitive; * also matches /), or an exact name.")
@click.option("--matrix", "matrix_name", default=None, help="Matrix to queue [default: one smoke cell].")
@click.option("--disabled", is_flag=True, help="Create the rule disabled.")
def rule_create(project: str, rule_type: str, pattern: str, matrix_name: str | None, disabled: bool) -> None:
    """Create a rule.

    Examples:

      opp_ci rule create --project inet --type branch --pattern master --matrix inet-full

      opp_ci rule create --project inet --type pr --pattern '*'
    """

    async def work(session: AsyncSession):
        return catalog.rule_json(await catalog.create_rule(session, project, rule_type, pattern, matrix_name, not disabled))

    created = run_in_session(work)
    click.echo(
        f"created rule {created['id']}: {created['rule_type']} {created['pattern']!r} -> "
        f"{created['matrix_name'] or 'smoke'}{'' if created['enabled'] else ' (disabled)'}"
    )


@rule.command("list")
@click.option("--project", default=None, help="Only this project's rules.")
@click.option("--json", "as_json", is_flag=True, help="Print the REST API's JSON instead of a table.")
def rule_list(project: str | None, as_json: bool) -> None:
    """List rules."""

    async def work(session: AsyncSession):
        return [catalog.rule_json(r) for r in await catalog.list_rules(session, project)]

    rows = run_in_session(work, commit=False)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo("no rules yet: opp_ci rule create --project P --type branch --pattern master")
    else:
        echo_table(
            [[r["id"], r["project_name"], r["rule_type"], r["pattern"], r["matrix_name"] or "(smoke)", "yes" if r["enabled"] else "no"] for r in rows],
            ["ID", "PROJECT", "TYPE", "PATTERN", "MATRIX", "ENABLED"],
        )


@rule.command("delete")
@click.argument("rule_id", type=int)
def rule_delete(rule_id: int) -> None:
    """Delete a rule by id."""

    async def work(session: AsyncSession):
        await catalog.delete_rule(session, rule_id)

    run_in_session(work)
    click.echo(f"deleted rule {rule_id}")


# Tokens


@cli.group()
def token() -> None:
    """API tokens for the REST API, workers and web login (roles readonly < worker < admin)."""


@token.command("create")
@click.option("--role", required=True, type=click.Choice(["readonly", "worker", "admin"]), help="What the token may do.")
@click.option("--name", default=None, help="A name to recognise it by.")
def token_create(role: str, name: str | None) -> None:
    """Create a token and print it once (only its hash is stored)."""

    async def work(session: AsyncSession):
        row, secret = await tokens.create_token(session, role, name)
        return row, secret

    row, secret = run_in_session(work)
    click.echo(secret)
    click.echo(f"token {row.id} ({row.role.value}{', ' + row.name if row.name else ''}): store it now, it is not shown again", err=True)


@token.command("list")
def token_list() -> None:
    """List tokens (masked)."""

    async def work(session: AsyncSession):
        return await tokens.list_tokens(session)

    rows = run_in_session(work, commit=False)
    if not rows:
        click.echo("no tokens yet: opp_ci token create --role admin --name me")
        return
    echo_table(
        [[t.id, t.name or "", t.role.value, tokens.masked(t), t.created_at.strftime("%Y-%m-%d %H:%M"), "revoked" if t.revoked_at else "active"] for t in rows],
        ["ID", "NAME", "ROLE", "TOKEN", "CREATED", "STATE"],
    )


@token.command("revoke")
@click.argument("token_id", type=int)
def token_revoke(token_id: int) -> None:
    """Revoke a token by id; it stops working at once."""

    async def work(session: AsyncSession):
        return await tokens.revoke(session, token_id)

    run_in_session(work)
    click.echo(f"revoked token {token_id}")


def _register_extensions() -> None:
    """Commands that live beside the modules they drive."""
    from .cli_notes import notes
    from .cli_webhook import test_webhook
    from .cli_worker import worker

    rule.add_command(test_webhook)
    cli.add_command(worker)
    cli.add_command(notes)


_register_extensions()


def main(argv: list[str] | None = None) -> None:
    """Entry point: errors are one line on stderr and exit 2, never a traceback."""
    try:
        cli.main(args=argv, prog_name="opp_ci", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(EXIT_USAGE)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "opp_ci"
        click.echo(f"{command}: error: {exc.format_message()} (see '{command} --help')", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        click.echo(f"opp_ci: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: say so in one line, keep the details in the debug log
        logging.getLogger("opp_ci_app.cli").debug("unexpected error", exc_info=True)
        click.echo(f"opp_ci: internal error: {type(exc).__name__}: {exc} (run with -v for details)", err=True)
        sys.exit(1)
    sys.exit(0)
