"""The paper's question protocol for vision LLMs, as functions over the bundled ``prompts.json``.

Pure Python (no torch, no transformers), so anything that writes or reads the paper's prompts
(the vision-LLM classifiers, an SFT exporter) builds exactly the same strings.

A user turn is the image (in image mode), then the text::

    {question}
    A. {option 1}
    B. {option 2}
    ...
    Answer with the option's letter from the given choices directly.

where ``{question}`` is the level's prompt of the chosen variant with ``{rank}`` (the rank name
of the level, for taxonomies that have ranks) and, in text mode, ``{label}`` (the leaf) filled in.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

MODES = ("image", "text")
N_VARIANTS = 5

GENERIC = {
    "noun": "subject",
    "ranks": None,
    "image_prompts": [
        "What is the category of the subject of this image?",
        "How can the subject of this image be categorized?",
        "Based on classification, what is the subject of this image?",
        "What is the hierarchical class of the subject shown here?",
        "Where does the subject of this image belong in the hierarchy?",
    ],
    "text_prompts": [
        "Given the {label}, what is its classification?",
        "Based on the hierarchy, where does {label} fall?",
        "What could {label} be classified as?",
        "How can {label} be categorized?",
        "What is the position of {label} in the classification hierarchy?",
    ],
}
"""Prompts for a taxonomy the paper did not use (``taxonomy=None``): the paper's ImageNet-style
wording without a noun or rank."""

_DEFAULT_VARIANT = {("inat21-animal", "qwen2.5-vl"): 1, ("inat21-animal", "internvl"): 1}


@lru_cache(maxsize=1)
def paper_prompts() -> dict[str, Any]:
    """The parsed ``hierzoo/data/prompts.json`` (shared; do not modify)."""
    text = resources.files("hierzoo.data").joinpath("prompts.json").read_text(encoding="utf-8")
    return json.loads(text)


def taxonomies() -> list[str]:
    """Names of the taxonomies with their own prompts in ``prompts.json`` (every bundled
    taxonomy): the paper's six (:func:`paper_taxonomies`) and hierzoo's own, whose entries say
    ``"source": "hierzoo"``."""
    return list(paper_prompts()["taxonomies"])


def paper_taxonomies() -> list[str]:
    """Names of the taxonomies whose prompts are the paper's (not marked as hierzoo's)."""
    table = paper_prompts()["taxonomies"]
    return [name for name, entry in table.items() if entry.get("source") != "hierzoo"]


def _entry(taxonomy: str | None) -> dict[str, Any]:
    if taxonomy is None:
        return GENERIC
    table = paper_prompts()["taxonomies"]
    if taxonomy not in table:
        raise ValueError(
            f"Expected `taxonomy` to be one of {list(table)} (prompts in prompts.json) or None "
            f"(generic prompts), but got {taxonomy!r}."
        )
    return table[taxonomy]


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"Expected `mode` to be one of {MODES}, but got {mode!r}.")


def _check_variant(variant: int) -> None:
    if not isinstance(variant, int) or not 0 <= variant < N_VARIANTS:
        raise ValueError(f"Expected `variant` in 0..{N_VARIANTS - 1}, but got {variant!r}.")


def system_message(mode: str = "image") -> str:
    """The system message of a mode: the expert instruction (image) or the plain assistant
    (text)."""
    _check_mode(mode)
    return paper_prompts()["system_image" if mode == "image" else "system_text"]


def instruction() -> str:
    """The closing line of every user turn."""
    return paper_prompts()["instruction"]


def letters(n: int) -> str:
    """The option letters of an ``n``-option question: ``"ABCD"`` for four, then on up to ``Z``."""
    if not 1 <= n <= len(string.ascii_uppercase):
        raise ValueError(
            f"Expected between 1 and 26 options, but got {n}; split the question into fewer "
            "options."
        )
    base = paper_prompts()["letters"]
    return (base + string.ascii_uppercase[len(base) :])[:n]


def ranks(taxonomy: str | None) -> list[str] | None:
    """The rank name of each level (``["order", "family", ...]``), or ``None``."""
    r = _entry(taxonomy)["ranks"]
    return list(r) if r is not None else None


def default_prompt_variant(taxonomy: str | None, family: str | None = None) -> int:
    """The variant the paper's run scripts use: 0, except 1 for iNat21-Animal with Qwen2.5-VL
    and InternVL (``family`` is a model family name such as ``"qwen2.5-vl"``)."""
    _entry(taxonomy)
    return _DEFAULT_VARIANT.get((taxonomy, family), 0)


def question_text(
    taxonomy: str | None,
    level: int,
    *,
    variant: int = 0,
    mode: str = "image",
    label: str | None = None,
) -> str:
    """The question of a level (0 = the top level) in one of the five variants.

    Raises:
        ValueError: an unknown taxonomy or mode, a variant outside 0..4, a level beyond the
            taxonomy's ranks, or text mode without ``label``.
    """
    _check_mode(mode)
    _check_variant(variant)
    entry = _entry(taxonomy)
    template = entry["image_prompts" if mode == "image" else "text_prompts"][variant]
    fields: dict[str, str] = {}
    if "{rank}" in template:
        names = entry["ranks"] or []
        if not 0 <= level < len(names):
            raise ValueError(
                f"Expected `level` in 0..{len(names) - 1} for the ranks {names} of {taxonomy!r}, "
                f"but got {level!r}; the question set has more levels than the taxonomy."
            )
        fields["rank"] = names[level]
    if "{label}" in template:
        if label is None:
            raise ValueError("Text mode names the leaf in the question: pass `label`.")
        fields["label"] = label
    return template.format(**fields)


def option_lines(options: Sequence[str]) -> list[str]:
    """``["A. name", "B. name", ...]`` in the order given."""
    line = paper_prompts()["option_line"]
    return [line.format(letter=c, name=o) for c, o in zip(letters(len(options)), options)]


def user_text(question: str, options: Sequence[str]) -> str:
    """The text of the user turn: question, one line per option, the closing instruction."""
    return "\n".join([question, *option_lines(options), instruction()])


def messages(user: str, *, mode: str = "image", system: str | None = None) -> list[dict[str, Any]]:
    """Chat messages in the transformers format: the system turn, then the user turn with the
    image first (image mode) and ``user`` as text."""
    _check_mode(mode)
    content: list[dict[str, Any]] = [{"type": "image"}] if mode == "image" else []
    content.append({"type": "text", "text": user})
    return [
        {"role": "system", "content": system_message(mode) if system is None else system},
        {"role": "user", "content": content},
    ]


def shuffled_orders(n_options: Sequence[Sequence[int | None]], seed: int) -> list[list[list[int]]]:
    """The option order of every question and level, drawn as the paper's scripts draw them.

    ``n_options[i][k]`` is the number of options of level ``k`` of question ``i``, or ``None``
    when that level is not asked. One ``random.Random(seed)`` runs through the questions in
    order and shuffles each asked level's options with ``shuffle``, visiting the levels in the
    order of their sorted ``levelK`` keys (``level1, level10, level11, level2, ...``), as the
    scripts do. Returns, per question and level, the original option indices in asked order
    (``[]`` for a level not asked).
    """
    rng = random.Random(seed)
    out: list[list[list[int]]] = []
    for counts in n_options:
        orders: list[list[int]] = [[] for _ in counts]
        for k in sorted(range(len(counts)), key=lambda j: f"level{j + 1}"):
            if counts[k] is None:
                continue
            order = list(range(counts[k]))
            rng.shuffle(order)
            orders[k] = order
        out.append(orders)
    return out


def asked_options(
    answers_and_choices: Sequence[tuple[Sequence[object], Sequence[Sequence[str]]]],
    mode: str = "image",
) -> list[list[int | None]]:
    """``n_options`` for :func:`shuffled_orders`: per question and level the number of options, or
    ``None`` where the level is not asked (no answer, or the leaf in text mode)."""
    _check_mode(mode)
    out = []
    for answers, choices in answers_and_choices:
        leaf = len(answers) - 1 if mode == "text" else None
        out.append(
            [None if a is None or k == leaf else len(choices[k]) for k, a in enumerate(answers)]
        )
    return out
