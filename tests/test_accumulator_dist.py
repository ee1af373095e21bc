"""HierarchicalMetrics across processes: two gloo ranks, each updating its half, equal one pass;
and the torchmetrics-style pieces (tensors, calling the object, running totals)."""

from __future__ import annotations

import pickle
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import hierzoo  # noqa: E402
from hierzoo.metrics import HierarchicalMetrics, summarize  # noqa: E402

N = 400
WORLD = 2


def _data(seed: int = 0):
    """Taxonomy, predicted and true node ids (CUB-200, some levels wrong, some unanswered)."""
    tax = hierzoo.load_taxonomy("cub200")
    rng = np.random.default_rng(seed)
    target = tax.paths[rng.integers(tax.n_leaves, size=N)]
    pred = target.copy()
    for k in range(tax.depth):
        wrong = rng.random(N) < 0.3
        pred[wrong, k] = rng.choice(tax.level_nodes(k), size=int(wrong.sum()))
        pred[rng.random(N) < 0.05, k] = -1
    return tax, pred, target


def _names(tax, ids):
    return [[tax.names[i] if i >= 0 else "Unknown" for i in row] for row in ids]


def _one_pass(parts):
    tax, pred, target = _data()
    acc = HierarchicalMetrics(taxonomy=tax)
    rows = np.concatenate(parts)
    acc.update(pred[rows], target[rows])
    return acc


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        tax, pred, target = _data()
        mine = np.arange(N)[rank::WORLD]
        first, second = mine[: len(mine) // 2], mine[len(mine) // 2 :]
        acc = HierarchicalMetrics(taxonomy=tax)
        for rows in np.array_split(first, 3):  # batches of codes: numpy, tensors, names
            if rank == 0:
                acc.update(pred[rows], target[rows])
            else:
                acc.update(torch.from_numpy(pred[rows]), torch.from_numpy(target[rows]))
        acc.sync()
        after_first = acc.compute(ci=True, seed=1)
        acc.update(_names(tax, pred[second]), _names(tax, target[second]))
        acc.sync()  # a running total: each rank's first half is counted once
        after_both = acc.compute(ci=True, seed=1)
    finally:
        dist.destroy_process_group()
    with open(f"{out}/rank{rank}.pkl", "wb") as f:
        pickle.dump((after_first, after_both), f)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_equal_one_pass(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    halves = [np.arange(N)[r::WORLD] for r in range(WORLD)]
    firsts = [h[: len(h) // 2] for h in halves]
    expect_first = _one_pass(firsts).compute(ci=True, seed=1)
    expect_both = _one_pass(halves).compute(ci=True, seed=1)
    assert expect_first["n"] == N // 2 and expect_both["n"] == N
    for rank in range(WORLD):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as f:
            after_first, after_both = pickle.load(f)
        assert after_first == expect_first
        assert after_both == expect_both


def test_sync_without_a_process_group_is_a_no_op():
    tax, pred, target = _data()
    acc = HierarchicalMetrics(taxonomy=tax)
    acc.update(pred, target)
    before = acc.compute()
    acc.sync()
    assert acc.compute() == before


def test_calling_updates_and_returns_the_batch_metrics():
    tax, pred, target = _data()
    acc = HierarchicalMetrics(taxonomy=tax)
    first = acc(pred[:100], target[:100])
    assert first == summarize(pred[:100], target[:100], taxonomy=tax)
    second = acc(torch.from_numpy(pred[100:]), torch.from_numpy(target[100:]))
    assert second == summarize(pred[100:], target[100:], taxonomy=tax)
    assert acc.compute() == summarize(pred, target, taxonomy=tax)
    names = HierarchicalMetrics(taxonomy=tax)
    names.update(_names(tax, pred), _names(tax, target))
    assert names.compute() == acc.compute()
