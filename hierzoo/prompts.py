"""The paper's question protocol, as functions over the bundled ``prompts.json``, and the one
planner that turns a question set and a :class:`Protocol` into the exact requests a model is
asked (:func:`plan_questions`).

Pure Python (no torch, no transformers). Everything that asks or writes the paper's questions
consumes the planner: the vision-LLM classifiers, the SFT exporter (:mod:`hierzoo.sft`), the
evaluation's seeded option order and the paper's per-question loops (:mod:`hierzoo.baselines`),
so what a model is asked and what a fine-tuning set teaches are the same by construction.

A user turn is the image (in image mode), then the text::

    {question}
    A. {option 1}
    B. {option 2}
    ...
    Answer with the option's letter from the given choices directly.

where ``{question}`` is the level's prompt of the chosen variant with ``{rank}`` (the rank name
of the level, for taxonomies that have ranks) and, in text mode, ``{label}`` (the leaf) filled in.

Wording: a bundled taxonomy's name (or a :class:`~hierzoo.taxonomy.Taxonomy` of that name) takes
the paper's prompts for it; another ``Taxonomy`` with rank names takes :data:`GENERIC_RANKED`
with its ranks; ``None`` (or a taxonomy without ranks) takes :data:`GENERIC`.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from hierzoo.tasks import Question
    from hierzoo.taxonomy import Taxonomy

MODES = ("image", "text")
N_VARIANTS = 5
ANSWERS = ("logits", "generate")
"""How a vision LLM's answer is read: the option letters' logits at the answer position
(``logits``), or a greedy reply parsed by the paper's rule (``generate``)."""
PROTOCOLS = ("paper", "cot", "bio-cot", "taxonomy-context", "binary", "open")
"""Named ways of asking (``--protocol NAME``, :attr:`Protocol.name`): ``paper`` (the paper's
four-choice questions), its prompting experiments ``cot`` (chain of thought), ``bio-cot`` (the
taxonomy-reasoning system prompt), ``taxonomy-context`` (the whole taxonomy in the prompt) and
``binary`` (a yes/no statement per option), and ``open`` (no options: the model names the node).
A family answers under the names in its ``protocols`` and refuses the others by name."""
PARSES = ("paper", "last-letter")
"""How a generated reply is read (``--parse``, :attr:`Protocol.parse`): ``paper`` (the first
option letter found anywhere, :func:`parse_paper_answer`) or ``last-letter`` (the last option
letter standing alone, :func:`parse_last_letter`: the final answer of a reasoned reply)."""
UNKNOWN = "Unknown"
"""What the paper records as the prediction when no option letter is found in a reply."""

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

GENERIC_RANKED = {
    "noun": "subject",
    "ranks": None,
    "image_prompts": [
        "Based on taxonomy, what is the {rank} of the subject of this image?",
        "Based on the image, what is the classification at the {rank} level?",
        *GENERIC["image_prompts"][2:],
    ],
    "text_prompts": [
        "Based on taxonomy, where does {label} fall in terms of {rank}?",
        "Given the {label}, what is its classification at the {rank} level?",
        *GENERIC["text_prompts"][2:],
    ],
}
"""Prompts for a user's :class:`~hierzoo.taxonomy.Taxonomy` with rank names: variants 0 and 1
name the level's rank (as the paper's ranked taxonomies do), 2-4 are :data:`GENERIC`'s; the
ranks are the taxonomy's."""


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


def _entry(taxonomy: str | Taxonomy | None) -> dict[str, Any]:
    """The wording of a taxonomy (see the module docstring)."""
    if taxonomy is None:
        return GENERIC
    table = paper_prompts()["taxonomies"]
    if isinstance(taxonomy, str):
        if taxonomy not in table:
            raise ValueError(
                f"Expected `taxonomy` to be one of {list(table)} (prompts in prompts.json), a "
                f"Taxonomy, or None (generic prompts), but got {taxonomy!r}."
            )
        return table[taxonomy]
    key = _paper_key(taxonomy)
    if key is not None:
        return table[key]
    ranks = getattr(taxonomy, "ranks", None)
    return {**GENERIC_RANKED, "ranks": list(ranks)} if ranks else GENERIC


def _paper_key(taxonomy: str | Taxonomy | None) -> str | None:
    """The name of the paper's prompts a taxonomy uses: a bundled name, or a ``Taxonomy`` of
    that name whose levels the paper's ranks cover; else ``None``."""
    if taxonomy is None or isinstance(taxonomy, str):
        return taxonomy
    name = getattr(taxonomy, "name", None)
    entry = paper_prompts()["taxonomies"].get(name)
    if entry is None or (entry["ranks"] is not None and len(entry["ranks"]) < taxonomy.depth):
        return None
    return name


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"Expected `mode` to be one of {MODES}, but got {mode!r}.")


