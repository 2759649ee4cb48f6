"""`pull_request`: opened, synchronize and reopened queue the pr rules; closed cancels the PR's queued runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gidgethub import routing, sansio

from opp_ci_app import planning

if TYPE_CHECKING:
    from opp_ci_app.ingest import Delivery

router = routing.Router()
QUEUEING_ACTIONS = ("opened", "synchronize", "reopened")


async def queue_matching_rules(event: sansio.Event, delivery: "Delivery") -> None:
    """Queue the pr rules matching the PR's head branch."""
    head = planning.parse_pull_request(event.data)
    if await delivery.find_project() is not None:
        await delivery.queue(head)


for _action in QUEUEING_ACTIONS:
    router.add(queue_matching_rules, "pull_request", action=_action)


@router.register("pull_request", action="closed")
async def cancel_closed_pr(event: sansio.Event, delivery: "Delivery") -> None:
    """A closed (or merged) PR needs no more runs."""
    head = planning.parse_pull_request(event.data)
    if await delivery.find_project() is not None:
        await delivery.cancel(head, f"pull request #{head.pr_number} was closed")
