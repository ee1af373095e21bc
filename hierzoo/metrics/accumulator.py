"""A stateful accumulator of every hierarchical metric, for evaluation and training loops."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from hierzoo.metrics.functional import (
    SAMPLE_METRICS,
    Estimate,
    bootstrap_means,
    decode_stats,
    encode_stats,
    level_interval,
    path_stats,
    prepare,
    sample_metric_values,
)

if TYPE_CHECKING:
    from hierzoo.taxonomy import Taxonomy

_DENSE_LIMIT = 1 << 22


class HierarchicalMetrics:
    """Accumulate HCA, leaf accuracy, per-level accuracy, POR, strict POR, TOR, hF1, consistency.

    torchmetrics-style: ``update(pred, target)`` per batch (codes or name paths; numpy arrays,
    lists or torch tensors on any device), ``compute()`` at the end, ``reset()`` to start over;
    calling the object updates and returns the batch's own metrics. The state is integer counts:
    how many samples had each combination of per-sample statistics
    (:class:`~hierzoo.metrics.functional.PathStats`), and right/total counts per level. So
    batches in any order, merged accumulators (:meth:`merge`) and batches spread over processes
    (:meth:`sync` sums the counts across the ranks of ``torch.distributed``) give exactly the
    result of one pass.

    Args:
        num_levels: the number of level columns ``L`` of the inputs (the taxonomy's depth minus
            ``first_level`` when a taxonomy is given and this is ``None``).
        taxonomy: encode names through it and compute path consistency.
        first_level: the taxonomy level of column 0 (1 when the root level is left out).
    """

    def __init__(
        self, num_levels: int | None = None, taxonomy: Taxonomy | None = None, first_level: int = 0
    ):
        if num_levels is None:
            if taxonomy is None:
                raise ValueError("Expected `num_levels` or `taxonomy`, but got neither.")
            num_levels = taxonomy.depth - first_level
        if num_levels < 1:
            raise ValueError(f"Expected `num_levels` >= 1, but got {num_levels}.")
        self.num_levels = num_levels
        self.taxonomy = taxonomy
        self.first_level = first_level
        self.reset()

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The sample metrics :meth:`compute` returns (``consistency`` needs a taxonomy)."""
        return SAMPLE_METRICS if self.taxonomy is not None else SAMPLE_METRICS[:-1]

    def reset(self) -> None:
        """Forget every update."""
        self.counts: dict[int, int] = {}
        self.level_right = np.zeros(self.num_levels, dtype=np.int64)
        self.level_total = np.zeros(self.num_levels, dtype=np.int64)
        self._local: tuple[dict[int, int], np.ndarray, np.ndarray] | None = None

    def update(self, pred: Any, target: Any, mask: Any = None, pred_mask: Any = None) -> None:
        """Add a batch: ``(B, L')`` codes or name paths with ``L' <= num_levels``.

        Codes are taxonomy node ids (or any coding in which equal codes mean equal names),
        negative for "no answer"; ``mask`` (default ``target >= 0``) marks the levels each true
        path has. Arrays may be numpy arrays, nested lists or torch tensors (on any device).
        """
        p, t, m = prepare(_host(pred), _host(target), _host(mask), self.taxonomy, self.first_level)
        self._add(p, t, m, _host(pred_mask))

    def __call__(
        self, pred: Any, target: Any, mask: Any = None, pred_mask: Any = None
    ) -> dict[str, Any]:
        """:meth:`update` with the batch, and return the batch's own metrics (as
        ``summarize`` would; the accumulated state is read with :meth:`compute`)."""
        p, t, m = prepare(_host(pred), _host(target), _host(mask), self.taxonomy, self.first_level)
        pm = _host(pred_mask)
        self._add(p, t, m, pm)
        batch = HierarchicalMetrics(self.num_levels, self.taxonomy, self.first_level)
        batch._add(p, t, m, pm)
        return batch.compute()

    def _add(self, p: np.ndarray, t: np.ndarray, m: np.ndarray, pred_mask: Any) -> None:
        if p.shape[1] > self.num_levels:
            raise ValueError(
                f"Expected at most {self.num_levels} level columns, but got {p.shape[1]}."
            )
        if p.shape[1] < self.num_levels:
            pad = ((0, 0), (0, self.num_levels - p.shape[1]))
            p = np.pad(p, pad, constant_values=-2)
            t = np.pad(t, pad, constant_values=-1)
            m = np.pad(m, pad, constant_values=False)
            if pred_mask is not None:
                pred_mask = np.pad(np.asarray(pred_mask, dtype=bool), pad, constant_values=False)
        stats, right, levels = path_stats(
            p, t, m, pred_mask=pred_mask, taxonomy=self.taxonomy, first_level=self.first_level
        )
        codes = encode_stats(stats, self.num_levels)
        if codes.size and codes.max() < _DENSE_LIMIT:
            dense = np.bincount(codes)
            keys = np.flatnonzero(dense)
            values = dense[keys]
        else:
            keys, values = np.unique(codes, return_counts=True)
        total = np.array(
            [np.count_nonzero(levels[k]) for k in range(self.num_levels)], dtype=np.int64
        )
        hits = np.array(
            [np.count_nonzero(right[k]) for k in range(self.num_levels)], dtype=np.int64
        )
        self._accumulate(dict(zip(keys.tolist(), values.tolist())), hits, total)

    def _accumulate(self, counts: dict[int, int], right: np.ndarray, total: np.ndarray) -> None:
        """Add counts to the state, and to this rank's own share once :meth:`sync` ran."""
        states = [(self.counts, self.level_right, self.level_total)]
        if self._local is not None:
            states.append(self._local)
        for state_counts, state_right, state_total in states:
            for key, count in counts.items():
                state_counts[key] = state_counts.get(key, 0) + count
            state_right += right
            state_total += total

    @property
    def n(self) -> int:
        """Samples seen so far."""
        return sum(self.counts.values())

    def merge(self, other: HierarchicalMetrics) -> HierarchicalMetrics:
        """Add another accumulator's counts to this one (same ``num_levels`` and metrics)."""
        if other.num_levels != self.num_levels or set(other.metric_names) != set(self.metric_names):
            raise ValueError("Expected accumulators with the same levels and metrics.")
        self._accumulate(dict(other.counts), other.level_right, other.level_total)
        return self

    def sync(self, group: Any = None) -> None:
        """Sum the counts across all ranks of ``torch.distributed`` (no-op when not initialised).

        A collective call: every rank of ``group`` must call it. Afterwards every rank holds the
        counts of all ranks, and :meth:`compute` gives the result of one pass over every rank's
        samples. Each rank remembers its own share, so updating on and syncing again later (a
        running total per epoch) counts every sample once; :meth:`reset` starts over.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        own = self._local or (self.counts, self.level_right, self.level_total)
        gathered: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, own, group=group)
        self._local = (dict(own[0]), own[1].copy(), own[2].copy())
        self.counts = {}
        self.level_right = np.zeros(self.num_levels, dtype=np.int64)
        self.level_total = np.zeros(self.num_levels, dtype=np.int64)
        for counts, right, total in gathered:
            for key, count in counts.items():
                self.counts[key] = self.counts.get(key, 0) + count
            self.level_right += right
            self.level_total += total

    def _sorted_counts(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.array(sorted(self.counts), dtype=np.int64)
        return keys, np.array([self.counts[k] for k in keys.tolist()], dtype=np.int64)

    def first_error(self) -> list[int]:
        """Samples per first wrong level column; the last entry counts fully right paths."""
        out = np.zeros(self.num_levels + 1, dtype=np.int64)
        if self.counts:
            keys, counts = self._sorted_counts()
            stats = decode_stats(keys, self.num_levels)
            first = np.where(stats.prefix == stats.depth, self.num_levels, stats.prefix)
            np.add.at(out, first, counts)
        return out.tolist()

    def compute(
        self,
        ci: bool = False,
        n_boot: int = 2000,
        confidence: float = 0.95,
        seed: int = 0,
        only: str | None = None,
    ) -> dict[str, Any]:
        """Every metric (fractions in [0, 1]), ``level_acc`` (a list), ``n`` and ``first_error``.

        With ``ci`` each value is an :class:`Estimate` whose interval is a percentile bootstrap
        over samples (all sample metrics from the same resamples). ``only`` names one metric.
        """
        names = self.metric_names if only is None else (only,)
        keys, counts = self._sorted_counts()
        total = counts.sum()
        per_bin = sample_metric_values(decode_stats(keys, self.num_levels))
        values = (
            np.stack([per_bin[m] for m in names], axis=1)
            if len(keys)
            else np.zeros((0, len(names)))
        )
        means = counts @ values / total if total else np.full(len(names), np.nan)
        out: dict[str, Any] = {}
        if ci:
            low, high = bootstrap_means(counts, values, n_boot, confidence, seed)
            for i, m in enumerate(names):
                out[m] = Estimate(float(means[i]), float(low[i]), float(high[i]))
        else:
            out.update({m: float(means[i]) for i, m in enumerate(names)})
        if only is not None:
            return out
        acc = np.divide(
            self.level_right,
            self.level_total,
            out=np.full(self.num_levels, np.nan),
            where=self.level_total > 0,
        )
        if ci:
            out["level_acc"] = [
                Estimate(float(a), *level_interval(int(r), int(t), n_boot, confidence, seed))
                for a, r, t in zip(acc, self.level_right, self.level_total)
            ]
        else:
            out["level_acc"] = acc.tolist()
        out["n"] = int(total)
        out["first_error"] = self.first_error()
        return out


def _host(x: Any) -> Any:
    """A torch tensor (any device) as a numpy array; anything else as it is."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return x


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
    """Every metric in one pass; see :meth:`HierarchicalMetrics.compute`."""
    p, t, m = prepare(pred, target, mask, taxonomy, first_level)
    acc = HierarchicalMetrics(max(p.shape[1], 1), taxonomy=taxonomy, first_level=first_level)
    acc._add(p, t, m, pred_mask)
    return acc.compute(ci=ci, n_boot=n_boot, confidence=confidence, seed=seed)