def _check_variant(variant: int) -> None:
    if not isinstance(variant, int) or not 0 <= variant < N_VARIANTS:
        raise ValueError(f"Expected `variant` in 0..{N_VARIANTS - 1}, but got {variant!r}.")


def system_message(mode: str = "image", family: str | None = None) -> str:
    """The system message of a mode: the expert instruction (image) or the plain assistant
    (text); ``family`` (a model family such as ``"internvl"``) takes the one the paper's scripts
    send that family where it differs (InternVL: its built-in message in both modes; see
    ``families`` in ``prompts.json``)."""
    _check_mode(mode)
    key = "system_image" if mode == "image" else "system_text"
    return _family_rules(family).get(key, paper_prompts()[key])


def _family_rules(family: str | None) -> dict[str, Any]:
    """The ``families`` entry of ``prompts.json`` for a family (empty when it has none)."""
    if family is None:
        return {}
    entry = paper_prompts()["families"].get(family)
    return entry if isinstance(entry, dict) else {}


def lowercase_label(mode: str, family: str | None = None) -> bool:
    """Whether the paper's scripts lower-case the leaf name a question names in ``mode`` for a
    family (LLaVA-OneVision's text runs do)."""
    _check_mode(mode)
    return mode in _family_rules(family).get("lowercase_label", ())


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


def ranks(taxonomy: str | Taxonomy | None) -> list[str] | None:
    """The rank name of each level (``["order", "family", ...]``), or ``None``."""
    r = _entry(taxonomy)["ranks"]
    return list(r) if r is not None else None


def default_prompt_variant(
    taxonomy: str | Taxonomy | None,
    family: str | None = None,
    *,
    model: str | None = None,
    mode: str = "image",
) -> int:
    """The variant the paper's run scripts use for a taxonomy, model and mode.

    Looked up in ``default_variants`` of ``prompts.json``: the model's own entry (``model``, a
    zoo name such as ``"qwen2.5-vl-7b"``: the 7B asks iNat21-Plant in variant 1 where the 32B
    and 72B ask variant 0), else the family's (``family``, such as ``"qwen2.5-vl"``: 1 for
    iNat21-Animal in image mode), else the mode's (text mode: 1 for CUB-200 and both iNat21
    taxonomies, 2 for both ImageNet ones), else 0. A taxonomy the paper did not use gets 0.
    """
    _entry(taxonomy)
    _check_mode(mode)
    key = _paper_key(taxonomy)
    if key is None:
        return 0
    table = paper_prompts()["default_variants"]
    entry = table["models"][mode].get(model or "", {}).get("taxonomies", {}).get(key)
    if entry is not None:
        return int(entry["variant"])
    by_family = table["families"][mode].get(family or "", {})
    if key in by_family:
        return int(by_family[key])
    return int(table["modes"][mode].get(key, 0))


def max_new_tokens(
    family: str | None, taxonomy: str | Taxonomy | None = None, mode: str = "image"
) -> int:
    """The most tokens a generated answer may have (``Protocol(answer="generate")``), as the
    paper's scripts set ``max_new_tokens``: 10 for Qwen2.5-VL and LLaVA-OneVision image runs, 5
    for Qwen2.5-VL on both iNat21 taxonomies, for InternVL and for every text run (the table
    ``max_new_tokens`` of ``prompts.json``). A family or taxonomy the table does not list takes
    its ``default`` (image 10, text 5)."""
    _check_mode(mode)
    table = paper_prompts()["max_new_tokens"]
    entry = table["families"].get(family, {}).get(mode, table["default"][mode])
    if isinstance(entry, int):
        return entry
    return entry.get(_paper_key(taxonomy) or "", entry["default"])


def protocol_table(name: str) -> dict[str, Any]:
    """What the named protocol ``name`` changes in the paper's questions (the ``protocols``
    table of ``prompts.json``; ``{}`` for ``paper``, ``binary`` and ``open``)."""
    if name not in PROTOCOLS:
        raise ValueError(f"Expected a protocol name in {PROTOCOLS}, but got {name!r}.")
    return paper_prompts()["protocols"].get(name, {})


def cot_suffix(family: str | None) -> str:
    """The chain-of-thought text the ``cot`` protocol puts before the instruction: the paper's
    ``"Let’s think step by step. "`` with U+2019 for the Qwen-VL families (its Qwen scripts),
    with an ASCII apostrophe for every other family (its LLaVA and InternVL scripts)."""
    table = protocol_table("cot")["suffix"]
    return table.get(family or "", table["default"])


def bio_cot_taxonomies() -> list[str]:
    """The taxonomies the paper wrote a ``bio-cot`` system message for (iNat21 animal, plant)."""
    return list(protocol_table("bio-cot")["system"])


