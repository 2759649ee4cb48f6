"""Which rules a ref matches: ref parsing, skip-ci markers and a compiled rule matcher; pure functions."""

from __future__ import annotations

import fnmatch
import re
from collections import defaultdict
from typing import Iterable

from .models import RuleType

BRANCH_PREFIX = "refs/heads/"
TAG_PREFIX = "refs/tags/"
SKIP_CI_MARKERS = ("[skip ci]", "[ci skip]", "[no ci]", "[skip opp_ci]")
WILDCARDS = frozenset("*?[")
# Wildcard patterns are tried in chunks of this many, each chunk one joined regex.
CHUNK_SIZE = 64


def ref_kind(ref: str) -> tuple[RuleType | None, str]:
    """`refs/heads/B` -> (BRANCH, "B"), `refs/tags/T` -> (TAG, "T"); any other ref -> (None, ref)."""
    for prefix, kind in ((BRANCH_PREFIX, RuleType.BRANCH), (TAG_PREFIX, RuleType.TAG)):
        if ref.startswith(prefix) and len(ref) > len(prefix):
            return kind, ref[len(prefix) :]
    return None, ref


def skip_ci_marker(message: str | None) -> str | None:
    """The first skip marker (`[skip ci]`, `[ci skip]`, `[no ci]`, `[skip opp_ci]`) in a commit message, any case."""
    if not message:
        return None
    lowered = message.lower()
    for marker in SKIP_CI_MARKERS:
        if marker in lowered:
            return marker
    return None


def is_wildcard(pattern: str) -> bool:
    return not WILDCARDS.isdisjoint(pattern)


def rule_matches(pattern: str, name: str) -> bool:
    """The reference semantics: the exact name always matches, else `fnmatch.fnmatchcase` (`*` crosses `/`)."""
    return pattern == name or fnmatch.fnmatchcase(name, pattern)


def _joined(regexes: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{r})" for r in regexes))


class RuleMatcher:
    """All rules matching a name, fast: a dict for exact names, joined regexes for the wildcard patterns.

    Built once per set of rules (rebuild it when the rules change); `match` is then
    a dictionary lookup plus, when any wildcard pattern could match, a few regex calls.
    """

    def __init__(self, rules: Iterable[tuple[int, str]]) -> None:
        self._exact: dict[str, list[int]] = defaultdict(list)
        wild: dict[str, list[int]] = defaultdict(list)
        for rule_id, pattern in rules:
            self._exact[pattern].append(rule_id)
            if is_wildcard(pattern):
                wild[pattern].append(rule_id)
        self._exact = dict(self._exact)
        self.size = sum(len(ids) for ids in self._exact.values())
        compiled = [(fnmatch.translate(p), ids) for p, ids in wild.items()]
        self._chunks: list[tuple[re.Pattern[str], list[tuple[re.Pattern[str], list[int]]]]] = []
        for start in range(0, len(compiled), CHUNK_SIZE):
            chunk = compiled[start : start + CHUNK_SIZE]
            members = [(re.compile(regex), ids) for regex, ids in chunk]
            self._chunks.append((_joined(regex for regex, _ in chunk), members))
        # One regex over every wildcard pattern: most names match none, and then one call decides.
        self._any = _joined(regex for regex, _ in compiled) if compiled else None

    def match(self, name: str) -> list[int]:
        """Ids of the rules whose pattern equals `name` or fnmatches it, ascending."""
        found = set(self._exact.get(name, ()))
        if self._any is not None and self._any.match(name):
            for chunk, members in self._chunks:
                if chunk.match(name):
                    for regex, ids in members:
                        if regex.match(name):
                            found.update(ids)
        return sorted(found)
