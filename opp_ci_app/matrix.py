"""Test matrix expansion: axes, exclude, include, labels; pure functions."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Mapping

MAX_CELLS = 256
DEFAULT_CELL: dict[str, str] = {"kind": "smoke"}
LABEL_SEPARATOR = "/"


class MatrixError(ValueError):
    """A matrix config that cannot be expanded; `field` names the offending part."""

    def __init__(self, message: str, field: str = "config") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Cell:
    """One combination of axis values; `label` is its values joined by `/`."""

    values: dict[str, Any]

    @property
    def label(self) -> str:
        return LABEL_SEPARATOR.join(str(v) for v in self.values.values())


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and value is not None


def validate_config(config: Any) -> dict[str, Any]:
    """Check the shape of a matrix config and return it normalised (`exclude`/`include` present)."""
    if not isinstance(config, Mapping):
        raise MatrixError("config must be a JSON object")
    unknown = set(config) - {"axes", "exclude", "include"}
    if unknown:
        raise MatrixError(f"unknown config keys: {', '.join(sorted(unknown))}")
    axes = config.get("axes", {})
    if not isinstance(axes, Mapping):
        raise MatrixError("axes must be an object of name -> list of values", "axes")
    for name, values in axes.items():
        if not name or not isinstance(values, list) or not values:
            raise MatrixError(f"axis {name!r} must be a non-empty list of values", "axes")
        if not all(_is_scalar(v) and str(v) != "" for v in values):
            raise MatrixError(f"axis {name!r} values must be non-empty strings or numbers", "axes")
        if len(set(map(str, values))) != len(values):
            raise MatrixError(f"axis {name!r} repeats a value", "axes")
    for key in ("exclude", "include"):
        entries = config.get(key, [])
        if not isinstance(entries, list) or not all(
            isinstance(e, Mapping) and e and all(_is_scalar(v) for v in e.values()) for e in entries
        ):
            raise MatrixError(f"{key} must be a list of non-empty objects of axis values", key)
    for entry in config.get("exclude", []):
        _check_exclude(entry, axes)
    if not axes and not config.get("include"):
        raise MatrixError("a matrix needs at least one axis or include entry", "axes")
    return {"axes": dict(axes), "exclude": list(config.get("exclude", [])), "include": list(config.get("include", []))}


def _check_exclude(entry: Mapping[str, Any], axes: Mapping[str, list[Any]]) -> None:
    """Refuse an exclude entry that can never match: a key that is not an axis, or a value not on it."""
    for key, value in entry.items():
        if key not in axes:
            known = ", ".join(map(repr, axes)) or "none"
            raise MatrixError(f"exclude entry names {key!r}, which is not an axis (axes: {known})", "exclude")
        if str(value) not in map(str, axes[key]):
            raise MatrixError(f"exclude entry has {key}={value!r}, which is not a value of axis {key!r}", "exclude")


def _matches(cell: Mapping[str, Any], pattern: Mapping[str, Any]) -> bool:
    return all(k in cell and str(cell[k]) == str(v) for k, v in pattern.items())


def expand(config: Mapping[str, Any] | None) -> list[Cell]:
    """The cells of a matrix in stable order; `None` (no matrix) gives the single smoke cell."""
    if config is None:
        return [Cell(dict(DEFAULT_CELL))]
    config = validate_config(config)
    axes: dict[str, list[Any]] = config["axes"]
    names = list(axes)
    total = 1
    for values in axes.values():
        total *= len(values)
    if total > MAX_CELLS * 64:
        raise MatrixError(f"the axes make {total} combinations; at most {MAX_CELLS} cells are allowed")
    cells: list[Cell] = []
    if names:
        for combo in itertools.product(*axes.values()):
            values = dict(zip(names, combo))
            if not any(_matches(values, ex) for ex in config["exclude"]):
                cells.append(Cell(values))
    for extra in config["include"]:
        cells.append(Cell(dict(extra)))
    if len(cells) > MAX_CELLS:
        raise MatrixError(f"the matrix has {len(cells)} cells; at most {MAX_CELLS} are allowed")
    labels = [c.label for c in cells]
    if len(set(labels)) != len(labels):
        duplicate = next(label for label in labels if labels.count(label) > 1)
        raise MatrixError(f"two cells share the label {duplicate!r}", "include")
    return cells


def parse_axis(text: str) -> tuple[str, list[str]]:
    """`kind=smoke,fingerprint` -> ("kind", ["smoke", "fingerprint"])."""
    name, sep, values = text.partition("=")
    if not sep or not name.strip() or not values.strip():
        raise MatrixError(f"expected NAME=V1,V2,... but got {text!r}", "axis")
    items = [v.strip() for v in values.split(",")]
    if any(not v for v in items):
        raise MatrixError(f"empty value in {text!r}", "axis")
    return name.strip(), items


def parse_assignments(text: str) -> dict[str, str]:
    """`kind=smoke,mode=debug` -> {"kind": "smoke", "mode": "debug"}."""
    result: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise MatrixError(f"expected KEY=VALUE,... but got {text!r}", "exclude")
        result[key.strip()] = value.strip()
    return result
