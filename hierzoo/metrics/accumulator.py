"""A stateful accumulator of every hierarchical metric, for evaluation and training loops.

The accumulator holds counts (:class:`~hierzoo.metrics.functional.Counts`) and calls the
functional reduction on them, as torchmetrics' classes call their functional core; the
functional module never imports this one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from hierzoo.metrics.functional import (
    SAMPLE_METRICS,
    Counts,
    first_error_counts,
    path_counts,
    prepare,
    reduce_counts,
    summarize,
)

if TYPE_CHECKING:
    from hierzoo.taxonomy import Taxonomy

__all__ = ["HierarchicalMetrics", "summarize"]


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
        self,
        num_levels: int | None = None,
        taxonomy: Taxonomy | str | None = None,
        first_level: int = 0,
    ):
        from hierzoo.taxonomy import as_taxonomy

        taxonomy = as_taxonomy(taxonomy)
        for name, value in (("num_levels", num_levels), ("first_level", first_level)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"Expected `{name}` to be an integer, but got {value!r}.")
        if taxonomy is not None and not 0 <= first_level < taxonomy.depth:
            raise ValueError(
                f"Expected `first_level` in 0..{taxonomy.depth - 1} (the taxonomy level of column "
                f"0; taxonomy {taxonomy.name!r} has {taxonomy.depth} levels), but got "
                f"{first_level}."
            )
        if num_levels is None:
            if taxonomy is None:
                raise ValueError("Expected `num_levels` or `taxonomy`, but got neither.")
            num_levels = taxonomy.depth - first_level
        if num_levels < 1:
            raise ValueError(f"Expected `num_levels` >= 1, but got {num_levels}.")
        if taxonomy is not None and first_level + num_levels > taxonomy.depth:
            raise ValueError(
                f"Expected at most {taxonomy.depth - first_level} level columns from level "
                f"{first_level} of taxonomy {taxonomy.name!r}, but got `num_levels` {num_levels}."
            )
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
        return reduce_counts(self._add(p, t, m, _host(pred_mask)), self.metric_names)

    def _add(self, p: np.ndarray, t: np.ndarray, m: np.ndarray, pred_mask: Any) -> Counts:
        """Count a validated batch (the functional core) and add the counts to the state."""
        batch = path_counts(
            p,
            t,
            m,
            pred_mask=pred_mask,
            taxonomy=self.taxonomy,
            first_level=self.first_level,
            width=self.num_levels,
        )
        counts = dict(zip(batch.keys.tolist(), batch.counts.tolist()))
        self._accumulate(counts, batch.level_right, batch.level_total)
        return batch

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
        if not isinstance(other, HierarchicalMetrics):
            raise TypeError(
                f"Expected a HierarchicalMetrics to merge, but got {type(other).__name__}."
            )
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

    def as_counts(self) -> Counts:
        """The state as :class:`~hierzoo.metrics.functional.Counts` (keys sorted)."""
        keys = np.array(sorted(self.counts), dtype=np.int64)
        counts = np.array([self.counts[k] for k in keys.tolist()], dtype=np.int64)
        return Counts(keys, counts, self.level_right.copy(), self.level_total.copy())

    def first_error(self) -> list[int]:
        """Samples per first wrong level column; the last entry counts fully right paths."""
        state = self.as_counts()
        return first_error_counts(state.keys, state.counts, self.num_levels)

    def compute(
        self,
        ci: bool = False,
        n_boot: int = 2000,
        confidence: float = 0.95,
        seed: int = 0,
        only: str | None = None,
    ) -> dict[str, Any]:
        """Every metric, as fractions in [0, 1] (``hierzoo score`` reports percent): see
        :func:`~hierzoo.metrics.functional.reduce_counts`, which this calls on the counts.

        With ``ci`` each value is an :class:`Estimate` whose interval is a percentile bootstrap
        over samples (all sample metrics from the same resamples). ``only`` names one metric.

        Raises:
            ValueError: no sample yet (call :meth:`update` first), or ``only`` naming no metric.
        """
        if only is not None and only not in self.metric_names:
            raise ValueError(f"Expected `only` to be one of {self.metric_names}, but got {only!r}.")
        if self.n == 0:
            raise ValueError("No samples yet: call update() with a batch before compute().")
        return reduce_counts(
            self.as_counts(),
            self.metric_names,
            ci=ci,
            n_boot=n_boot,
            confidence=confidence,
            seed=seed,
            only=only,
        )


def _host(x: Any) -> Any:
    """A torch tensor (any device) as a numpy array; anything else as it is."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return x
