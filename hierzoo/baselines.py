"""The paper's per-question loops, as references for speed and agreement.

- CLIP (its ``openclip.py``): per question, decode and preprocess the image, encode it, encode
  the options' ``"a photo of a {}."`` prompts, cosine, argmax.
- Vision LLMs (its ``eval_*.py``): per question, the full chat prompt with the image through the
  processor, ``generate(max_new_tokens=10)``, the first option letter found in the text.

The questions asked, their options and their order are the requests of
:func:`hierzoo.prompts.plan_questions`, as for hierzoo's own answers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from hierzoo.tasks import Question


def clip_paper_loop(
    clf: Any, questions: Sequence[Question]
) -> tuple[float, list[list[str | None]]]:
    """Seconds and the chosen option's name per question and level (``None`` for a level not
    asked), with ``clf``'s own model (its ``transform``, ``encode_pixels`` and ``encode_texts``);
    the levels asked are :func:`hierzoo.prompts.plan_questions`'s, in the file's order."""
    from hierzoo import prompts

    plan = prompts.plan_questions(questions, prompts.Protocol())
    choices: list[list[str | None]] = [[None] * q.n_levels for q in questions]
    dev = clf.device
    start = time.perf_counter()
    for r in plan.requests:
        q = questions[r.sample]
        pixels = clf.transform(Image.open(q.path).convert("RGB"))[None].to(dev, clf.dtype)
        img = clf.encode_pixels(pixels).float()
        txt = clf.encode_texts([f"a photo of a {o}." for o in r.options]).float()
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        choices[r.sample][r.level] = r.options[int((100.0 * img @ txt.T).softmax(-1).argmax())]
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - start, choices


def vlm_forward_loop(
    clf: Any, questions: Sequence[Question], taxonomy: str | None = "cub200", seed: int = 42
) -> tuple[float, list[list[str | None]]]:
    """One full forward pass per question (no cache, no batching), the argmax of the letter
    logits at the last position: what hierzoo's fused path must equal."""
    return vlm_paper_loop(clf, questions, taxonomy, seed, max_new_tokens=0)


def vlm_paper_loop(
    clf: Any,
    questions: Sequence[Question],
    taxonomy: str | None = "cub200",
    seed: int = 42,
    max_new_tokens: int = 10,
) -> tuple[float, list[list[str | None]]]:
    """Seconds and the chosen option's name (``None``: no letter in the reply, or a level not
    asked) per question and level: the requests of :func:`hierzoo.prompts.plan_questions` (the
    options shuffled as the paper's scripts shuffle them), asked one at a time."""
    from hierzoo import prompts

    processor, net = clf.processor, clf.model
    protocol = prompts.Protocol(taxonomy=taxonomy, shuffle_options=True, seed=seed)
    plan = prompts.plan_questions(questions, protocol, family=clf.family)
    choices: list[list[str | None]] = [[None] * q.n_levels for q in questions]
    start = time.perf_counter()
    with torch.inference_mode():
        for i, q in enumerate(questions):
            image = Image.open(q.path).convert("RGB")
            for r in (plan.requests[j] for j in plan.by_sample[i]):
                system, user = r.messages()
                # the system message as a list of text parts, which every chat template renders
                # as the text (the -ov-hf LLaVA-OneVision one renders a plain string as nothing)
                system = {**system, "content": [{"type": "text", "text": system["content"]}]}
                text = processor.apply_chat_template(
                    [system, user], tokenize=False, add_generation_prompt=True
                )
                inputs = processor(
                    text=[text], images=[image], padding=True, return_tensors="pt"
                ).to(net.device)
                if max_new_tokens == 0:
                    letter_ids = clf.letter_token_ids(len(r.options))
                    logits = net(**inputs).logits[0, -1, letter_ids]
                    choices[i][r.level] = r.options[int(logits.argmax())]
                    continue
                out = net.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=processor.tokenizer.pad_token_id,
                )
                reply = processor.batch_decode(
                    out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
                )[0]
                letter = next((c for c in r.letters if c in reply), None)
                choices[i][r.level] = r.options[r.letters.index(letter)] if letter else None
    if net.device.type == "cuda":
        torch.cuda.synchronize(net.device)
    return time.perf_counter() - start, choices
