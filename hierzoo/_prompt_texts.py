"""The paper's prompts as functions over the bundled ``prompts.json``: its constants, system
messages, question wordings and default variants, the named protocols' texts (chain of thought,
bio-CoT, the taxonomy in the prompt, yes/no statements, open questions) and the answer parsers.
:mod:`hierzoo.prompts` builds the requests from them and exports them all."""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from hierzoo.prompts import Protocol
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


def check_templates(templates: Any) -> tuple[str, ...]:
    """CLIP prompt templates given in code: a list of templates (or one template), each checked
    by :func:`check_template`.

    Raises:
        ValueError: no template, or a template that :func:`check_template` refuses.
        TypeError: a template that is not a string.
    """
    given = (templates,) if isinstance(templates, str) else tuple(templates)
    if not given:
        raise ValueError("Expected at least one template (such as 'a photo of {}.'), but got none.")
    for t in given:
        if not isinstance(t, str):
            raise TypeError(f"Expected templates as strings, but got {t!r} in {templates!r}.")
        check_template(t)
    return given


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
