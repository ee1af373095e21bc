"""Vision-LLM question answering on CUB questions: the paper's generate loop against hierzoo.

Same tiny random model (hierzoo.models.tiny), same synthetic 500x375 JPEG images, same questions
(the first --images entries of the bundled CUB-200 random-choice set, four levels each, options
shuffled by the paper's seeded generator):

- paper loop: per question, the full chat prompt with the image through the processor,
  ``generate(max_new_tokens=10, do_sample=False)``, the first option letter found in the text;
- one forward per question: the same prompt, one forward pass, letter logits (no generation);
- hierzoo without the prefix cache: fused batches of full prompts;
- hierzoo with the prefix cache, one image per pass (``batch_size=1``);
- hierzoo with the prefix cache and fused batches (the default).

    python benchmarks/vlm.py [--family all|qwen2.5-vl|...] [--images 32] [--threads N] [--json FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import print_table, write_json
from PIL import Image

import hierzoo
from hierzoo import prompts
from hierzoo.models import Protocol, tiny
from hierzoo.tasks import read_questions

BUILDERS = {
    "qwen2.5-vl": tiny.build_tiny_qwen2_5_vl,
    "qwen3-vl": tiny.build_tiny_qwen3_vl,
    "llava-onevision": tiny.build_tiny_llava_onevision,
    "internvl": tiny.build_tiny_internvl,
}


def make_images(root: Path, n: int, size: tuple[int, int] = (500, 375)) -> list[Path]:
    """Smooth random colour fields with noise, saved as JPEG (a photo's size and entropy)."""
    rng = np.random.default_rng(0)
    paths = []
    w, h = size
    for i in range(n):
        yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
        base = np.stack(
            [np.sin(xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9)) for _ in range(3)], -1
        )
        pixels = (base * 80 + 128 + rng.normal(0, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)
        path = root / f"{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def paper_questions(questions, seed: int = 42) -> list[tuple[int, int, str, list[str]]]:
    """(sample, level, question text, options) in the paper's order, options shuffled its way."""
    orders = prompts.shuffled_orders([[len(c) for c in q.choices] for q in questions], seed)
    out = []
    for i, q in enumerate(questions):
        for k, order in enumerate(orders[i]):
            text = prompts.question_text("cub200", k)
            out.append((i, k, text, [q.choices[k][j] for j in order]))
    return out


def paper_loop(model, questions, asks, *, generate: bool) -> tuple[float, list[int]]:
    """The paper's per-question loop; returns (seconds, chosen option index or -1 per question)."""
    processor, net = model.processor, model.model
    letters = "ABCD"
    letter_ids = processor.tokenizer.convert_tokens_to_ids(list(letters))
    chosen = []
    t0 = time.perf_counter()
    image_of: dict[int, Image.Image] = {}
    with torch.inference_mode():
        for i, _, text, options in asks:
            if i not in image_of:
                image_of = {i: Image.open(questions[i].path).convert("RGB")}
            user = prompts.user_text(text, options)
            prompt = processor.apply_chat_template(
                prompts.messages(user), tokenize=False, add_generation_prompt=True
            )
            inputs = processor(
                text=[prompt], images=[image_of[i]], padding=True, return_tensors="pt"
            )
            if generate:
                out = net.generate(
                    **inputs,
                    max_new_tokens=10,
                    do_sample=False,
                    pad_token_id=processor.tokenizer.pad_token_id,
                )
                response = processor.batch_decode(
                    out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
                )[0]
                letter = next((c for c in letters[: len(options)] if c in response), None)
                chosen.append(letters.index(letter) if letter else -1)
            else:
                logits = net(**inputs).logits[0, -1, letter_ids[: len(options)]]
                chosen.append(int(logits.argmax()))
    return time.perf_counter() - t0, chosen


def hierzoo_run(
    model, questions, *, prefix_cache: bool, batch_size: int | None
) -> tuple[float, np.ndarray]:
    model.prefix_cache = prefix_cache
    protocol = Protocol(taxonomy="cub200", shuffle_options=True)
    t0 = time.perf_counter()
    answers = model.answer(questions, protocol=protocol, batch_size=batch_size)
    return time.perf_counter() - t0, answers.choice


def bench_family(family: str, root: Path, questions, repeats: int) -> list[dict]:
    model = hierzoo.load(BUILDERS[family](root / family), device="cpu")
    asks = paper_questions(questions)
    n = len(asks)
    paper_loop(model, questions, asks[:4], generate=True)
    hierzoo_run(model, questions[:2], prefix_cache=True, batch_size=None)

    def best(fn):
        runs = [fn() for _ in range(repeats)]
        return min(runs, key=lambda r: r[0])

    t_gen, gen_choice = best(lambda: paper_loop(model, questions, asks, generate=True))
    t_fwd, fwd_choice = best(lambda: paper_loop(model, questions, asks, generate=False))
    t_plain, plain = best(
        lambda: hierzoo_run(model, questions, prefix_cache=False, batch_size=None)
    )
    t_one, one = best(lambda: hierzoo_run(model, questions, prefix_cache=True, batch_size=1))
    t_fused, fused = best(lambda: hierzoo_run(model, questions, prefix_cache=True, batch_size=None))
    flat = fused.reshape(-1)
    if not (np.array_equal(plain, fused) and np.array_equal(one, fused)):
        raise RuntimeError(f"{family}: hierzoo's batching or prefix cache changed an answer")
    if not np.array_equal(np.asarray(fwd_choice), flat):
        raise RuntimeError(f"{family}: hierzoo disagrees with the per-question forward pass")
    unknown = float((np.asarray(gen_choice) < 0).mean())
    rows = [
        ("paper loop: prompt + generate(10) per question", t_gen),
        ("one forward per question, letter logits", t_fwd),
        ("hierzoo fused, prefix cache off", t_plain),
        ("hierzoo prefix cache, batch_size=1", t_one),
        ("hierzoo fused + prefix cache (default)", t_fused),
    ]
    out = [
        {
            "family": family,
            "method": m,
            "questions": n,
            "seconds": t,
            "q_per_s": n / t,
            "speedup": t_gen / t,
        }
        for m, t in rows
    ]
    out[0]["unknown"] = unknown
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--family", default="all", choices=["all", *BUILDERS])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "vlm.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    families = list(BUILDERS) if args.family == "all" else [args.family]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        paths = make_images(root / "images", args.images)
        questions = read_questions("cub200-random")[: args.images]
        for q, p in zip(questions, paths):
            q.path = p
        for family in families:
            rows.extend(bench_family(family, root, questions, args.repeats))
    print(
        f"{args.images} CUB entries x 4 levels = {4 * args.images} questions, 500x375 JPEG, "
        f"tiny random models, {torch.get_num_threads()} torch thread(s), best of {args.repeats}"
    )
    print_table(rows, ["family", "method", "seconds", "q_per_s", "speedup"])
    for r in rows:
        if "unknown" in r:
            print(
                f"{r['family']}: the paper loop found no option letter ('Unknown') in "
                f"{r['unknown']:.0%} of the random model's answers; hierzoo always answers."
            )
    write_json(
        args.json,
        {
            "benchmark": "vlm",
            "images": args.images,
            "image_size": [500, 375],
            "questions": 4 * args.images,
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
