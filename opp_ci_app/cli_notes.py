"""`opp_ci notes ...`: the git notes workflow template."""

import click


@click.group("notes")
def notes() -> None:
    """Git notes with CI results (refs/notes/ci)."""
