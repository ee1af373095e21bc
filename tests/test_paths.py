"""predict_path strategies against a brute-force search over all paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import random_taxonomy

from hierzoo.models.outputs import NodeScores
from hierzoo.paths import decode_paths


def _level_log_probs(tax, logits, kind):
    out = {}
    for k in range(tax.depth):
        nodes = tax.level_nodes(k).tolist()
        if kind == "sigmoid":
            for n in nodes:
                out[n] = -math.log1p(math.exp(-logits[n]))
        else:
            z = max(logits[n] for n in nodes)
            lse = z + math.log(sum(math.exp(logits[n] - z) for n in nodes))
            for n in nodes:
                out[n] = logits[n] - lse
    return out


def brute_force(tax, logits, kind, strategy):
    lp = _level_log_probs(tax, logits, kind)
    children = {n: tax.children(n) for n in range(tax.n_nodes)}
    if strategy == "independent":
        return [max(tax.level_nodes(k).tolist(), key=lambda n: lp[n]) for k in range(tax.depth)]
    if strategy == "joint":
        best = max(range(tax.n_leaves), key=lambda r: sum(lp[n] for n in tax.paths[r] if n >= 0))
        return [int(n) for n in tax.paths[best] if n >= 0]
    if strategy == "marginal":
        leaves = tax.leaf_ids.tolist()
        z = max(logits[n] for n in leaves)
        total = sum(math.exp(logits[n] - z) for n in leaves)
        value = {}
        for n in range(tax.n_nodes):
            below = [leaf for leaf in leaves if n in tax.ancestors(leaf)]
            value[n] = sum(math.exp(logits[leaf] - z) for leaf in below) / total
    else:
        value = lp
    path = [max(tax.level_nodes(0).tolist(), key=lambda n: value[n])]
    while children[path[-1]]:
        path.append(max(children[path[-1]], key=lambda n: value[n]))
    return path


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("strategy", ["independent", "topdown", "joint", "marginal"])
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_strategies_equal_brute_force(seed, strategy, kind):
    tax = random_taxonomy(
        seed, n_leaves=25, min_depth=1 + seed % 3, max_depth=5, branching=2 + seed % 2
    )
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.normal(scale=3.0, size=(8, tax.n_nodes)))
    pred = decode_paths(NodeScores(logits.float(), kind, tax), strategy)
    for i in range(8):
        expected = brute_force(tax, logits[i].tolist(), kind, strategy)
        got = [int(n) for n in pred.node_ids[i] if n >= 0]
        assert got == expected
        assert pred.names[i] == [tax.names[n] for n in expected]
        if strategy != "independent":
            assert pred.consistent[i]
    if strategy == "independent":
        links = [
            all(tax.parent[p[k]] == p[k - 1] for k in range(1, len(p)))
            for p in pred.node_ids.tolist()
        ]
        assert pred.consistent.tolist() == links


def test_scores_are_probabilities_of_the_chosen_nodes():
    tax = random_taxonomy(2, n_leaves=20, min_depth=3, max_depth=3)
    logits = torch.randn(4, tax.n_nodes)
    pred = decode_paths(NodeScores(logits, "softmax", tax), "joint")
    for i in range(4):
        for k, n in enumerate(pred.node_ids[i]):
            level = logits[i, tax.level_offsets[k] : tax.level_offsets[k + 1]]
            p = torch.softmax(level.double(), 0)[n - tax.level_offsets[k]]
            assert pred.scores[i, k] == pytest.approx(float(p), rel=1e-6)
    marg = decode_paths(NodeScores(logits, "softmax", tax), "marginal")
    assert np.all(np.diff(marg.scores, axis=1) <= 1e-9)  # mass shrinks down the path


def test_failed_rows_give_empty_paths():
    tax = random_taxonomy(1, n_leaves=10)
    logits = torch.randn(3, tax.n_nodes)
    logits[1] = float("nan")
    pred = decode_paths(NodeScores(logits, "softmax", tax, errors=[None, "bad", None]), "topdown")
    assert pred.names[1] == [] and (pred.node_ids[1] == -1).all() and not pred.consistent[1]
    assert pred.errors == [None, "bad", None]
    with pytest.raises(ValueError, match="strategy"):
        decode_paths(NodeScores(logits, "softmax", tax), "greedy")
