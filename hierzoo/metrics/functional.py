"""Hierarchical metrics as pure, vectorized functions over integer-coded paths.

Inputs (all metrics):
    pred:   ``(N, L)`` integer node codes predicted per level.
    target: ``(N, L)`` integer node codes of the ground truth per level.
    mask:   ``(N, L)`` bool, True for the levels each ground-truth path has. The levels of a
            path are contiguous from the first column (variable-depth taxonomies pad on the
            right). Default: ``target >= 0``.

Codes are taxonomy node ids (see :class:`hierzoo.Taxonomy`) or any per-level coding in which
equal codes mean equal names. A negative prediction never matches (use it for "Unknown",
``None`` or a missing answer). Names are accepted too: pass lists of names per sample and,
optionally, ``taxonomy=`` to encode them through it (case-insensitive); see :func:`encode`.

Every metric is the mean over samples of a per-sample fraction ``num / den`` (``0`` where
``den == 0``), as in the paper's script:

    HCA         all levels of the path right
    leaf        the last level of the path right
    POR         right levels / path length
    strict POR  longest right prefix / path length
    TOR         consecutive level pairs both right / (path length - 1)
    hF1         2 |P & T| / (|P| + |T|) over the predicted and true node sets
    consistency the predicted nodes form a chain of parent -> child links of the taxonomy

Each function returns a fraction in [0, 1]; with ``ci=True`` an :class:`Estimate` with a
bootstrap confidence interval over samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from hierzoo.metrics.names import MISSING, encode, encode_lists

if TYPE_CHECKING:
    from hierzoo.taxonomy import Taxonomy

__all__ = ["MISSING", "encode"]  # re-exported from hierzoo.metrics.names

SAMPLE_METRICS = ("hca", "leaf_acc", "por", "strict_por", "tor", "hf1", "consistency")


class Estimate(NamedTuple):
    """A metric value with a bootstrap confidence interval (all fractions in [0, 1])."""

    value: float
    low: float
    high: float


# --------------------------------------------------------------------------- input handling
def _first_given(x: Any) -> Any:
    """The first value that is not ``None`` in rows (or a flat sequence); ``None`` if none."""
    for row in x:
        for v in row if isinstance(row, (list, tuple, np.ndarray)) else [row]:
            if v is not None:
                return v
    return None


def _is_names(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "OUS"
    return isinstance(_first_given(x), str)


def _is_codes(x: Any) -> bool:
    """Integer node codes: an integer array, or rows whose first given value is an integer."""
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "iu"
    v = _first_given(x)
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _taxonomy(taxonomy: Any) -> Taxonomy | None:
    from hierzoo.taxonomy import as_taxonomy

    return as_taxonomy(taxonomy)


def prepare(
    pred: Any,
    target: Any,
    mask: Any = None,
    taxonomy: Taxonomy | None = None,
    first_level: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate inputs and return ``(pred, target, mask)`` as int64, int64, bool arrays.

    Name inputs are encoded through :func:`encode`; a :class:`~hierzoo.models.PathPrediction`
    as ``pred`` gives its names or its node ids, whichever ``target`` holds.
    """
    if hasattr(pred, "node_ids") and hasattr(pred, "names"):  # a PathPrediction
        pred = pred.names if _is_names(target) else pred.node_ids
    if len(pred) == 0 and len(target) == 0:  # an empty batch adds nothing
        empty = np.zeros((0, 1), dtype=np.int64)
        return empty, empty.copy(), np.zeros((0, 1), dtype=bool)
    for what, x in (("pred", pred), ("target", target)):
        flat = isinstance(x, np.ndarray) and x.ndim == 1 and x.dtype.kind in "OUS"
        flat |= isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], str)
        if flat or isinstance(x, str):
            raise TypeError(
                f"Expected `{what}` as paths (a list of lists of names, or an (N, L) array), "
                f"but got {str(x)[:60]!r}; for one sample pass [path]."
            )
    if _is_names(target) and _is_codes(pred):
        raise ValueError(
            "Expected `pred` and `target` in the same form, but `target` holds names and `pred` "
            "node codes; pass the predicted names (PathPrediction.names, or the PathPrediction "
            "itself) or the true node ids (taxonomy.paths[...])."
        )
    if _is_names(target) or _is_names(pred):
        pred, target, enc_mask = encode_lists(
            pred, target, taxonomy=taxonomy, first_level=first_level
        )
        mask = enc_mask if mask is None else mask
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.ndim == 1:
        pred, target = pred[:, None], target[:, None]
    if pred.ndim != 2 or pred.shape != target.shape:
        raise ValueError(
            f"Expected `pred` and `target` to be (N, L) arrays of the same shape, but got "
            f"{pred.shape} and {target.shape}."
        )
    if pred.dtype.kind not in "iu" or target.dtype.kind not in "iu":
        raise ValueError(
            f"Expected integer node codes, but got dtypes {pred.dtype} and {target.dtype}; pass "
            "names "
            "as lists of strings or encode them with `hierzoo.metrics.encode`."
        )
    mask = target >= 0 if mask is None else np.asarray(mask, dtype=bool).reshape(target.shape)
    cols = np.ascontiguousarray(mask.T)
    if any((cols[k] & ~cols[k - 1]).any() for k in range(1, cols.shape[0])):
        row = int(np.flatnonzero((mask[:, 1:] & ~mask[:, :-1]).any(1))[0])
        raise ValueError(
            "Expected the levels of each path to be contiguous from the first column, but row "
            f"{row} "
            f"has mask {mask[row].tolist()}; pad variable-depth paths on the right."
        )
    if pred.shape[0] and not cols[0].all():
        row = int(np.flatnonzero(~mask[:, 0])[0])
        raise ValueError(
            f"Row {row} has no levels (its mask is all False); drop it or give its path."
        )
    return pred.astype(np.int64, copy=False), target.astype(np.int64, copy=False), mask