def bio_cot_system(taxonomy: str | Taxonomy | None) -> str:
    """The ``bio-cot`` system message of a taxonomy: the paper's taxonomy-reasoning instruction
    with its worked example (a moth for iNat21-Animal, an evening primrose for iNat21-Plant).

    Raises:
        ValueError: a taxonomy the paper has no such message for, naming those it has.
    """
    table = protocol_table("bio-cot")["system"]
    key = _paper_key(taxonomy)
    if key not in table:
        name = taxonomy if taxonomy is None or isinstance(taxonomy, str) else taxonomy.name
        raise ValueError(
            f"--protocol bio-cot has the paper's worked example for {list(table)} only, not for "
            f"the taxonomy {name!r}; pass --taxonomy {' or '.join(table)} (a question set of "
            "one of them), or use another protocol."
        )
    return table[key]


def taxonomy_context(taxonomy: str | Taxonomy) -> str:
    """The whole taxonomy as the paper's ``taxonomy-context`` scripts write it into the prompt:
    Python's ``str`` of the leaf -> path dict (``{'Black-footed Albatross': ['Procellariiformes',
    ...], ...}``), read from the bundled taxonomy's JSON file as the scripts read theirs
    (``str(json.load(open(...)))``); a user's :class:`~hierzoo.taxonomy.Taxonomy` gives its own
    leaf -> path dict, leaves in its order.

    Raises:
        ValueError: a name that is not a bundled taxonomy.
    """
    from hierzoo.taxonomy import BUNDLED

    name = taxonomy if isinstance(taxonomy, str) else taxonomy.name
    if name in BUNDLED and (isinstance(taxonomy, str) or _paper_key(taxonomy) == name):
        path = resources.files("hierzoo.data").joinpath("taxonomies", BUNDLED[name].file)
        return str(json.loads(path.read_text(encoding="utf-8")))
    if isinstance(taxonomy, str):
        raise ValueError(
            f"--protocol taxonomy-context writes the taxonomy into the prompt: expected a bundled "
            f"taxonomy ({list(BUNDLED)}) or a Taxonomy, but got {taxonomy!r}."
        )
    return str(taxonomy.to_paths())


class Framing(NamedTuple):
    """What a named protocol changes in the chat around the user text: its own ``system``
    message (``None``: the mode's), and ``preamble``, text at the start of the user turn before
    the image (``None``: none)."""

    system: str | None = None
    preamble: str | None = None


def context_placement(family: str | None) -> str:
    """Where ``taxonomy-context`` puts the taxonomy for a model family, as the paper's scripts
    place it: ``"system"`` (appended to the system message, Qwen-VL) or ``"before-image"`` (the
    start of the user turn, InternVL).

    Raises:
        ValueError: a family the paper's scripts do not place it for, naming those they do.
    """
    table = protocol_table("taxonomy-context")["placement"]
    if family not in table:
        raise ValueError(
            f"--protocol taxonomy-context places the taxonomy as the paper's scripts do for "
            f"{list(table)}; the {family!r} family has no such placement (the paper's LLaVA "
            "script puts it before the image in a conversation template that is not public). "
            "Use one of those families, or another protocol."
        )
    return table[family]


def protocol_framing(protocol: Protocol, family: str | None = None) -> Framing | None:
    """The chat framing a named protocol puts in place of the paper's (see :class:`Framing`):
    ``bio-cot``'s system message, ``taxonomy-context``'s taxonomy (in the system message or
    before the image, by :func:`context_placement`), ``binary``'s system message and, in image
    mode, ``open``'s; ``None`` where the protocol keeps the paper's.

    Raises:
        ValueError: a taxonomy or family the protocol has no prompt for.
    """
    if protocol.name == "bio-cot":
        return Framing(system=bio_cot_system(protocol.taxonomy))
    if protocol.name == "taxonomy-context":
        table = protocol_table("taxonomy-context")
        context = table["prefix"] + taxonomy_context(protocol.taxonomy)
        if context_placement(family) == "system":
            return Framing(system=table["system"] + context)
        return Framing(preamble=context)
    if protocol.name == "binary":
        return Framing(system=binary_system_message())
    if protocol.name == "open" and protocol.mode == "image":
        return Framing(system=open_system_message("image"))
    return None


