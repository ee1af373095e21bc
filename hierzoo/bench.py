"""``hierzoo bench``: throughput of any zoo model on synthetic photos, end to end and forward only.

For every batch size asked: end-to-end images/s and questions/s of ``answer()`` (JPEG decoding
and preprocessing included), the model's forward passes alone, latency per batch (median,
p90), peak memory, and achieved FLOP/s against the device's peak where it is known. Warm-up
runs are excluded; CUDA work is timed with events or after a synchronise. ``--baseline`` runs
the paper's per-question loop on the same model and images and gives the ratio. With
``images`` (a folder) the timed photos are the folder's instead of synthetic ones.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hierzoo._io import atomic_write
from hierzoo.models.base import HierClassifier, OptionError, Protocol
from hierzoo.tasks import Question, build_questions, read_questions

# dense bf16 tensor-core peaks (FLOP/s) of common accelerators, by a substring of the device name
DEVICE_PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "A6000": 155e12,
    "4090": 165e12,
    "A10": 125e12,
}


@dataclass
class BenchConfig:
    model: str
    random_weights: bool = False
    size: str = "real"
    n_images: int = 256
    images: str | None = None
    levels: int = 4
    batch_sizes: Sequence[int | None] = (None,)
    device: str | None = None
    baseline: bool = False
    baseline_images: int = 8
    image_size: tuple[int, int] = (500, 375)
    num_workers: int | None = None
    decode_on_device: bool = False
    worker_decode: str = "pil"
    batched_vision_attention: bool = True
    work_dir: str | None = None
    warmup_images: int = 16
    profile: str | None = None
    trace: bool = False


def make_images(
    folder: Path, n: int, size: tuple[int, int] = (500, 375), seed: int = 0
) -> list[str]:
    """``n`` JPEG photos of ``size`` (smooth colour fields with noise), written in parallel."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(n) if not _whole(folder / f"{i:05d}.jpg")]
    if todo:
        from concurrent.futures import ProcessPoolExecutor

        workers = max(1, min(16, (os.cpu_count() or 1)))
        chunks = [todo[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_jpegs, [(str(folder), c, size, seed) for c in chunks if c]))
    return [str(folder / f"{i:05d}.jpg") for i in range(n)]


def _whole(path: Path) -> bool:
    """A JPEG written whole: present and ending with the end-of-image marker (images are
    written to a temporary file and renamed; one torn by an older writer is made again)."""
    try:
        with open(path, "rb") as f:
            f.seek(-2, os.SEEK_END)
            return f.read(2) == b"\xff\xd9"
    except OSError:
        return False


