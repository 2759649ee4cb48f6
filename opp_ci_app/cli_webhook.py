"""`opp_ci rule test-webhook`: run a payload GitHub would send through the real router."""

import click


@click.command("test-webhook")
def test_webhook() -> None:
    """Show (or queue) what a push, tag or PR would trigger (issue 3)."""
    raise click.ClickException("not implemented yet")