def question_text(
    taxonomy: str | Taxonomy | None,
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
            name = taxonomy if isinstance(taxonomy, str) else getattr(taxonomy, "name", None)
            raise ValueError(
                f"Expected `level` in 0..{len(names) - 1} for the ranks {names} of {name!r}, "
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


def messages(
    user: str, *, mode: str = "image", system: str | None = None, preamble: str | None = None
) -> list[dict[str, Any]]:
    """Chat messages in the transformers format: the system turn, then the user turn with the
    image first (image mode) and ``user`` as text; ``preamble``: text before the image."""
    _check_mode(mode)
    content: list[dict[str, Any]] = [{"type": "text", "text": preamble}] if preamble else []
    content += [{"type": "image"}] if mode == "image" else []
    content.append({"type": "text", "text": user})
    return [
        {"role": "system", "content": system_message(mode) if system is None else system},
        {"role": "user", "content": content},
    ]


def shuffled_orders(n_options: Sequence[Sequence[int | None]], seed: int) -> list[list[list[int]]]:
    """The option order of every question and level, drawn as the paper's scripts draw them.

    ``n_options[i][k]`` is the number of options of level ``k`` of question ``i``, or ``None``
    when that level is not asked. One ``random.Random(seed)`` runs through the questions in
    order and shuffles each asked level's options with ``shuffle``, visiting the levels in
    numeric order of their ``levelK`` keys (``level2`` before ``level10``), as the paper's
    scripts for the taxonomies with ten or more levels do (its ImageNet scripts sort the keys
    with ``key=lambda x: int(x[5:])``; the others sort them as strings, which gives the same
    order up to nine levels). Returns, per question and level, the original option indices in
    asked order (``[]`` for a level not asked).
    """
    rng = random.Random(seed)
    out: list[list[list[int]]] = []
    for counts in n_options:
        orders: list[list[int]] = [[] for _ in counts]
        for k in range(len(counts)):
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


# --------------------------------------------------------------------------- the protocol
def check_template(template: str) -> str:
    """A CLIP prompt template: ``{}`` once for the name, and optionally ``{rank}`` once.

    Raises:
        ValueError: any other placeholder, a second ``{}``, or an unmatched brace.
    """
    form = "'{}' once for the name, and optionally '{rank}' (e.g. 'a photo of the {rank} {}.')"
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"template {template!r} is not valid ({e}); expected {form}") from None
    unknown = sorted(set(fields) - {"", "rank"})
    if unknown:
        found = ", ".join("{" + f + "}" for f in unknown)
        raise ValueError(f"template {template!r} has the placeholder {found}; expected {form}")
    if fields.count("") != 1 or fields.count("rank") > 1:
        raise ValueError(
            f"template {template!r} has {fields.count('')} '{{}}' and {fields.count('rank')} "
            f"'{{rank}}'; expected {form}"
        )
    return template


def parse_paper_answer(reply: str, letters: str) -> str | None:
    """The paper's answer rule: the first option letter, tried in the order A, B, C, ..., that
    occurs anywhere in the reply (a case-sensitive substring test), else ``None`` (recorded as
    :data:`UNKNOWN`).

    Kept exactly, quirks included: ``"Answer: C"`` parses as ``A`` (the ``A`` of ``Answer``),
    ``"D. Anatidae"`` as ``A``, ``"c"`` as ``None``.
    """
    return next((letter for letter in letters if letter in reply), None)


_LONE_LETTER = re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])")


def parse_last_letter(reply: str, letters: str) -> str | None:
    """The last option letter the reply states: the last of ``letters`` that stands alone (no
    letter or digit right before or after it), else ``None``.

    For replies that reason before answering (``--protocol cot`` with a real token budget):
    ``"Answer: C"`` parses as ``C``, ``"...so the answer is **B**."`` as ``B``, ``"Both A and
    D fit, but D"`` as ``D``; ``"A bird of prey"`` still states ``A`` (a capital ``A`` alone is
    read as the letter), and ``"c"`` is ``None``.
    """
    found = [m for m in _LONE_LETTER.findall(reply) if m in letters]
    return found[-1] if found else None


def parse_answer(reply: str, letters: str, parse: str = "paper") -> str | None:
    """The option letter of a generated reply by the rule ``parse`` (one of :data:`PARSES`)."""
    if parse == "paper":
        return parse_paper_answer(reply, letters)
    if parse == "last-letter":
        return parse_last_letter(reply, letters)
    raise ValueError(f"Expected `parse` to be one of {PARSES}, but got {parse!r}.")


def parse_yes_no(reply: str) -> int:
    """The paper's yes/no rule (its binary statements): ``1`` when the reply, stripped and
    lower-cased, starts with ``y``, ``0`` when it starts with ``n``, else ``-1``."""
    text = reply.strip().lower()
    return 1 if text.startswith("y") else 0 if text.startswith("n") else -1


BINARY_ANSWERS = ("Yes", "No")
"""The answers of a yes/no statement (``--protocol binary``), in the order its logits are kept:
with ``answer="logits"`` a statement is answered yes when ``Yes``'s first token has the higher
logit of the two at the answer position."""


def binary_system_message() -> str:
    """The system message of the paper's yes/no statements (``--protocol binary``)."""
    return paper_prompts()["binary"]["system"]