# --------------------------------------------------------------------------- per-sample statistics
STAT_FIELDS = ("leaf", "consistent", "pairs", "prefix", "n_right", "depth", "n_pred")


class PathStats(NamedTuple):
    """Small per-sample integers from which every sample metric follows.

    ``depth`` levels in the true path, ``n_pred`` in the predicted one, ``n_right`` right
    levels, ``prefix`` the longest right prefix, ``pairs`` consecutive right pairs, ``leaf``
    whether the last true level is right, ``consistent`` whether the predicted path exists in
    the taxonomy (all ones without a taxonomy). Each is an ``(N,)`` integer array.
    """

    leaf: np.ndarray
    consistent: np.ndarray
    pairs: np.ndarray
    prefix: np.ndarray
    n_right: np.ndarray
    depth: np.ndarray
    n_pred: np.ndarray


def path_stats(
    pred: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
    *,
    pred_mask: np.ndarray | None = None,
    taxonomy: Taxonomy | None = None,
    first_level: int = 0,
) -> tuple[PathStats, np.ndarray, np.ndarray]:
    """Per-sample statistics of validated inputs, plus the ``(L, N)`` right and level masks.

    A level outside ``pred_mask`` (default ``mask``) counts as not predicted, so not right.
    Works level by level over contiguous ``(N,)`` columns: L is small, N is large.
    """
    n, width = target.shape
    right = (pred == target) & mask & (pred >= 0)
    pm = mask if pred_mask is None else np.asarray(pred_mask, dtype=bool).reshape(mask.shape)
    if pred_mask is not None:
        right &= pm
    right_t = np.ascontiguousarray(right.T)
    levels = np.ascontiguousarray(mask.T)
    small = np.uint8 if width < 128 else np.int64
    depth = np.zeros(n, dtype=small)
    n_right = np.zeros(n, dtype=small)
    prefix = np.zeros(n, dtype=small)
    pairs = np.zeros(n, dtype=small)
    leaf = np.zeros(n, dtype=bool)
    run = np.ones(n, dtype=bool)
    for k in range(width):
        col, has = right_t[k], levels[k]
        depth += has
        n_right += col
        run &= col
        prefix += run
        if k:
            pairs += col & right_t[k - 1]
            ends = levels[k - 1] & ~has
            leaf[ends] = right_t[k - 1][ends]
    leaf |= levels[-1] & right_t[-1]
    n_pred = depth if pred_mask is None else pm.sum(1).astype(small)
    consistent = (
        consistent_paths(pred, pm, taxonomy, first_level)
        if taxonomy is not None
        else np.ones(n, dtype=bool)
    )
    stats = PathStats(leaf, consistent, pairs, prefix, n_right, depth, n_pred)
    return stats, right_t, levels


