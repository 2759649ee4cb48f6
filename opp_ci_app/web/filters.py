"""Jinja filters: times relative and absolute, durations, short commit ids."""

from __future__ import annotations

import datetime as dt

from ..models import utcnow

SHORT_SHA = 7
UNITS = ((86400 * 365, "year"), (86400 * 30, "month"), (86400 * 7, "week"), (86400, "day"), (3600, "hour"), (60, "minute"))


def ago(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """`3 minutes ago`, `just now`, `in 2 hours`."""
    if when is None:
        return ""
    seconds = ((now or utcnow()) - when).total_seconds()
    future, seconds = seconds < 0, abs(seconds)
    if seconds < 45:
        return "just now" if not future else "in a few seconds"
    for size, unit in UNITS:
        if seconds >= size:
            break
    count = max(1, round(seconds / size))
    text = f"{count} {unit}{'s' if count != 1 else ''}"
    return f"in {text}" if future else f"{text} ago"


def absolute(when: dt.datetime | None) -> str:
    """`2026-12-04 20:19:39 UTC`."""
    if when is None:
        return ""
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(when: dt.datetime | None) -> str:
    return when.astimezone(dt.timezone.utc).isoformat() if when else ""


def duration(seconds: float | None) -> str:
    """`0.4 s`, `12 s`, `3 min 05 s`, `1 h 02 min`."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def short_sha(sha: str | None) -> str:
    return (sha or "")[:SHORT_SHA]


FILTERS = {"ago": ago, "absolute": absolute, "iso": iso, "duration": duration, "short_sha": short_sha}
