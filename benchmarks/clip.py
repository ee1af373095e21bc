"""CLIP scoring: the paper's per-question loop against hierzoo, same model and images.

The model is open_clip's ViT-B-32 architecture (the zoo's openclip-vit-b-32.laion2b) with random
weights, saved in the hub-snapshot layout and loaded through hierzoo.load like a download. The
questions are the CUB-200 similar-choice set; each question-set entry gets a synthetic
500x375 JPEG. The loop (as the paper's openclip.py): per question, decode and preprocess the
image, encode it, encode the four "a photo of a {}." prompts, cosine, argmax. It runs on
--loop-images entries and its per-question time is scaled to all questions (it is linear).

    python benchmarks/clip.py [--images 1000] [--loop-images 150] [--arch ViT-B-32] [--json FILE]
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
from hierzoo.bench import make_images
from hierzoo.tasks import read_questions


def paper_loop(model, preprocess, tokenizer, questions):
    choices = []
    with torch.no_grad():
        for q in questions:
            row = []
            for opts in q.choices:
                image = preprocess(Image.open(q.path).convert("RGB")).unsqueeze(0)
                img = model.encode_image(image)
                txt = model.encode_text(tokenizer([f"a photo of a {o}." for o in opts]))
                img = img / img.norm(dim=-1, keepdim=True)
                txt = txt / txt.norm(dim=-1, keepdim=True)
                row.append(int((100.0 * img @ txt.T).softmax(dim=-1).argmax()))
            choices.append(row)
    return np.array(choices)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--loop-images", type=int, default=150)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "hierzoo-bench"))
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "clip.json"))
    args = ap.parse_args()

    import open_clip

    from hierzoo.models.tiny_clip import build_tiny_openclip

    work = Path(args.work_dir)
    model_dir = work / f"openclip-{args.arch}-random"
    if not (model_dir / "open_clip_config.json").exists():
        build_tiny_openclip(model_dir, seed=0, model_cfg=open_clip.get_model_config(args.arch))
    paths = make_images(work / "jpeg-500x375", args.images)
    questions = read_questions("cub200-similar")[: args.images]
    for q, p in zip(questions, paths):
        q.path = p
    n_questions = sum(q.n_levels for q in questions)
    torch.set_num_threads(torch.get_num_threads())

    cache = Path(tempfile.mkdtemp(prefix="hierzoo-text-cache-"))
    runs = {}
    for run in ("cold", "warm"):  # cold: node texts encoded; warm: a second run, text cache on disk
        clf = hierzoo.load(
            str(model_dir), device=args.device, cache_dir=cache, num_workers=args.workers
        )
        clf.time_image_encoder = True
        if run == "cold":
            clf.encode_images(paths[:8])  # warm-up of the image path only
            clf.image_encoder_seconds = 0.0
        t0 = time.perf_counter()
        answers = clf.answer(questions, batch_size=args.batch_size)
        runs[run] = (time.perf_counter() - t0, clf.image_encoder_seconds, clf.texts_encoded)
    t_ours, enc_seconds, _ = runs["warm"]
    share = enc_seconds / t_ours

    model, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{model_dir}", device=args.device
    )
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    model.eval()
    m = args.loop_images or args.images
    paper_loop(model, preprocess, tokenizer, questions[:2])  # warm-up
    t0 = time.perf_counter()
    loop_choice = paper_loop(model, preprocess, tokenizer, questions[:m])
    t_loop_part = time.perf_counter() - t0
    q_part = sum(q.n_levels for q in questions[:m])
    t_loop = t_loop_part / q_part * n_questions
    agreement = float((loop_choice == answers.choice[:m]).mean())

    rows = [
        {
            "method": "paper per-question loop",
            "seconds": t_loop,
            "questions/s": n_questions / t_loop,
            "images/s": args.images / t_loop,
            "speedup": 1.0,
        },
        *[
            {
                "method": f"hierzoo answer(), {run} text cache ({texts} texts encoded)",
                "seconds": t,
                "questions/s": n_questions / t,
                "images/s": args.images / t,
                "speedup": t_loop / t,
                "image_encoder_share": enc / t,
            }
            for run, (t, enc, texts) in runs.items()
        ],
    ]
    print(
        f"{args.arch} (random weights), {args.images} images x 4 levels = {n_questions} questions, "
        f"{torch.get_num_threads()} threads; loop timed on {m} images and scaled"
    )
    print_table(
        rows, ["method", "seconds", "questions/s", "images/s", "speedup", "image_encoder_share"]
    )
    print(
        f"agreement with the loop on {m} images: {agreement:.4f}; "
        f"image-encoder share of hierzoo's wall time (warm): {share:.3f}"
    )
    write_json(
        args.json,
        {
            "benchmark": "clip",
            "arch": args.arch,
            "images": args.images,
            "questions": n_questions,
            "loop_images": m,
            "rows": rows,
            "agreement": agreement,
            "image_encoder_share": share,
            "batch_size": args.batch_size,
            "device": args.device,
        },
    )


if __name__ == "__main__":
    main()
