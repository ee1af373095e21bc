"""``hierzoo eval``: resumable benchmark runs, sharded across ranks under torchrun.

A run directory holds:

- ``run.json``: what the run is (model, questions, protocol); a rerun with other settings
  refuses the directory rather than mixing results;
- ``questions.jsonl``: the question set, when hierzoo built it;
- ``predictions.jsonl``: one line per image in the paper's result format, appended and flushed
  batch by batch (``predictions.rank{r}.jsonl`` per rank under torchrun, merged at the end);
- ``summary.json``: every metric with its 95% interval, counts and provenance.

A killed run started again with the same ``--out`` keeps every finished line, tolerates a torn
last line, and redoes nothing finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hierzoo.tasks import (
    Question,
    QuestionError,
    build_questions,
    read_questions,
    samples_from_csv,
    samples_from_folder,
    validate_questions,
    write_questions,
)

TASKS = ("questions", "path")


class RunError(ValueError):
    """A run that cannot start: bad settings, bad inputs, a model that cannot load."""


@dataclass
class EvalConfig:
    """Settings of one ``hierzoo eval`` run (the command's flags)."""

    model: str
    out: str
    questions: str | None = None
    image_root: str | None = None
    taxonomy: str | None = None
    images: str | None = None
    labels: str | None = None
    distractors: str = "random"
    seed: int = 42
    task: str = "questions"
    strategy: str = "joint"
    protocol: str = "paper"
    prompt_variant: int | None = None
    keep_option_order: bool = False
    circular: bool = False
    mode: str = "image"
    templates: list[str] | None = None
    batch_size: int | None = None
    device: str | None = None
    dtype: str | None = None
    num_workers: int | None = None
    limit: int | None = None
    retry_errors: bool = False
    progress: bool = True
    threads: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """The settings that define the results (a resumed run must match them)."""
        keys = (
            "model",
            "questions",
            "taxonomy",
            "images",
            "labels",
            "distractors",
            "seed",
            "task",
            "strategy",
            "protocol",
            "prompt_variant",
            "keep_option_order",
            "circular",
            "mode",
            "templates",
            "limit",
        )
        return {k: getattr(self, k) for k in keys}


# --------------------------------------------------------------------------- distributed
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


def _sum_across(d: Dist, values: list[float]) -> list[float]:
    if d.world == 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def _barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- inputs
def prepare_questions(cfg: EvalConfig, d: Dist) -> tuple[list[Question], Any]:
    """The question set (read, or built and saved by rank 0), validated before any model work."""
    from hierzoo import load_taxonomy

    taxonomy = load_taxonomy(cfg.taxonomy) if cfg.taxonomy else None
    out = Path(cfg.out)
    if cfg.questions and cfg.images:
        raise RunError("Give either --questions FILE or --images DIR (with --taxonomy), not both.")
    if cfg.questions:
        questions = read_questions(cfg.questions, image_root=cfg.image_root)
    elif cfg.images or cfg.labels:
        if taxonomy is None:
            raise RunError(
                "--images needs --taxonomy NAME: hierzoo builds the questions from the taxonomy."
            )
        built = out / "questions.jsonl"
        if d.main and not built.exists():
            if cfg.labels:
                pairs = samples_from_csv(cfg.labels, image_root=cfg.images)
            else:
                pairs = samples_from_folder(cfg.images, taxonomy)
            qs = build_questions(taxonomy, pairs, distractors=cfg.distractors, seed=cfg.seed)
            out.mkdir(parents=True, exist_ok=True)
            write_questions(qs, built)
        _barrier(d)
        questions = read_questions(built)
    else:
        raise RunError(
            "Give --questions FILE, or --taxonomy NAME with --images DIR (and optionally --labels "
            "CSV)."
        )
    if cfg.limit:
        questions = questions[: cfg.limit]
    if not questions:
        raise RunError("The question set is empty.")
    for i, q in enumerate(questions):
        for k in range(q.n_levels):
            if q.answers[k] is not None:
                try:
                    q.answer_index(k)
                except QuestionError as e:
                    raise RunError(f"Question {i}: {e}") from None
    if taxonomy is not None:
        try:
            validate_questions(questions, taxonomy)
        except QuestionError as e:
            raise RunError(
                f"{e}\nCheck that --taxonomy {cfg.taxonomy} is the taxonomy of these questions."
            ) from None
    return questions, taxonomy


def _sha1_file(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_run_dir(cfg: EvalConfig, d: Dist) -> None:
    """Create ``run.json`` or make sure the existing one describes the same run."""
    out = Path(cfg.out)
    meta = out / "run.json"
    ident = cfg.identity()
    if meta.exists():
        old = json.loads(meta.read_text())["settings"]
        diff = {k: (old.get(k), v) for k, v in ident.items() if old.get(k) != v}
        if diff:
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise RunError(
                f"{out} holds a run with other settings ({shown}); resume it with the same flags, "
                "or pass "
                "a new --out."
            )
    elif d.main:
        out.mkdir(parents=True, exist_ok=True)
        tmp = meta.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": ident}, indent=2))
        tmp.replace(meta)
    _barrier(d)


# --------------------------------------------------------------------------- predictions files
def read_done(path: Path, repair: bool) -> dict[int, dict[str, Any]]:
    """Finished lines of a predictions file by sample index; a torn last line is cut off."""
    done: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return done
    with open(path, "rb") as f:
        data = f.read()
    good_end = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        done[int(row["sample"])] = row
        good_end += len(line)
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return done


def _shards(out: Path) -> list[Path]:
    return sorted(out.glob("predictions.rank*.jsonl"))


def collect_done(out: Path, repair: bool) -> dict[int, dict[str, Any]]:
    done = read_done(out / "predictions.jsonl", repair)
    for shard in _shards(out):
        done.update(read_done(shard, repair))
    return done


class _Writer:
    def __init__(self, path: Path):
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the whole run)

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def write_predictions(out: Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``predictions.jsonl`` with ``rows`` (sorted by sample) and drop the rank shards."""
    rows = sorted(rows, key=lambda r: int(r["sample"]))
    tmp = out / "predictions.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(out / "predictions.jsonl")
    for shard in _shards(out):
        shard.unlink()


def merge_predictions(out: Path, n: int) -> list[dict[str, Any]]:
    """Merge the rank shards and earlier lines into ``predictions.jsonl``: one line per sample,
    in question order."""
    done = collect_done(out, repair=False)
    rows = [done[i] for i in sorted(done) if i < n]
    write_predictions(out, rows)
    return rows


# --------------------------------------------------------------------------- running
def _protocol(cfg: EvalConfig, clf: Any):
    """The paper's protocol for the model's family under the run's settings."""
    return clf.default_protocol(
        cfg.taxonomy,
        mode=cfg.mode,
        seed=cfg.seed,
        prompt_variant=cfg.prompt_variant,
        keep_option_order=cfg.keep_option_order,
        circular=cfg.circular,
        templates=cfg.templates,
    )


def shuffle_options(questions: list[Question], seed: int, mode: str) -> list[Question]:
    """Copies of the questions with their options in the paper's seeded order (the order
    :func:`hierzoo.prompts.plan_questions` asks them in)."""
    from hierzoo.prompts import Protocol, plan_questions

    plan = plan_questions(questions, Protocol(shuffle_options=True, seed=seed, mode=mode))
    return [
        replace(q, choices=[opts or list(c) for opts, c in zip(plan.options[i], q.choices)])
        for i, q in enumerate(questions)
    ]


def _given_leaf(row: dict[str, Any], q: Question) -> dict[str, Any]:
    """Text mode names the leaf in the question and does not ask it; as the paper's text
    scripts do, its level is recorded as right (marked ``given``)."""
    n = q.n_levels
    if "error" not in row and q.answers[-1] is not None and f"ground_truth_level{n}" not in row:
        row[f"ground_truth_level{n}"] = q.answers[-1]
        row[f"predicted_level{n}"] = q.answers[-1]
        row[f"predicted_level{n}_given"] = True
    return row


def _path_rows(questions: list[Question], positions: list[int], pred: Any) -> list[dict[str, Any]]:
    rows = []
    for j, p in enumerate(positions):
        q = questions[p]
        row: dict[str, Any] = {"sample": p, "image": q.image, "label": q.label}
        if pred.errors[j] is not None:
            row["error"] = pred.errors[j]
        else:
            for k, ans in enumerate(q.answers, start=1):
                row[f"ground_truth_level{k}"] = ans
                row[f"predicted_level{k}"] = (
                    pred.names[j][k - 1] if k - 1 < len(pred.names[j]) else None
                )
            row["predicted_path"] = pred.names[j]
            row["path_scores"] = [round(float(s), 6) for s in pred.scores[j][: len(pred.names[j])]]
            row["consistent"] = bool(pred.consistent[j])
        rows.append(row)
    return rows


def _iterate(
    cfg: EvalConfig,
    clf: Any,
    questions: list[Question],
    todo: list[int],
    taxonomy: Any,
    protocol: Any,
):
    """``(positions, rows)`` per piece of work, in the paper's result format."""
    if not todo:
        return
    subset = [questions[p] for p in todo]
    if cfg.task == "path":
        chunk = max(cfg.batch_size or 64, 64) * 4
        for start in range(0, len(subset), chunk):
            part = subset[start : start + chunk]
            items = [q.path for q in part]
            pred = clf.predict_path(
                items, taxonomy, strategy=cfg.strategy, batch_size=cfg.batch_size
            )
            positions = todo[start : start + chunk]
            yield positions, _path_rows(questions, positions, pred)
        return
    for local, answers in clf.iter_answers(subset, protocol=protocol, batch_size=cfg.batch_size):
        positions = [todo[i] for i in local]
        rows = answers.to_records([questions[p] for p in positions])
        for p, row in zip(positions, rows):
            row["sample"] = p
            if cfg.mode == "text":
                _given_leaf(row, questions[p])
        yield positions, rows


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("hierzoo", "torch", "transformers", "open_clip_torch", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _device_name(clf: Any) -> str:
    import torch

    dev = getattr(clf, "device", torch.device("cpu"))
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def load_model(cfg: EvalConfig, d: Dist) -> Any:
    import hierzoo

    device = cfg.device
    if d.world > 1 and (device is None or device == "cuda"):
        import torch

        device = f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu"
    options = dict(cfg.model_kwargs)
    if cfg.num_workers is not None:
        options["num_workers"] = cfg.num_workers
    try:
        return hierzoo.load(cfg.model, device=device, dtype=cfg.dtype, **options)
    except ImportError:
        raise
    except Exception as e:
        raise RunError(
            f"Model {cfg.model!r} could not load ({type(e).__name__}: {e}). Check the name "
            "(`hierzoo models`), "
            "the directory, or that the hub is reachable (or the files are in the local cache)."
        ) from e


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Run (or resume) an evaluation and return the summary; see the module docstring."""
    if cfg.task not in TASKS:
        raise RunError(f"Expected --task to be one of {TASKS}, but got {cfg.task!r}.")
    if cfg.protocol != "paper":
        raise RunError(
            f"Expected --protocol paper (the only protocol so far), but got {cfg.protocol!r}."
        )
    if cfg.task == "path" and cfg.taxonomy is None:
        raise RunError(
            "--task path needs --taxonomy NAME: paths are decoded over the whole taxonomy."
        )
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    d = init_distributed(cfg.device)
    out = Path(cfg.out)
    questions, taxonomy = prepare_questions(cfg, d)
    check_run_dir(cfg, d)
    clf = load_model(cfg, d)
    protocol = _protocol(cfg, clf) if cfg.task == "questions" else None
    if protocol is not None and protocol.shuffle_options:
        # The paper draws every option order from one generator run through the whole set, so
        # the orders are fixed here, over all questions, before any subset (a resumed run, a
        # rank's shard) is asked; the model then keeps the order it is given.
        questions = shuffle_options(questions, protocol.seed, protocol.mode)
        protocol = replace(protocol, shuffle_options=False)

    if d.main:
        done = collect_done(out, repair=True)
        if cfg.retry_errors and any("error" in r for r in done.values()):
            write_predictions(out, [r for r in done.values() if "error" not in r])
    _barrier(d)
    done = collect_done(out, repair=False)
    todo_all = [i for i in range(len(questions)) if i not in done]
    todo = todo_all[d.rank :: d.world]
    per_sample = 1 if cfg.task == "path" else None
    n_q = sum(per_sample or sum(a is not None for a in questions[p].answers) for p in todo)
    shard = out / (f"predictions.rank{d.rank}.jsonl" if d.world > 1 else "predictions.jsonl")
    from tqdm.auto import tqdm

    bar = tqdm(
        total=n_q,
        unit="q",
        desc=f"eval {Path(cfg.model).name}",
        disable=not (cfg.progress and d.main),
        dynamic_ncols=True,
    )
    writer = _Writer(shard)
    started = time.time()
    n_images = 0
    try:
        for positions, rows in _iterate(cfg, clf, questions, todo, taxonomy, protocol):
            writer.write(rows)
            n_images += len(positions)
            bar.update(
                sum(
                    per_sample or sum(a is not None for a in questions[p].answers)
                    for p in positions
                )
            )
    finally:
        writer.close()
        bar.close()
    wall = time.time() - started
    n_images, n_q = (int(x) for x in _sum_across(d, [n_images, n_q]))
    _barrier(d)
    if not d.main:
        return {}
    rows = merge_predictions(out, len(questions))
    if len(rows) != len(questions):
        raise RunError(
            f"Only {len(rows)} of {len(questions)} samples have results; run the same command "
            "again."
        )
    summary = summarize_run(rows, taxonomy, cfg)
    summary["provenance"] = {
        "model": asdict(clf.spec)
        if getattr(clf, "spec", None)
        else {"name": cfg.model, "family": clf.family},
        "model_class": type(clf).__name__,
        "settings": cfg.identity(),
        "protocol": asdict(protocol) if protocol is not None else None,
        "prompt_variant": cfg.prompt_variant,
        "seed": cfg.seed,
        "questions_sha1": _sha1_file(cfg.questions)
        if cfg.questions
        else _sha1_file(str(out / "questions.jsonl")),
        "versions": _versions(),
        "device": _device_name(clf),
        "world_size": d.world,
        "wall_seconds": round(wall, 3),
        "images_this_run": n_images,
        "questions_this_run": n_q,
        "images_per_second": round(n_images / wall, 3) if wall > 0 and n_images else None,
        "questions_per_second": round(n_q / wall, 3) if wall > 0 and n_q else None,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join(sys.argv),
    }
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / "summary.json")
    return summary


def summarize_run(rows: list[dict[str, Any]], taxonomy: Any, cfg: EvalConfig) -> dict[str, Any]:
    """Every metric with its 95% interval (percent) from the result rows, as ``hierzoo score``
    does."""
    from hierzoo.metrics import score_results

    n_errors = sum(1 for r in rows if r.get("error"))
    label = cfg.model if not Path(cfg.model).exists() else Path(cfg.model).resolve().name
    summary: dict[str, Any] = {
        "model": cfg.model,
        "model_label": label,
        "taxonomy": cfg.taxonomy,
        "task": cfg.task,
        "mode": cfg.mode,
    }
    if n_errors == len(rows):
        summary.update({"n": 0, "n_errors": n_errors, "metrics": None})
        return summary
    scores = score_results([_circular_misses(r) for r in rows], taxonomy=taxonomy, ci=True)
    first_level = scores.pop("first_level")
    summary.update(
        {
            "n": scores.pop("n"),
            "n_errors": scores.pop("n_errors"),
            "first_level": first_level,
            "levels": scores.pop("levels"),
            "first_error": scores.pop("first_error"),
            "metrics": scores,
        }
    )
    return summary


def _circular_misses(row: dict[str, Any]) -> dict[str, Any]:
    """In circular mode a level is right only if every rotation was: a level marked
    ``correct_levelk: false`` scores as wrong whatever its first answer."""
    misses = [k for k in row if k.startswith("correct_level") and row[k] is False]
    if not misses:
        return row
    row = dict(row)
    for k in misses:
        row[f"predicted_level{k[len('correct_level') :]}"] = None
    return row
