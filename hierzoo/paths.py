"""Decoding node scores into root-to-leaf paths, vectorized over images and nodes.

Each strategy loops over levels only (a handful), never over nodes or images.
"""

from __future__ import annotations

import numpy as np
import torch

from hierzoo.metrics.functional import consistent_paths
from hierzoo.models.outputs import STRATEGIES, NodeScores, PathPrediction
from hierzoo.taxonomy import Taxonomy


def _greedy(values: torch.Tensor, taxonomy: Taxonomy) -> torch.Tensor:
    """Top-down: the best level-0 node, then the best child of the chosen node, until a leaf."""
    n = values.shape[0]
    offsets = taxonomy.level_offsets.tolist()
    parent = torch.from_numpy(taxonomy.parent)
    out = torch.full((n, taxonomy.depth), -1, dtype=torch.long)
    out[:, 0] = values[:, offsets[0] : offsets[1]].argmax(1) + offsets[0]
    for k in range(1, taxonomy.depth):
        lo, hi = offsets[k], offsets[k + 1]
        allowed = parent[lo:hi][None, :] == out[:, k - 1 : k]
        masked = values[:, lo:hi].masked_fill(~allowed, float("-inf"))
        has_child = allowed.any(1)
        out[:, k] = torch.where(has_child, masked.argmax(1) + lo, torch.full_like(out[:, k], -1))
    return out


def _independent(log_probs: torch.Tensor, taxonomy: Taxonomy) -> torch.Tensor:
    offsets = taxonomy.level_offsets.tolist()
    cols = [log_probs[:, a:b].argmax(1) + a for a, b in zip(offsets[:-1], offsets[1:])]
    return torch.stack(cols, dim=1)


def _joint(log_probs: torch.Tensor, taxonomy: Taxonomy) -> torch.Tensor:
    """The leaf whose path has the highest sum of per-level log-probabilities."""
    offsets = taxonomy.level_offsets.tolist()
    parent = torch.from_numpy(taxonomy.parent)
    cum = log_probs.clone()
    for k in range(1, taxonomy.depth):
        lo, hi = offsets[k], offsets[k + 1]
        cum[:, lo:hi] += cum[:, parent[lo:hi]]
    leaf_ids = torch.from_numpy(taxonomy.leaf_ids)
    best = cum[:, leaf_ids].argmax(1)
    return torch.from_numpy(taxonomy.paths)[best]


def leaf_marginals(logits: torch.Tensor, taxonomy: Taxonomy) -> torch.Tensor:
    """``(N, n_nodes)``: a softmax over the leaves' scores, each node holding the mass of the
    leaves below it (how pybioclip ranks genera and families)."""
    offsets = taxonomy.level_offsets.tolist()
    parent = torch.from_numpy(taxonomy.parent)
    leaf_ids = torch.from_numpy(taxonomy.leaf_ids)
    mass = torch.zeros_like(logits)
    mass[:, leaf_ids] = torch.softmax(logits[:, leaf_ids], dim=1)
    for k in range(taxonomy.depth - 1, 0, -1):
        lo, hi = offsets[k], offsets[k + 1]
        mass.index_add_(1, parent[lo:hi], mass[:, lo:hi].clone())
    return mass


def decode_paths(scores: NodeScores, strategy: str = "joint") -> PathPrediction:
    """Paths from node scores; see :meth:`hierzoo.models.HierClassifier.predict_path`."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Expected `strategy` to be one of {STRATEGIES}, but got {strategy!r}.")
    tax = scores.taxonomy
    logits = scores.logits.double()
    failed = torch.isnan(logits).any(1)
    logits = logits.masked_fill(failed[:, None], 0.0)
    log_probs = NodeScores(logits, scores.kind, tax).log_probs()
    if strategy == "independent":
        ids = _independent(log_probs, tax)
    elif strategy == "topdown":
        ids = _greedy(log_probs, tax)
    elif strategy == "joint":
        ids = _joint(log_probs, tax)
    else:
        mass = leaf_marginals(logits, tax)
        ids = _greedy(mass, tax)
    value = leaf_marginals(logits, tax) if strategy == "marginal" else log_probs.exp()
    ids[failed] = -1
    valid = ids >= 0
    chosen = torch.gather(value, 1, ids.clamp(min=0)).masked_fill(~valid, float("nan"))
    ids_np = ids.numpy()
    consistent = consistent_paths(ids_np, valid.numpy(), tax) & ~failed.numpy()
    names = [[tax.names[i] for i in row if i >= 0] for row in ids_np.tolist()]
    errors = scores.errors or [None] * len(names)
    return PathPrediction(
        node_ids=ids_np,
        names=names,
        scores=chosen.numpy(),
        consistent=np.asarray(consistent),
        strategy=strategy,
        errors=list(errors),
    )
