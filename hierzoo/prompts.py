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

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hierzoo.tasks import Question
    from hierzoo.taxonomy import Taxonomy

from hierzoo._prompt_texts import (
    _LONE_LETTER as _LONE_LETTER,
)

__all__ = [  # what the API reference documents; the constants are public as well
    "taxonomies",
    "paper_taxonomies",
    "system_message",
    "lowercase_label",
    "instruction",
    "letters",
    "ranks",
    "default_prompt_variant",
    "max_new_tokens",
    "protocol_table",
    "cot_suffix",
    "bio_cot_taxonomies",
    "bio_cot_system",
    "taxonomy_context",
    "Framing",
    "context_placement",
    "protocol_framing",
    "question_text",
    "option_lines",
    "user_text",
    "messages",
    "shuffled_orders",
    "asked_options",
    "check_template",
    "check_templates",
    "parse_paper_answer",
    "parse_last_letter",
    "parse_answer",
    "parse_yes_no",
    "binary_system_message",
    "binary_statement",
    "binary_text",
    "open_system_message",
    "open_text",
    "Protocol",
    "Request",
    "QuestionPlan",
    "plan_questions",
]

from hierzoo._prompt_texts import (  # re-exported: hierzoo.prompts is their public home
    ANSWERS as ANSWERS,
)
from hierzoo._prompt_texts import (
    BINARY_ANSWERS as BINARY_ANSWERS,
)
from hierzoo._prompt_texts import (
    GENERIC as GENERIC,
)
from hierzoo._prompt_texts import (
    GENERIC_RANKED as GENERIC_RANKED,
)
from hierzoo._prompt_texts import (
    MODES as MODES,
)
from hierzoo._prompt_texts import (
    N_VARIANTS as N_VARIANTS,
)
from hierzoo._prompt_texts import (
    PARSES as PARSES,
)
from hierzoo._prompt_texts import (
    PROTOCOLS as PROTOCOLS,
)
from hierzoo._prompt_texts import (
    UNKNOWN as UNKNOWN,
)
from hierzoo._prompt_texts import (
    Framing as Framing,
)
from hierzoo._prompt_texts import (
    _check_mode as _check_mode,
)
from hierzoo._prompt_texts import (
    _check_variant as _check_variant,
)
from hierzoo._prompt_texts import (
    _entry as _entry,
)
from hierzoo._prompt_texts import (
    _family_rules as _family_rules,
)
from hierzoo._prompt_texts import (
    _paper_key as _paper_key,
)
from hierzoo._prompt_texts import (
    asked_options as asked_options,
)
from hierzoo._prompt_texts import (
    binary_statement as binary_statement,
)
from hierzoo._prompt_texts import (
    binary_system_message as binary_system_message,
)
from hierzoo._prompt_texts import (
    binary_text as binary_text,
)
from hierzoo._prompt_texts import (
    bio_cot_system as bio_cot_system,
)
from hierzoo._prompt_texts import (
    bio_cot_taxonomies as bio_cot_taxonomies,
)
from hierzoo._prompt_texts import (
    check_template as check_template,
)
from hierzoo._prompt_texts import (
    check_templates as check_templates,
)
from hierzoo._prompt_texts import (
    context_placement as context_placement,
)
from hierzoo._prompt_texts import (
    cot_suffix as cot_suffix,
)
from hierzoo._prompt_texts import (
    default_prompt_variant as default_prompt_variant,
)
from hierzoo._prompt_texts import (
    instruction as instruction,
)
from hierzoo._prompt_texts import (
    letters as letters,
)
from hierzoo._prompt_texts import (
    lowercase_label as lowercase_label,
)
from hierzoo._prompt_texts import (
    max_new_tokens as max_new_tokens,
)
from hierzoo._prompt_texts import (
    messages as messages,
)
from hierzoo._prompt_texts import (
    open_system_message as open_system_message,
)
from hierzoo._prompt_texts import (
    open_text as open_text,
)
from hierzoo._prompt_texts import (
    option_lines as option_lines,
)
from hierzoo._prompt_texts import (
    paper_prompts as paper_prompts,
)
from hierzoo._prompt_texts import (
    paper_taxonomies as paper_taxonomies,
)
from hierzoo._prompt_texts import (
    parse_answer as parse_answer,
)
from hierzoo._prompt_texts import (
    parse_last_letter as parse_last_letter,
)
from hierzoo._prompt_texts import (
    parse_paper_answer as parse_paper_answer,
)
from hierzoo._prompt_texts import (
    parse_yes_no as parse_yes_no,
)
from hierzoo._prompt_texts import (
    protocol_framing as protocol_framing,
)
from hierzoo._prompt_texts import (
    protocol_table as protocol_table,
)
from hierzoo._prompt_texts import (
    question_text as question_text,
)
from hierzoo._prompt_texts import (
    ranks as ranks,
)
from hierzoo._prompt_texts import (
    shuffled_orders as shuffled_orders,
)
from hierzoo._prompt_texts import (
    system_message as system_message,
)
from hierzoo._prompt_texts import (
    taxonomies as taxonomies,
)
from hierzoo._prompt_texts import (
    taxonomy_context as taxonomy_context,
)
from hierzoo._prompt_texts import (
    user_text as user_text,
)


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
    framing = protocol_framing(protocol, family)
    system = (framing.system if framing else None) or system_message(mode, family)
    if protocol.name == "binary":
        return _plan_binary(questions, protocol, variant, orders, right, system)
    if protocol.name == "open":
        return _plan_open(questions, protocol, variant, orders, system)
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
    system: str,
) -> QuestionPlan:
    """The plan of ``--protocol binary``: per asked level, one request per option in asked order
    (``options`` that option alone, ``letters`` empty, ``answer`` 1 when the statement is true,
    else 0, ``rotation`` 0), as ``eval_CUB_binary.py`` asks them, under ``system``."""
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
    system: str,
) -> QuestionPlan:
    """The plan of ``--protocol open``: one request per asked level, the level's question and
    :func:`open_text`'s instruction, no options (``options`` and ``letters`` empty, ``answer``
    -1, ``order`` empty), under ``system``."""
    mode = protocol.mode
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
