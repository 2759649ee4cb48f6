"""Web pages: runs, matrix runs, rules, deliveries, login."""

from aiohttp import web


def setup(app: web.Application) -> None:
    """Register the page routes (issue 5)."""
