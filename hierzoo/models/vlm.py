"""Vision LLMs answering the paper's four-choice questions by their option-letter logits.

Families (each a small subclass of :class:`VisionLLMClassifier`): Qwen2.5-VL, Qwen3-VL,
LLaVA-OneVision (``-ov-hf``) and InternVL (``-hf``), loaded through transformers.

Every question is one forward pass: the prompt is the model's chat template over the paper's
system message and user turn (:mod:`hierzoo.prompts`), and the answer is read from the logits of
the last prompt token (the prediction of the first assistant token) at the option letters' token
ids, softmaxed over the options only. Many questions share one forward pass (padded batches).
With the prefix cache on, the system message and image tokens run once per image and their KV
cache serves every level (and rotation) of that image's questions; the plain batched forward of
each full prompt is the fallback and the reference.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from hierzoo import prompts
from hierzoo.images import ImageInput, PipelineStats, as_list, iterate_images
from hierzoo.models._sites import Site, SiteError, check_kinds, parse_sites
from hierzoo.models.base import Answers, Features, HierClassifier, NodeScores, Protocol
from hierzoo.tasks import Question

if TYPE_CHECKING:
    from hierzoo.models._registry import ModelSpec
    from hierzoo.taxonomy import Taxonomy

__all__ = [
    "InternVLClassifier",
    "LlavaOnevisionClassifier",
    "Qwen2_5_VLClassifier",
    "Qwen3VLClassifier",
    "VisionLLMClassifier",
]

_SENTINEL = "<<hierzoo-user-text>>"
_CHECK_TEXT = "Which one?\nA. first option\nB. second\nAnswer with the letter."
CPU_TOKEN_BUDGET = 8192
DECODE_BATCH = 32
LOGIT_ELEMENTS = 1 << 26


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "Vision LLMs need transformers, which is not installed: pip install 'hierzoo[vlm]'"
        ) from e
    return transformers


def cap_image_side(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` shrunk (LANCZOS, aspect kept) so that its longer side is at most ``max_side``."""
    width, height = image.size
    if max(width, height) <= max_side:
        return image
    scale = max_side / max(width, height)
    return image.resize((int(width * scale), int(height * scale)), Image.LANCZOS)


@dataclass
class _Ask:
    """One forward-pass question: a level of a sample, in one rotation of its options."""

    sample: int
    level: int
    rotation: int
    order: list[int]
    text: str
    ids: list[int] = dataclasses.field(default_factory=list)


@dataclass
class _Plan:
    asks: list[_Ask]
    by_sample: list[list[int]]
    orders: list[list[list[int]]]
    options: list[list[list[str]]]
    answer_index: list[list[int]]
    variant: int
    n_letters: int


@dataclass
class _NodePlan:
    contexts: list[list[int]]
    answers: list[list[int]]
    levels: list[int]


@dataclass
class _Prefix:
    """A prefix forward: its KV cache, attention mask and where each row continues."""

    cache: Any
    mask: torch.Tensor
    start: torch.Tensor


def _cache_of(output: Any) -> Any:
    """The KV cache of a forward's output (``cache`` in recent transformers, else
    ``past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(max(len(s) for s in seqs), 1)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
    return ids, mask


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


class _Stop(Exception):
    """Raised by a forward hook once every wanted hidden state is kept: the rest of the
    forward pass is not needed."""


@contextmanager
def _tap(lm: Any, layers: set[int], stop_at: int | None) -> Iterator[dict[int, torch.Tensor]]:
    """Keep the LLM's hidden states ``K`` in ``layers`` (as ``output_hidden_states`` numbers
    them: 0 the input of the first layer, ``K`` the output of layer ``K - 1``, the last one after
    the final norm) in the yielded dict while a forward runs. Once hidden state ``stop_at`` is
    kept, the forward is stopped (a :class:`_Stop` raised in the hook, swallowed here)."""
    store: dict[int, torch.Tensor] = {}
    n = len(lm.layers)
    hooks = []

    def keep(k: int, value: torch.Tensor) -> None:
        if k in layers:
            store[k] = value
        if k == stop_at:
            raise _Stop

    for k in layers | ({stop_at} if stop_at is not None else set()):
        if k == 0:

            def pre(module: Any, args: tuple, kwargs: dict) -> None:
                keep(0, args[0] if args else kwargs["hidden_states"])

            hooks.append(lm.layers[0].register_forward_pre_hook(pre, with_kwargs=True))
        else:

            def post(module: Any, args: tuple, output: Any, k: int = k) -> None:
                keep(k, output[0] if isinstance(output, tuple) else output)

            hooks.append((lm.layers[k - 1] if k < n else lm.norm).register_forward_hook(post))
    try:
        yield store
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def _tap_module(module: Any, where: str) -> Iterator[list[Any]]:
    """Keep the first positional input (``where="input"``) or the output of ``module`` each
    time it runs."""
    kept: list[Any] = []
    if where == "input":
        hook = module.register_forward_pre_hook(
            lambda m, args, kwargs: kept.append(args[0] if args else next(iter(kwargs.values()))),
            with_kwargs=True,
        )
    else:
        hook = module.register_forward_hook(lambda m, args, output: kept.append(output))
    try:
        yield kept
    finally:
        hook.remove()


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` float32 means of ``hidden`` ``(B, T, D)`` over the positions where ``mask``."""
    m = mask.to(hidden.device, torch.float32)[..., None]
    return ((hidden.float() * m).sum(1) / m.sum(1).clamp(min=1)).cpu()


