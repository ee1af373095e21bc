"""Linear probes: planted signals are found, shuffled labels are not; the metrics against a slow
loop; ``hierzoo probe`` end to end on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hierzoo.probe import (  # noqa: E402
    expand_sites,
    fit_probe,
    format_probe_table,
    level_scores,
    scored_levels,
    site_order,
    split_indices,
)

SIZES = (3, 6, 12)  # classes per level of a planted tree: 12 leaves, each parent has 2 children


def planted(
    n: int, dim: int = 48, noise: float = 0.6, seed: int = 0
) -> tuple[torch.Tensor, np.ndarray]:
    """Features with a linear signal per level: the sum of one random direction per level's
    class, plus Gaussian noise; labels ``(n, 3)`` from a 3 / 6 / 12 tree."""
    rng = np.random.default_rng(seed)
    leaf = rng.integers(0, SIZES[-1], n)
    labels = np.stack([leaf // (SIZES[-1] // c) for c in SIZES], axis=1)
    x = rng.normal(0, noise, (n, dim))
    for k, c in enumerate(SIZES):
        x += rng.normal(0, 1, (c, dim))[labels[:, k]]
    return torch.tensor(x, dtype=torch.float32), labels


def _accuracy(x, y, train, test, **kw) -> float:
    probe = fit_probe(x[train], y[train], **kw)
    return float((probe.predict(x[test]).numpy() == y[test]).mean())


def test_probe_finds_a_planted_signal_and_not_shuffled_labels():
    x, labels = planted(480)
    train, test = split_indices(len(x), 0.3, seed=0)
    shuffled = labels[np.random.default_rng(1).permutation(len(labels))]
    for k, c in enumerate(SIZES):
        assert _accuracy(x, labels[:, k], train, test) >= 0.97
        acc = _accuracy(x, shuffled[:, k], train, test)
        assert abs(acc - 1 / c) < 0.12, (k, acc)  # chance


def test_fit_probe_is_deterministic_and_checks_input():
    x, labels = planted(120, seed=3)
    a, b = fit_probe(x, labels[:, 2]), fit_probe(x, labels[:, 2])
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert a.classes.tolist() == sorted(set(labels[:, 2].tolist()))
    one = fit_probe(x[:5], np.full(5, 7))
    assert one.predict(x).unique().tolist() == [7]
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        fit_probe(bad, labels[:, 0])
    with pytest.raises(ValueError, match="l2"):
        fit_probe(x, labels[:, 0], l2=-1)


def test_split_indices():
    train, test = split_indices(10, 0.3, seed=5)
    assert len(test) == 3 and len(train) == 7 and not set(train) & set(test)
    assert sorted([*train, *test]) == list(range(10))
    again = split_indices(10, 0.3, seed=5)
    assert np.array_equal(again[1], test)
    assert any(not np.array_equal(split_indices(10, 0.3, seed=s)[1], test) for s in range(6, 10))
    assert (
        len(split_indices(3, 0.01, seed=0)[1]) == 1 and len(split_indices(3, 0.99, seed=0)[0]) == 1
    )
    with pytest.raises(ValueError, match="test_size"):
        split_indices(10, 1.0, seed=0)


def _slow_scores(correct, present, levels):
    acc = []
    for k in levels:
        rows = [i for i in range(len(correct)) if present[i, k]]
        acc.append(100 * sum(correct[i, k] for i in rows) / len(rows) if rows else None)
    ok = 0
    for i in range(len(correct)):
        ok += all(correct[i, k] for k in levels if present[i, k])
    return acc, 100 * ok / len(correct)


def test_level_scores_equal_a_slow_loop(rng):
    for _ in range(20):
        n, depth = int(rng.integers(1, 40)), int(rng.integers(1, 6))
        correct = rng.random((n, depth)) < 0.6
        present = rng.random((n, depth)) < 0.8
        present[:, 0] = True
        levels = sorted(
            rng.choice(depth, size=int(rng.integers(1, depth + 1)), replace=False).tolist()
        )
        got = level_scores(correct, present, levels)
        acc, hca = _slow_scores(correct, present, levels)
        assert got["n"] == n and got["hca"] == pytest.approx(hca, abs=1e-4)  # rounded to 4 places
        assert got["level_acc"] == pytest.approx(acc, abs=1e-4)


def test_scored_levels_drop_constant_levels():
    truth = np.array([[0, 1, 4], [0, 2, -1], [0, 2, 5]])
    assert scored_levels(truth) == [1, 2]


def test_sites_expand_and_sort():
    extract, lines = expand_sites(["llm:-1,vision", "llm:-1:answer", "llm:2:answer:1"], [0, 2])
    assert lines == {
        "llm:-1": ["llm:-1", "llm:-1"],
        "vision": ["vision", "vision"],
        "llm:-1:answer": ["llm:-1:answer:0", "llm:-1:answer:2"],
        "llm:2:answer:1": ["llm:2:answer:1", "llm:2:answer:1"],
    }
    assert extract == ["llm:-1", "vision", "llm:-1:answer:0", "llm:-1:answer:2", "llm:2:answer:1"]
    names = ["llm:-1", "llm:-1:answer", "projector", "llm:3", "vision", "llm:0"]
    assert sorted(names, key=site_order) == [
        "vision",
        "projector",
        "llm:0",
        "llm:3",
        "llm:-1",
        "llm:-1:answer",
    ]
    assert sorted(["image", "layer:-1", "image:raw", "layer:2"], key=site_order) == [
        "layer:2",
        "layer:-1",
        "image:raw",
        "image",
    ]


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """An ImageFolder over six CUB-200 leaves (two orders), five images each; a corrupt one."""
    from PIL import Image

    import hierzoo

    root = tmp_path_factory.mktemp("probe-images")
    tax = hierzoo.load_taxonomy("cub200")
    rng = np.random.default_rng(0)
    for li, label in enumerate(tax.labels[:12:2]):
        folder = root / label.replace(" ", "_")
        folder.mkdir()
        for j in range(5):
            tint = np.zeros((40, 48, 3), np.uint8)
            tint[..., li % 3] = 40 * (li + 1)
            Image.fromarray((tint + rng.integers(0, 60, tint.shape)).astype(np.uint8)).save(
                folder / f"{j}.jpg"
            )
    (root / tax.labels[0].replace(" ", "_") / "broken.jpg").write_bytes(b"not an image")
    return root


def test_probe_command_on_a_tiny_clip(image_folder, tmp_path, capsys):
    pytest.importorskip("open_clip")
    pytest.importorskip("matplotlib")
    import hierzoo
    from hierzoo.cli import main
    from hierzoo.models.tiny_clip import build_tiny_openclip

    model = build_tiny_openclip(tmp_path / "model")
    out = tmp_path / "run"
    args = [
        "probe",
        "--model",
        str(model),
        "--taxonomy",
        "cub200",
        "--images",
        str(image_folder),
        "--where",
        "image,layer:-1",
        "--where",
        "layer:0",
        "--out",
        str(out),
        "--no-progress",
        "--shard-size",
        "8",
        "--seed",
        "0",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "order" in printed and "species" in printed and "zero-shot (predict_path)" in printed
    assert "probe.json" in printed and "probe_levels.png" in printed
    result = json.loads((out / "probe.json").read_text())
    assert list(result["sites"]) == ["layer:0", "layer:-1", "image"]
    assert result["levels"] == ["order", "family", "genus", "species"]
    assert (result["n_images"], result["n_failed"], result["n_train"], result["n_test"]) == (
        31,
        1,
        21,
        9,
    )
    for r in result["sites"].values():
        assert len(r["level_acc"]) == 4 and 0 <= r["hca"] <= 100 and r["hca"] <= min(r["level_acc"])
        assert len(r["n_classes"]) == 4 and 2 <= r["n_classes"][-1] <= 6
    assert (out / "probe_levels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "features").iterdir()) == [
        "image",
        "layer_-1",
        "layer_0",
        "manifest.json",
    ]

    # the zero-shot line is predict_path(independent) on exactly the held-out images
    tax = hierzoo.load_taxonomy("cub200")
    clf = hierzoo.load(str(model), device="cpu", cache_dir=False)
    from hierzoo.features import load_features

    stored = load_features(out / "features", "image")
    valid = np.array([i for i, e in enumerate(stored.errors) if e is None])
    test = valid[split_indices(len(valid), 0.3, 0)[1]]
    paths = [str(image_folder / stored.ids[i]) for i in test]
    truth = tax.paths[[tax.leaf_index(Path(p).parent.name.replace("_", " ")) for p in paths]]
    pred = clf.predict_path(paths, tax, strategy="independent").node_ids
    expect = [100 * float((pred[:, k] == truth[:, k]).mean()) for k in range(4)]
    assert result["zero_shot"]["level_acc"] == pytest.approx(expect, abs=1e-4)

    # a rerun resumes: no shard is rewritten, the result is the same
    stamps = {p: p.stat().st_mtime_ns for p in (out / "features").rglob("*.safetensors")}
    assert main([*args, "--no-plot"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "features").rglob("*.safetensors")} == stamps
    assert json.loads((out / "probe.json").read_text())["sites"] == result["sites"]


def test_probe_retries_fixed_images_and_refuses_other_weights(image_folder, tmp_path, capsys):
    """A failed image is said on the terminal and kept as failed on a rerun; once fixed,
    ``--retry-errors`` extracts again only the shards that held it. Other weights under the same
    model path are refused, never mixed with the stored features."""
    import shutil

    from PIL import Image

    from hierzoo.cli import main
    from hierzoo.models.tiny_clip import build_tiny_openclip

    pytest.importorskip("open_clip")
    images = tmp_path / "images"
    shutil.copytree(image_folder, images)
    model = build_tiny_openclip(tmp_path / "model", seed=1)
    out = tmp_path / "run"
    args = ["probe", "--model", str(model), "--taxonomy", "cub200", "--images", str(images)]
    args += ["--where", "image", "--out", str(out), "--no-progress", "--no-plots"]
    args += ["--shard-size", "8", "--seed", "0"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "1 of 31 images failed" in err and "broken.jpg" in err and "--retry-errors" in err
    broken = next(images.rglob("broken.jpg"))
    Image.new("RGB", (40, 48), (200, 10, 10)).save(broken, format="JPEG")
    shards = sorted((out / "features" / "image").glob("*.safetensors"))
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    assert main(args) == 0  # fixed, but not asked to retry: still failed, nothing rewritten
    assert json.loads((out / "probe.json").read_text())["n_failed"] == 1
    assert {p: p.stat().st_mtime_ns for p in shards} == stamps
    assert main([*args, "--retry-errors"]) == 0
    assert json.loads((out / "probe.json").read_text())["n_failed"] == 0
    rewritten = [p for p in shards if p.stat().st_mtime_ns != stamps[p]]
    assert len(rewritten) == 1 and len(shards) == 4
    capsys.readouterr()
    shutil.rmtree(model)
    build_tiny_openclip(model, seed=2)  # other weights under the same path
    assert main(args) == 2
    assert "holds features of another run (model_content" in capsys.readouterr().err


def test_probe_on_a_tiny_vision_llm_with_answer_sites(image_folder, tmp_path):
    pytest.importorskip("transformers")
    from hierzoo.models import tiny
    from hierzoo.probe import ProbeConfig, format_probe_table, run_probe

    model = tiny.build_tiny_qwen2_5_vl(tmp_path / "model")
    cfg = ProbeConfig(
        model=str(model),
        taxonomy="cub200",
        out=str(tmp_path / "run"),
        images=str(image_folder),
        where=["projector,llm:-1:answer"],
        progress=False,
        limit=16,
        max_iter=50,
    )
    result = run_probe(cfg)
    assert list(result["sites"]) == ["projector", "llm:-1:answer"]
    assert result["sites"]["llm:-1:answer"]["sites"] == [
        f"llm:-1:answer:{k}" for k in result["level_index"]
    ]
    assert (
        result["zero_shot"]["method"] == "questions"
        and result["zero_shot"]["n"] == result["n_test"]
    )
    table = format_probe_table(result)
    assert "zero-shot (4-choice)" in table and "chance 25%" in table
    zero = json.loads((tmp_path / "run" / "zero_shot.json").read_text())
    assert len(zero["by_id"]) == result["n_test"]


# ----------------------------------------------------------------------------- text probing
def test_text_probe_on_a_tiny_clip_equals_probes_fitted_by_hand(tmp_path, capsys):
    """``--text``: the leaf names' text embeddings, split by name, a probe per level above the
    leaves; the numbers are those of probes fitted directly on ``text_features``."""
    pytest.importorskip("open_clip")
    from safetensors.torch import load_file

    import hierzoo
    from hierzoo.cli import main
    from hierzoo.models.tiny_clip import build_tiny_openclip

    model = build_tiny_openclip(tmp_path / "model")
    out = tmp_path / "run"
    args = [
        "probe",
        "--model",
        str(model),
        "--taxonomy",
        "cub200",
        "--text",
        "--where",
        "text",
        "--out",
        str(out),
        "--limit",
        "40",
        "--max-iter",
        "100",
        "--no-progress",
        "--no-plot",
        "--seed",
        "0",
    ]
    assert main(args) == 0
    assert "leaf names" in capsys.readouterr().out
    result = json.loads((out / "probe.json").read_text())
    tax = hierzoo.load_taxonomy("cub200")
    names, truth = tax.leaves[:40], tax.paths[:40]
    assert (
        result["input"] == "text"
        and result["n_images"] == 40
        and result["n_train"] + result["n_test"] == 40
    )
    assert (
        "species" not in result["levels"] and result["levels"][0] == "order"
    )  # held-out names are unseen classes
    clf = hierzoo.load(str(model), device="cpu", cache_dir=False)
    x = clf.text_features(names, "text")["text"]
    torch.testing.assert_close(load_file(str(out / "text_features.safetensors"))["text"], x)
    train, test = split_indices(40, 0.3, 0)
    for k, acc in zip(result["level_index"], result["sites"]["text"]["level_acc"]):
        probe = fit_probe(x[train], truth[train, k], max_iter=100, l2=1e-4)
        assert acc == pytest.approx(
            100 * float((probe.predict(x[test]).numpy() == truth[test, k]).mean()), abs=1e-4
        )
    assert "leaf names" in format_probe_table(result)


def test_text_probe_on_a_tiny_vision_llm_and_its_errors(tmp_path):
    pytest.importorskip("transformers")
    from hierzoo.models import tiny
    from hierzoo.probe import ProbeConfig, ProbeError, run_probe

    model = tiny.build_tiny_qwen2_5_vl(tmp_path / "model")
    cfg = ProbeConfig(
        model=str(model),
        taxonomy="cub200",
        out=str(tmp_path / "run"),
        where=["llm:-1,llm:-1:answer"],
        text=True,
        progress=False,
        limit=24,
        max_iter=50,
    )
    result = run_probe(cfg)
    assert list(result["sites"]) == ["llm:-1", "llm:-1:answer"]
    assert result["sites"]["llm:-1:answer"]["sites"] == [
        f"llm:-1:answer:{k}" for k in result["level_index"]
    ]
    assert result["zero_shot"] is None and all(
        0 <= r["hca"] <= 100 for r in result["sites"].values()
    )
    with pytest.raises(ProbeError, match="drop --images"):
        run_probe(ProbeConfig(**{**cfg.__dict__, "images": str(tmp_path)}))
    with pytest.raises(ProbeError, match="No level"):
        run_probe(ProbeConfig(**{**cfg.__dict__, "limit": 1}))
