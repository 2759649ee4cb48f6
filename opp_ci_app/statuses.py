"""Commit status of a matrix run, aggregated from its runs; pure functions."""

from __future__ import annotations

import enum
import functools
from collections import Counter
from typing import Iterable

from .models import RunStatus

DESCRIPTION_MAX = 140
NO_MATRIX_NAME = "smoke"


class State(enum.StrEnum):
    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"


def context(prefix: str, matrix_name: str | None) -> str:
    """`opp_ci/inet-full`; `opp_ci/smoke` for a rule without a matrix."""
    return f"{prefix}/{matrix_name or NO_MATRIX_NAME}"


def aggregate(statuses: Iterable[RunStatus]) -> tuple[State, str]:
    """The state and description of a matrix run whose runs have these statuses."""
    counts = Counter(RunStatus(s) for s in statuses)
    total = sum(counts.values())
    done = total - counts[RunStatus.QUEUED] - counts[RunStatus.RUNNING]
    failed, errored, cancelled = counts[RunStatus.FAILED], counts[RunStatus.ERROR], counts[RunStatus.CANCELLED]
    if total == 0:
        return State.ERROR, "no runs"
    if done < total:
        parts = [f"{done}/{total} done"]
        if failed:
            parts.append(f"{failed} failed")
        if errored:
            parts.append(f"{errored} errored")
        if cancelled:
            parts.append(f"{cancelled} cancelled")
        if counts[RunStatus.RUNNING]:
            parts.append(f"{counts[RunStatus.RUNNING]} running")
        return State.PENDING, truncate(", ".join(parts))
    if failed:
        return State.FAILURE, truncate(_summary(counts, total))
    if errored or cancelled:
        return State.ERROR, truncate(_summary(counts, total))
    return State.SUCCESS, truncate(f"all {total} passed" if total > 1 else "passed")


@functools.lru_cache(maxsize=64)
def all_queued(total: int) -> tuple[State, str]:
    """`aggregate` of `total` queued runs (a matrix run just queued), worked out once per size."""
    return aggregate([RunStatus.QUEUED] * total)


def _summary(counts: Counter, total: int) -> str:
    parts = [
        f"{counts[status]} {word}"
        for status, word in (
            (RunStatus.FAILED, "failed"),
            (RunStatus.ERROR, "errored"),
            (RunStatus.CANCELLED, "cancelled"),
            (RunStatus.PASSED, "passed"),
        )
        if counts[status]
    ]
    return f"{', '.join(parts)} of {total}"


def truncate(text: str, limit: int = DESCRIPTION_MAX) -> str:
    """At most `limit` characters, ending in an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
