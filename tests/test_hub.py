"""Hub models offline: one error that says how to fetch the model, and the snapshot commit as the
model's identity."""

from __future__ import annotations

import pytest

import hierzoo
from hierzoo.cli import main
from hierzoo.models import resolve
from hierzoo.models._hub import ModelUnavailableError, hub_commit, model_fingerprint

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_an_uncached_zoo_model_offline_is_one_clear_error(empty_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as e:
        hierzoo.load("bioclip2", device="cpu")
    msg = str(e.value)
    assert "imageomics/bioclip-2" in msg and str(empty_cache) in msg
    assert "hf download imageomics/bioclip-2" in msg and "HF_HUB_OFFLINE" in msg
    assert e.value.__cause__ is None  # no chain of backend tracebacks


def test_an_unreachable_hub_fails_at_once(empty_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ModelUnavailableError, match="cannot be reached.*hf download Qwen/Qwen2.5"):
        hierzoo.load("qwen2.5-vl-7b", device="cpu")


def test_eval_reports_it_in_one_line(empty_cache, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    args = ["eval", "--model", "bioclip2", "--questions", "cub200-similar", "--mode", "text"]
    assert main([*args, "--limit", "2", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hf download imageomics/bioclip-2" in err
    assert not out.exists()


def test_a_cached_snapshot_identifies_the_model_by_its_commit(empty_cache):
    repo = empty_cache / "models--imageomics--bioclip-2"
    (repo / "refs").mkdir(parents=True)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    spec = resolve("bioclip2")
    assert hub_commit(spec.hub_id) is None and model_fingerprint(spec) is None
    (repo / "refs" / "main").write_text(COMMIT + "\n")
    assert hub_commit(spec.hub_id) == COMMIT
    assert model_fingerprint(spec) == f"hub:imageomics/bioclip-2@{COMMIT}"
    assert hub_commit(spec.hub_id, COMMIT) == COMMIT  # a pinned revision is its own commit