def consistent_paths(
    pred: np.ndarray, mask: np.ndarray, taxonomy: Taxonomy, first_level: int = 0
) -> np.ndarray:
    """``(N,)`` bool: the masked predictions are nodes of their levels, each the child of the one
    above."""
    n, width = pred.shape
    if first_level >= taxonomy.depth:
        return ~mask.any(1)
    # A chain of parent -> child links from a node of level `first_level` stays one level per
    # column, so only column 0 needs a level check. Invalid codes map to a sentinel parent.
    sentinel = np.iinfo(np.int64).min
    parent = np.concatenate([[sentinel], taxonomy.parent, [sentinel]])
    lo, hi = taxonomy.level_offsets[first_level], taxonomy.level_offsets[first_level + 1]
    ok = (pred[:, 0] >= lo) & (pred[:, 0] < hi)
    if width > 1:
        par = np.take(parent, pred[:, 1:] + 1, mode="clip")
        linked = np.ascontiguousarray((par == pred[:, :-1]).T)
        levels = np.ascontiguousarray(mask.T)
        for k in range(1, width):
            ok &= linked[k - 1] | ~levels[k]
    return ok | ~mask[:, 0]


def stat_radices(width: int) -> tuple[int, ...]:
    """Mixed radices of :data:`STAT_FIELDS` for ``width`` level columns."""
    r = width + 1
    return (2, 2, r, r, r, r, r)


def encode_stats(stats: PathStats, width: int) -> np.ndarray:
    """One integer per sample for its whole :class:`PathStats` (mixed radix)."""
    radices = stat_radices(width)
    dtype = np.int32 if np.prod(radices, dtype=float) < 2**31 else np.int64
    code = np.zeros(len(stats.depth), dtype=dtype)
    scale = 1
    for value, radix in zip(stats, radices):
        code += value.astype(dtype) * dtype(scale)
        scale *= radix
    return code


def decode_stats(codes: np.ndarray, width: int) -> PathStats:
    values = []
    rest = np.asarray(codes, dtype=np.int64)
    for radix in stat_radices(width):
        rest, value = np.divmod(rest, radix)
        values.append(value)
    return PathStats(*values)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def sample_metric_values(stats: PathStats) -> dict[str, np.ndarray]:
    """Every sample metric's per-sample value (float) from :class:`PathStats`."""
    n_right = stats.n_right.astype(np.int64)
    depth = stats.depth.astype(np.int64)
    return {
        "hca": (n_right == depth).astype(float),
        "leaf_acc": stats.leaf.astype(float),
        "por": _ratio(n_right, depth),
        "strict_por": _ratio(stats.prefix.astype(np.int64), depth),
        "tor": _ratio(stats.pairs.astype(np.int64), depth - 1),
        "hf1": _ratio(2 * n_right, stats.n_pred.astype(np.int64) + depth),
        "consistency": stats.consistent.astype(float),
    }


def first_error_level(pred: Any, target: Any, mask: Any = None, **kw: Any) -> np.ndarray:
    """``(N,)`` column of each path's first wrong level, ``-1`` where the whole path is right."""
    pred, target, mask = prepare(pred, target, mask, kw.get("taxonomy"), kw.get("first_level", 0))
    stats, _, _ = path_stats(pred, target, mask)
    prefix = stats.prefix.astype(np.int64)
    return np.where(prefix == stats.depth, -1, prefix)


