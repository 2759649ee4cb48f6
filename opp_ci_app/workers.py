"""Worker API: poll, heartbeat, result; and the reaper of expired leases."""

from aiohttp import web


def setup(app: web.Application) -> None:
    """Register the worker routes and the reaper (issue 4)."""
