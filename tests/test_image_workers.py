"""Image-loading worker processes die with the process that started them, even when it is
SIGKILLed while they hold decoded images it never read (the vision-LLM case: PIL images
pickled back through a pipe that fills up)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")

SCRIPT = """
import json, multiprocessing, sys, time
import torch
from hierzoo.images import ImageDataset, _collate, die_with_parent, iterate_images
how, paths = sys.argv[1], sys.argv[2:]
if how == "iterate_images":  # forked workers: the kernel's parent-death signal
    batches = iterate_images(paths, None, 2, num_workers=2, chunk_size=1)
else:  # a loader of one's own, workers started by a fork server: the watching thread
    batches = iter(torch.utils.data.DataLoader(
        ImageDataset(paths), batch_size=1, num_workers=2, collate_fn=_collate,
        multiprocessing_context="forkserver", worker_init_fn=die_with_parent))
first = next(batches)  # workers started; they go on decoding what the loop never reads
print(json.dumps([p.pid for p in multiprocessing.active_children()]), flush=True)
time.sleep(3600)
"""


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, not yet reaped by whoever adopted it) is dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.mark.parametrize("how", ["iterate_images", "forkserver"])
def test_loader_workers_die_when_their_parent_is_sigkilled(tmp_path, how):
    paths = []
    for i in range(12):  # 1500x1500 RGB: 6.75 MB each as a PIL image, far beyond a pipe's buffer
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (1500, 1500), (i * 20, 40, 90)).save(path)
        paths.append(str(path))
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, how, *paths],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        workers = json.loads(proc.stdout.readline() or "null")
        assert workers and len(workers) == 2, proc.stderr.read() if workers is None else workers
        assert all(_alive(pid) for pid in workers)
        time.sleep(1)  # let the workers fill the pipe with images nobody reads
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [pid for pid in workers if _alive(pid)]
        for pid in left:  # leave nothing behind, whatever the outcome
            os.kill(pid, signal.SIGKILL)
        assert left == [], f"workers {left} outlived their SIGKILLed parent by 30 s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