def _write_jpegs(args: tuple[str, list[int], tuple[int, int], int]) -> None:
    from PIL import Image

    folder, idx, (w, h), seed = args
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in idx:
        rng = np.random.default_rng(seed + i)
        a, b, c = rng.uniform(0.005, 0.05, size=3)
        base = np.stack(
            [np.sin(xx * a + i), np.cos(yy * b + 2 * i), np.sin((xx + yy) * c)], axis=-1
        )
        img = (127 + 100 * base + rng.normal(0, 12, size=(h, w, 3))).clip(0, 255).astype(np.uint8)
        atomic_write(  # a killed run leaves no torn image that a later one would time
            Path(folder) / f"{i:05d}.jpg",
            lambda tmp, img=img: Image.fromarray(img).save(tmp, format="JPEG", quality=90),
            fsync=False,
        )


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def folder_images(folder: str | Path, n: int) -> list[str]:
    """The first ``n`` images of ``folder`` (searched recursively, in path order), repeated
    from the start when it holds fewer."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"--images {folder}: not a folder; pass a folder of images")
    found = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise FileNotFoundError(
            f"--images {folder}: no image ({', '.join(IMAGE_SUFFIXES)}) in it or below it"
        )
    return [found[i % len(found)] for i in range(n)]


def make_questions(paths: list[str], levels: int) -> list[Question]:
    """One question-set entry per image: CUB-200's similar-choice questions (4 levels), or built
    from iNat21-Animal for more levels; truncated to ``levels``."""
    if levels <= 4:
        base = read_questions("cub200-similar")
        qs = [base[i % len(base)] for i in range(len(paths))]
    else:
        from hierzoo import load_taxonomy

        tax = load_taxonomy("inat21-animal")
        rng = np.random.default_rng(0)
        qs = build_questions(
            tax, [(p, tax.labels[int(rng.integers(tax.n_leaves))]) for p in paths], seed=0
        )
    out = []
    for q, p in zip(qs, paths):
        out.append(
            Question(
                image=p,
                label=q.label,
                answers=list(q.answers[:levels]),
                choices=[list(c) for c in q.choices[:levels]],
                path=Path(p),
            )
        )
    return out


class _ForwardTimer:
    """Time of every forward call of a module: CUDA events on GPU, a clock on CPU."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.cuda = device.type == "cuda"
        self.spans: list[Any] = []
        self._start: Any = None
        self.handles = [
            module.register_forward_pre_hook(self._pre),
            module.register_forward_hook(self._post),
        ]

    def _pre(self, *_: Any) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def _post(self, *_: Any) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.spans.append((self._start, end))
        else:
            self.spans.append(time.perf_counter() - self._start)

    def seconds(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self.spans) / 1000.0
        return float(sum(self.spans))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _peak_memory(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_gib": rss_kib / 2**20}


def _flops_per_image(
    clf: HierClassifier, questions: list[Question], protocol: Protocol
) -> float | None:
    """FLOPs of answering a few entries, counted by torch's FlopCounterMode, per entry."""
    from torch.utils.flop_counter import FlopCounterMode

    sample = questions[:2]
    try:
        with FlopCounterMode(display=False) as counter:
            clf.answer(sample, protocol=protocol, batch_size=len(sample))
        return counter.get_total_flops() / len(sample)
    except Exception:  # some kernels have no FLOP formula; the estimate is then skipped
        return None


def _device_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in DEVICE_PEAK_BF16.items() if k in name), None)


def _protocol(clf: HierClassifier, questions: list[Question]) -> Protocol:
    """The paper's protocol for the model on the bench's questions (CUB-200's up to 4 levels,
    iNat21-Animal's beyond)."""
    deep = max((q.n_levels for q in questions), default=0) > 4
    return clf.default_protocol("inat21-animal" if deep else "cub200")


