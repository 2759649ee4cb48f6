"""`push`: branch and tag rules; deleted refs cancel their queued runs; skip-ci markers queue nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gidgethub import routing, sansio

from opp_ci_app import matching, planning

if TYPE_CHECKING:
    from opp_ci_app.ingest import Delivery

router = routing.Router()


@router.register("push")
async def queue_matching_rules(event: sansio.Event, delivery: "Delivery") -> None:
    """Queue the rules matching the pushed branch or tag."""
    push = planning.parse_push(event.data)
    if await delivery.find_project() is None:
        return
    if push.rule_type is None:
        delivery.ignore(f"ref {push.ref!r} is neither a branch nor a tag")
    elif push.deleted:
        await delivery.cancel(push.head, f"{push.rule_type.value} {push.name!r} was deleted")
    elif marker := matching.skip_ci_marker(push.message):
        delivery.ignore(f"the head commit message says {marker}")
    else:
        await delivery.queue(push.head)
