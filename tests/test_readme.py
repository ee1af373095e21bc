"""README.md's examples run as a user would copy them: every ```python block marked as runnable
offline runs as a script and prints what it shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- runs offline"
BLOCK = re.compile(r"^(<!-- runs offline[^\n]*-->\n)?```python\n(.*?)^```", re.S | re.M)


def _blocks() -> list[str]:
    return [code for mark, code in BLOCK.findall(README.read_text()) if mark]


def test_the_readme_marks_its_offline_examples():
    assert len(_blocks()) >= 1 and README.read_text().count(MARK) == len(_blocks())


@pytest.mark.parametrize("code", _blocks())
def test_readme_example_runs_as_a_script_and_prints(code, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard only
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(printed) == code.count("print("), done.stdout


def test_ci_runs_the_readme_test_command():
    """`.ci/run` does what the README's test command does, step for step (pip's -q and the
    `python -m pip` spelling aside), plus its ruff lines."""
    text = README.read_text()
    block = text[text.index("Run the tests") :]
    command = re.search(r"```bash\n(.*?)\n```", block, re.S).group(1)
    steps = [s.strip() for s in command.split("&&")]
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    ci = [line.replace("python -m pip install -q", "pip install").strip() for line in ci]
    ci = [". .venv/bin/activate" if line.startswith(". .venv") else line for line in ci]
    positions = [ci.index(step) for step in steps]  # each step is a line of .ci/run
    assert positions == sorted(positions)
    assert any(line.startswith("ruff check") for line in ci)
