"""docs/api.md is what scripts/gen_api_docs.py builds from the code, and the public API is typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gen_api_docs  # noqa: E402


def test_api_reference_is_up_to_date():
    built = gen_api_docs.render()
    on_disk = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    if built != on_disk:
        pytest.fail(
            "docs/api.md is stale: run `python scripts/gen_api_docs.py` and commit the result."
        )
    assert " at 0x" not in built  # no memory addresses: the page is the same on every machine


def test_public_api_has_type_hints():
    assert gen_api_docs.missing_annotations() == []


def test_wrap_is_exported_lazily_and_stays_a_function():
    code = (
        "import sys, hierzoo\n"
        "assert 'torch' not in sys.modules\n"
        "first = hierzoo.wrap\n"
        "import hierzoo.wrapping\n"
        "assert hierzoo.wrap is first and callable(hierzoo.wrap)\n"
        "from hierzoo import wrap\n"
        "assert wrap is first\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_training_loop_example_runs():
    import runpy

    pytest.importorskip("open_clip")
    example = runpy.run_path(str(ROOT / "docs" / "examples" / "training_loop.py"))
    results = example["main"](["--epochs", "1", "--steps", "2"])
    assert results["n"] == 24 and 0.0 <= results["hca"] <= results["leaf_acc"] <= 1.0
    assert 0.0 <= results["questions_hca"] <= 1.0