def binary_statement(taxonomy: str | Taxonomy | None, level: int, option: str) -> str:
    """The yes/no statement of one option of a level (0 = the top level):
    ``"The bird in the image belongs to the order Passeriformes."`` for CUB-200, as the paper's
    ``eval_CUB_binary.py`` writes it. Other taxonomies put their own noun (``animal``,
    ``plant``, ``subject`` for generic prompts) and rank names in the same sentence; a taxonomy
    without rank names says ``"belongs to the category {option}"``.

    Raises:
        ValueError: an unknown taxonomy, or a level beyond its ranks.
    """
    entry, binary = _entry(taxonomy), paper_prompts()["binary"]
    names = entry["ranks"]
    if names is None:
        return binary["statement_unranked"].format(noun=entry["noun"], option=option)
    if not 0 <= level < len(names):
        name = taxonomy if isinstance(taxonomy, str) else getattr(taxonomy, "name", None)
        raise ValueError(
            f"Expected `level` in 0..{len(names) - 1} for the ranks {names} of {name!r}, but got "
            f"{level!r}; the question set has more levels than the taxonomy."
        )
    return binary["statement"].format(noun=entry["noun"], rank=names[level], option=option)


def binary_text(statement: str) -> str:
    """The user text of a yes/no statement: the statement, a newline, the paper's question."""
    return statement + "\n" + paper_prompts()["binary"]["question"]


def open_system_message(mode: str = "image") -> str:
    """The system message of open-ended questions (``--protocol open``): hierzoo's naming
    instruction in image mode, the paper's plain assistant in text mode."""
    _check_mode(mode)
    return paper_prompts()["open"]["system_image"] if mode == "image" else system_message(mode)


def open_text(question: str) -> str:
    """The user text of an open-ended question: the level's question, a newline, and
    ``"Answer with the name only."`` (no options)."""
    return question + "\n" + paper_prompts()["open"]["instruction"]


