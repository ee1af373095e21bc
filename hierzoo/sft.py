"""Question sets as supervised fine-tuning data, in the conversation formats trainers read.

One training conversation per asked level of each question-set entry: the paper's system
message, the user turn (the image, then the level's question, the lettered options and the
closing instruction) and the assistant turn, the right option's letter. The conversations are
the requests of :func:`hierzoo.prompts.plan_questions`, the planner ``hierzoo eval`` asks from,
so they equal what a model is asked: the same strings, and the options shuffled by the paper's
seeded generator run through the whole set (the same seed gives the same orders as an
evaluation of the same file).

Formats (``FORMATS``); every record also has an ``id``, ``"{entry}-level{k}"``:

- ``qwen``: ``{"messages": [system, user, assistant]}`` in the transformers chat layout, the
  user content a list ``[{"type": "image", "image": PATH}, {"type": "text", "text": TEXT}]``
  and the assistant content the letter. ``apply_chat_template`` renders the first two turns as
  the evaluation prompt; Qwen-VL's ``process_vision_info`` reads the image from them.
- ``llava``: ``{"image": PATH, "conversations": [{"from": "human", "value": "<image>\\nTEXT"},
  {"from": "gpt", "value": LETTER}]}``, LLaVA's layout (LLaVA / LLaVA-OneVision training code,
  Qwen2-VL / Qwen2.5-VL fine-tuning repositories). No system turn: those trainers apply their
  own conversation template.
- ``sharegpt``: ``{"conversations": [...], "system": SYSTEM, "images": [PATH]}`` with
  ``"<image>TEXT"`` as the human turn: LLaMA-Factory's ShareGPT layout (``formatting:
  sharegpt`` with the ``system`` and ``images`` columns).

Text mode (``mode="text"``): no image; the question names the leaf and the leaf level is not
asked, as in the paper's text runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hierzoo import prompts
from hierzoo._io import atomic_write
from hierzoo.tasks import Question, QuestionError

__all__ = ["FORMATS", "MISSING_IMAGES", "SFTExport", "export_sft", "sft_records", "write_sft"]

FORMATS = ("qwen", "llava", "sharegpt")
MISSING_IMAGES = ("recorded", "error", "skip")
IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class SFTExport:
    """What :func:`export_sft` wrote.

    Attributes:
        path: the file written.
        format: one of :data:`FORMATS`.
        mode: ``"image"`` or ``"text"``.
        n_entries: question-set entries exported.
        n_conversations: conversations written (one per asked level).
        n_skipped: entries left out because their image was not found (``missing_images="skip"``).
        prompt_variant: the question wording used (0-4).
        seed: the seed of the option order, ``None`` when the file's order was kept.
    """

    path: Path
    format: str
    mode: str
    n_entries: int
    n_conversations: int
    n_skipped: int
    prompt_variant: int
    seed: int | None


def _check(format: str, missing_images: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"Expected `format` to be one of {FORMATS}, but got {format!r}.")
    if missing_images not in MISSING_IMAGES:
        raise ValueError(
            f"Expected `missing_images` to be one of {MISSING_IMAGES}, but got {missing_images!r}."
        )


def _image(q: Question, missing_images: str) -> str | None:
    """The image path to write: the resolved local path, else the recorded one (``recorded``),
    else ``None`` (``skip``; ``error`` is checked before)."""
    if q.path is not None:
        return str(q.path)
    return q.image if missing_images == "recorded" else None


def _check_images(questions: Sequence[Question]) -> None:
    missing = [q for q in questions if q.path is None]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(questions)} images were not found (the first: "
            f"{missing[0].image!r}); "
            "check the image root (image_root= / --image-root), or leave such entries out "
            "(missing_images='skip' / --skip-missing)."
        )


def sft_records(
    questions: Sequence[Question],
    *,
    format: str = "qwen",
    mode: str = "image",
    taxonomy: str | None = None,
    prompt_variant: int | None = None,
    family: str | None = None,
    shuffle_options: bool = True,
    seed: int = 42,
    first_level: int = 0,
    missing_images: str = "recorded",
) -> list[dict[str, Any]]:
    """One training conversation per asked level of each entry (see the module docstring).

    Args:
        questions: the question set (``hierzoo.tasks.read_questions``; with ``image_root`` each
            entry's resolved ``path`` is what the conversations name).
        format: ``qwen``, ``llava`` or ``sharegpt``.
        mode: ``image``, or ``text`` (no image; the question names the leaf; the leaf level is
            not asked).
        taxonomy: the bundled taxonomy of the questions (its rank names and noun in the
            questions), or ``None`` for the generic wording, as :class:`hierzoo.models.Protocol`.
        prompt_variant: the paper's question wording 0-4; default the paper's for the taxonomy
            and ``family`` (a model family such as ``"qwen2.5-vl"``; 0 without one).
        shuffle_options: shuffle each level's options with ``random.Random(seed)`` run through
            the whole set as the paper's scripts and ``hierzoo eval`` do; ``False`` keeps the
            file's order.
        seed: the seed of that generator (42, as the paper).
        first_level: the taxonomy level of the questions' first level (for ``{rank}``).
        missing_images: an entry whose image was not resolved: write its ``recorded`` path,
            raise (``error``), or leave the entry out (``skip``). Text mode names no image.

    Each record has an ``id``, ``"{position}-level{k}"`` (the entry's position in
    ``questions`` and the 1-based level).

    Raises:
        QuestionError: a level whose answer is not among its options.
        FileNotFoundError: an unresolved image with ``missing_images="error"``.
        ValueError: a bad format, mode, variant or taxonomy.
    """
    records, _ = _records(
        questions,
        format=format,
        mode=mode,
        taxonomy=taxonomy,
        prompt_variant=prompt_variant,
        family=family,
        shuffle_options=shuffle_options,
        seed=seed,
        first_level=first_level,
        missing_images=missing_images,
    )
    return records


def _records(
    questions: Sequence[Question],
    *,
    format: str,
    mode: str,
    taxonomy: str | None,
    prompt_variant: int | None,
    family: str | None,
    shuffle_options: bool,
    seed: int,
    first_level: int,
    missing_images: str,
) -> tuple[list[dict[str, Any]], prompts.QuestionPlan]:
    """The records of :func:`sft_records`, and the plan they come from."""
    _check(format, missing_images)
    protocol = prompts.Protocol(
        taxonomy=taxonomy,
        prompt_variant=prompt_variant,
        shuffle_options=shuffle_options,
        seed=seed,
        mode=mode,
        first_level=first_level,
    )
    if mode == "image" and missing_images == "error":
        _check_images(questions)
    plan = prompts.plan_questions(questions, protocol, family=family)
    out: list[dict[str, Any]] = []
    for r in plan.requests:
        image = _image(questions[r.sample], missing_images) if mode == "image" else None
        if mode == "image" and image is None:
            continue
        ident = f"{r.sample}-level{r.level + 1}"
        out.append(_record(format, ident, r, image))
    return out, plan


def _record(format: str, ident: str, r: prompts.Request, image: str | None) -> dict[str, Any]:
    """One request as a conversation in ``format``, answered by its right letter."""
    user, letter = r.text, r.answer_letter
    if format == "qwen":
        messages = r.messages()
        if image is not None:
            messages[1]["content"][0]["image"] = image
        messages.append({"role": "assistant", "content": letter})
        return {"id": ident, "messages": messages}
    if format == "llava":
        row: dict[str, Any] = {"id": ident}
        if image is not None:
            row["image"] = image
        human = f"{IMAGE_TOKEN}\n{user}" if image is not None else user
        row["conversations"] = [{"from": "human", "value": human}, {"from": "gpt", "value": letter}]
        return row
    human = f"{IMAGE_TOKEN}{user}" if image is not None else user
    row = {
        "id": ident,
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": letter}],
        "system": r.system,
    }
    if image is not None:
        row["images"] = [image]
    return row


def _check_suffix(path: Path) -> None:
    if path.suffix not in (".json", ".jsonl"):
        raise ValueError(
            "Expected an output file ending in .json (a JSON list) or .jsonl (JSON Lines), but "
            f"got {str(path)!r}."
        )


def write_sft(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write records as a JSON list (``.json``, one record per line) or JSON Lines (``.jsonl``),
    atomically; returns the path."""
    path = Path(path)
    _check_suffix(path)
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    if path.suffix == ".json":
        text = "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"
    else:
        text = "".join(line + "\n" for line in lines)
    return atomic_write(path, text)


def export_sft(
    questions: Sequence[Question],
    out: str | Path,
    *,
    format: str = "qwen",
    mode: str = "image",
    taxonomy: str | None = None,
    prompt_variant: int | None = None,
    family: str | None = None,
    shuffle_options: bool = True,
    seed: int = 42,
    first_level: int = 0,
    missing_images: str = "recorded",
) -> SFTExport:
    """Write :func:`sft_records` to ``out`` (``.json`` or ``.jsonl``) and say what was written.

    Raises:
        QuestionError: an empty question set, or a level whose answer is not among its options.
    """
    if not questions:
        raise QuestionError("The question set is empty; nothing to export.")
    _check_suffix(Path(out))
    records, plan = _records(
        questions,
        format=format,
        mode=mode,
        taxonomy=taxonomy,
        prompt_variant=prompt_variant,
        family=family,
        shuffle_options=shuffle_options,
        seed=seed,
        first_level=first_level,
        missing_images=missing_images,
    )
    skipped = (
        sum(q.path is None for q in questions)
        if mode == "image" and missing_images == "skip"
        else 0
    )
    path = write_sft(records, out)
    return SFTExport(
        path=path,
        format=format,
        mode=mode,
        n_entries=len(questions) - skipped,
        n_conversations=len(records),
        n_skipped=skipped,
        prompt_variant=plan.prompt_variant,
        seed=seed if shuffle_options else None,
    )
