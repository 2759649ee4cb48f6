"""Git notes: the notes API and the workflow template."""

from aiohttp import web


def setup(app: web.Application) -> None:
    """Register the notes API (issue 6)."""
