"""What every language-model classifier shares, with or without images: the model and its
processor, the prompt's chat-template split and letter tokens, RoPE positions, the token budget
and tokenising.

:class:`LLMClassifier` carries the answering (fused passes, the prefix cache), node scoring and
feature machinery of this package; :class:`~hierzoo.models.vlm.VisionLLMClassifier` adds the
image pipeline, :class:`~hierzoo.models.llm.TextLLMClassifier` asks text-only LLMs.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from hierzoo import prompts
from hierzoo.images import PipelineStats
from hierzoo.models.base import HierClassifier, OptionError, check_batch_size
from hierzoo.models.vlm import _chat, _schedule
from hierzoo.models.vlm._answering import _AnsweringMixin
from hierzoo.models.vlm._features import _FeaturesMixin
from hierzoo.models.vlm._open import _OpenMixin
from hierzoo.models.vlm._prefix_cache import _PrefixCacheMixin
from hierzoo.models.vlm._scoring import _NodeScoringMixin

if TYPE_CHECKING:
    from PIL import Image

    from hierzoo.models._registry import ModelSpec

__all__ = ["LLMClassifier", "load_checkpoint", "place_model", "refuse_loading_options"]

LOADING_OPTIONS = frozenset({"device_map", "attn_implementation", "trust_remote_code"})
"""Options of loading a checkpoint, which a model held in memory no longer takes."""


def refuse_loading_options(options: Any) -> None:
    """Refuse the loading options (:data:`LOADING_OPTIONS`) when wrapping a model in memory.

    Raises:
        OptionError: naming them.
    """
    loading = sorted(LOADING_OPTIONS & set(options))
    if loading:
        raise OptionError(
            f"{', '.join(loading)}: options of loading a checkpoint (hierzoo.load); a model "
            "held in memory runs as it was loaded.",
            loading,
            [],
        )


def load_checkpoint(
    model_class: Any,
    spec: ModelSpec,
    *,
    device: torch.device,
    dtype: torch.dtype,
    device_map: str | dict[str, Any] | None,
    attn_implementation: str | None,
    **kwargs: Any,
) -> Any:
    """``model_class.from_pretrained`` of a spec's checkpoint (a hub id at ``spec.revision``, or
    a directory), on ``device`` unless ``device_map`` places it, in eval mode."""
    hub = {"revision": spec.revision} if spec.source is None else {}
    model = model_class.from_pretrained(
        spec.location,
        dtype=dtype,
        device_map=device_map,
        attn_implementation=attn_implementation,
        **hub,
        **kwargs,
    )
    if device_map is None:
        model.to(device)
    return model.eval()


def place_model(model: Any, device: str | torch.device | None, dtype: Any) -> None:
    """Move a model held in memory to ``device`` and cast it to ``dtype``, in place, where they
    are given and differ; a model spread over devices with ``device_map`` stays where it is.

    Raises:
        ValueError: a ``device`` for a model spread over devices.
    """
    from hierzoo.models._factory import resolve_device, resolve_dtype

    target = resolve_dtype(dtype, model.dtype)
    spread = len(set(getattr(model, "hf_device_map", {}).values())) > 1
    if device is not None and spread:
        raise ValueError(
            "This model is spread over devices with device_map; wrap it without `device` (it "
            "runs where it is)."
        )
    moved: dict[str, Any] = {}
    if device is not None and model.device != resolve_device(device):
        moved["device"] = resolve_device(device)
    if target != model.dtype:
        moved["dtype"] = target
    if moved:
        model.to(**moved)


class LLMClassifier(
    _AnsweringMixin,
    _OpenMixin,
    _NodeScoringMixin,
    _FeaturesMixin,
    _PrefixCacheMixin,
    HierClassifier,
):
    """A transformers language model that answers multiple-choice questions by letter logits.

    The base of the vision-LLM and text-only-LLM families: it holds the model and a processor
    (``processor.tokenizer``, ``processor(text=..., images=..., padding_side=...)`` and
    ``processor.apply_chat_template``), splits the chat template around the user text
    (:meth:`template`), finds the option letters' token ids (:meth:`letter_token_ids`) and
    schedules rows by the token budget. Subclasses load the family's model and say how it
    takes its inputs.

    Attributes:
        model: the transformers model (eval mode).
        processor: its processor.
        token_budget: the most (rows x sequence positions) one forward pass may hold.
        batch_size: question-set entries per fused pass, overriding the budget.
        prefix_cache: run the prompt's shared head once and continue every question from its
            KV cache (``False``: one full prompt per row).
        pipeline_stats: host time of the last calls (:class:`hierzoo.images.PipelineStats`).
    """

    generative = True
    letter_separator = ""
    """What comes between the prompt's end and the answer letter (``" "`` after ``Answer:``)."""
    options = frozenset(
        {
            "token_budget",
            "batch_size",
            "prefix_cache",
            "device_map",
            "attn_implementation",
            "trust_remote_code",
        }
    )

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
    ):
        if token_budget is not None and token_budget < 1:
            raise ValueError(f"Expected `token_budget` >= 1, but got {token_budget!r}.")
        check_batch_size(batch_size)
        weights = model is not None  # None: made for a dry run, describes requests only
        self.model = model
        self.processor = processor
        self.name = name
        self.spec = spec
        self.device = model.device if weights else torch.device("cpu")
        self.dtype = model.dtype if weights else torch.float32
        self.token_budget = token_budget or (
            _schedule.default_token_budget(model) if weights else _schedule.CPU_TOKEN_BUDGET
        )
        self.batch_size = batch_size
        self.prefix_cache = prefix_cache
        self._templates: dict[Any, tuple[str, str]] = {}
        forward = inspect.signature(model.forward).parameters if weights else {}
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        self._letter_cache: dict[tuple[Any, ...], list[int]] = {}
        self.pipeline_stats = PipelineStats()

    def _require_weights(self) -> None:
        if self.model is None:
            raise ValueError(
                f"{self.name!r} was loaded without its weights (for_dry_run): it describes its "
                "requests but answers nothing; load it with hierzoo.load."
            )

    # ------------------------------------------------------------------ positions
    def prompt_positions(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE positions of a padded processor batch, and the position after each row's last
        real token (where a continuation starts). Default: 1-D positions counting real tokens."""
        mask = inputs["attention_mask"].long()
        return (mask.cumsum(-1) - 1).clamp(min=0), mask.sum(-1)

    def suffix_positions(self, start: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Positions of a left-padded continuation whose first real token sits at ``start``."""
        return start[:, None] + (mask.long().cumsum(-1) - 1).clamp(min=0)

    # ------------------------------------------------------------------ prompts
    @property
    def zoo_name(self) -> str | None:
        """The zoo name the model was loaded by, ``None`` for a directory or a model held in
        memory: the key of the paper's per-model settings (its default prompt variants,
        :func:`hierzoo.prompts.default_prompt_variant`)."""
        spec = self.spec
        return spec.name if spec is not None and spec.source is None else None

    def template(self, mode: str, framing: prompts.Framing | None = None) -> tuple[str, str]:
        """``(head, tail)``: the chat-template text before and after the user text of a mode
        (see :func:`hierzoo.models.vlm._chat.split_template`); ``head + user_text + tail`` is
        a full prompt. ``framing``: a protocol's own system message and text before the image
        (:func:`hierzoo.prompts.protocol_framing`; default: the paper's).

        Raises:
            ValueError: a system message the chat template does not render (a template that
                drops a plain-string system message).
        """
        key = mode if framing is None else (mode, framing)
        if key not in self._templates:
            system, preamble = framing or (None, None)
            head, tail = _chat.split_template(
                self.processor,
                mode,
                self.name,
                check_prefix=self.prefix_cache,
                system=system,
                preamble=preamble,
            )
            if preamble is not None and preamble not in head:
                raise ValueError(
                    f"The chat template of {self.name!r} does not put text before the image in "
                    "the user turn, so it cannot ask with the protocol's text there."
                )
            self._templates[key] = head, tail
        return self._templates[key]

    def letter_token_ids(self, n: int, mode: str = "image") -> list[int]:
        """Token ids of the first ``n`` option letters as the first assistant token (the
        letter-token rule, :func:`hierzoo.models.vlm._chat.letter_token_ids`)."""
        key = (mode, n)
        if key not in self._letter_cache:
            tail = self.template(mode)[1]
            self._letter_cache[key] = _chat.letter_token_ids(
                self.processor.tokenizer, tail, n, self.name, self.letter_separator
            )
        return self._letter_cache[key]

    def answer_token_ids(
        self, words: tuple[str, ...], mode: str = "image", framing: prompts.Framing | None = None
    ) -> list[int]:
        """Token ids of the first token of each answer word (``("Yes", "No")``) as the first
        assistant token (:func:`hierzoo.models.vlm._chat.answer_token_ids`)."""
        key = (mode, framing, words)
        if key not in self._letter_cache:
            tail = self.template(mode, framing)[1]
            self._letter_cache[key] = _chat.answer_token_ids(
                self.processor.tokenizer, tail, words, self.name
            )
        return self._letter_cache[key]

    def answer_end(self) -> str:
        """The text that closes an assistant turn right after its content (``<|im_end|>``)."""
        return _chat.answer_end(self.processor, self.name)

    # ------------------------------------------------------------------ inputs and scheduling
    def _row_chunks(self, n_rows: int, row_tokens: int, batch_size: int | None) -> Iterator[slice]:
        return _schedule.row_chunks(n_rows, row_tokens, batch_size, self.token_budget)

    def _encode(self, texts: list[str], images: list[Image.Image] | None, side: str) -> Any:
        start = time.perf_counter()
        kw = {"device": str(self.device)} if images is not None and self._images_on_device() else {}
        enc = self.processor(  # the chat template writes any BOS itself
            text=texts,
            images=images,
            padding=True,
            padding_side=side,
            return_tensors="pt",
            add_special_tokens=False,
            **kw,
        )
        enc = enc.to(device=self.device, dtype=self.dtype)
        self.pipeline_stats.preprocess += time.perf_counter() - start
        return enc

    def _images_on_device(self) -> bool:
        """Whether images go through the processor on the model's device; default ``False``."""
        return False
