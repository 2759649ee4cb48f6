"""The background sender that drains the durable queue of GitHub calls."""

from aiohttp import web


def setup(app: web.Application) -> None:
    """Start the sender with the app (issue 4)."""