class VisionLLMClassifier(HierClassifier):
    """A transformers vision LLM that answers multiple-choice questions by letter logits.

    Subclasses name the transformers class and ``model_type`` of their family and override the
    hooks: :meth:`prompt_positions` and :meth:`suffix_positions` (the RoPE positions of a
    padded prompt batch and of text continuing a cached prefix), :meth:`image_transform`
    (what happens to a decoded image before the processor), and for :meth:`features`
    :meth:`vision_site` and :meth:`vision_tokens` (where the vision tower's features are read,
    and how they split per image).

    Attributes:
        model: the transformers model (eval mode).
        processor: its processor (tokenizer, image processor, chat template).
        token_budget: the most (rows x sequence positions) one forward pass may hold; sets the
            number of images and questions per pass unless ``batch_size`` is given.
        batch_size: images (question-set entries) per fused pass, overriding the budget.
        prefix_cache: run the system message and image once per image and continue every
            question from its KV cache (``False``: one full prompt per row).
        batched_vision_attention: whether the vision tower runs window-batched attention (see
            :meth:`batch_vision_attention`); ``False`` for families that have nothing to batch.
        process_on_device: run the image processor's resizing, normalising and patching on the
            model's device (transformers' torchvision-backed processors take a ``device``);
            ``None`` (default): on CUDA, where the processor supports it.
        pipeline_stats: host time of the last calls (:class:`hierzoo.images.PipelineStats`):
            waiting for decoded images (``input_wait``) and inside the processor
            (``preprocess``: tokenising, and the image work unless it runs on the device).
    """

    model_class: str = ""
    model_type: str = ""
    process_on_device: bool | None = None

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        name: str = "",
        spec: ModelSpec | None = None,
        token_budget: int | None = None,
        batch_size: int | None = None,
        prefix_cache: bool = True,
        batched_vision_attention: bool = True,
    ):
        if token_budget is not None and token_budget < 1:
            raise ValueError(f"Expected `token_budget` >= 1, but got {token_budget!r}.")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"Expected `batch_size` >= 1, but got {batch_size!r}.")
        self.model = model
        self.processor = processor
        self.name = name
        self.spec = spec
        self.device = model.device
        self.dtype = model.dtype
        self.token_budget = token_budget or _default_token_budget(model)
        self.batch_size = batch_size
        self.prefix_cache = prefix_cache
        self._templates: dict[str, tuple[str, str]] = {}
        forward = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        self._letter_cache: dict[tuple[str, int], list[int]] = {}
        self.pipeline_stats = PipelineStats()
        self.batched_vision_attention = self.batch_vision_attention(batched_vision_attention)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_spec(
        cls,
        spec: ModelSpec,
        *,
        device: torch.device,
        dtype: str | torch.dtype | None = None,
        device_map: str | dict[str, Any] | None = None,
        token_budget: int | None = None,
        batch_size: int | None = None,
        attn_implementation: str | None = None,
        prefix_cache: bool = True,
        batched_vision_attention: bool = True,
        **kwargs: Any,
    ) -> VisionLLMClassifier:
        """Load a checkpoint (hub id at ``spec.revision``, or a ``save_pretrained`` directory).

        Args:
            spec: the zoo spec (``spec.location`` is what loads).
            device: where the model runs (ignored with ``device_map``).
            dtype: weights' dtype; default bfloat16 on CUDA, float32 on CPU.
            device_map: transformers' ``device_map`` (``"auto"`` spreads a model over GPUs).
            token_budget, batch_size, prefix_cache: see the class attributes.
            attn_implementation: ``"sdpa"`` (default), ``"eager"``, ``"flash_attention_2"`` ...
            batched_vision_attention: Qwen-VL families under ``sdpa`` / ``eager``: run the vision
                tower's attention as one call per window length instead of one per window
                (:meth:`batch_vision_attention`); ``False`` keeps transformers' own loop.
            **kwargs: passed to the model's ``from_pretrained``.
        """
        from hierzoo.models._factory import resolve_dtype

        clip_only = sorted(
            {"decode_on_device", "normalize_on_device", "worker_decode", "cache_dir", "templates"}
            & kwargs.keys()
        )
        if clip_only:
            raise ValueError(
                f"{', '.join(clip_only)}: options of CLIP-style models, but {spec.name!r} is a "
                "vision LLM; "
                "drop them (its images go through the model's own processor)."
            )
        transformers = _import_transformers()
        dtype = resolve_dtype(dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
        hub = {"revision": spec.revision} if spec.source is None else {}
        config = transformers.AutoConfig.from_pretrained(spec.location, **hub)
        if config.model_type != cls.model_type:
            raise ValueError(
                f"{spec.location!r} holds a {config.model_type!r} model, but {cls.__name__} loads "
                f"{cls.model_type!r}; load it by its directory or hub id so hierzoo picks its "
                "family."
            )
        processor = transformers.AutoProcessor.from_pretrained(spec.location, **hub)
        model = getattr(transformers, cls.model_class).from_pretrained(
            spec.location,
            dtype=dtype,
            device_map=device_map,
            attn_implementation=attn_implementation,
            **hub,
            **kwargs,
        )
        if device_map is None:
            model.to(device)
        return cls(
            model.eval(),
            processor,
            name=spec.name,
            spec=spec,
            token_budget=token_budget,
            batch_size=batch_size,
            prefix_cache=prefix_cache,
            batched_vision_attention=batched_vision_attention,
        )

    # ------------------------------------------------------------------ family hooks
    def batch_vision_attention(self, on: bool = True) -> bool:
        """Turn window-batched attention in the vision tower on or off; returns whether it is on.

        Families whose vision attention loops over windows or images (Qwen2.5-VL, Qwen3-VL, under
        ``sdpa`` or ``eager`` attention) run one attention call per distinct window length instead
        of one per window; the output equals transformers' own up to floating-point summation
        order. The attention modules of this model's vision tower are patched in place (the
        language model and other models are untouched); ``on=False`` puts transformers' forward
        back. Default: nothing to batch, always ``False``.
        """
        return False

    def image_transform(self) -> Callable[[Image.Image], Any] | None:
        """A picklable function applied to each decoded image in the loader workers, or ``None``."""
        return None

    def prompt_positions(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE positions of a padded processor batch, and the position after each row's last
        real token (where a continuation starts). Default: 1-D positions counting real tokens."""
        mask = inputs["attention_mask"].long()
        return (mask.cumsum(-1) - 1).clamp(min=0), mask.sum(-1)

    def suffix_positions(self, start: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Positions of a left-padded continuation whose first real token sits at ``start``."""
        return start[:, None] + (mask.long().cumsum(-1) - 1).clamp(min=0)

    def vision_site(self) -> tuple[Any, str]:
        """``(module, "input" | "output")``: the module whose input or output carries the vision
        tower's features for the ``vision`` site."""
        raise NotImplementedError

    def vision_tokens(self, kept: Any, inputs: Any) -> list[torch.Tensor]:
        """The vision tower's features per image, ``(patches, D)`` each, from what
        :meth:`vision_site` kept during a forward of the processor batch ``inputs`` (one image
        per row)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ prompts
    def _render(self, user: str, mode: str) -> str:
        return self.processor.apply_chat_template(
            prompts.messages(user, mode=mode), tokenize=False, add_generation_prompt=True
        )

    def template(self, mode: str) -> tuple[str, str]:
        """``(head, tail)``: the chat-template text before and after the user text of a mode.

        The head is the system turn and the start of the user turn with the image placeholder;
        the tail closes the user turn and opens the assistant turn. A full prompt is
        ``head + user_text + tail``.
        """
        if mode not in self._templates:
            full = self._render(_SENTINEL, mode)
            if full.count(_SENTINEL) != 1:
                raise ValueError(
                    f"The chat template of {self.name!r} does not place the user text verbatim "
                    f"once in the prompt ({full!r}); hierzoo cannot build its prompts."
                )
            head, tail = full.split(_SENTINEL)
            if self._render(_CHECK_TEXT, mode) != head + _CHECK_TEXT + tail:
                raise ValueError(
                    f"The chat template of {self.name!r} changes the user text; hierzoo cannot "
                    "build its prompts."
                )
            if self.prefix_cache:
                tok = self.processor.tokenizer
                split = (
                    tok(head, add_special_tokens=False)["input_ids"]
                    + tok(_CHECK_TEXT + tail, add_special_tokens=False)["input_ids"]
                )
                if split != tok(head + _CHECK_TEXT + tail, add_special_tokens=False)["input_ids"]:
                    raise ValueError(
                        f"The tokens of {self.name!r} merge across the end of the shared prefix "
                        f"{head[-20:]!r}; load it with prefix_cache=False."
                    )
            self._templates[mode] = (head, tail)
        return self._templates[mode]

    def letter_token_ids(self, n: int, mode: str = "image") -> list[int]:
        """Token ids of the first ``n`` option letters as the first assistant token.

        The rule: tokenize the template's tail (which ends the prompt, ``...assistant\\n``)
        alone and followed by the letter; the one extra token is the letter's id. Tokenizers that
        spell a letter ``"A"`` after a newline and ``" A"`` after a space get the right one.
        """
        key = (mode, n)
        if key not in self._letter_cache:
            tok = self.processor.tokenizer
            tail = self.template(mode)[1]
            base = tok(tail, add_special_tokens=False)["input_ids"]
            ids = []
            for letter in prompts.letters(n):
                got = tok(tail + letter, add_special_tokens=False)["input_ids"]
                if got[: len(base)] != base or len(got) != len(base) + 1:
                    raise ValueError(
                        f"Option letter {letter!r} is not one token after the prompt's end "
                        f"{tail[-12:]!r} for {self.name!r} (tokens {got[len(base) - 1 :]}); "
                        "constrained letter scoring needs single-token letters."
                    )
                ids.append(got[-1])
            self._letter_cache[key] = ids
        return self._letter_cache[key]

    # ------------------------------------------------------------------ answering
    def answer(
        self,
        questions: Sequence[Question],
        *,
        protocol: Protocol | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Answers:
        """Answer every level of every question-set entry (see :class:`Answers`).

        Honours every :class:`Protocol` field but ``templates`` (CLIP only): the prompt variant
        (default: the paper's for the taxonomy and family), the paper's seeded option shuffle,
        circular rotations (``correct`` is set: a level is right only if every rotation is) and
        text mode (no image; the leaf level is not asked). ``choice`` and ``probs`` are the
        answers to the options in ``options`` order (the first rotation). ``extra`` holds the
        protocol, the prompt variant used, the seed, the letters, the letter logits and, in
        circular mode, each rotation's choice (``rotation_choices``, positions in ``options``).

        Raises:
            QuestionError: a level's answer is not among its options (before any model work).
            ValueError: ``protocol.templates`` is set, or a bad protocol value.
        """
        protocol, plan, logits, errors = self._prepare(questions, protocol, batch_size)
        for _ in self._score(questions, plan, protocol.mode, logits, errors, batch_size, progress):
            pass
        return self._collect(plan, logits, errors, protocol, range(len(questions)))

    def iter_answers(
        self,
        questions: Sequence[Question],
        *,
        protocol: Protocol | None = None,
        batch_size: int | None = None,
        chunk_size: int = 256,
    ) -> Iterator[tuple[list[int], Answers]]:
        """Stream :meth:`answer` from one image loader: yields ``(positions, answers)`` for runs
        of consecutive entries (at most ``chunk_size``) as their images are done. The options are
        shuffled once over all ``questions``, so the pieces equal one ``answer`` call."""
        protocol, plan, logits, errors = self._prepare(questions, protocol, batch_size)
        done = np.array([not rows for rows in plan.by_sample], dtype=bool)
        next_q = 0
        steps = self._score(questions, plan, protocol.mode, logits, errors, batch_size, False)
        for finished in itertools.chain(steps, [[]]):
            done[finished] = True
            start = next_q
            while next_q < len(questions) and done[next_q]:
                next_q += 1
            for lo in range(start, next_q, chunk_size):
                piece = range(lo, min(lo + chunk_size, next_q))
                yield list(piece), self._collect(plan, logits, errors, protocol, piece)

    def check_protocol(self, protocol: Protocol) -> None:
        if protocol.templates is not None:
            raise ValueError(
                f"Protocol.templates is for CLIP models; {type(self).__name__} asks the paper's "
                f"questions, so leave it None (got {protocol.templates!r})."
            )

    def _prepare(
        self, questions: Sequence[Question], protocol: Protocol | None, batch_size: int | None
    ) -> tuple[Protocol, _Plan, torch.Tensor, list[str | None]]:
        protocol = protocol or Protocol()
        self.check_protocol(protocol)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"Expected `batch_size` >= 1, but got {batch_size!r}.")
        plan = self._plan(questions, protocol)
        logits = torch.full((len(plan.asks), max(plan.n_letters, 1)), float("nan"))
        return protocol, plan, logits, [None] * len(questions)

    def _plan(self, questions: Sequence[Question], protocol: Protocol) -> _Plan:
        mode = protocol.mode
        variant = protocol.prompt_variant
        if variant is None:
            variant = prompts.default_prompt_variant(protocol.taxonomy, self.family)
        asked: list[list[int | None]] = []
        answer_index: list[list[int]] = []
        for q in questions:
            leaf = q.n_levels - 1 if mode == "text" else None
            counts: list[int | None] = []
            right: list[int] = []
            for k in range(q.n_levels):
                if q.answers[k] is None or k == leaf:
                    counts.append(None)
                    right.append(-1)
                    continue
                right.append(q.answer_index(k))
                counts.append(len(q.choices[k]))
            asked.append(counts)
            answer_index.append(right)
        n_letters = max((c for counts in asked for c in counts if c is not None), default=0)
        if n_letters:
            prompts.letters(n_letters)
        if protocol.shuffle_options:
            pairs = [(q.answers, q.choices) for q in questions]
            orders = prompts.shuffled_orders(prompts.asked_options(pairs, mode), protocol.seed)
        else:
            orders = [[list(range(c)) if c is not None else [] for c in counts] for counts in asked]
        questions_text: dict[tuple[int, str | None], str] = {}
        asks: list[_Ask] = []
        by_sample: list[list[int]] = []
        options: list[list[list[str]]] = []
        for i, q in enumerate(questions):
            label = q.label if mode == "text" else None
            by_sample.append([])
            options.append([[q.choices[k][j] for j in order] for k, order in enumerate(orders[i])])
            for k, order in enumerate(orders[i]):
                if not order:
                    continue
                key = (k, label)
                if key not in questions_text:
                    questions_text[key] = prompts.question_text(
                        protocol.taxonomy,
                        protocol.first_level + k,
                        variant=variant,
                        mode=mode,
                        label=label,
                    )
                for r in range(len(order) if protocol.circular else 1):
                    rotated = order[r:] + order[:r]
                    text = prompts.user_text(
                        questions_text[key], [q.choices[k][j] for j in rotated]
                    )
                    by_sample[i].append(len(asks))
                    asks.append(_Ask(i, k, r, rotated, text))
        return _Plan(asks, by_sample, orders, options, answer_index, variant, n_letters)

    def _score(
        self,
        questions: Sequence[Question],
        plan: _Plan,
        mode: str,
        logits: torch.Tensor,
        errors: list[str | None],
        batch_size: int | None,
        progress: bool,
    ) -> Iterator[list[int]]:
        """Fill ``logits`` (one row per ask) and ``errors``; yields the entries finished by each
        fused pass (and by failed images)."""
        from tqdm.auto import tqdm

        if not plan.asks:
            return
        head, tail = self.template(mode)
        letter_ids = self.letter_token_ids(plan.n_letters, mode)
        tok = self.processor.tokenizer
        texts = [a.text + tail for a in plan.asks]
        for ask, ids in zip(plan.asks, tok(texts, add_special_tokens=False)["input_ids"]):
            ask.ids = ids
        batch_size = batch_size or self.batch_size
        run = self._run_prefixed if self.prefix_cache else self._run_plain
        with (
            torch.inference_mode(),
            tqdm(total=len(plan.asks), unit="q", disable=not progress, desc=self.name) as bar,
        ):
            wanted = [i for i, rows in enumerate(plan.by_sample) if rows]
            longest = max(len(a.ids) for a in plan.asks)
            per_image = max(len(rows) for rows in plan.by_sample)
            if mode == "text":
                head_tokens = len(tok(head, add_special_tokens=False)["input_ids"])
                step = batch_size or max(
                    1, self.token_budget // (per_image * (head_tokens + longest))
                )
                for lo in range(0, len(wanted), step):
                    group = [(i, None) for i in wanted[lo : lo + step]]
                    self._run_group(run, mode, group, plan, letter_ids, batch_size, logits, bar)
                    yield [i for i, _ in group]
                return
            items = [questions[i].path or questions[i].image for i in wanted]

            failures: list[int] = []

            def failed(j: int, msg: str) -> None:
                errors[wanted[j]] = msg
                failures.append(wanted[j])
                bar.update(len(plan.by_sample[wanted[j]]))

            def cost(image: Image.Image) -> int:
                prefix = self._prefix_tokens(image)
                return prefix if self.prefix_cache else per_image * (prefix + longest)

            for group in self._image_groups(items, batch_size, cost, failed):
                group = [(wanted[j], img) for j, img in group]
                self._run_group(run, mode, group, plan, letter_ids, batch_size, logits, bar)
                yield [i for i, _ in group] + failures
                failures.clear()
            yield failures

    def _image_groups(
        self,
        items: Sequence[ImageInput],
        batch_size: int | None,
        cost: Callable[[Image.Image], int],
        failed: Callable[[int, str], None],
    ) -> Iterator[list[tuple[int, Image.Image]]]:
        """Decoded images in groups of ``batch_size``, else as many as the token budget holds at
        ``cost(first image)`` tokens each; failures go to ``failed(index, message)``."""
        per_group = batch_size
        pending: list[tuple[int, Image.Image]] = []
        batches = iterate_images(items, self.image_transform(), batch_size or DECODE_BATCH)
        for batch in self.pipeline_stats.waited(batches):
            self.pipeline_stats.batches += 1
            for j, msg in batch.failed.items():
                failed(j, msg)
            pending.extend(zip(batch.indices, batch.data))
            if per_group is None and pending:
                per_group = max(1, self.token_budget // max(cost(pending[0][1]), 1))
            while per_group is not None and len(pending) >= per_group:
                yield pending[:per_group]
                pending = pending[per_group:]
        if pending:
            yield pending

    def _prefix_tokens(self, image: Image.Image) -> int:
        head, _ = self.template("image")
        return len(self.processor(text=[head], images=[image])["input_ids"][0])

    def _run_group(
        self,
        run: Callable[..., Iterator[tuple[list[int], torch.Tensor]]],
        mode: str,
        group: list[tuple[int, Image.Image | None]],
        plan: _Plan,
        letter_ids: list[int],
        batch_size: int | None,
        logits: torch.Tensor,
        bar: Any,
    ) -> None:
        images = [img for _, img in group] if mode == "image" else None
        rows = [[plan.asks[j] for j in plan.by_sample[i]] for i, _ in group]
        flat = [j for i, _ in group for j in plan.by_sample[i]]
        for local, out in run(mode, images, rows, letter_ids, batch_size):
            logits[[flat[t] for t in local]] = out
            bar.update(len(local))

    def _row_chunks(self, n_rows: int, row_tokens: int, batch_size: int | None) -> Iterator[slice]:
        step = n_rows if batch_size is not None else max(1, self.token_budget // max(row_tokens, 1))
        for start in range(0, n_rows, step):
            yield slice(start, min(start + step, n_rows))

    def _encode(self, texts: list[str], images: list[Image.Image] | None, side: str) -> Any:
        start = time.perf_counter()
        kw = {"device": str(self.device)} if images is not None and self._images_on_device() else {}
        enc = self.processor(
            text=texts, images=images, padding=True, padding_side=side, return_tensors="pt", **kw
        )
        enc = enc.to(device=self.device, dtype=self.dtype)
        self.pipeline_stats.preprocess += time.perf_counter() - start
        return enc

    def _images_on_device(self) -> bool:
        """Whether images go through the processor on the model's device (see the attribute)."""
        on = (
            self.device.type == "cuda" if self.process_on_device is None else self.process_on_device
        )
        if not on:
            return False
        import typing

        kwargs = getattr(getattr(self.processor, "image_processor", None), "valid_kwargs", None)
        try:
            return kwargs is not None and "device" in typing.get_type_hints(kwargs)
        except Exception:  # an unresolvable annotation: do not guess
            return False

    def _letter_logits(self, logits: torch.Tensor, letter_ids: list[int]) -> torch.Tensor:
        return logits[:, -1, letter_ids].float().cpu()

    def _run_prefixed(
        self,
        mode: str,
        images: list[Image.Image] | None,
        groups: list[list[_Ask]],
        letter_ids: list[int],
        batch_size: int | None,
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Yield ``(row numbers, letter logits)``: one prefix forward for all groups (one per
        image; one for all in text mode), then the rows' suffixes from copies of its KV cache."""
        prefix = self._prefix(images, len(groups) if images is not None else 1, mode)
        owner = [g if images is not None else 0 for g, rows in enumerate(groups) for _ in rows]
        asks = [a for rows in groups for a in rows]
        width = prefix.mask.shape[1] + max(len(a.ids) for a in asks)
        for part in self._row_chunks(len(asks), width, batch_size):
            out, _, _ = self._continue(prefix, owner[part], [a.ids for a in asks[part]])
            yield list(range(part.start, part.stop)), self._letter_logits(out.logits, letter_ids)

    def _run_plain(
        self,
        mode: str,
        images: list[Image.Image] | None,
        groups: list[list[_Ask]],
        letter_ids: list[int],
        batch_size: int | None,
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Yield ``(row numbers, letter logits)`` from full prompts, many rows per forward."""
        head, tail = self.template(mode)
        owner = [g for g, rows in enumerate(groups) for _ in rows]
        asks = [a for rows in groups for a in rows]
        head_len = len(self.processor.tokenizer(head, add_special_tokens=False)["input_ids"])
        width = head_len + max(len(a.ids) for a in asks)
        for part in self._row_chunks(len(asks), width, batch_size):
            texts = [head + a.text + tail for a in asks[part]]
            imgs = [images[g] for g in owner[part]] if images is not None else None
            enc = self._encode(texts, imgs, side="left")
            positions, _ = self.prompt_positions(enc)
            out = self.model(**enc, position_ids=positions, logits_to_keep=1)
            yield list(range(part.start, part.stop)), self._letter_logits(out.logits, letter_ids)

    def _collect(
        self,
        plan: _Plan,
        logits: torch.Tensor,
        errors: list[str | None],
        protocol: Protocol,
        samples: Sequence[int],
    ) -> Answers:
        """The :class:`Answers` of the entries ``samples`` (in that order)."""
        n = len(samples)
        depth = max((len(o) for o in plan.options), default=0)
        width = max(plan.n_letters, 1)
        choice = np.full((n, depth), -1, dtype=np.int64)
        probs = np.full((n, depth, width), np.nan, dtype=np.float32)
        rotations = np.full((n, depth, width), -1, dtype=np.int64)
        letter_logits = np.full((n, depth, width), np.nan, dtype=np.float32)
        correct = np.zeros((n, depth), dtype=bool) if protocol.circular else None
        for row, i in enumerate(samples):
            if errors[i] is not None:
                continue
            for j in plan.by_sample[i]:
                a = plan.asks[j]
                k, m = a.level, len(a.order)
                p = torch.softmax(logits[j, :m], dim=0).numpy()
                c = int(p.argmax())
                rotations[row, k, a.rotation] = plan.orders[i][k].index(a.order[c])
                if a.rotation == 0:
                    choice[row, k] = c
                    probs[row, k, :m] = p
                    letter_logits[row, k, :m] = logits[j, :m].numpy()
            if correct is not None:
                for k, order in enumerate(plan.orders[i]):
                    if order:
                        right = order.index(plan.answer_index[i][k])
                        correct[row, k] = bool(np.all(rotations[row, k, : len(order)] == right))
        extra: dict[str, Any] = {
            "model": self.name,
            "family": self.family,
            "protocol": dataclasses.asdict(protocol),
            "prompt_variant": plan.variant,
            "seed": protocol.seed if protocol.shuffle_options else None,
            "letters": prompts.letters(width),
            "prefix_cache": self.prefix_cache,
            "letter_logits": letter_logits,
        }
        if protocol.circular:
            extra["rotation_choices"] = rotations
        return Answers(
            choice=choice,
            probs=probs,
            options=[plan.options[i] for i in samples],
            errors=[errors[i] for i in samples],
            correct=correct,
            extra=extra,
        )

    # ------------------------------------------------------------------ node scores
    def score_nodes(
        self,
        images: ImageInput | Sequence[ImageInput],
        taxonomy: Taxonomy,
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> NodeScores:
        """Log-likelihood of every node name as the whole answer to its level's open question.

        Per image and level the prompt is the paper's question of the level (no options, no
        instruction; the taxonomy's own prompts when it is a bundled one, else the generic
        ones) and the answer is the node's name followed by the end-of-turn token. The image
        prefix runs once per image, each level's question once per image from its cache, and
        every node name from the cache of its level. ``kind="softmax"``: a level's
        probabilities are the softmax of its nodes' log-likelihoods (renormalised over the
        level). A failed image gets a NaN row and its message in ``errors``.
        """
        from tqdm.auto import tqdm

        items, _ = as_list(images)
        if any(isinstance(x, torch.Tensor) for x in items):
            raise ValueError(
                f"{type(self).__name__} reads images through its own processor: pass paths or PIL "
                "images, not preprocessed tensors."
            )
        plan = self._node_plan(taxonomy)
        logits = torch.full((len(items), taxonomy.n_nodes), float("nan"))
        errors: list[str | None] = [None] * len(items)
        context = max(len(c) for c in plan.contexts)
        batch_size = batch_size or self.batch_size
        with (
            torch.inference_mode(),
            tqdm(total=len(items), unit="img", disable=not progress, desc=self.name) as bar,
        ):

            def failed(j: int, msg: str) -> None:
                errors[j] = msg
                bar.update(1)

            def cost(image: Image.Image) -> int:
                return taxonomy.depth * (self._prefix_tokens(image) + context)

            for group in self._image_groups(items, batch_size, cost, failed):
                rows = [j for j, _ in group]
                logits[rows] = self._node_loglik([img for _, img in group], plan, batch_size)
                bar.update(len(group))
        return NodeScores(logits=logits, kind="softmax", taxonomy=taxonomy, errors=errors)

    def answer_end(self) -> str:
        """The text that closes an assistant turn right after its content (``<|im_end|>``)."""
        msgs = [*prompts.messages("x"), {"role": "assistant", "content": _SENTINEL}]
        after = self.processor.apply_chat_template(msgs, tokenize=False).split(_SENTINEL)[-1]
        tok = self.processor.tokenizer
        ids = tok(after, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(
                f"The chat template of {self.name!r} does not close the assistant turn."
            )
        return tok.decode(ids[:1])

    def _prompt_key(self, taxonomy: Taxonomy) -> tuple[str | None, int]:
        """The prompts of a taxonomy: its own when the paper has them (and ranks for every
        level), else the generic ones; and the paper's default variant for this family."""
        key = taxonomy.name if taxonomy.name in prompts.taxonomies() else None
        ranks = prompts.ranks(key) if key is not None else None
        if ranks is not None and len(ranks) < taxonomy.depth:
            key = None
        return key, prompts.default_prompt_variant(key, self.family)

    def _node_plan(self, taxonomy: Taxonomy) -> _NodePlan:
        key, variant = self._prompt_key(taxonomy)
        _, tail = self.template("image")
        end = self.answer_end()
        tok = self.processor.tokenizer
        contexts = [
            prompts.question_text(key, k, variant=variant) + tail for k in range(taxonomy.depth)
        ]
        context_ids = tok(contexts, add_special_tokens=False)["input_ids"]
        full = tok(
            [contexts[int(lev)] + name + end for name, lev in zip(taxonomy.names, taxonomy.level)],
            add_special_tokens=False,
        )["input_ids"]
        answers = []
        for node, ids in enumerate(full):
            ctx = context_ids[int(taxonomy.level[node])]
            if ids[: len(ctx)] != ctx:
                raise ValueError(
                    f"The tokens of node {taxonomy.names[node]!r} merge with the end of the prompt "
                    f"for {self.name!r}; its log-likelihood cannot be read from the prompt's cache."
                )
            answers.append(ids[len(ctx) :])
        return _NodePlan(context_ids, answers, [int(x) for x in taxonomy.level])

    def _prefix(self, images: list[Image.Image] | None, n: int, mode: str = "image") -> _Prefix:
        head, _ = self.template(mode)
        enc = self._encode([head] * n, images, side="right")
        positions, start = self.prompt_positions(enc)
        out = self.model(**enc, position_ids=positions, use_cache=True, logits_to_keep=1)
        return _Prefix(_cache_of(out), enc["attention_mask"], start)

    def _continue(
        self,
        prefix: _Prefix,
        rows: Sequence[int],
        ids: Sequence[Sequence[int]],
        last_only: bool = True,
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Run token rows (``ids[i]`` after prefix row ``rows[i]``) from a copy of the prefix cache.

        ``last_only``: left-padded, logits of each row's last token only; else right-padded,
        logits at every position. Returns ``(output, attention mask, mask of ids)``."""
        from transformers import DynamicCache

        pad = self.processor.tokenizer.pad_token_id or 0
        ids_t, mask = _left_pad(ids, pad) if last_only else _right_pad(ids, pad)
        ids_t, mask = ids_t.to(self.device), mask.to(self.device)
        idx = torch.tensor(list(rows), device=self.device)
        cache = DynamicCache(
            ((k.index_select(0, idx), v.index_select(0, idx)) for k, v, *_ in prefix.cache),
            config=self.model.config,
        )
        attention = torch.cat([prefix.mask.index_select(0, idx), mask], dim=1)
        out = self.model(
            input_ids=ids_t,
            attention_mask=attention,
            position_ids=self.suffix_positions(prefix.start.index_select(0, idx), mask),
            **{self._cache_arg: cache},
            use_cache=True,
            logits_to_keep=1 if last_only else 0,
        )
        return out, attention, mask

    def _node_loglik(
        self, images: list[Image.Image], plan: _NodePlan, batch_size: int | None
    ) -> torch.Tensor:
        """``(len(images), n_nodes)`` log-likelihoods of the node names for a group of images."""
        n_img, depth = len(images), len(plan.contexts)
        prefix = self._prefix(images, n_img)
        rows = [g for g in range(n_img) for _ in range(depth)]
        out, attention, mask = self._continue(
            prefix, rows, [plan.contexts[k] for _ in range(n_img) for k in range(depth)]
        )
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        level = _Prefix(_cache_of(out), attention, prefix.start[rows] + mask.sum(-1))
        n_nodes = len(plan.answers)
        longest = max(len(t) for t in plan.answers)
        per_chunk = max(1, self.token_budget // (attention.shape[1] + longest))
        per_chunk = min(per_chunk, max(1, LOGIT_ELEMENTS // (longest * first.shape[-1])))
        pairs = [(g, node) for g in range(n_img) for node in range(n_nodes)]
        scores = torch.empty(n_img, n_nodes)
        for lo in range(0, len(pairs), per_chunk):
            chunk = pairs[lo : lo + per_chunk]
            ctx_rows = [g * depth + plan.levels[node] for g, node in chunk]
            answers = [plan.answers[node] for _, node in chunk]
            total = first[ctx_rows, [t[0] for t in answers]]
            out, _, _ = self._continue(level, ctx_rows, [t[:-1] for t in answers], last_only=False)
            logp = torch.log_softmax(out.logits.float(), dim=-1)
            targets, mask = _right_pad([t[1:] for t in answers], 0)
            targets, mask = targets.to(logp.device), mask.to(logp.device)
            total = total + (logp.gather(-1, targets[..., None])[..., 0] * mask).sum(-1)
            g_idx = torch.tensor([g for g, _ in chunk])
            n_idx = torch.tensor([node for _, node in chunk])
            scores[g_idx, n_idx] = total.cpu()
        return scores

    # ------------------------------------------------------------------ features
    def _language_model(self) -> Any:
        return self.model.model.language_model

    def _llm_layers(self, sites: Sequence[Site], kind: str) -> dict[str, int]:
        n = len(self._language_model().layers)
        return {
            s.name: s.resolve_layer(n, f"the LLM of {self.name!r}") for s in sites if s.kind == kind
        }

    def _answer_contexts(
        self, sites: Sequence[Site], taxonomy: Taxonomy | None, mode: str, label: str | None = None
    ) -> dict[int, str]:
        """Level -> the open question of that level and the prompt's tail (the text after the
        head), for the answer sites' levels."""
        levels = sorted({int(s.level) for s in sites if s.kind == "llm-answer"})
        if not levels:
            return {}
        if taxonomy is None:
            raise SiteError(
                f"Answer sites ({[s.name for s in sites if s.kind == 'llm-answer']}) ask the "
                "question of a "
                "taxonomy level: pass taxonomy=."
            )
        if levels[-1] >= taxonomy.depth:
            raise SiteError(
                f"Expected answer-site levels in 0..{taxonomy.depth - 1} (taxonomy "
                f"{taxonomy.name!r} has "
                f"{taxonomy.depth} levels), but got {levels[-1]}."
            )
        key, variant = self._prompt_key(taxonomy)
        tail = self.template(mode)[1]
        return {
            lev: prompts.question_text(key, lev, variant=variant, mode=mode, label=label) + tail
            for lev in levels
        }

    def features(
        self,
        images: ImageInput | Sequence[ImageInput],
        where: str | Sequence[str],
        *,
        taxonomy: Taxonomy | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Features:
        """Image features of the vision LLM at one or more sites (see docs/probing.md):

        - ``vision``: the vision tower's features as the model passes them on (its
          ``vision_feature_layer``, class token dropped where the model drops it; Qwen: the
          last block, before the patch merger), mean over every patch of the image (all tiles
          or crops);
        - ``projector``: the image tokens as they enter the LLM (the projector's output after
          the family's merging and packing: LLaVA-OneVision's newline tokens included), mean over
          them; equal to ``llm:0``;
        - ``llm:K``: the LLM's hidden state ``K`` as ``output_hidden_states`` numbers it (0: the
          input embeddings; ``K``: the output of layer ``K``; the last one after the final norm;
          negative from the end), mean over the image tokens;
        - ``llm:K:answer:L``: hidden state ``K`` at the answer position (the last prompt token,
          whose logits give the first answer token) of level ``L``'s open question, as
          :meth:`score_nodes` asks it (no options); needs ``taxonomy``.

        The prompt is the paper's (system turn, image, question). The image tokens attend only
        to what precedes them, so the pooled sites read one forward pass of the prompt's head
        (system turn, user header, image), stopped once the deepest wanted layer is kept; the
        answer sites continue every level's question from that head's KV cache. One pass per
        group of images (``batch_size``, else the token budget). A failed image gets a NaN row
        and its message in ``errors``.
        """
        from tqdm.auto import tqdm

        sites = parse_sites(where)
        check_kinds(sites, ("vision", "projector", "llm", "llm-answer"), self.family)
        items, _ = as_list(images)
        if any(isinstance(x, torch.Tensor) for x in items):
            raise ValueError(
                f"{type(self).__name__} reads images through its own processor: pass paths or PIL "
                "images, not preprocessed tensors."
            )
        pooled = self._llm_layers(sites, "llm")
        if any(s.kind == "projector" for s in sites):
            pooled["projector"] = 0
        answer_layers = self._llm_layers(sites, "llm-answer")
        contexts = self._answer_contexts(sites, taxonomy, "image")
        tok = self.processor.tokenizer
        context_ids = {
            lev: tok(text, add_special_tokens=False)["input_ids"] for lev, text in contexts.items()
        }
        out: dict[str, torch.Tensor] = {}
        errors: list[str | None] = [None] * len(items)
        batch_size = batch_size or self.batch_size
        longest = max((len(c) for c in context_ids.values()), default=0)
        with (
            torch.inference_mode(),
            tqdm(total=len(items), unit="img", disable=not progress, desc=self.name) as bar,
        ):

            def failed(j: int, msg: str) -> None:
                errors[j] = msg
                bar.update(1)

            def cost(image: Image.Image) -> int:
                prefix = self._prefix_tokens(image)
                return prefix + len(context_ids) * (prefix + longest)

            for group in self._image_groups(items, batch_size, cost, failed):
                rows = [j for j, _ in group]
                values = self._image_features(
                    [img for _, img in group], sites, pooled, answer_layers, context_ids, batch_size
                )
                for name, value in values.items():
                    if name not in out:
                        out[name] = torch.full((len(items), value.shape[1]), float("nan"))
                    out[name][rows] = value
                bar.update(len(group))
        empty = torch.full((len(items), 0), float("nan"))
        return Features({s.name: out.get(s.name, empty) for s in sites}, errors)

    def _image_features(
        self,
        images: list[Image.Image],
        sites: Sequence[Site],
        pooled: dict[str, int],
        answer_layers: dict[str, int],
        context_ids: dict[int, list[int]],
        batch_size: int | None,
    ) -> dict[str, torch.Tensor]:
        """Every site's ``(len(images), D)`` features for one group of images."""
        head, _ = self.template("image")
        enc = self._encode([head] * len(images), images, side="right")
        positions, start = self.prompt_positions(enc)
        lm = self._language_model()
        layers = set(pooled.values())
        stop_at = None if context_ids else max(layers, default=0)
        want_vision = any(s.kind == "vision" for s in sites)
        module, where = self.vision_site() if want_vision else (None, "")
        values: dict[str, torch.Tensor] = {}
        out = None
        with (
            _tap(lm, layers, stop_at) as hidden,
            nullcontext() if module is None else _tap_module(module, where) as kept,
        ):
            out = self.model(
                **enc, position_ids=positions, use_cache=bool(context_ids), logits_to_keep=1
            )
        image_mask = enc["input_ids"] == self.model.config.image_token_id
        for s in sites:
            if s.kind == "vision":
                values[s.name] = torch.stack(
                    [t.float().mean(0) for t in self.vision_tokens(kept[0], enc)]
                ).cpu()
            elif s.kind in ("llm", "projector"):
                values[s.name] = _masked_mean(
                    hidden[pooled[s.name if s.kind == "llm" else "projector"]], image_mask
                )
        if not context_ids:
            return values
        prefix = _Prefix(_cache_of(out), enc["attention_mask"], start)
        levels = sorted(context_ids)
        rows = [(g, lev) for g in range(len(images)) for lev in levels]
        width = prefix.mask.shape[1] + max(len(c) for c in context_ids.values())
        kept_rows: dict[int, list[torch.Tensor]] = {k: [] for k in set(answer_layers.values())}
        for part in self._row_chunks(len(rows), width, batch_size):
            chunk = rows[part]
            wanted = set(answer_layers.values())
            with _tap(lm, wanted, max(wanted)) as hidden:
                self._continue(
                    prefix, [g for g, _ in chunk], [context_ids[lev] for _, lev in chunk]
                )
            for k in wanted:
                kept_rows[k].append(hidden[k][:, -1].float().cpu())
        for s in sites:
            if s.kind == "llm-answer":
                at = torch.cat(kept_rows[answer_layers[s.name]])
                values[s.name] = at[[i for i, (_, lev) in enumerate(rows) if lev == s.level]]
        return values

    def text_features(
        self,
        names: Sequence[str],
        where: str | Sequence[str] = "llm:-1",
        *,
        taxonomy: Taxonomy | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Features:
        """The LLM's hidden states for names (taxonomy nodes) in a text-only prompt: the paper's
        text-mode chat (system: "You are a helpful assistant.").

        - ``llm:K``: the name alone is the user turn; hidden state ``K`` averaged over the name's
          tokens (they attend only to what precedes them, so text after the name would not
          change them);
        - ``llm:K:answer:L``: the user turn is the paper's text-mode question of level ``L``
          naming the node (``Based on taxonomy, where does {name} fall in terms of {rank}?``),
          hidden state ``K`` at the answer position; needs ``taxonomy``.
        """
        sites = parse_sites(where)
        check_kinds(sites, ("llm", "llm-answer"), self.family)
        names = list(names)
        if not names:
            raise ValueError("Expected at least one name, but got none.")
        pooled = self._llm_layers(sites, "llm")
        answer_layers = self._llm_layers(sites, "llm-answer")
        self._answer_contexts(sites, taxonomy, "text", label="x")  # checks taxonomy and levels
        head, tail = self.template("text")
        tok = self.processor.tokenizer
        head_ids = tok(head, add_special_tokens=False)["input_ids"]
        rows: list[
            tuple[str, int, list[int], int, int]
        ] = []  # (kind, name index, ids, span start, span end)
        for i, name in enumerate(names):
            if pooled:
                name_ids = tok(name, add_special_tokens=False)["input_ids"]
                ids = tok(name + tail, add_special_tokens=False)["input_ids"]
                if ids[: len(name_ids)] != name_ids:
                    raise ValueError(
                        f"The tokens of {name!r} merge with the end of the user turn for "
                        f"{self.name!r}; "
                        "its hidden states cannot be told apart."
                    )
                rows.append(
                    ("llm", i, head_ids + ids, len(head_ids), len(head_ids) + len(name_ids))
                )
            for lev, text in self._answer_contexts(sites, taxonomy, "text", label=name).items():
                ids = head_ids + tok(text, add_special_tokens=False)["input_ids"]
                rows.append((f"answer:{lev}", i, ids, len(ids) - 1, len(ids)))
        layers = set(pooled.values()) | set(answer_layers.values())
        lm = self._language_model()
        pad = tok.pad_token_id or 0
        width = max(len(r[2]) for r in rows)
        kept: dict[int, list[torch.Tensor]] = {k: [] for k in layers}
        from tqdm.auto import tqdm

        with (
            torch.inference_mode(),
            tqdm(total=len(rows), unit="prompt", disable=not progress, desc=self.name) as bar,
        ):
            for part in self._row_chunks(len(rows), width, batch_size):
                chunk = rows[part]
                ids, mask = _right_pad([r[2] for r in chunk], pad)
                ids, mask = ids.to(self.device), mask.to(self.device)
                positions, _ = self.prompt_positions({"attention_mask": mask})
                span = torch.zeros_like(mask)
                for j, r in enumerate(chunk):
                    span[j, r[3] : r[4]] = 1
                with _tap(lm, layers, max(layers)) as hidden:
                    self.model(
                        input_ids=ids,
                        attention_mask=mask,
                        position_ids=positions,
                        use_cache=False,
                        logits_to_keep=1,
                    )
                for k in layers:
                    kept[k].append(_masked_mean(hidden[k], span))
                bar.update(len(chunk))
        by_layer = {k: torch.cat(v) for k, v in kept.items()}
        data: dict[str, torch.Tensor] = {}
        for s in sites:
            kind = "llm" if s.kind == "llm" else f"answer:{s.level}"
            k = pooled[s.name] if s.kind == "llm" else answer_layers[s.name]
            data[s.name] = by_layer[k][[j for j, r in enumerate(rows) if r[0] == kind]]
        return Features(data, [None] * len(names))


class _QwenVLClassifier(VisionLLMClassifier):
    """Qwen-VL families: 3-D multimodal RoPE (M-RoPE), where image tokens take 2-D grid positions
    and text continues at the largest position + 1, not at the token count. Images are capped
    at 1680 px on the longer side, as the paper's Qwen script does."""

    max_image_side = 1680

    def image_transform(self) -> Callable[[Image.Image], Any] | None:
        return functools.partial(cap_image_side, max_side=self.max_image_side)

    def prompt_positions(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        mask = inputs["attention_mask"]
        if "image_grid_thw" not in inputs:
            flat, start = super().prompt_positions(inputs)
            return flat[None].expand(3, -1, -1), start
        positions, _ = self.model.model.get_rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"],
            attention_mask=mask,
        )
        last = positions.masked_fill(mask[None] == 0, -1).amax(dim=(0, 2))
        return positions, last + 1

    def suffix_positions(self, start: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return super().suffix_positions(start, mask)[None].expand(3, -1, -1)

    def vision_site(self) -> tuple[Any, str]:
        return self.model.model.visual, "output"

    def batch_vision_attention(self, on: bool = True) -> bool:
        from hierzoo.models import _vision_attention

        tower = self.model.model.visual
        if not on:
            _vision_attention.unpatch_vision_attention(tower)
            return False
        _vision_attention.patch_vision_attention(tower)
        return any(_vision_attention.is_patched(m) for m in tower.modules())

    def vision_tokens(self, kept: Any, inputs: Any) -> list[torch.Tensor]:
        # the last vision block's output, before the patch merger; Qwen2.5-VL keeps it in window
        # order, a permutation within each image, which a mean does not see
        sizes = inputs["image_grid_thw"].prod(-1).tolist()
        return list(torch.split(kept.last_hidden_state, sizes))


class Qwen2_5_VLClassifier(_QwenVLClassifier):
    """Qwen2.5-VL (3B, 7B, 32B, 72B Instruct)."""

    family = "qwen2.5-vl"
    model_class = "Qwen2_5_VLForConditionalGeneration"
    model_type = "qwen2_5_vl"


class Qwen3VLClassifier(_QwenVLClassifier):
    """Qwen3-VL (Instruct); deepstack features touch only the image positions, all in the prefix."""

    family = "qwen3-vl"
    model_class = "Qwen3VLForConditionalGeneration"
    model_type = "qwen3_vl"


class LlavaOnevisionClassifier(VisionLLMClassifier):
    """LLaVA-OneVision (the ``-ov-hf`` checkpoints): SigLIP + Qwen2 with 1-D RoPE; anyres images
    of different sizes share a batch through the processor's ``image_sizes``."""

    family = "llava-onevision"
    model_class = "LlavaOnevisionForConditionalGeneration"
    model_type = "llava_onevision"

    def vision_site(self) -> tuple[Any, str]:
        # the projector's input: the tower's vision_feature_layer, select strategy applied
        return self.model.model.multi_modal_projector, "input"

    def vision_tokens(self, kept: Any, inputs: Any) -> list[torch.Tensor]:
        from transformers.models.llava_onevision.modeling_llava_onevision import (
            image_size_to_num_patches,
        )

        config = self.model.config
        crops = [
            image_size_to_num_patches(
                image_size=size,
                grid_pinpoints=config.image_grid_pinpoints,
                patch_size=config.vision_config.image_size,
            )
            for size in inputs["image_sizes"]
        ]
        return [t.flatten(0, 1) for t in torch.split(kept, crops)]


class InternVLClassifier(VisionLLMClassifier):
    """InternVL 3 / 3.5 (the ``-hf`` checkpoints): tiles of 448 px plus a thumbnail, 1-D RoPE."""

    family = "internvl"
    model_class = "InternVLForConditionalGeneration"
    model_type = "internvl"

    def vision_site(self) -> tuple[Any, str]:
        return self.model.model.vision_tower, "output"

    def vision_tokens(self, kept: Any, inputs: Any) -> list[torch.Tensor]:
        # as get_image_features selects them, before the pixel shuffle and the projector
        config = self.model.config
        layer = config.vision_feature_layer
        feats = kept.last_hidden_state if layer == -1 else kept.hidden_states[layer]
        if config.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        tiles = (
            (inputs["input_ids"] == config.image_token_id).sum(-1) // config.image_seq_length
        ).tolist()
        return [t.flatten(0, 1) for t in torch.split(feats, tiles)]


def _default_token_budget(model: Any) -> int:
    """Rows x positions per forward pass: 8192 on the CPU; on a GPU, what fits in 40% of the free
    memory at the KV-cache and activation bytes per token of the model's text decoder."""
    device = model.device
    if device.type != "cuda":
        return CPU_TOKEN_BUDGET
    free, _ = torch.cuda.mem_get_info(device)
    text = model.config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    item = torch.finfo(model.dtype).bits // 8
    per_token = item * (
        2 * text.num_hidden_layers * kv_heads * head_dim
        + 4 * text.hidden_size
        + 3 * text.intermediate_size
    )
    return int(min(max(0.4 * free / per_token, 1024), 262144))
