"""``hierzoo`` in a child process that stops, blocked, once it has written its first prediction
batches: a test that interrupts or kills a run mid-way then does so at a known point, however
fast or loaded the machine (never by racing the run with a timer)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_CODE = """
import signal
import sys

# Ctrl-C as in a terminal, even where this test runs in the background and SIGINT came in ignored
signal.signal(signal.SIGINT, signal.default_int_handler)

from hierzoo import rundir

_write = rundir.PredictionWriter.write
_batches = [0]


def write(self, rows):
    _write(self, rows)
    _batches[0] += 1
    if _batches[0] >= {after}:
        open({gate!r}).read()  # blocks: nothing ever writes to this pipe


rundir.PredictionWriter.write = write
from hierzoo.cli import main

sys.exit(main(sys.argv[1:]))
"""


def gated_command(tmp_path: Path, argv: list[str], after: int) -> list[str]:
    """The command line of ``hierzoo ARGV`` that blocks for good after writing ``after`` batches
    of predictions (a named pipe under ``tmp_path`` that is never written to)."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    return [sys.executable, "-c", _CODE.format(after=after, gate=str(gate)), *argv]
