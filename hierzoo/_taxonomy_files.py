"""Reading taxonomy files: JSON objects and CSV tables, before they become a
:class:`~hierzoo.taxonomy.Taxonomy` (which :func:`hierzoo.taxonomy.load_taxonomy` builds)."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from hierzoo._io import read_text

PATH_SEPARATOR = " > "


class TaxonomyError(ValueError):
    """A taxonomy file or a node lookup that cannot be honoured."""


TaxonomyError.__module__ = "hierzoo.taxonomy"  # raised and documented as hierzoo.taxonomy's


def norm(name: str) -> str:
    """A name as lookups compare it: stripped, lower case."""
    return name.strip().lower()


_norm = norm


def read_json_object(path: Path) -> Mapping:
    """The JSON object a taxonomy file holds.

    Raises:
        TaxonomyError: not UTF-8, not JSON, nested too deep, a key twice with different values,
            or not a non-empty object.
    """
    text = read_text(path, TaxonomyError)
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise TaxonomyError(f"{path} is not valid JSON ({e}); expected a taxonomy file.") from e
    except RecursionError:
        raise TaxonomyError(
            f"{path} is nested deeper than the JSON reader allows (about "
            f"{sys.getrecursionlimit()} levels); write a taxonomy this deep as leaf -> path or "
            "node -> parent JSON, or as a CSV."
        ) from None
    if not isinstance(data, Mapping) or not data:
        what = (
            "an empty JSON object"
            if isinstance(data, Mapping)
            else (f"{type(data).__name__} {str(data)[:60]!r}")
        )
        raise TaxonomyError(
            f"{path} holds {what}; expected a JSON object of the taxonomy (leaf -> path, a "
            "nested tree, or node -> parent)."
        )
    return data


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out and out[key] != value:
            raise TaxonomyError(
                f"Key {key!r} appears twice in the JSON file with different values "
                f"({out[key]!r} and {value!r}); keep one."
            )
        out[key] = value
    return out


def guess_format(data: Mapping) -> str:
    """The format of a parsed JSON taxonomy: ``"parents"``, ``"paths"`` or ``"tree"``."""
    values = list(data.values())
    if all(v is None or isinstance(v, str) for v in values):
        return "parents"
    if all(isinstance(v, list) and v and all(isinstance(x, str) for x in v) for v in values):
        # {leaf: path} when most keys end their own path, or when most paths share their top
        # node with another (paths keyed by ids); else a one-level tree of leaf lists
        hits = sum(_norm(k) == _norm(v[-1]) for k, v in data.items())
        tops = Counter(_norm(v[0]) for v in values)
        shared = sum(tops[_norm(v[0])] > 1 for v in values if len(v) > 1)
        half = max(1, len(data) // 2)
        return "paths" if hits >= half or shared >= max(2, half) else "tree"
    if any(isinstance(v, Mapping) for v in values):
        return "tree"
    return "paths"  # from_paths names the first malformed entry


def read_csv_paths(path: Path) -> tuple[dict[str, list[str]], tuple[str, ...]]:
    """``({leaf: path}, ranks)`` from a CSV with one column per rank (the header names them),
    one row per leaf and optionally a ``label`` column; the ranks are cut to the deepest path.

    Raises:
        TaxonomyError: an empty file or header cell, a row with more cells than the header, an
            empty name inside a path, a leaf listed twice with different paths, no rows.
    """
    reader = csv.reader(io.StringIO(read_text(path, TaxonomyError), newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise TaxonomyError(
            f"{path} is empty; expected a header with one column per rank."
        ) from None
    while header and not header[-1]:
        header.pop()
    for col, h in enumerate(header, start=1):
        if not h:
            raise TaxonomyError(
                f"{path}:1: column {col} has no rank name; name every column of the header "
                "(a rank, or label)."
            )
    label_col = next((i for i, h in enumerate(header) if h.lower() == "label"), None)
    rank_cols = [i for i in range(len(header)) if i != label_col]
    seen: dict[str, tuple[str, list[str]]] = {}
    for lineno, row in enumerate(reader, start=2):
        if not any(c.strip() for c in row):
            continue
        extra = [c for c in row[len(header) :] if c.strip()]
        if extra:
            raise TaxonomyError(
                f"{path}:{lineno}: the row has {len(header) + len(extra)} cells but the header "
                f"{len(header)} ({header!r}); {extra!r} would be lost. Add a column to the header, "
                "or quote a name that holds a comma."
            )
        names = [row[i].strip() if i < len(row) else "" for i in rank_cols]
        while names and not names[-1]:
            names.pop()
        if not names or any(not n for n in names):
            raise TaxonomyError(
                f"{path}:{lineno}: row {row!r} has an empty name inside its path; fill every "
                "rank from the first column down to the leaf (trailing ranks may be empty)."
            )
        has_label = label_col is not None and label_col < len(row) and row[label_col].strip()
        label = row[label_col].strip() if has_label else names[-1]
        first = seen.setdefault(_norm(label), (label, names))
        if [_norm(n) for n in first[1]] != [_norm(n) for n in names]:
            raise TaxonomyError(
                f"{path}:{lineno}: leaf {label!r} is listed again with a different path "
                f"{PATH_SEPARATOR.join(names)!r} (first: {PATH_SEPARATOR.join(first[1])!r}). "
                "Keep one path per leaf."
            )
    paths = dict(seen.values())
    if not paths:
        raise TaxonomyError(f"{path} has a header but no rows; expected one row per leaf.")
    rank_names = tuple(header[i] for i in rank_cols)
    depth = max(len(p) for p in paths.values())
    return paths, rank_names[:depth]
