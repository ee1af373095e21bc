"""The text-embedding cache is checked, not trusted: its file names the model (by content),
the templates, the names and the shape it holds, and a file that does not match, is damaged or
holds non-finite numbers is ignored, rebuilt and named in a warning."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

pytest.importorskip("open_clip")

import hierzoo  # noqa: E402
from hierzoo.models.tiny_clip import build_tiny_openclip  # noqa: E402

NAMES = ["black-footed albatross", "laysan albatross", "common raven", "fish crow", "Corvus"]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-cache-models")
    return build_tiny_openclip(root / "a", seed=0), build_tiny_openclip(root / "b", seed=1)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HIERZOO_CACHE", str(tmp_path / "default-cache"))


def _load(path, cache):
    return hierzoo.load(str(path), device="cpu", cache_dir=cache)


def _fresh(path):
    """The embeddings computed from the model itself, with no disk cache."""
    return _load(path, False).text_embeddings(NAMES)


def _cache_file(clf):
    files = sorted((clf.text_cache.root).glob("*.safetensors"))
    assert len(files) == 1, files
    return files[0]


def test_another_models_file_under_this_key_is_not_used(two_models, tmp_path):
    a, b = two_models
    cache = tmp_path / "cache"
    first = _load(a, cache)
    first.text_embeddings(NAMES)
    a_file = _cache_file(first)
    shutil.move(a_file, tmp_path / "a.safetensors")
    second = _load(b, cache)
    second.text_embeddings(NAMES)
    b_file = _cache_file(second)
    shutil.copyfile(tmp_path / "a.safetensors", b_file)  # model A's embeddings under B's key
    again = _load(b, cache)
    with pytest.warns(RuntimeWarning, match=b_file.name):
        got = again.text_embeddings(NAMES)
    torch.testing.assert_close(got, _fresh(b))
    assert again.texts_encoded == len(NAMES)  # rebuilt
    reread = _load(b, cache)
    torch.testing.assert_close(reread.text_embeddings(NAMES), got)
    assert reread.texts_encoded == 0  # the rebuilt file is B's own


def _rewrite(path, transform):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        emb = f.get_tensor("embeddings")
    save_file({"embeddings": transform(emb).contiguous()}, str(path), metadata=meta)


def test_non_finite_embeddings_in_the_file_are_rebuilt(two_models, tmp_path):
    a, _ = two_models
    cache = tmp_path / "cache"
    first = _load(a, cache)
    first.text_embeddings(NAMES)
    path = _cache_file(first)
    _rewrite(path, lambda e: torch.full_like(e, float("nan")))
    again = _load(a, cache)
    with pytest.warns(RuntimeWarning, match=path.name):
        got = again.text_embeddings(NAMES)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, _fresh(a))


def test_a_model_that_embeds_to_nan_is_an_error_not_an_answer(two_models, tmp_path):
    a, _ = two_models
    clf = _load(a, tmp_path / "cache")
    with torch.no_grad():
        clf.model.token_embedding.weight.fill_(float("nan"))
    qs = hierzoo.read_questions("cub200-similar")[:2]
    with pytest.raises(ValueError, match="not finite"):
        clf.text_embeddings(NAMES)
    with pytest.raises(ValueError, match="not finite"):
        clf.answer(qs)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing cached


@pytest.mark.parametrize("cut", [0.5, 0.0])
def test_a_truncated_file_is_named_and_rebuilt(two_models, tmp_path, cut):
    a, _ = two_models
    cache = tmp_path / "cache"
    first = _load(a, cache)
    first.text_embeddings(NAMES)
    path = _cache_file(first)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    again = _load(a, cache)
    with pytest.warns(RuntimeWarning, match=path.name):
        got = again.text_embeddings(NAMES)
    torch.testing.assert_close(got, _fresh(a))
    assert _load(a, cache).text_embeddings(NAMES).shape == got.shape  # whole again, no warning


def test_a_weight_swap_with_the_same_size_and_mtime_is_seen(two_models, tmp_path):
    a, b = two_models
    model = tmp_path / "model"
    shutil.copytree(a, model)
    weights = model / "open_clip_model.safetensors"
    cache = tmp_path / "cache"
    before = _load(model, cache).text_embeddings(NAMES)
    torch.testing.assert_close(before, _fresh(a))
    stat = weights.stat()
    replacement = (b / "open_clip_model.safetensors").read_bytes()
    assert len(replacement) == stat.st_size
    weights.write_bytes(replacement)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size
    assert weights.stat().st_mtime_ns == stat.st_mtime_ns
    after = _load(model, cache).text_embeddings(NAMES)
    torch.testing.assert_close(after, _fresh(b))
    assert not torch.allclose(after, before)


def test_the_file_records_what_it_holds(two_models, tmp_path):
    import json

    from safetensors import safe_open

    a, _ = two_models
    clf = _load(a, tmp_path / "cache")
    clf.text_embeddings(NAMES, templates=("a photo of a {}.", "{}"))
    with safe_open(str(_cache_file(clf)), framework="pt") as f:
        meta = f.metadata()
        emb = f.get_tensor("embeddings")
    assert json.loads(meta["keys"]) == NAMES
    assert json.loads(meta["templates"]) == ["a photo of a {}.", "{}"]
    assert meta["model"] == clf.text_cache.model_key and "float32" in meta["model"]
    assert meta["model"].startswith("dir:")  # the directory's content, not its path
    assert emb.shape == (len(NAMES), int(meta["dim"])) and emb.dtype == torch.float32
    # the same files elsewhere are the same model: the cache is shared
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    assert _load(copy, tmp_path / "cache").text_cache.model_key == clf.text_cache.model_key


def test_hub_models_are_keyed_by_their_snapshot_commit(tmp_path, monkeypatch):
    """A hub model's key is the commit of the snapshot in the local hub cache."""
    from hierzoo.models._registry import ModelSpec, model_fingerprint

    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub / "models--org--tiny"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "open_clip_config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    spec = ModelSpec(name="tiny", family="openclip", hub_id="org/tiny")
    assert model_fingerprint(spec) == f"hub:org/tiny@{commit}"
    other = ModelSpec(name="x", family="openclip", hub_id="org/absent", revision="v2")
    assert model_fingerprint(other) == "hub:org/absent@v2"