@dataclass(frozen=True)
class Protocol:
    """How questions are asked. Fields a family does not use must keep their defaults.

    Attributes:
        taxonomy: the taxonomy the questions come from: a bundled name (the paper's prompts: its
            noun and rank names), a :class:`~hierzoo.taxonomy.Taxonomy` (the paper's prompts
            when it is a bundled one; else generic prompts naming its ranks, and its ranks in
            rank-aware CLIP templates), or ``None`` (generic prompts).
        prompt_variant: which of the paper's five prompt variants (0-4); ``None``: the paper's
            default for the taxonomy and model.
        shuffle_options: ask the options in an order shuffled by a generator seeded with ``seed``
            (the paper's vision-LLM scripts); ``False`` keeps the file's order (its CLIP runs).
        seed: the seed of that generator.
        circular: ask each question once per rotation of its options; right only if every
            rotation is (vision LLMs).
        mode: ``"image"``, or ``"text"``: no image, the question names the leaf, the leaf level is
            not asked (vision LLMs).
        templates: CLIP prompt templates with ``{}`` for the name (and optionally ``{rank}``);
            ``None`` uses the model's default (the paper's ``"a photo of a {}."``).
        first_level: the taxonomy level of the questions' first level (0: the top level), so
            that ``{rank}`` names the right rank for question sets that start lower.
        answer: ``"logits"`` (the option letters' logits at the answer position) or
            ``"generate"`` (a greedy reply parsed by :func:`parse_paper_answer`, as the paper's
            scripts answer); see :data:`ANSWERS`.
        max_new_tokens: with ``answer="generate"``, the most tokens a reply may have; ``None``:
            the paper's for the family, taxonomy and mode (:func:`max_new_tokens`).
        name: the way of asking, one of :data:`PROTOCOLS` (``"paper"``: the paper's four-choice
            questions). ``cot`` generates (``answer="generate"``); ``bio-cot`` asks iNat21
            images only (:func:`bio_cot_taxonomies`); see ``docs/protocols.md``.
        parse: how a generated reply is read, one of :data:`PARSES`: ``"paper"`` (the paper's
            rule) or ``"last-letter"`` (the last option letter stated; generated answers only).
    """

    taxonomy: str | Taxonomy | None = None
    prompt_variant: int | None = None
    shuffle_options: bool = False
    seed: int = 42
    circular: bool = False
    mode: str = "image"
    templates: tuple[str, ...] | None = None
    first_level: int = 0
    answer: str = "logits"
    max_new_tokens: int | None = None
    name: str = "paper"
    parse: str = "paper"

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ValueError(
                f"Expected `name` (--protocol) to be one of {PROTOCOLS}, but got {self.name!r}."
            )
        if self.answer not in ANSWERS:
            raise ValueError(f"Expected `answer` to be one of {ANSWERS}, but got {self.answer!r}.")
        self._check_named()
        if self.max_new_tokens is not None:
            n = self.max_new_tokens
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"Expected `max_new_tokens` to be an integer >= 1, but got {n!r}.")
            if self.answer != "generate":
                raise ValueError(
                    f"`max_new_tokens` ({self.max_new_tokens}) limits generated replies: set "
                    "answer='generate' (--answer generate), or leave it None."
                )
        if self.first_level < 0:
            raise ValueError(f"Expected `first_level` >= 0, but got {self.first_level!r}.")
        if self.name == "binary" and self.mode != "image":
            raise ValueError(
                "--protocol binary states what the image shows ('The bird in the image belongs "
                "to ...'); it has no text mode: use --mode image, or another protocol with "
                "--mode text."
            )
        if self.name == "binary" and self.circular:
            raise ValueError(
                "--protocol binary asks one statement per option, so there is no option order "
                "to rotate: drop --circular."
            )
        if self.mode not in MODES:
            raise ValueError(f"Expected `mode` to be one of {MODES}, but got {self.mode!r}.")
        if self.prompt_variant is not None and not (
            isinstance(self.prompt_variant, int) and 0 <= self.prompt_variant < N_VARIANTS
        ):
            raise ValueError(
                f"Expected `prompt_variant` in 0..{N_VARIANTS - 1}, but got "
                f"{self.prompt_variant!r}."
            )
        if self.templates is not None and (
            isinstance(self.templates, str) or not all("{}" in t for t in self.templates)
        ):
            raise ValueError(
                f"Expected `templates` to be a tuple of strings with '{{}}', but got "
                f"{self.templates!r}."
            )
        for template in self.templates or ():
            check_template(template)
        if not (self.taxonomy is None or isinstance(self.taxonomy, str)) and not hasattr(
            self.taxonomy, "depth"
        ):
            raise ValueError(
                "Expected `taxonomy` to be a bundled taxonomy's name, a Taxonomy or None, but "
                f"got {type(self.taxonomy).__name__}."
            )

    def _check_named(self) -> None:
        """The settings a named protocol and the parse rule need (see ``docs/protocols.md``)."""
        if self.parse not in PARSES:
            raise ValueError(
                f"Expected `parse` (--parse) to be one of {PARSES}, but got {self.parse!r}."
            )
        if self.parse != "paper" and self.answer != "generate":
            raise ValueError(
                f"--parse {self.parse} reads generated replies: add --answer generate "
                f"(answer='generate'), or drop it (got answer={self.answer!r})."
            )
        if self.name == "cot" and self.answer != "generate":
            raise ValueError(
                "--protocol cot asks the model to think step by step, which only a generated "
                "reply can do (the paper generates and parses it): add --answer generate "
                f"(answer='generate'), got answer={self.answer!r}."
            )
        if self.name == "taxonomy-context":
            if self.mode != "image":
                raise ValueError(
                    "--protocol taxonomy-context is the paper's image experiment; in text mode "
                    "the question names the leaf, whose path the taxonomy then spells out: use "
                    "--mode image."
                )
            if self.taxonomy is None:
                raise ValueError(
                    "--protocol taxonomy-context writes the taxonomy into the prompt: pass "
                    "--taxonomy NAME (Protocol(taxonomy=...))."
                )
            taxonomy_context(self.taxonomy)
        if self.name == "bio-cot":
            if self.mode != "image":
                raise ValueError(
                    "--protocol bio-cot's system message reasons from the image (the paper asks "
                    "it of images only): use --mode image, or --protocol cot for text questions."
                )
            bio_cot_system(self.taxonomy)

    @property
    def taxonomy_name(self) -> str | None:
        """The taxonomy's name (``None`` without one)."""
        if self.taxonomy is None or isinstance(self.taxonomy, str):
            return self.taxonomy
        return self.taxonomy.name

    def ranks(self) -> list[str] | None:
        """The rank name of each taxonomy level (for ``{rank}``): the bundled taxonomy's, or the
        ``Taxonomy``'s own; ``None`` when the taxonomy has none.

        Raises:
            ValueError: an unknown taxonomy name.
        """
        if self.taxonomy is None:
            return None
        if isinstance(self.taxonomy, str):
            return ranks(self.taxonomy)
        got = self.taxonomy.ranks
        return list(got) if got else None

    def reply_tokens(self, family: str | None) -> int | None:
        """The most tokens of a generated reply for a model of ``family``: ``max_new_tokens``,
        else the paper's (:func:`max_new_tokens`; 10 for ``binary``, as its script sets; 16
        for ``open``, hierzoo's);
        ``None`` when answers are read from logits."""
        if self.answer != "generate":
            return None
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if self.name in ("binary", "open"):
            return paper_prompts()[self.name]["max_new_tokens"]
        named = protocol_table(self.name).get("max_new_tokens")
        return named if named is not None else max_new_tokens(family, self.taxonomy, self.mode)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values (a ``Taxonomy`` written as its name); ``parse`` only
        when it is not the paper's rule."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["taxonomy"] = self.taxonomy_name
        if self.parse == "paper":
            del out["parse"]
        return out