def measure(
    clf: HierClassifier, questions: list[Question], batch_size: int | None, warm: list[Question]
) -> dict[str, Any]:
    """One end-to-end timing of ``iter_answers`` over ``questions`` at one batch size, after a
    warm-up on ``warm`` (other images; it also fills the text-embedding cache)."""
    protocol = _protocol(clf, questions)
    device = clf.device
    clf.answer(warm, protocol=protocol, batch_size=batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    stats = getattr(clf, "pipeline_stats", None)
    if stats is not None:
        stats.reset()
    timer = _ForwardTimer(clf.timed_module(), device)
    latencies: list[float] = []
    per_question = [sum(a is not None for a in q.answers) for q in questions]
    n_q = sum(per_question)
    first_images = first_questions = 0
    chosen: list[list[str | None]] = [[] for _ in questions]
    try:
        start = last = time.perf_counter()
        for positions, part in clf.iter_answers(
            questions, protocol=protocol, batch_size=batch_size
        ):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            latencies.append(now - last)
            last = now
            if len(latencies) == 1:
                first_images, first_questions = (
                    len(positions),
                    sum(per_question[p] for p in positions),
                )
            for j, p in enumerate(positions):
                chosen[p] = part.predicted(j)
        wall = time.perf_counter() - start
        forward = timer.seconds()
    finally:
        timer.close()
    lat = sorted(latencies)
    rest = wall - latencies[0] if len(latencies) > 1 else 0.0
    return {
        "batch_size": batch_size,
        "seconds": wall,
        "images_per_second": len(questions) / wall,
        "questions_per_second": n_q / wall,
        # the pipeline's start (worker processes, the first batch's decoding) is paid once per
        # call; after the first batch the rate is what a long run sustains
        "first_batch_seconds": latencies[0] if latencies else None,
        "steady_images_per_second": (len(questions) - first_images) / rest if rest > 0 else None,
        "steady_questions_per_second": (n_q - first_questions) / rest if rest > 0 else None,
        "forward_seconds": forward,
        "forward_share": forward / wall,
        # the rate if nothing but the forward passes took time (decoding, preprocessing and
        # the host's work excluded): the ceiling the pipeline is measured against
        "forward_questions_per_second": n_q / forward if forward > 0 else None,
        **_pipeline(stats, wall),
        "batch_latency_median_s": statistics.median(lat) if lat else None,
        "batch_latency_p90_s": lat[min(len(lat) - 1, int(0.9 * len(lat)))] if lat else None,
        "batches": len(lat),
        **_peak_memory(device),
        "_chosen": chosen,
    }


def _pipeline(stats: Any, wall: float) -> dict[str, float]:
    """Where the image pipeline's time went: the model loop's wait for batches; with decoding
    on the device the decoder's wait for bytes and its decode calls; for vision LLMs the time
    inside the processor."""
    if stats is None:
        return {}
    out = {"input_wait_seconds": stats.input_wait, "input_wait_share": stats.input_wait / wall}
    if stats.decode or stats.read_wait:
        out.update(read_wait_seconds=stats.read_wait, decode_seconds=stats.decode)
    if stats.preprocess:
        out.update(preprocess_seconds=stats.preprocess, preprocess_share=stats.preprocess / wall)
    return out


def forward_only(
    clf: HierClassifier, paths: list[str], batch_size: int, repeats: int = 5
) -> float | None:
    """The model's forward alone (:meth:`~HierClassifier.benchmark_forward`: a CLIP model's
    image encoder on preprocessed tensors already on the device) in images/s; ``None`` for a
    family without one."""
    forward = clf.benchmark_forward(paths, batch_size)
    if forward is None:
        return None
    n = min(batch_size, len(paths))
    forward()
    if clf.device.type == "cuda":
        torch.cuda.synchronize(clf.device)
    start = time.perf_counter()
    for _ in range(repeats):
        forward()
    if clf.device.type == "cuda":
        torch.cuda.synchronize(clf.device)
    return repeats * n / (time.perf_counter() - start)


FLAGS = {
    "num_workers": "--num-workers",
    "decode_on_device": "--decode-on-device",
    "worker_decode": "--worker-decode",
    "batched_vision_attention": "--no-batched-vision-attention",
}
"""The model options the bench sets, and the flags that set them."""


def load_for_bench(cfg: BenchConfig) -> HierClassifier:
    """The model, with the bench's settings passed at construction."""
    from hierzoo.models._factory import resolve_device

    device = resolve_device(cfg.device)
    options: dict[str, Any] = {}
    if cfg.num_workers is not None:
        options["num_workers"] = cfg.num_workers
    if cfg.decode_on_device:
        options["decode_on_device"] = True
    if cfg.worker_decode != "pil":
        options["worker_decode"] = cfg.worker_decode
    if not cfg.batched_vision_attention:
        options["batched_vision_attention"] = False
    try:
        if cfg.random_weights:
            from hierzoo.models.random_weights import build_random

            return build_random(cfg.model, device=device, size=cfg.size, **options)
        import hierzoo

        return hierzoo.load(cfg.model, device=device, **options)
    except OptionError as e:
        flags = ", ".join(FLAGS[o] for o in e.options if o in FLAGS)
        if not flags or not e.owners:
            raise
        owners = " and ".join(f"{label}s" for label in e.owners)
        raise ValueError(f"{flags} is for {owners}; leave it out for {cfg.model}.") from e


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-able record (see the module docstring)."""
    work = Path(cfg.work_dir or Path(tempfile.gettempdir()) / "hierzoo-bench")
    w, h = cfg.image_size
    n = cfg.n_images + cfg.warmup_images
    if cfg.images:
        paths = folder_images(cfg.images, n)
    else:
        paths = make_images(work / f"jpeg-{w}x{h}", n, (w, h))
    clf = load_for_bench(cfg)
    questions = make_questions(paths[cfg.warmup_images :], cfg.levels)
    warm = make_questions(paths[: cfg.warmup_images], cfg.levels)
    rows = [measure(clf, questions, bs, warm) for bs in cfg.batch_sizes]
    best = max(rows, key=lambda r: r["images_per_second"])
    record: dict[str, Any] = {
        "model": cfg.model,
        "random_weights": cfg.random_weights,
        "size": cfg.size,
        "family": clf.family,
        "device": _device_name(clf.device),
        "device_type": clf.device.type,
        "dtype": str(getattr(clf, "dtype", "")),
        "images": cfg.n_images,
        "levels": cfg.levels,
        "image_folder": cfg.images,
        "image_size": None if cfg.images else list(cfg.image_size),
        "decode_on_device": bool(getattr(clf, "decode_on_device", False)),
        "worker_decode": getattr(clf, "worker_decode", None),
        "batched_vision_attention": getattr(clf, "batched_vision_attention", None),
        "sweep": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
        "best_batch_size": best["batch_size"],
    }
    enc_bs = best["batch_size"] or getattr(clf, "batch_size", 32) or 32
    record["forward_only_images_per_second"] = forward_only(clf, paths, int(enc_bs))
    flops = _flops_per_image(clf, questions, _protocol(clf, questions))
    peak = _device_peak(clf.device)
    record["flops_per_image"] = flops
    if flops:
        record["achieved_tflops"] = flops * best["images_per_second"] / 1e12
        if peak:
            record["device_peak_tflops"] = peak / 1e12
            record["fraction_of_peak"] = flops * best["images_per_second"] / peak
    if cfg.baseline:
        record["baseline"] = _baseline(clf, questions[: cfg.baseline_images], best)
    if cfg.profile:
        size = int(best["batch_size"] or getattr(clf, "batch_size", None) or 16)
        record["profile"] = profile_batch(clf, questions[:size], size, cfg.profile, trace=cfg.trace)
    return record


def profile_batch(
    clf: HierClassifier,
    questions: list[Question],
    batch_size: int,
    path: str | Path,
    *,
    trace: bool = False,
    top: int = 25,
) -> dict[str, Any]:
    """One ``answer()`` of ``questions`` under ``torch.profiler`` (CPU, and CUDA where it runs):
    the op table sorted by self device time (CPU time on a CPU) goes to ``path``, a Chrome trace
    to ``path.trace.json`` with ``trace``; returns the ``top`` ops (name, calls, self times in
    ms) and the number of device kernels launched."""
    from torch.profiler import ProfilerActivity, profile

    cuda = clf.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    protocol = _protocol(clf, questions)
    with _profiler_log_filtered(not cuda):
        with profile(activities=activities) as prof:
            clf.answer(questions, protocol=protocol, batch_size=batch_size)
            if cuda:
                torch.cuda.synchronize(clf.device)
        events = prof.key_averages()
    device_key = (
        "self_device_time_total"
        if hasattr(events[0], "self_device_time_total")
        else "self_cuda_time_total"
    )
    sort = device_key if cuda else "self_cpu_time_total"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(events.table(sort_by=sort, row_limit=60, max_name_column_width=100))
    if trace:
        prof.export_chrome_trace(str(path) + ".trace.json")
    rows = sorted(events, key=lambda e: getattr(e, sort), reverse=True)[:top]
    kernels = None
    if cuda:
        try:  # kernels are the profiler's events on the CUDA device
            from torch.autograd import DeviceType

            kernels = sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)
        except Exception:  # a profiler without that view: leave the count out
            kernels = None
    return {
        "file": str(path),
        "images": len(questions),
        "sorted_by": sort,
        "device_kernels": kernels,
        "top": [
            {
                "name": e.key,
                "calls": e.count,
                "self_cpu_ms": e.self_cpu_time_total / 1e3,
                "self_device_ms": getattr(e, device_key, 0.0) / 1e3,
            }
            for e in rows
        ],
    }


_KINETO_LINE = re.compile(r"^[A-Z]+:\d{4}-\d\d-\d\d [\d:]+ \d+:\d+ \w+\.cpp:\d+\]")


@contextlib.contextmanager
def _profiler_log_filtered(active: bool) -> Iterator[None]:
    """On a CPU, leave out the log lines the profiler's native library writes to stderr
    (``profiler_start``, ``gpuGetDeviceCount failed``: about devices that are not in use);
    anything else written to stderr meanwhile is passed on."""
    if not active:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(x for x in lines if not _KINETO_LINE.match(x)))


def _agreement(a: list[list[str | None]], b: list[list[str | None]]) -> float:
    return float(np.mean([x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb)]))


def _baseline(clf: HierClassifier, sub: list[Question], best: dict[str, Any]) -> dict[str, Any]:
    """The paper's loop on the first images: its speed, and agreement with hierzoo's answers
    (for vision LLMs against one plain forward per question, since generation from random
    weights rarely names a letter)."""
    from hierzoo.baselines import clip_paper_loop, vlm_forward_loop, vlm_paper_loop

    ours = best["_chosen"][: len(sub)]
    if not clf.generative:
        clip_paper_loop(clf, sub[:1])
        seconds, names = clip_paper_loop(clf, sub)
        out = {"method": "paper per-question loop", "agreement": _agreement(names, ours)}
    else:
        vlm_paper_loop(clf, sub[:1])
        seconds, names = vlm_paper_loop(clf, sub)
        _, forward = vlm_forward_loop(clf, sub)
        out = {
            "method": "paper per-question loop (generate, 10 new tokens)",
            "agreement": _agreement(forward, ours),
            "agreement_with_generate": _agreement(names, ours),
            "unparseable_share": float(np.mean([x is None for r in names for x in r])),
        }
    n_q = sum(len(r) for r in names)
    out.update(
        images=len(sub),
        questions=n_q,
        questions_per_second=n_q / seconds,
        speedup=best["questions_per_second"] / (n_q / seconds),
    )
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def format_bench(record: dict[str, Any]) -> str:
    """The bench table."""
    names = {
        "batch_size": "batch",
        "images_per_second": "images/s",
        "questions_per_second": "questions/s",
        "steady_images_per_second": "after 1st batch img/s",
        "first_batch_seconds": "1st batch (s)",
        "forward_share": "forward share",
        "forward_questions_per_second": "forward-only q/s",
        "input_wait_share": "waiting for input",
        "preprocess_share": "in processor",
        "batch_latency_median_s": "latency median (s)",
        "batch_latency_p90_s": "latency p90 (s)",
        "peak_gpu_memory_gib": "peak GPU mem (GiB)",
        "peak_rss_gib": "peak RSS (GiB)",
    }
    from hierzoo.tables import text_table

    cols = [c for c in names if any(c in r for r in record["sweep"])]
    lines = [
        f"{record['model']}{' (random weights)' if record['random_weights'] else ''} on "
        f"{record['device']}, "
        f"{record['images']} images x {record['levels']} levels"
    ]
    rows = [[_fmt(r.get(c)) for c in cols] for r in record["sweep"]]
    lines += text_table([names[c] for c in cols], rows, left=0)
    if len(record["sweep"]) > 1:
        lines.append(f"best batch size: {record['best_batch_size']}")
    if record.get("forward_only_images_per_second"):
        lines.append(
            f"image encoder alone: {record['forward_only_images_per_second']:.1f} images/s"
        )
    # FLOP/s against a peak: on a CUDA device (on a CPU the estimate compares with nothing)
    if record.get("achieved_tflops") is not None and record.get("device_type") == "cuda":
        peak = (
            f" ({100 * record['fraction_of_peak']:.1f}% of {record['device_peak_tflops']:.0f})"
            if record.get("fraction_of_peak")
            else ""
        )
        lines.append(f"achieved: {record['achieved_tflops']:.2f} TFLOP/s{peak}")
    if "baseline" in record:
        b = record["baseline"]
        lines.append(
            f"{b['method']}: {b['questions_per_second']:.2f} questions/s on {b['images']} images; "
            f"hierzoo is {b['speedup']:.1f}x; agreement {b['agreement']:.3f}"
            + (
                f" (with generate: {b['agreement_with_generate']:.3f}, unparseable "
                f"{b['unparseable_share']:.2f})"
                if "agreement_with_generate" in b
                else ""
            )
        )
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "default"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_record(record: dict[str, Any], path: str | Path) -> Path:
    """The record as strict JSON, floats without binary noise (:func:`hierzoo.tables.tidy`)."""
    from hierzoo._io import write_json
    from hierzoo.tables import tidy

    return write_json(path, tidy(record))
