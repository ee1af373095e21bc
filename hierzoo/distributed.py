"""Ranks under ``torchrun``: which one this process is, and the few collectives a run needs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from hierzoo.rundir import RunError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None) -> Dist:
    """Join the ``torchrun`` process group when ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return Dist(rank=rank, world=world, local_rank=local)


def sum_across(d: Dist, values: list[float]) -> list[float]:
    if d.world == 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def on_main(d: Dist, step: Any) -> Any:
    """Run ``step()`` on rank 0 only; every rank raises if it failed (no rank waits forever)."""
    result, error = None, None
    if d.main:
        try:
            result = step()
        except RunError as e:
            error = e
        except OSError as e:
            error = RunError(f"{e.filename or 'a file'}: {e.strerror or e}")
    failed = sum_across(d, [1.0 if error is not None else 0.0])[0]
    if error is not None:
        raise error
    if failed:
        raise RunError("Rank 0 could not go on; see its message.")
    return result
