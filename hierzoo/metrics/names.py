"""Name paths to integer codes, in bulk.

A million result rows hold a few thousand distinct names. Each distinct value is factorised
once (one C-level dictionary probe per element, no Python code per element); normalisation and
taxonomy look-ups then run once per distinct name, and every per-sample step is a NumPy
operation over a level column. The rules are those of :func:`encode`:

- without a taxonomy, names are compared lower-cased (``str.lower``), one vocabulary per level;
- with a taxonomy, a name is stripped and lower-cased and becomes a node id of its level; a
  name that several nodes of a level share resolves to the node below the one chosen a level up
  (for a prediction: to the true node when the names are equal);
- a prediction that is not a string, or names no node of its level, is ``WRONG``;
- a path ends at its last ground-truth name; a ``None`` above it is a missing level
  (``MISSING``, inside the mask, never right) and an error with a taxonomy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from itertools import chain, count
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hierzoo.taxonomy import Taxonomy

PAD = -1
"""The code of a level a path does not have (outside the mask)."""
WRONG = -2
"""The code of a prediction that names nothing of its level (``None``, ``"Unknown"``, ...)."""
MISSING = -3
"""The code of a ground-truth level a path lacks above its last level: inside the mask, never
right (a missing level is wrong at that level, never a shorter path)."""


# --------------------------------------------------------------------------- factorisation
def new_vocabulary() -> defaultdict[Any, int]:
    """A raw value -> id mapping that gives the next id to a value it has not seen: looking a
    value up is the whole factorisation step, one C-level call per element."""
    return defaultdict(count().__next__)


def factorize(values: Iterable[Any], n: int, vocab: defaultdict[Any, int]) -> np.ndarray:
    """``(n,)`` int64 ids of ``values`` in ``vocab`` (from :func:`new_vocabulary`), in order
    of first appearance, so one vocabulary can be fed block by block.

    Raises:
        TypeError: an unhashable value (a list or a dict where a name belongs).
    """
    return np.fromiter(map(vocab.__getitem__, values), dtype=np.int64, count=n)


def factorize_rows(
    rows: Sequence[Sequence[Any]], width: int | None, vocab: defaultdict[Any, int]
) -> tuple[np.ndarray, int]:
    """``(width, N)`` ids of ragged rows, level-major (``-1`` past a row's end), and the width.

    ``width=None`` takes the longest row; longer rows are cut to ``width``. Unhashable values
    are factorised as their ``repr`` wrapped in :class:`Unhashable`.
    """
    n = len(rows)
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=n)
    if width is None:
        width = int(lengths.max()) if n else 0
    total = int(lengths.sum())
    try:
        flat = factorize(chain.from_iterable(rows), total, vocab)
    except TypeError:
        flat = factorize(map(hashable, chain.from_iterable(rows)), total, vocab)
    out = np.full((width, n), -1, dtype=np.int64)
    if n and lengths.min() == lengths.max() == width:
        out[:] = flat.reshape(n, width).T
        return out, width
    starts = np.cumsum(lengths) - lengths
    row = np.repeat(np.arange(n), lengths)
    col = np.arange(total) - np.repeat(starts, lengths)
    keep = col < width
    out[col[keep], row[keep]] = flat[keep]
    return out, width


def factorize_paths(
    rows: Sequence[Sequence[Any]], width: int | None, vocab: defaultdict[Any, int]
) -> tuple[np.ndarray, int]:
    """:func:`factorize_rows` for rows that repeat whole, as the true paths of a taxonomy do
    (at most one per leaf): each distinct row is factorised once, then spread to its rows."""
    paths = new_vocabulary()
    try:
        which = factorize(map(tuple, rows), len(rows), paths)
    except TypeError:
        return factorize_rows(rows, width, vocab)
    ids, width = factorize_rows(list(paths), width, vocab)
    return ids[:, which], width


class Unhashable(str):
    """The ``repr`` of an unhashable value (a list, a dict), so it can be factorised."""


def is_name(v: Any) -> bool:
    """A string that names something (not the ``repr`` of an unhashable value)."""
    return isinstance(v, str) and not isinstance(v, Unhashable)


def hashable(v: Any) -> Any:
    """``v``, or an :class:`Unhashable` of its ``repr`` when it cannot be hashed."""
    try:
        hash(v)
    except TypeError:
        return Unhashable(repr(v))
    return v


# --------------------------------------------------------------------------- encoding
def sample_name(i: int) -> str:
    return f"sample {i}"


def encode_ids(
    pred: np.ndarray,
    target: np.ndarray,
    names: Sequence[Any],
    *,
    taxonomy: Taxonomy | None = None,
    first_level: int = 0,
    ordered: bool = False,
    describe: Callable[[int], str] = sample_name,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode factorised name paths, level-major: ``(L, N)`` ids into ``names`` (``-1``: none)
    -> ``(pred, target, mask)`` as :func:`encode` returns them (``(N, L)``).

    A target id must name a string (the caller turns other ground truths into names or
    ``-1``); a predicted id whose value is not a string is wrong. ``ordered`` numbers each
    level's names in order of first appearance (sample by sample, the true name before the
    predicted one), as the per-sample encoder did; otherwise codes are only equal exactly when
    names are. ``describe(i)`` names sample ``i`` in error messages.
    """
    target = np.asarray(target, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    width, n = target.shape
    if pred.shape[0] < width:
        pred = np.pad(pred, ((0, width - pred.shape[0]), (0, 0)), constant_values=-1)
    pred = pred[:width]
    present = target >= 0
    depth = np.zeros(n, dtype=np.int64)
    for k in range(width):
        depth[present[k]] = k + 1
    mask = np.arange(width)[:, None] < depth
    missing = mask & ~present
    is_str = np.array([is_name(v) for v in names] + [True], dtype=bool)
    if not is_str[target].all():
        k, i = (int(x[0]) for x in np.nonzero(~is_str[target]))
        raise ValueError(
            f"Expected names (strings) as ground truth, but {describe(i)} has "
            f"{names[target[k, i]]!r} at column {k}."
        )
    if taxonomy is None:
        keys, n_keys = _key_ids(names, is_str, str.lower)
        t_key, p_key = keys[target], keys[pred]
        t_out = np.where(mask, np.where(present, t_key, MISSING), PAD)
        p_ok = mask & present & (p_key >= 0)
        p_out = np.where(p_ok, p_key, WRONG)
        if ordered:
            _number_by_first_appearance(t_out, p_out, mask & present, p_ok, n_keys)
        return p_out.T, t_out.T, mask.T
    return _encode_taxonomy(
        pred, target, names, is_str, mask, missing, taxonomy, first_level, describe
    )


def _key_ids(
    names: Sequence[Any], is_str: np.ndarray, norm: Callable[[str], str]
) -> tuple[np.ndarray, int]:
    """Per raw id, the id of its normalised name (``-1`` for non-strings and for ``-1``)."""
    vocab: dict[str, int] = {}
    keys = np.full(len(names) + 1, -1, dtype=np.int64)
    for i in np.flatnonzero(is_str[:-1]).tolist():
        keys[i] = vocab.setdefault(norm(names[i]), len(vocab))
    return keys, len(vocab)


def _number_by_first_appearance(
    t_out: np.ndarray, p_out: np.ndarray, t_ok: np.ndarray, p_ok: np.ndarray, n_keys: int
) -> None:
    """Renumber each level's codes (rows of ``(L, N)``) in order of first appearance, in
    place."""
    big = np.iinfo(np.int64).max
    for k in range(t_out.shape[0]):
        first = np.full(n_keys, big, dtype=np.int64)
        t_at, p_at = np.flatnonzero(t_ok[k]), np.flatnonzero(p_ok[k])
        np.minimum.at(first, t_out[k, t_at], 2 * t_at)
        np.minimum.at(first, p_out[k, p_at], 2 * p_at + 1)
        seen = np.flatnonzero(first < big)
        code = np.full(n_keys, -1, dtype=np.int64)
        code[seen[np.argsort(first[seen], kind="stable")]] = np.arange(len(seen))
        t_out[k, t_at] = code[t_out[k, t_at]]
        p_out[k, p_at] = code[p_out[k, p_at]]


class _Level:
    """The nodes a level's names can be: the first candidate per name, and a table that picks
    among a shared name's candidates by parent."""

    def __init__(self, taxonomy: Taxonomy, lev: int, norm_names: list[str], used: np.ndarray):
        n_keys = len(norm_names)
        self.first = np.full(n_keys + 1, -1, dtype=np.int64)
        self.shared = np.zeros(n_keys + 1, dtype=bool)
        ids = taxonomy._level_name_ids[lev] if 0 <= lev < taxonomy.depth else {}
        base = taxonomy.n_nodes + 1
        table_keys, table_nodes = [], []
        for key in used.tolist():
            cands = ids.get(norm_names[key])
            if not cands:
                continue
            self.first[key] = cands[0]
            if len(cands) > 1:
                self.shared[key] = True
                for c in cands:
                    table_keys.append(key * base + int(taxonomy.parent[c]) + 1)
                    table_nodes.append(c)
        order = np.argsort(np.array(table_keys, dtype=np.int64), kind="stable")
        self.table_keys = np.array(table_keys, dtype=np.int64)[order]
        self.table_nodes = np.array(table_nodes, dtype=np.int64)[order]
        self.base = base

    def pick(self, keys: np.ndarray, prev: np.ndarray) -> np.ndarray:
        """The node for each name key: the candidate whose parent is ``prev`` (when the name is
        shared and ``prev`` is a node), else the first candidate; ``-1`` for none."""
        out = self.first[keys]
        amb = self.shared[keys] & (prev >= 0)
        if amb.any() and len(self.table_keys):
            q = keys[amb] * self.base + prev[amb] + 1
            pos = np.minimum(np.searchsorted(self.table_keys, q), len(self.table_keys) - 1)
            hit = self.table_keys[pos] == q
            out[amb] = np.where(hit, self.table_nodes[pos], out[amb])
        return out


def _encode_taxonomy(
    pred: np.ndarray,
    target: np.ndarray,
    names: Sequence[Any],
    is_str: np.ndarray,
    mask: np.ndarray,
    missing: np.ndarray,
    taxonomy: Taxonomy,
    first_level: int,
    describe: Callable[[int], str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    width, n = target.shape
    keys, n_keys = _key_ids(names, is_str, lambda name: name.strip().lower())
    norm_names = [""] * n_keys
    for i in np.flatnonzero(keys[:-1] >= 0).tolist():
        norm_names[keys[i]] = names[i].strip().lower()
    t_out = np.full((width, n), PAD, dtype=np.int64)
    p_out = np.full((width, n), WRONG, dtype=np.int64)
    t_prev = np.full(n, -1, dtype=np.int64)
    p_prev = np.full(n, -1, dtype=np.int64)
    problems: list[tuple[int, int, str]] = []
    for k in range(width):
        lev = first_level + k
        valid = mask[k] & ~missing[k]
        t_key = np.where(valid, keys[target[k]], n_keys)
        p_key = keys[pred[k]]
        p_ok = valid & (p_key >= 0)
        used = np.flatnonzero(
            np.bincount(t_key[valid], minlength=n_keys) + np.bincount(p_key[p_ok], minlength=n_keys)
        )
        level = _Level(taxonomy, lev, norm_names, used)
        t_id = np.where(valid, level.pick(t_key, t_prev), -1)
        if missing[k].any():
            problems.append((int(np.flatnonzero(missing[k])[0]), k, "missing"))
        unknown = valid & (t_id < 0)
        if unknown.any():
            problems.append((int(np.flatnonzero(unknown)[0]), k, "unknown"))
        if problems:
            continue
        t_out[k] = np.where(mask[k], t_id, PAD)
        same = p_ok & (p_key == t_key)
        other = np.flatnonzero(p_ok & ~same)
        p_id = np.where(same, t_id, WRONG)
        picked = level.pick(p_key[other], p_prev[other])
        p_id[other] = np.where(picked >= 0, picked, WRONG)
        p_out[k] = p_id
        t_prev, p_prev = t_id, p_id
    if problems:
        i, k, kind = min(problems)
        lev = first_level + k
        if kind == "missing":
            who = describe(i)
            raise ValueError(
                f"{who[:1].upper()}{who[1:]} has no ground truth at column {k} (taxonomy level "
                f"{lev}) but has one below it; a path of taxonomy {taxonomy.name!r} has every "
                "level: give the missing name."
            )
        raise ValueError(
            f"Ground truth {names[target[k, i]]!r} of {describe(i)} is not a node of level {lev} "
            f"of taxonomy {taxonomy.name!r}; check that the results match this taxonomy (and "
            "`first_level`)."
        )
    return p_out.T, t_out.T, mask.T


def encode(
    pred: Sequence[Sequence[str | None]],
    target: Sequence[Sequence[str | None]],
    taxonomy: Taxonomy | None = None,
    first_level: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode name paths into ``(pred, target, mask)`` integer arrays.

    Rows may differ in length: a row's path ends at its last name (trailing ``None`` pads). A
    ``None`` before the last name is a missing level: wrong at that level without a taxonomy
    (its code is ``MISSING``, inside the mask), an error with one. Matching is
    case-insensitive. Without a taxonomy each level gets its own vocabulary (codes in order of
    first appearance; enough for every metric but ``consistency``); with one, names become node
    ids of level ``first_level + column``, and a name that several nodes of a level share (a
    name under two parents) resolves to the one below the node chosen one level up. A predicted
    ``None``, ``"Unknown"`` or any name not in the level becomes ``-2`` (wrong).

    Each distinct name is normalised and looked up once; the samples are mapped with NumPy.

    Raises:
        ValueError: a ground-truth name that is not a node of its level of the taxonomy, a
            missing ground-truth level with a taxonomy, a ground truth that is not a string,
            or ``pred`` and ``target`` with different numbers of rows.
    """
    return encode_lists(pred, target, taxonomy=taxonomy, first_level=first_level, ordered=True)


def encode_lists(
    pred: Sequence[Sequence[Any]],
    target: Sequence[Sequence[Any]],
    *,
    taxonomy: Taxonomy | None = None,
    first_level: int = 0,
    ordered: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`encode` with the choice of numbering (see :func:`encode_ids`)."""
    if len(pred) != len(target):
        raise ValueError(
            f"Expected as many predicted paths as true paths, but got {len(pred)} and "
            f"{len(target)}."
        )
    from hierzoo.taxonomy import as_taxonomy

    taxonomy = as_taxonomy(taxonomy)
    vocab = new_vocabulary()
    t_raw, width = factorize_paths(target, None, vocab)
    p_raw, _ = factorize_rows(pred, width, vocab)
    names = list(vocab)
    ok = np.array([is_name(v) for v in names] + [True])
    none = np.array([v is None for v in names] + [True])
    bad = ~ok[t_raw] & ~none[t_raw]
    if bad.any():
        k, i = (int(x[0]) for x in np.nonzero(bad))
        raise ValueError(
            f"Expected names (strings) or None as ground truth, but sample {i} has "
            f"{names[t_raw[k, i]]!r} at column {k}."
        )
    t_raw = np.where(none[t_raw], -1, t_raw)
    return encode_ids(
        p_raw, t_raw, names, taxonomy=taxonomy, first_level=first_level, ordered=ordered
    )