# --------------------------------------------------------------------------- the planner
@dataclass(frozen=True)
class Request:
    """One question put to a model: one level of one question-set entry, its options in one
    order. Plain data: a local model renders it with its chat template, a remote client sends
    ``system``, ``image`` and ``text`` as they are.

    Attributes:
        sample: the entry's position in the question set.
        level: the level asked (0: the entry's first level).
        rotation: which rotation of the options (0 unless the protocol is circular).
        order: the original option indices (positions in ``choices_level``), in asked order.
        options: the options' names in asked order.
        letters: their letters, ``"ABCD"`` for four (``""`` for a yes/no statement).
        answer: the position of the right option in ``options`` (``--protocol binary``: 1 when
            the statement is true, else 0; ``open``: -1, no options).
        question: the level's question (variant, rank and label filled in).
        text: the user turn's text: the question, one line per option, the instruction.
        system: the system message.
        mode: ``"image"`` or ``"text"``.
        image: the image to show with it (the resolved path, else the recorded one); ``None``
            in text mode.
    """

    sample: int
    level: int
    rotation: int
    order: tuple[int, ...]
    options: tuple[str, ...]
    letters: str
    answer: int
    question: str
    text: str
    system: str
    mode: str
    image: str | None

    @property
    def answer_letter(self) -> str:
        """The right option's letter: what a fine-tuning set teaches."""
        return self.letters[self.answer]

    def messages(self) -> list[dict[str, Any]]:
        """The chat messages in the transformers layout (see :func:`messages`)."""
        return messages(self.text, mode=self.mode, system=self.system)


@dataclass(frozen=True)
class QuestionPlan:
    """Every request of a question set under one protocol, and how they map back to it.

    Attributes:
        protocol: the protocol planned.
        prompt_variant: the question wording used (the protocol's, else the paper's default).
        requests: the requests, by entry, then level, then rotation.
        by_sample: per entry, the positions of its requests in ``requests``.
        orders: per entry and level, the original option indices in asked order (the first
            rotation's; ``[]`` for a level not asked).
        options: per entry and level, the options in that order (``[]`` where not asked).
        n_letters: the most options of any request (0 when nothing is asked); ``binary``: the
            number of answer words (:data:`BINARY_ANSWERS`).
    """

    protocol: Protocol
    prompt_variant: int
    requests: list[Request]
    by_sample: list[list[int]]
    orders: list[list[list[int]]]
    options: list[list[list[str]]]
    n_letters: int


def plan_questions(
    questions: Sequence[Question],
    protocol: Protocol | None = None,
    *,
    family: str | None = None,
    model: str | None = None,
) -> QuestionPlan:
    """The exact requests of a question set under a protocol.

    A level is asked when its answer is given (and, in text mode, when it is not the entry's
    leaf, which the question names). With ``protocol.shuffle_options`` the options of the asked
    levels are shuffled by :func:`shuffled_orders` over the whole set (so a subset planned on
    its own gets other orders: plan the whole set, then take the requests you need); in
    circular mode each level is asked once per rotation of its options. Under ``binary``
    (:attr:`Protocol.name`) each option of each asked level is one yes/no statement, in asked
    order (:func:`binary_statement`, :func:`binary_text`); under ``open`` each asked level is one
    question without options (:func:`open_text`). ``family`` (a model family such as
    ``"internvl"``) and ``model`` (its zoo name) ask as the paper's scripts ask that model: the
    system message (:func:`system_message`), the leaf name's case in text mode
    (:func:`lowercase_label`) and, when the protocol names no variant, the default prompt
    variant (:func:`default_prompt_variant`).

    Raises:
        QuestionError: a level whose answer is not among its options.
        ValueError: an unknown taxonomy, a level beyond its ranks, more than 26 options.
    """
    protocol = protocol or Protocol()
    mode = protocol.mode
    _entry(protocol.taxonomy)
    variant = protocol.prompt_variant
    if variant is None:
        variant = protocol_table(protocol.name).get("prompt_variant")
    if variant is None:
        variant = default_prompt_variant(protocol.taxonomy, family, model=model, mode=mode)
    asked = asked_options([(q.answers, q.choices) for q in questions], mode)
    right = [
        [q.answer_index(k) if n is not None else -1 for k, n in enumerate(counts)]
        for q, counts in zip(questions, asked)
    ]
    n_letters = max((n for counts in asked for n in counts if n is not None), default=0)
    if n_letters:
        letters(n_letters)
    if protocol.shuffle_options:
        orders = shuffled_orders(asked, protocol.seed)
    else:
        orders = [[list(range(n)) if n is not None else [] for n in counts] for counts in asked]
    if protocol.name == "binary":
        return _plan_binary(questions, protocol, variant, orders, right)
    if protocol.name == "open":
        return _plan_open(questions, protocol, variant, orders)
    framing = protocol_framing(protocol, family)
    system = (framing.system if framing else None) or system_message(mode, family)
    lower = lowercase_label(mode, family)
    closing = cot_suffix(family) + instruction() if protocol.name == "cot" else instruction()
    glued = protocol.name == "taxonomy-context" and context_placement(family) == "system"
    texts: dict[tuple[int, str | None], str] = {}
    requests: list[Request] = []
    by_sample: list[list[int]] = []
    options: list[list[list[str]]] = []
    for i, q in enumerate(questions):
        label = q.label if mode == "text" else None
        if lower and label is not None:
            label = label.lower()
        image = None if mode == "text" else (str(q.path) if q.path is not None else q.image)
        by_sample.append([])
        options.append([[q.choices[k][j] for j in order] for k, order in enumerate(orders[i])])
        for k, order in enumerate(orders[i]):
            if not order:
                continue
            if (k, label) not in texts:
                texts[k, label] = question_text(
                    protocol.taxonomy,
                    protocol.first_level + k,
                    variant=variant,
                    mode=mode,
                    label=label,
                )
            for r in range(len(order) if protocol.circular else 1):
                rotated = order[r:] + order[:r]
                names = tuple(q.choices[k][j] for j in rotated)
                by_sample[i].append(len(requests))
                requests.append(
                    Request(
                        sample=i,
                        level=k,
                        rotation=r,
                        order=tuple(rotated),
                        options=names,
                        letters=letters(len(names)),
                        answer=rotated.index(right[i][k]),
                        question=texts[k, label],
                        text="\n".join([texts[k, label], *option_lines(names)])
                        + ("" if glued else "\n")
                        + closing,
                        system=system,
                        mode=mode,
                        image=image,
                    )
                )
    return QuestionPlan(protocol, variant, requests, by_sample, orders, options, n_letters)


