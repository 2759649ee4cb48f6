"""`ping`: GitHub checking the webhook works; answered with its zen and hook id."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gidgethub import routing, sansio

if TYPE_CHECKING:
    from opp_ci_app.ingest import Delivery

router = routing.Router()


@router.register("ping")
async def answer_ping(event: sansio.Event, delivery: "Delivery") -> None:
    """Echo the zen and hook id; no repository is needed."""
    delivery.reply["zen"] = event.data.get("zen")
    delivery.reply["hook_id"] = event.data.get("hook_id")
