"""`installation` and `installation_repositories`: which repositories the App may act on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gidgethub import routing, sansio

from opp_ci_app import ingest

if TYPE_CHECKING:
    from opp_ci_app.ingest import Delivery

router = routing.Router()


@router.register("installation")
async def record_installation(event: sansio.Event, delivery: "Delivery") -> None:
    """Created, deleted, suspended or changed: record it and point its projects at it."""
    if delivery.may_write():
        delivery.reply.update(await ingest.record_installation(delivery.session, event.data, delivery.action or ""))


@router.register("installation_repositories")
async def record_installation_repositories(event: sansio.Event, delivery: "Delivery") -> None:
    """Repositories added to or removed from an installation."""
    if delivery.may_write():
        delivery.reply.update(await ingest.record_installation_repositories(delivery.session, event.data))
