"""`opp_ci worker`: a small real worker that polls, runs a command and reports."""

import click


@click.command("worker")
def worker() -> None:
    """Poll for runs and execute them (issue 4)."""
    raise click.ClickException("not implemented yet")
