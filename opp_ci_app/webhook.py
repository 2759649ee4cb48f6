"""`POST /api/github/webhook`: verify, route through gidgethub, queue runs in one transaction."""

from aiohttp import web


def setup(app: web.Application) -> None:
    """Register the webhook route (issue 3)."""