# --------------------------------------------------------------------------- bootstrap
def _check_confidence(confidence: Any) -> None:
    number = isinstance(confidence, (int, float)) and not isinstance(confidence, bool)
    if not number or not 0 < confidence < 1:
        raise ValueError(
            f"Expected `confidence` in (0, 1) (0.95 for a 95% interval), but got {confidence!r}."
        )


def bootstrap_means(
    counts: np.ndarray, values: np.ndarray, n_boot: int, confidence: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean of ``values`` (``(bins,)`` or ``(bins, m)``)
    over samples distributed over bins by ``counts``.

    Resampling N samples with replacement is a multinomial draw over the bins, so this costs
    O(bins x n_boot), not O(N x n_boot). Returns ``(low, high)`` arrays of shape ``(m,)``.
    """
    _check_confidence(confidence)
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    values = np.asarray(values, dtype=float).reshape(len(counts), -1)
    if total == 0:
        nan = np.full(values.shape[1], np.nan)
        return nan, nan
    draws = np.random.default_rng(seed).multinomial(total, counts / total, size=n_boot)
    means = draws @ values / total
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha], axis=0)
    return low, high


def level_interval(
    right: int, total: int, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap interval of one level's accuracy from its counts."""
    low, high = bootstrap_means(
        np.array([total - right, right]), np.array([0.0, 1.0]), n_boot, confidence, seed
    )
    return float(low[0]), float(high[0])


# --------------------------------------------------------------------------- counts and reduction
_DENSE_LIMIT = 1 << 22


class Counts(NamedTuple):
    """The sufficient statistics of every metric: how many samples had each combination of
    :class:`PathStats` (``keys`` from :func:`encode_stats`, sorted, with their ``counts``), and
    right/total samples per level column. Counts of batches add up to the counts of one pass
    (:class:`~hierzoo.metrics.HierarchicalMetrics` holds them)."""

    keys: np.ndarray
    counts: np.ndarray
    level_right: np.ndarray
    level_total: np.ndarray


def path_counts(
    pred: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
    *,
    pred_mask: Any = None,
    taxonomy: Taxonomy | None = None,
    first_level: int = 0,
    width: int | None = None,
) -> Counts:
    """:class:`Counts` of validated ``(N, L')`` inputs, padded on the right to ``width``
    columns (default ``max(L', 1)``). ``taxonomy`` adds path consistency."""
    width = max(pred.shape[1], 1) if width is None else width
    if pred.shape[1] > width:
        raise ValueError(f"Expected at most {width} level columns, but got {pred.shape[1]}.")
    if pred.shape[1] < width:
        pad = ((0, 0), (0, width - pred.shape[1]))
        pred = np.pad(pred, pad, constant_values=-2)
        target = np.pad(target, pad, constant_values=-1)
        mask = np.pad(mask, pad, constant_values=False)
        if pred_mask is not None:
            pred_mask = np.pad(np.asarray(pred_mask, dtype=bool), pad, constant_values=False)
    stats, right, levels = path_stats(
        pred, target, mask, pred_mask=pred_mask, taxonomy=taxonomy, first_level=first_level
    )
    codes = encode_stats(stats, width)
    if codes.size and codes.max() < _DENSE_LIMIT:
        dense = np.bincount(codes)
        keys = np.flatnonzero(dense)
        counts = dense[keys]
    else:
        keys, counts = np.unique(codes, return_counts=True)
    total = np.array([np.count_nonzero(levels[k]) for k in range(width)], dtype=np.int64)
    hits = np.array([np.count_nonzero(right[k]) for k in range(width)], dtype=np.int64)
    return Counts(keys.astype(np.int64), counts.astype(np.int64), hits, total)


def first_error_counts(keys: np.ndarray, counts: np.ndarray, width: int) -> list[int]:
    """Samples per first wrong level column; the last entry counts fully right paths."""
    out = np.zeros(width + 1, dtype=np.int64)
    if len(keys):
        stats = decode_stats(keys, width)
        first = np.where(stats.prefix == stats.depth, width, stats.prefix)
        np.add.at(out, first, counts)
    return out.tolist()


def _check_interval(n_boot: Any, confidence: Any) -> None:
    """Bootstrap settings a user gave: a whole number of resamples and a level in (0, 1)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(
            f"Expected `n_boot` to be a whole number of bootstrap resamples, 1 or more, but got "
            f"{n_boot!r}; 2000 is the default."
        )
    _check_confidence(confidence)


def reduce_counts(
    counts: Counts,
    metrics: Sequence[str] = SAMPLE_METRICS,
    *,
    ci: bool = False,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    only: str | None = None,
) -> dict[str, Any]:
    """Every metric of ``metrics`` from :class:`Counts`, as fractions in [0, 1].

    Returns each metric (an :class:`Estimate` with ``ci``: all sample metrics from the same
    multinomial resamples of the counts), ``level_acc`` (a list), ``n`` and ``first_error``;
    with ``only``, that one metric alone.
    """
    if ci:
        _check_interval(n_boot, confidence)
    width = len(counts.level_total)
    names = tuple(metrics) if only is None else (only,)
    keys, n_per_key = counts.keys, counts.counts
    total = n_per_key.sum()
    per_bin = sample_metric_values(decode_stats(keys, width))
    values = (
        np.stack([per_bin[m] for m in names], axis=1) if len(keys) else np.zeros((0, len(names)))
    )
    means = n_per_key @ values / total if total else np.full(len(names), np.nan)
    out: dict[str, Any] = {}
    if ci:
        low, high = bootstrap_means(n_per_key, values, n_boot, confidence, seed)
        for i, m in enumerate(names):
            out[m] = Estimate(float(means[i]), float(low[i]), float(high[i]))
    else:
        out.update({m: float(means[i]) for i, m in enumerate(names)})
    if only is not None:
        return out
    right, seen = counts.level_right, counts.level_total
    acc = np.divide(right, seen, out=np.full(width, np.nan), where=seen > 0)
    if ci:
        out["level_acc"] = [
            Estimate(float(a), *level_interval(int(r), int(t), n_boot, confidence, seed))
            for a, r, t in zip(acc, right, seen)
        ]
    else:
        out["level_acc"] = acc.tolist()
    out["n"] = int(total)
    out["first_error"] = first_error_counts(keys, n_per_key, width)
    return out


# --------------------------------------------------------------------------- public metrics
def summarize(
    pred: Any,
    target: Any,
    mask: Any = None,
    *,
    taxonomy: Taxonomy | None = None,
    first_level: int = 0,
    pred_mask: Any = None,
    ci: bool = False,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric in one pass, as fractions in [0, 1] (``hierzoo score`` and ``summary.json``
    give the same numbers in percent).

    Returns ``hca, leaf_acc, por, strict_por, tor, hf1`` (and ``consistency`` with a taxonomy),
    ``level_acc`` (one value per column), ``n`` and ``first_error`` (samples per first wrong
    column, then the fully right ones); with ``ci`` each value is an :class:`Estimate`.
    """
    taxonomy = _taxonomy(taxonomy)
    p, t, m = prepare(pred, target, mask, taxonomy, first_level)
    if not len(t):
        raise ValueError("No samples: `pred` and `target` are empty.")
    counts = path_counts(p, t, m, pred_mask=pred_mask, taxonomy=taxonomy, first_level=first_level)
    metrics = SAMPLE_METRICS if taxonomy is not None else SAMPLE_METRICS[:-1]
    return reduce_counts(counts, metrics, ci=ci, n_boot=n_boot, confidence=confidence, seed=seed)


def _reduce(
    name: str,
    pred: Any,
    target: Any,
    mask: Any,
    *,
    taxonomy: Taxonomy | None,
    first_level: int,
    ci: bool,
    n_boot: int,
    confidence: float,
    seed: int,
    pred_mask: Any = None,
) -> float | Estimate:
    taxonomy = _taxonomy(taxonomy)
    if name == "consistency" and taxonomy is None:
        raise ValueError(
            "`path_consistency` needs `taxonomy=` to know which parent -> child links exist."
        )
    p, t, m = prepare(pred, target, mask, taxonomy, first_level)
    if not len(t):
        raise ValueError("No samples: `pred` and `target` are empty.")
    counts = path_counts(
        p,
        t,
        m,
        pred_mask=pred_mask,
        taxonomy=taxonomy if name == "consistency" else None,
        first_level=first_level,
    )
    return reduce_counts(counts, ci=ci, n_boot=n_boot, confidence=confidence, seed=seed, only=name)[
        name
    ]


def _metric(name: str, doc: str):
    def fn(
        pred: Any,
        target: Any,
        mask: Any = None,
        *,
        taxonomy: Taxonomy | None = None,
        first_level: int = 0,
        ci: bool = False,
        n_boot: int = 2000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> float | Estimate:
        return _reduce(
            name,
            pred,
            target,
            mask,
            taxonomy=taxonomy,
            first_level=first_level,
            ci=ci,
            n_boot=n_boot,
            confidence=confidence,
            seed=seed,
        )

    fn.__name__ = fn.__qualname__ = {"leaf_acc": "leaf_accuracy"}.get(name, name)
    fn.__doc__ = (
        doc + "\n\nSee the module docstring for the arguments; returns a fraction or an Estimate."
    )
    return fn


hca = _metric(
    "hca", "Hierarchical consistent accuracy: the share of samples with every level right."
)
leaf_accuracy = _metric("leaf_acc", "The share of samples whose last (leaf) level is right.")
por = _metric("por", "Point-overlap ratio: the mean share of a path's levels that are right.")
strict_por = _metric(
    "strict_por", "Strict POR: the mean longest right prefix over the path length."
)
tor = _metric(
    "tor",
    "Top-overlap ratio: the mean share of consecutive level pairs with both levels right. As in "
    "the "
    "paper's script, a path with a single level scores 0.",
)


def hierarchical_f1(
    pred: Any,
    target: Any,
    mask: Any = None,
    *,
    pred_mask: Any = None,
    taxonomy: Taxonomy | None = None,
    first_level: int = 0,
    ci: bool = False,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> float | Estimate:
    """Example-based hierarchical F1 over node sets: ``2|P & T| / (|P| + |T|)`` per sample.

    ``pred_mask`` marks the predicted path's levels when it differs in depth from the true one
    (as ``predict_path`` may on variable-depth taxonomies); by default it equals ``mask``, and
    then hF1 equals POR.
    """
    return _reduce(
        "hf1",
        pred,
        target,
        mask,
        taxonomy=taxonomy,
        first_level=first_level,
        ci=ci,
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
        pred_mask=pred_mask,
    )


def path_consistency(
    pred: Any,
    target: Any,
    mask: Any = None,
    *,
    taxonomy: Taxonomy,
    first_level: int = 0,
    ci: bool = False,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> float | Estimate:
    """The share of predicted paths that exist in the taxonomy, right or wrong.

    Separates "wrong" from "incoherent": a path is consistent when each predicted node is a node
    of its level and the child of the predicted node above it.
    """
    return _reduce(
        "consistency",
        pred,
        target,
        mask,
        taxonomy=taxonomy,
        first_level=first_level,
        ci=ci,
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
    )


def level_accuracy(
    pred: Any,
    target: Any,
    mask: Any = None,
    *,
    taxonomy: Taxonomy | None = None,
    first_level: int = 0,
    ci: bool = False,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> np.ndarray | list[Estimate]:
    """Accuracy of each level over the samples whose path has it: ``(L,)`` (NaN for an empty
    level)."""
    taxonomy = _taxonomy(taxonomy)
    p, t, m = prepare(pred, target, mask, taxonomy, first_level)
    right = ((p == t) & m & (p >= 0)).sum(0)
    total = m.sum(0)
    acc = np.divide(right, total, out=np.full(len(total), np.nan), where=total > 0)
    if not ci:
        return acc
    return [
        Estimate(float(a), *level_interval(int(r), int(n), n_boot, confidence, seed))
        for a, r, n in zip(acc, right, total)
    ]
