"""Linear probes: is each taxonomy level linearly decodable from a model's features, and where
between the vision encoder and the LLM does that stop being so?

The core is pure: :func:`fit_probe` (multinomial logistic regression, standardised features,
L2 weight decay, full-batch L-BFGS in torch), :func:`split_indices`, :func:`level_scores`
(per-level accuracy and HCA from a correctness matrix). :func:`run_probe` is ``hierzoo
probe``: features extracted into a resumable store (:mod:`hierzoo.features`), one probe per
site and level on a held-out split by image, the model's own zero-shot answers on the same
held-out images, and ``probe.json``, ``probe_levels.png`` and a printed table.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hierzoo._io import atomic_write, settings_diff, write_json

if TYPE_CHECKING:
    import torch

    from hierzoo.models.base import HierClassifier
    from hierzoo.taxonomy import Taxonomy

ZERO_SHOT = ("auto", "path", "questions", "none")


class ProbeError(ValueError):
    """A probe run that cannot start or finish: bad settings, too few images, a bad store."""


# --------------------------------------------------------------------------- the probe itself
@dataclass
class LinearProbe:
    """A fitted multinomial logistic regression on standardised features.

    Attributes:
        weight: ``(D, C)``; bias: ``(C,)``; mean, std: ``(D,)`` of the training features.
        classes: ``(C,)`` the label of each output (labels as given to :func:`fit_probe`).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    classes: torch.Tensor

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` logits of ``(N, D)`` features."""
        z = (x.to(self.weight.device, self.weight.dtype) - self.mean) / self.std
        return z @ self.weight + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``(N,)`` predicted labels (on the CPU)."""
        return self.classes[self.logits(x).argmax(1).cpu()]


def fit_probe(
    x: torch.Tensor,
    y: torch.Tensor | np.ndarray,
    *,
    l2: float = 1e-4,
    max_iter: int = 500,
    device: str | torch.device | None = None,
) -> LinearProbe:
    """Fit a multinomial logistic regression: features standardised with the training mean and
    standard deviation, loss ``mean cross-entropy + l2 / 2 * ||W||^2``, weights from zero,
    full-batch L-BFGS with a strong-Wolfe line search (deterministic: no random state).

    Args:
        x: ``(N, D)`` training features (finite).
        y: ``(N,)`` integer labels (any values; the classes are those seen).
        l2: weight decay on the weights (not the bias).
        max_iter: L-BFGS iterations at most.
        device: where to fit (default ``x``'s device).
    """
    import torch

    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"Expected (N, D) features and N labels with N > 0, but got {tuple(x.shape)} and "
            f"{len(y)}."
        )
    if not torch.isfinite(x).all():
        raise ValueError(
            "Expected finite features; drop the rows of images that failed (NaN) first."
        )
    if l2 < 0:
        raise ValueError(f"Expected `l2` >= 0, but got {l2!r}.")
    device = torch.device(device) if device is not None else x.device
    x = x.to(device, torch.float32)
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    classes, target = torch.unique(y, return_inverse=True)
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    weight = torch.zeros(x.shape[1], len(classes), device=device, requires_grad=True)
    bias = torch.zeros(len(classes), device=device, requires_grad=True)
    target = target.to(device)
    if len(classes) > 1:
        opt = torch.optim.LBFGS(
            [weight, bias],
            lr=1.0,
            max_iter=max_iter,
            history_size=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-7,
            tolerance_change=1e-10,
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = (
                torch.nn.functional.cross_entropy(z @ weight + bias, target)
                + 0.5 * l2 * weight.pow(2).sum()
            )
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
    return LinearProbe(weight.detach(), bias.detach(), mean, std, classes)


def split_indices(n: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` sorted positions of a random split of ``n`` items by a generator
    seeded with ``seed``; ``round(test_size * n)`` held out (at least one of each)."""
    if not 0 < test_size < 1:
        raise ValueError(f"Expected `test_size` in (0, 1), but got {test_size!r}.")
    if n < 2:
        raise ProbeError(f"Expected at least 2 images to split into train and test, but got {n}.")
    n_test = min(max(1, round(test_size * n)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def scored_levels(truth: np.ndarray) -> list[int]:
    """Levels whose ground truth varies across the samples (``truth`` ``(N, L)`` node ids,
    ``-1`` past a path's end); a constant level, such as a single root, says nothing."""
    return [k for k in range(truth.shape[1]) if len(np.unique(truth[truth[:, k] >= 0, k])) > 1]


def level_scores(correct: np.ndarray, present: np.ndarray, levels: Sequence[int]) -> dict[str, Any]:
    """Per-level accuracy and HCA (percent) from ``(N, L)`` boolean matrices: ``correct[i, k]``
    whether sample ``i`` is right at level ``k``, ``present[i, k]`` whether its path has that
    level. HCA counts a sample only when every scored level of its path is right.

    Returns ``{"level_acc": [per level in levels, None where no sample has it], "hca", "n"}``.
    """
    acc: list[float | None] = []
    for k in levels:
        m = present[:, k]
        acc.append(round(100.0 * float(correct[m, k].mean()), 4) if m.any() else None)
    cols = list(levels)
    if len(correct) == 0:
        return {"level_acc": acc, "hca": None, "n": 0}
    ok = np.where(present[:, cols], correct[:, cols], True).all(1)
    return {"level_acc": acc, "hca": round(100.0 * float(ok.mean()), 4), "n": len(correct)}


# --------------------------------------------------------------------------- the run
@dataclass
class ProbeConfig:
    """Settings of one ``hierzoo probe`` run (the command's flags)."""

    model: str
    taxonomy: str
    out: str
    where: list[str]
    images: str | None = None
    labels: str | None = None
    test_size: float = 0.3
    seed: int = 42
    zero_shot: str = "auto"
    l2: float = 1e-4
    max_iter: int = 500
    shard_size: int = 1024
    batch_size: int | None = None
    device: str | None = None
    dtype: str | None = None
    limit: int | None = None
    threads: int | None = None
    progress: bool = True
    text: bool = False
    retry_errors: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def expand_sites(
    where: Sequence[str], levels: Sequence[int]
) -> tuple[list[str], dict[str, list[str]]]:
    """``(sites to extract, line -> site per level)``: ``llm:K:answer`` without a level becomes
    one site per level (level ``k``'s probe reads the answer position of level ``k``'s
    question); every other site serves all levels."""
    from hierzoo.models._sites import parse_sites

    extract: list[str] = []
    lines: dict[str, list[str]] = {}
    for s in parse_sites(list(where)):
        if s.kind == "llm-answer" and s.level is None:
            per_level = [f"{s.name}:{k}" for k in levels]
        else:
            per_level = [s.name] * len(levels)
        lines[s.name] = per_level
        extract += [p for p in dict.fromkeys(per_level) if p not in extract]
    return extract, lines


def site_order(name: str) -> tuple[int, int, int]:
    """A sort key that puts sites in the order the model computes them: ``vision``,
    ``projector``, ``llm:0`` .. ``llm:-1``, then answer sites; for CLIP ``layer:0`` ..
    ``layer:-1``, ``image:raw``, ``image``. Negative layers sort after every positive one."""
    from hierzoo.models._sites import parse_site

    s = parse_site(name)
    k = 0 if s.layer is None else (s.layer if s.layer >= 0 else 1_000_000 + s.layer)
    level = -1 if s.level is None else s.level
    return {
        "vision": (0, -2, 0),
        "projector": (0, -1, 0),
        "llm": (0, k, 0),
        "layer": (0, k, 0),
        "llm-answer": (1, k, level),
        "image:raw": (2, 0, 0),
        "image": (3, 0, 0),
        "text": (4, 0, 0),
    }[s.kind]


def _samples(cfg: ProbeConfig, taxonomy: Taxonomy) -> tuple[list[str], list[str], list[str]]:
    """``(paths, ids, leaf labels)`` of the run's images."""
    from hierzoo.tasks import samples_from_images

    if not (cfg.images or cfg.labels):
        raise ProbeError(
            "Give --images DIR (one folder per leaf, or the flat layout of docs/questions.md), or "
            "--labels CSV (image,leaf; relative paths from --images, else from the CSV's folder)."
        )
    pairs = samples_from_images(cfg.images, taxonomy, labels=cfg.labels)
    if cfg.limit:
        pairs = pairs[: cfg.limit]
    root = Path(cfg.images).resolve() if cfg.images else None
    ids = []
    for path, _ in pairs:
        p = Path(path).resolve()
        ids.append(
            p.relative_to(root).as_posix()
            if root is not None and p.is_relative_to(root)
            else str(path)
        )
    return [p for p, _ in pairs], ids, [label for _, label in pairs]


def _zero_shot_method(cfg: ProbeConfig, clf: HierClassifier) -> str | None:
    if cfg.zero_shot not in ZERO_SHOT:
        raise ProbeError(
            f"Expected --zero-shot to be one of {ZERO_SHOT}, but got {cfg.zero_shot!r}."
        )
    if cfg.zero_shot == "none":
        return None
    if cfg.zero_shot == "auto":
        # a generative model answers questions; predict_path would score every node per image
        return "questions" if clf.generative else "path"
    return cfg.zero_shot


def zero_shot_correct(
    clf: HierClassifier,
    taxonomy: Taxonomy,
    paths: Sequence[str],
    labels: Sequence[str],
    positions: Sequence[int],
    method: str,
    *,
    seed: int = 0,
    batch_size: int | None = None,
) -> tuple[np.ndarray, list[str | None]]:
    """``(correct (len(positions), L) bool, errors)``: the model's own answers at every level.

    ``path``: :meth:`~HierClassifier.predict_path` with ``strategy="independent"``, the best
    node of each level among all its nodes (what the paper measures for CLIP). ``questions``:
    the paper's four-choice questions built by :func:`hierzoo.tasks.build_questions` over all
    ``paths`` (random distractors, ``seed``; so an image gets the same options whatever is
    asked), answered by :meth:`~HierClassifier.answer` for the images at ``positions``.
    """
    from hierzoo.tasks import build_questions

    truth = taxonomy.paths[[taxonomy.leaf_index(lab) for lab in labels]]
    sel = list(positions)
    correct = np.zeros((len(sel), taxonomy.depth), dtype=bool)
    if not sel:
        return correct, []
    if method == "path":
        pred = clf.predict_path(
            [paths[i] for i in sel], taxonomy, strategy="independent", batch_size=batch_size
        )
        width = min(pred.node_ids.shape[1], taxonomy.depth)
        correct[:, :width] = (pred.node_ids[:, :width] == truth[sel, :width]) & (
            truth[sel, :width] >= 0
        )
        return correct, list(pred.errors)
    if method != "questions":
        raise ProbeError(f"Expected a zero-shot method 'path' or 'questions', but got {method!r}.")
    questions = build_questions(taxonomy, zip(paths, labels), distractors="random", seed=seed)
    asked = [questions[i] for i in sel]
    # the options stay in build_questions' seeded order; the questions word the taxonomy's levels
    protocol = clf.default_protocol(taxonomy, keep_option_order=True)
    answers = clf.answer(asked, protocol=protocol, batch_size=batch_size)
    for row, q in enumerate(asked):
        if answers.errors[row] is not None:
            continue
        for k, got in enumerate(answers.predicted(row)):
            correct[row, k] = (
                got is not None and q.answers[k] is not None and got.lower() == q.answers[k].lower()
            )
    return correct, list(answers.errors)


def _load_model(cfg: ProbeConfig) -> HierClassifier:
    import hierzoo

    try:
        return hierzoo.load(cfg.model, device=cfg.device, dtype=cfg.dtype, **cfg.model_kwargs)
    except ImportError:
        raise
    except Exception as e:
        raise ProbeError(
            f"Model {cfg.model!r} could not load ({type(e).__name__}: {e}). Check the name "
            "(`hierzoo models`), "
            "the directory, or that the hub is reachable (or the files are in the local cache)."
        ) from e


def _weights(cfg: ProbeConfig) -> str | None:
    """What identifies the model's weights, as ``hierzoo eval`` records it (a local
    directory's file digests, a cached hub snapshot's commit)."""
    from hierzoo.models import resolve
    from hierzoo.models._hub import model_fingerprint

    return model_fingerprint(resolve(cfg.model))


def _cached_zero_shot(
    out: Path, identity: dict[str, Any], ids: Sequence[str], compute: Any
) -> dict[str, dict[str, Any]]:
    """Zero-shot results by image id from ``zero_shot.json``, computing (and adding) the ids it
    lacks; a file written under other settings is replaced."""
    path = out / "zero_shot.json"
    by_id: dict[str, dict[str, Any]] = {}
    if path.is_file():
        old = json.loads(path.read_text())
        if not settings_diff(old.get("settings") or {}, identity):
            by_id = old["by_id"]
    missing = [i for i in ids if i not in by_id]
    if missing:
        by_id.update(compute(missing))
        write_json(path, {"settings": identity, "by_id": by_id}, indent=None)
    return {i: by_id[i] for i in ids}


def _fit_lines(
    lines: dict[str, list[str]],
    features: Any,
    truth: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    levels: list[int],
    cfg: ProbeConfig,
    device: Any,
    depth: int,
) -> dict[str, Any]:
    """One probe per line (site) and level on ``features(site)`` rows: train on ``train``,
    score on ``test``; per line the held-out level accuracies, HCA, train accuracy, classes."""
    present = truth >= 0
    results: dict[str, Any] = {}
    for line, per_level in lines.items():
        stored = {site: features(site) for site in dict.fromkeys(per_level)}
        pred = np.full((len(test), depth), -1, dtype=np.int64)
        train_acc: list[float | None] = []
        n_classes: list[int] = []
        for j, k in enumerate(levels):
            x = stored[per_level[j]]
            rows = train[present[train, k]]
            if len(rows) == 0:  # no training image reaches this level: its test images count wrong
                train_acc.append(None)
                n_classes.append(0)
                continue
            probe = fit_probe(
                x[rows], truth[rows, k], l2=cfg.l2, max_iter=cfg.max_iter, device=device
            )
            seen = probe.predict(x[rows]).numpy()
            train_acc.append(round(100.0 * float((seen == truth[rows, k]).mean()), 4))
            n_classes.append(len(probe.classes))
            pred[:, k] = probe.predict(x[test]).numpy()
        scores = level_scores(pred == truth[test], present[test], levels)
        results[line] = {
            **scores,
            "train_acc": train_acc,
            "n_classes": n_classes,
            "dim": int(stored[per_level[0]].shape[1]),
            "sites": per_level if len(set(per_level)) > 1 else per_level[0],
        }
    return results


def run_probe(cfg: ProbeConfig) -> dict[str, Any]:
    """Run (or resume) a probe and return its result (also written to ``probe.json``)."""
    import torch

    from hierzoo import load_taxonomy
    from hierzoo.features import extract_features, feature_errors, load_features
    from hierzoo.models._sites import parse_sites

    started = time.time()
    if not 0 < cfg.test_size < 1:
        raise ProbeError(f"Expected --test-size in (0, 1), but got {cfg.test_size!r}.")
    parse_sites(cfg.where)  # a typo fails before any work
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    taxonomy = load_taxonomy(cfg.taxonomy)
    if cfg.text:
        return _run_text_probe(cfg, taxonomy, started)
    paths, ids, labels = _samples(cfg, taxonomy)
    truth = taxonomy.paths[[taxonomy.leaf_index(lab) for lab in labels]]
    levels = scored_levels(truth)
    if not levels:
        raise ProbeError(
            "Every level has one class among these images; probing needs at least two leaves' "
            "worth of variety."
        )
    extract, lines = expand_sites(cfg.where, levels)
    lines = {name: lines[name] for name in sorted(lines, key=site_order)}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    clf = _load_model(cfg)
    content = _weights(cfg)
    method = _zero_shot_method(cfg, clf)
    store = out / "features"
    extract_features(
        clf,
        paths,
        extract,
        store,
        ids=ids,
        taxonomy=taxonomy,
        shard_size=cfg.shard_size,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
        retry_errors=cfg.retry_errors,
        model_content=content,
    )
    failed = np.zeros(len(ids), dtype=bool)
    first_error: dict[str, str] = {}
    for site in extract:
        for i, err in enumerate(feature_errors(store, site)):
            if err is not None:
                failed[i] = True
                first_error.setdefault(ids[i], err)
    valid = np.flatnonzero(~failed)
    if len(valid) < 2:
        first = next(iter(first_error.items()), None)
        example = f" ({first[0]}: {first[1]})" if first else ""
        raise ProbeError(
            f"Only {len(valid)} of {len(ids)} images could be read{example}; fix the images "
            "and rerun with --retry-errors (failed images are kept as failed otherwise)."
        )
    if first_error:
        i, err = next(iter(first_error.items()))
        print(
            f"hierzoo probe: {int(failed.sum())} of {len(ids)} images failed and are left out "
            f"(first: {i}: {err}); after fixing them, rerun with --retry-errors.",
            file=sys.stderr,
        )
    train_pos, test_pos = split_indices(len(valid), cfg.test_size, cfg.seed)
    train, test = valid[train_pos], valid[test_pos]
    present = truth >= 0
    device = torch.device(cfg.device) if cfg.device else clf.device
    results = _fit_lines(
        lines,
        lambda site: load_features(store, site).data,
        truth,
        train,
        test,
        levels,
        cfg,
        device,
        taxonomy.depth,
    )
    zero = None
    if method is not None:
        identity = {
            "model": cfg.model,
            "model_content": content,
            "dtype": cfg.dtype,
            "taxonomy": taxonomy.name,
            "method": method,
            "seed": cfg.seed,
            "images": cfg.images,
            "labels": cfg.labels,
            "limit": cfg.limit,
        }
        index = {i: p for p, i in enumerate(ids)}

        def compute(missing: list[str]) -> dict[str, dict[str, Any]]:
            correct, errors = zero_shot_correct(
                clf,
                taxonomy,
                paths,
                labels,
                [index[i] for i in missing],
                method,
                seed=cfg.seed,
                batch_size=cfg.batch_size,
            )
            return {
                i: {"correct": correct[r].tolist(), "error": errors[r]}
                for r, i in enumerate(missing)
            }

        got = _cached_zero_shot(out, identity, [ids[i] for i in test], compute)
        ok = np.array([got[ids[i]]["error"] is None for i in test], dtype=bool)
        correct = np.array([got[ids[i]]["correct"] for i in test], dtype=bool).reshape(
            len(test), -1
        )
        zero = {
            "method": method,
            **level_scores(correct[ok], present[test][ok], levels),
            "n_errors": int((~ok).sum()),
        }
    return _write_result(
        cfg,
        clf,
        taxonomy,
        levels,
        truth,
        train,
        test,
        device,
        results,
        started,
        n=len(ids),
        n_failed=int(failed.sum()),
        zero=zero,
        features=store,
        failed_images=dict(list(first_error.items())[:20]),
    )


def _run_text_probe(cfg: ProbeConfig, taxonomy: Taxonomy, started: float) -> dict[str, Any]:
    """The probe on the names of the taxonomy's leaves (``--text``): features of each name
    (:meth:`~hierzoo.models.base.HierClassifier.text_features`), split by name, one probe per
    level above the leaves. The leaf level is not probed: a held-out name is a class the probe
    never saw."""
    import torch
    from safetensors.torch import save_file

    if cfg.images or cfg.labels:
        raise ProbeError(
            "--text probes the taxonomy's leaf names, not images; drop --images and --labels."
        )
    names = list(taxonomy.leaves)
    truth = taxonomy.paths
    if cfg.limit:
        names, truth = names[: cfg.limit], truth[: cfg.limit]
    present = truth >= 0
    levels = [
        k
        for k in scored_levels(truth)
        if len(np.unique(truth[present[:, k], k])) < int(present[:, k].sum())
    ]
    if not levels:
        raise ProbeError(
            f"No level of {taxonomy.name!r} above the leaves has two of these {len(names)} names "
            "in one class; "
            "nothing to generalise to. Use more names (--limit) or another taxonomy."
        )
    extract, lines = expand_sites(cfg.where, levels)
    lines = {name: lines[name] for name in sorted(lines, key=site_order)}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    clf = _load_model(cfg)
    feats = clf.text_features(
        names, extract, taxonomy=taxonomy, batch_size=cfg.batch_size, progress=cfg.progress
    )
    store = out / "text_features.safetensors"
    tensors = {site: feats[site].float().contiguous() for site in extract}
    meta = {"model": cfg.model, "taxonomy": taxonomy.name, "names": json.dumps(names)}
    atomic_write(store, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    train, test = split_indices(len(names), cfg.test_size, cfg.seed)
    device = torch.device(cfg.device) if cfg.device else clf.device
    results = _fit_lines(
        lines, lambda site: feats[site], truth, train, test, levels, cfg, device, taxonomy.depth
    )
    return _write_result(
        cfg,
        clf,
        taxonomy,
        levels,
        truth,
        train,
        test,
        device,
        results,
        started,
        n=len(names),
        n_failed=0,
        zero=None,
        features=store,
        failed_images={},
        text=True,
    )


def _write_result(
    cfg: ProbeConfig,
    clf: Any,
    taxonomy: Taxonomy,
    levels: list[int],
    truth: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    device: Any,
    results: dict[str, Any],
    started: float,
    *,
    n: int,
    n_failed: int,
    zero: dict[str, Any] | None,
    features: Path,
    failed_images: dict[str, str],
    text: bool = False,
) -> dict[str, Any]:
    """The run's result with the majority-class baseline per level, written atomically to
    ``probe.json``; ``n`` counts images (or names, with ``text``)."""
    present = truth >= 0
    majority = []
    for k in levels:
        tr, te = truth[train[present[train, k]], k], truth[test[present[test, k]], k]
        values, counts = np.unique(tr, return_counts=True)
        majority.append(
            round(100.0 * float((te == values[counts.argmax()]).mean()), 4)
            if len(te) and len(tr)
            else None
        )
    level_names = [taxonomy.rank(k) or f"level{k + 1}" for k in range(taxonomy.depth)]
    result = {
        "model": cfg.model,
        "family": clf.family,
        "taxonomy": taxonomy.name,
        **({"input": "text"} if text else {}),
        "levels": [level_names[k] for k in levels],
        "level_index": levels,
        "n_images": n,
        "n_failed": n_failed,
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "test_size": cfg.test_size,
        "seed": cfg.seed,
        "probe": {
            "kind": "multinomial logistic regression",
            "solver": "L-BFGS (full batch, strong Wolfe)",
            "standardize": True,
            "l2": cfg.l2,
            "max_iter": cfg.max_iter,
            "device": str(device),
        },
        "sites": results,
        "zero_shot": zero,
        "majority": majority,
        "features": str(features),
        "failed_images": failed_images,
        "settings": {k: v for k, v in asdict(cfg).items() if k != "progress"},
        "wall_seconds": round(time.time() - started, 3),
        "command": " ".join(sys.argv),
    }
    write_json(Path(cfg.out) / "probe.json", result)
    return result


# --------------------------------------------------------------------------- table and plot
def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def format_probe_table(result: dict[str, Any]) -> str:
    """The probe's result as a plain-text table: accuracy (%) per level and HCA, one row per
    site, then the model's zero-shot answers and the majority-class baseline."""
    rows = [(line, r["level_acc"], r["hca"]) for line, r in result["sites"].items()]
    zero = result.get("zero_shot")
    if zero:
        label = "zero-shot (" + ("predict_path" if zero["method"] == "path" else "4-choice") + ")"
        rows.append((label, zero["level_acc"], zero["hca"]))
    rows.append(("majority class", result["majority"], None))
    from hierzoo.tables import text_table

    cells = [[name, *map(_cell, acc), _cell(hca)] for name, acc, hca in rows]
    lines = [
        f"probe: {result['model']} on {result['taxonomy']}, {result['n_train']} train / "
        f"{result['n_test']} test "
        f"{'leaf names' if result.get('input') == 'text' else 'images'} (seed {result['seed']}), "
        "accuracy in %" + (f"; {result['n_failed']} images failed" if result["n_failed"] else "")
    ]
    lines += text_table(["site", *result["levels"], "HCA"], cells)
    if zero and zero["method"] == "questions":
        lines.append(
            "zero-shot: the paper's four-choice questions (chance 25%); the probes choose among "
            "every class."
        )
    return "\n".join(lines)


def plot_probe_levels(result: dict[str, Any], path: str | Path) -> Path:
    """``probe_levels.png``: held-out accuracy per level (coarse to fine), one line per feature
    site (coloured from the vision end to the LLM's last layer), the model's zero-shot answers
    (dashed) and the majority-class baseline (dotted); HCA in the legend."""
    from hierzoo import plots

    levels = result["levels"]
    xs = list(range(len(levels)))
    fig = plots.figure(figsize=(min(14, 3.2 + 0.9 * len(levels)) + 2.6, 4.4))  # names the pip line
    from matplotlib import colormaps

    ax = fig.subplots()
    lines = list(result["sites"].items())
    cmap = colormaps["viridis"]
    n = len(lines)
    for j, (name, r) in enumerate(lines):
        colour = cmap(0.85 * j / max(n - 1, 1))
        dodge = (j - (n - 1) / 2) * min(0.05, 0.25 / n)  # lines that coincide stay visible
        ys = [np.nan if v is None else v for v in r["level_acc"]]
        ax.plot(
            [x + dodge for x in xs],
            ys,
            marker=plots.MARKERS[j % len(plots.MARKERS)],
            ms=5,
            lw=1.8,
            color=colour,
            label=f"{name}  (HCA {_cell(r['hca'])})",
        )
    zero = result.get("zero_shot")
    if zero:
        ys = [np.nan if v is None else v for v in zero["level_acc"]]
        kind = "predict_path" if zero["method"] == "path" else "4-choice, chance 25%"
        ax.plot(
            xs,
            ys,
            color="black",
            ls="--",
            marker="s",
            ms=4,
            lw=1.4,
            label=f"zero-shot, {kind}  (HCA {_cell(zero['hca'])})",
        )
    ys = [np.nan if v is None else v for v in result["majority"]]
    ax.plot(xs, ys, color="0.55", ls=":", lw=1.4, label="majority class")
    plots.level_ticks(ax, levels, rotate=len(levels) > 5 or max(map(len, levels)) > 9)
    ax.set_xlim(-0.3, len(levels) - 0.7)
    ax.set_ylim(-3, 103)
    ax.set_xlabel("level (coarse → fine)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.grid(True, axis="y", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
    ax.set_title(
        f"Linear probes per level: {Path(str(result['model'])).name} on {result['taxonomy']}\n"
        f"{result['n_test']} held-out images, {result['n_train']} for training",
        fontsize=10,
    )
    ax.legend(
        title="feature site",
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        frameon=False,
        fontsize=8,
        title_fontsize=9,
        alignment="left",
    )
    return plots.save(fig, path)
