"""``hierzoo eval``: resumable benchmark runs, sharded across ranks under torchrun.

A run directory holds:

- ``run.json``: the run's identity (what its numbers are computed from: the model's content,
  the question set's content, the image root, dtype, protocol and every option that changes
  numbers) and its id; a rerun whose identity differs refuses the directory, naming each
  differing item, rather than mixing results;
- ``questions.jsonl``: the question set, when hierzoo built it;
- ``predictions.jsonl``: one line per image in the paper's result format, appended and flushed
  batch by batch (``predictions.rank{r}.jsonl`` per rank under torchrun, merged at the end);
  each line carries the run id (``run``), so lines of another run are never adopted;
- ``summary.json``: every metric with its 95% interval, counts and provenance;
- ``.lock``: held while a run writes here; a second run into the same folder is refused.

Nothing is written before the inputs are validated and the model has loaded. A killed run
started again with the same ``--out`` keeps every valid line (a damaged line is dropped with a
warning and redone), and redoes nothing finished.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hierzoo._io import format_diff, write_json
from hierzoo._run_inputs import (
    check_images_resolve,
    check_mode,
    prepare_questions,
    resolve_spec,
)
from hierzoo._run_summary import binary_answer_stats as binary_answer_stats
from hierzoo._run_summary import generated_answer_stats as generated_answer_stats
from hierzoo._run_summary import open_answer_stats as open_answer_stats
from hierzoo._run_summary import summarize_run
from hierzoo.distributed import Dist, barrier, init_distributed, on_main, sum_across
from hierzoo.rundir import (
    PredictionWriter,
    RunError,
    RunLock,
    collect_done,
    identity_diff,
    merge_predictions,
    questions_digest,
    read_run_meta,
    refusal,
    run_id,
    shards,
    short,
    taxonomy_digest,
    write_predictions,
)
from hierzoo.tasks import (
    Question,
    bundled_question_taxonomy,
    write_questions,
)
from hierzoo.taxonomy import BUNDLED, Taxonomy

TASKS = ("questions", "path")

# model options that change how work is scheduled or where it runs, not the numbers (an API
# model's key variable, requests in flight, timeouts and retries among them)
_NEUTRAL_OPTIONS = frozenset(
    {
        "device_map",
        "num_workers",
        "cache_dir",
        "token_budget",
        "api_key_env",
        "concurrency",
        "timeout",
        "max_retries",
    }
)
# how many of the first questions must have an image before the model is loaded


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
    answer: str = "logits"
    max_new_tokens: int | None = None
    parse: str = "paper"
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
        """The flags that define the results (see :func:`run_identity` for the whole identity)."""
        keys = (
            "task",
            "strategy",
            "protocol",
            "prompt_variant",
            "keep_option_order",
            "answer",
            "circular",
            "mode",
            "templates",
            "seed",
            "distractors",
            "limit",
        )
        ident = {k: getattr(self, k) for k in keys}
        if self.max_new_tokens is not None:  # only when set: the ids of other runs stay the same
            ident["max_new_tokens"] = self.max_new_tokens
        if self.parse != "paper":  # likewise
            ident["parse"] = self.parse
        return ident

    def check(self) -> None:
        """Reject settings no run can use, naming the value and the fix.

        Raises:
            RunError: an unknown task or protocol, a number out of range, a missing companion.
        """
        from hierzoo.prompts import PROTOCOLS

        if self.task not in TASKS:
            raise RunError(f"Expected --task to be one of {TASKS}, but got {self.task!r}.")
        if self.protocol not in PROTOCOLS:
            raise RunError(
                f"Expected --protocol to be one of {PROTOCOLS}, but got {self.protocol!r}."
            )
        if self.protocol == "binary" and (self.mode != "image" or self.circular):
            what = "--mode text" if self.mode != "image" else "--circular"
            raise RunError(
                f"--protocol binary does not take {what}: it states what the image shows, one "
                "statement per option (no text mode, no option order to rotate); drop "
                f"{what}."
            )
        if self.max_new_tokens is not None and self.answer != "generate":
            raise RunError(
                f"--max-new-tokens {self.max_new_tokens} limits generated replies; add --answer "
                "generate, or drop it."
            )
        if self.task == "path":
            asked = [
                ("--circular", self.circular),
                ("--keep-option-order", self.keep_option_order),
                (f"--protocol {self.protocol}", self.protocol != "paper"),
                (f"--prompt-variant {self.prompt_variant}", self.prompt_variant is not None),
                (f"--answer {self.answer}", self.answer != "logits"),
            ]
            flag = next((f for f, given in asked if given), None)
            if flag:
                raise RunError(
                    f"--task path predicts a path over the whole taxonomy and asks no four-choice "
                    f"question, so {flag} would change nothing; drop it, or drop --task path."
                )
        elif self.strategy != "joint":
            raise RunError(
                f"--strategy {self.strategy} is how --task path decodes a path; four-choice "
                "questions do not use it: add --task path, or drop --strategy."
            )
        if self.task == "questions":
            from hierzoo.prompts import Protocol

            try:  # a named protocol's own needs (cot generates, bio-cot's taxonomies ...)
                Protocol(
                    taxonomy=self.protocol_taxonomy(),
                    mode=self.mode,
                    answer=self.answer,
                    name=self.protocol,
                    parse=self.parse,
                )
            except ValueError as e:
                raise RunError(str(e)) from None
        numbers = (("batch_size", 1), ("limit", 1), ("threads", 1), ("num_workers", 0))
        numbers += (("max_new_tokens", 1),)
        for name, low in numbers:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < low):
                flag = "--" + name.replace("_", "-")
                raise RunError(f"Expected {flag} to be an integer >= {low}, but got {value!r}.")
        if self.task == "path" and self.taxonomy is None and not self._bundled_taxonomy():
            raise RunError(
                "--task path needs --taxonomy NAME: paths are decoded over the whole taxonomy."
            )
        if self.templates:
            from hierzoo.models import Protocol

            try:
                Protocol(templates=tuple(self.templates))
            except ValueError as e:
                raise RunError(str(e)) from None
        if self.questions and (self.images or self.labels):
            raise RunError(
                "Give either --questions FILE or --images DIR / --labels CSV (with --taxonomy), "
                "not both."
            )

    def _bundled_taxonomy(self) -> str | None:
        return bundled_question_taxonomy(self.questions) if self.questions else None

    @property
    def taxonomy_name(self) -> str | None:
        """``--taxonomy``, or the taxonomy of a bundled question set."""
        return self.taxonomy or self._bundled_taxonomy()

    def protocol_taxonomy(self) -> str | Taxonomy | None:
        """The taxonomy as a protocol takes it: a bundled name as it is, a taxonomy file loaded
        (``taxonomy-context`` writes a user's taxonomy into the prompt from it).

        Raises:
            RunError: a taxonomy file that does not load, with the reason.
        """
        name = self.taxonomy_name
        if name is None or name in BUNDLED:
            return name
        from hierzoo import load_taxonomy

        try:
            return load_taxonomy(name)
        except (OSError, ValueError) as e:
            raise RunError(str(e)) from None


def _note(d: Dist, message: str) -> None:
    if d.main:
        print(f"hierzoo eval: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- the run directory
@contextmanager
def claimed_folder(out: Path, d: Dist) -> Iterator[None]:
    """Hold the run lock on ``out`` (rank 0); if the run fails before it claims the folder (no
    ``run.json``), leave it as it was: a folder created here is removed again."""

    def take() -> tuple[RunLock, bool]:
        if out.exists() and not out.is_dir():
            raise RunError(f"--out {str(out)!r} is a file; give a folder for the run's results.")
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock = RunLock(out)
            lock.acquire()
        except PermissionError as e:
            raise RunError(
                f"Cannot write to --out {str(out)!r} ({e.strerror}); pass a folder you can write."
            ) from None
        except OSError as e:
            if isinstance(e, RunError):
                raise
            raise RunError(f"Cannot use --out {str(out)!r}: {e.strerror or e}.") from None
        return lock, created

    lock, created = on_main(d, take) or (None, False)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
            if created and not (out / "run.json").exists():
                shutil.rmtree(out, ignore_errors=True)


# --------------------------------------------------------------------------- inputs
def run_identity(
    cfg: EvalConfig,
    spec: Any,
    questions: list[Question],
    taxonomy: Any,
    *,
    model_content: str | None,
    dtype: str | None,
) -> dict[str, Any]:
    """What a run's numbers are computed from. Two runs with the same identity may share a
    folder; ``None`` marks an item not known yet (the model's content before it is downloaded,
    the dtype before the model has loaded), which :func:`identity_diff` does not compare.
    A local model is identified by its files' content, not by how its path is written; a model
    behind an API by its name and the server asked (``model_content`` and ``requests`` come from
    the loaded model: :meth:`~hierzoo.models.base.HierClassifier.identity`)."""
    ident = cfg.identity()
    if spec.source:
        ident["model"] = "local directory"
    elif spec.served:
        ident["model"] = f"api:{spec.hub_id}"
    else:
        ident["model"] = f"{spec.hub_id}@{spec.revision}"
    ident["model_content"] = model_content
    ident["questions"] = questions_digest(questions)
    ident["image_root"] = str(Path(cfg.image_root).resolve()) if cfg.image_root else None
    ident["taxonomy"] = taxonomy_digest(taxonomy)
    ident["dtype"] = dtype
    if cfg.task == "questions" and cfg.answer == "generate":
        from hierzoo.prompts import max_new_tokens, protocol_table

        # the reply length in effect, the paper's table's (or its protocol's) or the flag's
        ident["max_new_tokens"] = (
            cfg.max_new_tokens
            or protocol_table(cfg.protocol).get("max_new_tokens")
            or max_new_tokens(spec.family, cfg.taxonomy_name, cfg.mode)
        )
    ident["options"] = {
        k: v for k, v in sorted(cfg.model_kwargs.items()) if k not in _NEUTRAL_OPTIONS
    }
    return ident


def _model_content(spec: Any) -> str | None:
    from hierzoo.models._hub import model_fingerprint

    return model_fingerprint(spec)


# --------------------------------------------------------------------------- running
def _protocol(cfg: EvalConfig, clf: Any):
    """The paper's protocol for the model's family under the run's settings, checked.

    Raises:
        RunError: a setting this model cannot answer under.
    """
    try:
        protocol = clf.default_protocol(
            cfg.protocol_taxonomy(),
            mode=cfg.mode,
            seed=cfg.seed,
            prompt_variant=cfg.prompt_variant,
            keep_option_order=cfg.keep_option_order,
            answer=cfg.answer,
            circular=cfg.circular,
            templates=cfg.templates,
            name=cfg.protocol,
        )
        if cfg.max_new_tokens is not None:
            protocol = replace(protocol, max_new_tokens=cfg.max_new_tokens)
        if cfg.parse != "paper":
            protocol = replace(protocol, parse=cfg.parse)
        clf.check_protocol(protocol)
    except ValueError as e:
        raise RunError(str(e)) from None
    return protocol


def _protocol_record(protocol: Any) -> dict[str, Any]:
    """A protocol's settings as JSON values; a taxonomy held as an object (a user's file) by its
    name."""
    record = {f.name: getattr(protocol, f.name) for f in fields(protocol)}
    return json.loads(json.dumps({**record, "taxonomy": protocol.taxonomy_name}))


def _in_asked_order(questions: list[Question], protocol: Any) -> tuple[list[Question], Any]:
    """The questions with their options in the order the protocol asks them, and the protocol
    that keeps that order. The paper draws every option order from one generator run through
    the whole set, so the orders are fixed here, over all questions, before any subset (a
    resumed run, a rank's shard) is asked."""
    if not protocol.shuffle_options:
        return questions, protocol
    shuffled = shuffle_options(questions, protocol.seed, protocol.mode)
    return shuffled, replace(protocol, shuffle_options=False)


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
    from hierzoo.models import UnknownModelError
    from hierzoo.models._hub import ModelUnavailableError

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
    except (UnknownModelError, ModelUnavailableError) as e:
        raise RunError(str(e)) from None
    except ValueError as e:  # the loaders' checks of device, dtype and options name the fix
        raise RunError(str(e)) from None
    except Exception as e:
        raise RunError(
            f"Model {cfg.model!r} could not load ({type(e).__name__}: {e}). Check the name "
            "(`hierzoo models`) or the directory's files."
        ) from e


def _dtype_asked(cfg: EvalConfig) -> str | None:
    """``--dtype`` by its torch name (``bf16`` -> ``bfloat16``), or ``None`` for the default."""
    if cfg.dtype is None:
        return None
    import torch

    from hierzoo.models._factory import resolve_dtype

    return str(resolve_dtype(cfg.dtype, torch.float32)).replace("torch.", "")


def _dtype_name(clf: Any) -> str | None:
    dtype = getattr(clf, "dtype", None)
    return str(dtype).replace("torch.", "") if dtype is not None else None


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Run (or resume) an evaluation and return the summary; see the module docstring.

    The summary's ``done_before`` counts the samples an earlier run had finished; when nothing
    was left to do, the model is not loaded and the summary (with the provenance of the run that
    did the work) is returned as it was.
    """
    cfg.check()
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    d = init_distributed(cfg.device)
    out = Path(cfg.out)
    with claimed_folder(out, d):
        return _run(cfg, d, out)


def _run(cfg: EvalConfig, d: Dist, out: Path) -> dict[str, Any]:
    questions, taxonomy, built = prepare_questions(cfg)
    spec = resolve_spec(cfg)
    check_mode(cfg, spec)
    check_images_resolve(cfg, questions)
    ident = run_identity(
        cfg, spec, questions, taxonomy, model_content=_model_content(spec), dtype=_dtype_asked(cfg)
    )
    meta = read_run_meta(out)
    restart = _check_identity(out, d, meta, ident)
    stored_run = meta["run"] if meta and not restart else None
    done, damaged = collect_done(out, repair=False, run=stored_run)
    if restart:
        done = {}

    n_done = sum(1 for r in done.values() if "error" not in r or not cfg.retry_errors)
    todo_all = [i for i in range(len(questions)) if i not in done or _redo(done[i], cfg)]
    nothing = not todo_all and not damaged and meta is not None and not restart
    # every rank has read the folder before rank 0 merges it, and all ranks take one branch
    if sum_across(d, [0.0 if nothing else 1.0])[0] == 0:
        _note(d, f"{len(questions)} of {len(questions)} samples already done; nothing to run.")
        return _finish_without_work(cfg, d, out, questions, taxonomy, meta)

    clf = load_model(cfg, d)
    protocol = _protocol(cfg, clf) if cfg.task == "questions" else None
    try:
        clf.check_task(cfg.task)
    except ValueError as e:
        raise RunError(str(e)) from None
    ident["dtype"] = _dtype_name(clf)
    ident["model_content"] = _model_content(spec)
    ident.update(clf.identity(protocol))
    if meta is not None and not restart:
        diff = identity_diff(meta["identity"], ident)
        if diff:
            raise refusal(out, diff)
    rid = run_id(ident)

    def claim() -> None:
        if restart:
            for path in [out / "predictions.jsonl", *shards(out)]:
                path.unlink(missing_ok=True)
        _, bad = collect_done(out, repair=True, run=rid if meta is None and not restart else None)
        for name, lines in bad.items():
            _note(d, f"{name}: damaged line(s) {lines} dropped; those samples are redone")
        if cfg.retry_errors:
            kept, _ = collect_done(out, repair=False)
            if any("error" in r for r in kept.values()):
                write_predictions(out, [r for r in kept.values() if "error" not in r])
        if built and (restart or not (out / "questions.jsonl").exists()):
            write_questions(questions, out / "questions.jsonl")
        write_json(out / "run.json", {"run": rid, "identity": ident, "settings": cfg.identity()})

    barrier(d)  # every rank has read the folder before rank 0 repairs it
    on_main(d, claim)
    barrier(d)
    done, _ = collect_done(out, repair=False, run=rid)
    # every rank splits the same list: none may write a sample before all have read what is done
    barrier(d)
    todo_all = [i for i in range(len(questions)) if i not in done]
    todo = todo_all[d.rank :: d.world]
    return _work(cfg, d, out, clf, protocol, questions, taxonomy, todo, rid, ident, n_done)


def dry_run(cfg: EvalConfig, n: int) -> list[dict[str, Any]]:
    """The first ``n`` requests the run ``cfg`` would make
    (:meth:`~hierzoo.models.HierClassifier.describe_requests`), with the questions read and
    checked as the run reads them and the options in its order. Loads the model's processor,
    not its weights (:func:`hierzoo.models.load_for_dry_run`); runs no forward pass and writes
    nothing (``--out`` is neither created nor locked).

    Raises:
        RunError: bad settings or inputs, a family that cannot describe its requests, a
            processor that cannot load.
    """
    from hierzoo.models import load_for_dry_run

    cfg.check()
    if cfg.task != "questions":
        raise RunError(
            f"--dry-run shows the questions a model is asked; --task {cfg.task} asks none."
        )
    questions, _, _ = prepare_questions(cfg)
    spec = resolve_spec(cfg)
    check_images_resolve(cfg, questions)
    try:
        clf = load_for_dry_run(spec, **cfg.model_kwargs)
    except ImportError:
        raise
    except ValueError as e:
        raise RunError(str(e)) from None
    except Exception as e:
        raise RunError(
            f"The processor of {cfg.model!r} could not load ({type(e).__name__}: {e}); a hub "
            "model's processor files must be downloaded or reachable."
        ) from e
    protocol = _protocol(cfg, clf)
    questions, protocol = _in_asked_order(questions, protocol)
    return clf.describe_requests(questions, protocol=protocol, limit=n)


def _redo(row: dict[str, Any], cfg: EvalConfig) -> bool:
    return cfg.retry_errors and "error" in row


def _check_identity(out: Path, d: Dist, meta: dict[str, Any] | None, ident: dict[str, Any]) -> bool:
    """Refuse a folder holding another run's results; ``True`` when it holds only failed
    samples of another run, or none (nothing to mix: they are redone under the new settings;
    a folder whose reclaiming was interrupted is reclaimed again)."""
    if meta is None:
        return False
    diff = identity_diff(meta["identity"], ident)
    if not diff:
        return False
    done, _ = collect_done(out, repair=False)
    if all("error" in r for r in done.values()):
        held = "only failed samples" if done else "no finished sample"
        _note(
            d,
            f"{out} held {held} of a run with other settings "
            f"({format_diff({k: (short(a), short(b)) for k, (a, b) in diff.items()})}); "
            "the run starts afresh with these settings",
        )
        return True
    raise refusal(out, diff)


def _work(
    cfg: EvalConfig,
    d: Dist,
    out: Path,
    clf: Any,
    protocol: Any,
    questions: list[Question],
    taxonomy: Any,
    todo: list[int],
    rid: str,
    ident: dict[str, Any],
    n_done: int,
) -> dict[str, Any]:
    if protocol is not None:
        questions, protocol = _in_asked_order(questions, protocol)
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
    writer = PredictionWriter(shard)
    started = time.time()
    n_images = 0
    try:
        for positions, rows in _iterate(cfg, clf, questions, todo, taxonomy, protocol):
            for row in rows:
                row["run"] = rid
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
    n_images, n_q = (int(x) for x in sum_across(d, [n_images, n_q]))
    barrier(d)
    if not d.main:
        return {}
    rows = merge_predictions(out, len(questions))
    if len(rows) != len(questions):
        raise RunError(
            f"Only {len(rows)} of {len(questions)} samples have results; run the same command "
            "again."
        )
    summary = summarize_run(rows, taxonomy, cfg)
    summary["done_before"] = n_done
    context = getattr(clf, "context_tokens", None)
    if protocol is not None and protocol.name == "taxonomy-context" and context is not None:
        summary["context_tokens"] = context(protocol)  # the taxonomy's cost in every prompt
    summary["provenance"] = {
        "model": asdict(clf.spec)
        if getattr(clf, "spec", None)
        else {"name": cfg.model, "family": clf.family},
        "model_class": type(clf).__name__,
        "run": rid,
        "identity": ident,
        "settings": cfg.identity(),
        "protocol": _protocol_record(protocol) if protocol is not None else None,
        "prompt_variant": cfg.prompt_variant,
        "seed": cfg.seed,
        "versions": _versions(),
        "device": _device_name(clf),
        "world_size": d.world,
        "wall_seconds": round(wall, 3),
        "images_this_run": n_images,
        "questions_this_run": n_q,
        "images_per_second": round(n_images / wall, 3) if wall > 0 and n_images else None,
        "questions_per_second": round(n_q / wall, 3) if wall > 0 and n_q else None,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": shlex.join(["hierzoo", *sys.argv[1:]]),
        **clf.provenance(),
    }
    _usage_of_rows(summary["provenance"], rows)
    write_json(out / "summary.json", summary)
    return summary


def _usage_of_rows(provenance: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """A served model's token counts and cost over every row of the results (each row records
    the tokens of its answers), so that a resumed run counts the answers of earlier ones too;
    the ``sent_`` counts stay this process's."""
    usage = provenance.get("usage")
    if not isinstance(usage, dict) or not any("tokens" in r for r in rows):
        return
    from hierzoo.models.api.usage import estimate_cost

    sums = {"prompt": 0, "completion": 0, "cached_prompt": 0}
    for row in rows:
        for key in sums:
            sums[key] += int((row.get("tokens") or {}).get(key, 0))
    usage["prompt_tokens"] = sums["prompt"]
    usage["completion_tokens"] = sums["completion"]
    usage["cached_prompt_tokens"] = sums["cached_prompt"]
    model = (provenance.get("api") or {}).get("model")
    cost = estimate_cost(model, sums["prompt"], sums["completion"], sums["cached_prompt"])
    usage["estimated_cost_usd"] = None if cost is None else round(cost, 6)


def _finish_without_work(
    cfg: EvalConfig,
    d: Dist,
    out: Path,
    questions: list[Question],
    taxonomy: Any,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Every sample is done: the summary of the run that did the work, rebuilt (with no
    provenance of this call) only if it is missing, damaged or of other rows."""
    if not d.main:
        return {}
    rows = merge_predictions(out, len(questions))
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        n_errors = sum(1 for r in rows if "error" in r)
        if (
            summary.get("provenance", {}).get("run") == meta["run"]
            and summary.get("n", 0) + (summary.get("n_errors") or 0) == len(rows)
            and (summary.get("n_errors") or 0) == n_errors
        ):
            summary["done_before"] = len(rows)
            return summary
    except (OSError, ValueError, AttributeError):
        pass
    summary = summarize_run(rows, taxonomy, cfg)
    summary["done_before"] = len(rows)
    summary["provenance"] = {"run": meta["run"], "identity": meta["identity"]}
    write_json(out / "summary.json", summary)
    return summary


def retry_command(argv: list[str] | None = None) -> str:
    """The command line that redoes a run's failed samples: this one with ``--retry-errors``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--retry-errors" not in args:
        args.append("--retry-errors")
    return shlex.join(["hierzoo", *args])
