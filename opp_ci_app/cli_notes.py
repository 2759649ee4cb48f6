"""`opp_ci notes ...`: the git notes workflow template."""

from pathlib import Path

import click

TEMPLATE = "ci-notes.yml"


def workflow_template() -> str:
    """The ci-notes.yml workflow shipped with the package."""
    return (Path(__file__).parent / "workflows" / TEMPLATE).read_text(encoding="utf-8")


@click.group("notes")
def notes() -> None:
    """Git notes with CI results (refs/notes/ci).

    opp_ci dispatches the repository's notes workflow when a commit's runs
    are done; the workflow reads GET /api/notes/OWNER/REPO and pushes the
    notes. See docs/git_notes.md.
    """


@notes.command("workflow")
def workflow() -> None:
    """Print the ci-notes.yml workflow to commit as .github/workflows/ci-notes.yml.

    Example: opp_ci notes workflow > .github/workflows/ci-notes.yml
    """
    click.echo(workflow_template(), nl=False)