def _plan_binary(
    questions: Sequence[Question],
    protocol: Protocol,
    variant: int,
    orders: list[list[list[int]]],
    right: list[list[int]],
) -> QuestionPlan:
    """The plan of ``--protocol binary``: per asked level, one request per option in asked order
    (``options`` that option alone, ``letters`` empty, ``answer`` 1 when the statement is true,
    else 0, ``rotation`` 0), as ``eval_CUB_binary.py`` asks them."""
    system = binary_system_message()
    requests: list[Request] = []
    by_sample: list[list[int]] = []
    options: list[list[list[str]]] = []
    for i, q in enumerate(questions):
        image = str(q.path) if q.path is not None else q.image
        by_sample.append([])
        options.append([[q.choices[k][j] for j in order] for k, order in enumerate(orders[i])])
        for k, order in enumerate(orders[i]):
            for j in order:
                name = q.choices[k][j]
                statement = binary_statement(protocol.taxonomy, protocol.first_level + k, name)
                by_sample[i].append(len(requests))
                requests.append(
                    Request(
                        sample=i,
                        level=k,
                        rotation=0,
                        order=(j,),
                        options=(name,),
                        letters="",
                        answer=int(j == right[i][k]),
                        question=statement,
                        text=binary_text(statement),
                        system=system,
                        mode=protocol.mode,
                        image=image,
                    )
                )
    n_answers = len(BINARY_ANSWERS) if requests else 0
    return QuestionPlan(protocol, variant, requests, by_sample, orders, options, n_answers)


def _plan_open(
    questions: Sequence[Question],
    protocol: Protocol,
    variant: int,
    orders: list[list[list[int]]],
) -> QuestionPlan:
    """The plan of ``--protocol open``: one request per asked level, the level's question and
    :func:`open_text`'s instruction, no options (``options`` and ``letters`` empty, ``answer``
    -1, ``order`` empty)."""
    mode = protocol.mode
    system = open_system_message(mode)
    texts: dict[tuple[int, str | None], str] = {}
    requests: list[Request] = []
    by_sample: list[list[int]] = []
    for i, q in enumerate(questions):
        label = q.label if mode == "text" else None
        image = None if mode == "text" else (str(q.path) if q.path is not None else q.image)
        by_sample.append([])
        for k, order in enumerate(orders[i]):
            if not order:
                continue
            if (k, label) not in texts:
                texts[k, label] = question_text(
                    protocol.taxonomy,
                    protocol.first_level + k,
                    variant=variant,
                    mode=mode,
                    label=label,
                )
            by_sample[i].append(len(requests))
            requests.append(
                Request(
                    sample=i,
                    level=k,
                    rotation=0,
                    order=(),
                    options=(),
                    letters="",
                    answer=-1,
                    question=texts[k, label],
                    text=open_text(texts[k, label]),
                    system=system,
                    mode=mode,
                    image=image,
                )
            )
    options = [[[] for _ in order_k] for order_k in orders]
    return QuestionPlan(protocol, variant, requests, by_sample, orders, options, 0)
