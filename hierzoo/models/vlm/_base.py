"""Vision LLMs answering the paper's four-choice questions by their option-letter logits.

Every question is one forward pass: the prompt is the model's chat template over the paper's
system message and user turn (:mod:`hierzoo.prompts`), and the answer is read from the logits of
the last prompt token (the prediction of the first assistant token) at the option letters' token
ids, softmaxed over the options only. Many questions share one forward pass (padded batches).
With the prefix cache on, the system message and image tokens run once per image and their KV
cache serves every level (and rotation) of that image's questions; the plain batched forward of
each full prompt is the fallback and the reference.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from hierzoo import prompts
from hierzoo.images import ImageInput, PipelineStats
from hierzoo.models.base import HierClassifier, OptionError
from hierzoo.models.vlm import _chat, _schedule
from hierzoo.models.vlm._answering import _AnsweringMixin
from hierzoo.models.vlm._features import _FeaturesMixin
from hierzoo.models.vlm._prefix_cache import _PrefixCacheMixin
from hierzoo.models.vlm._scoring import _NodeScoringMixin

if TYPE_CHECKING:
    from hierzoo.models._registry import ModelSpec

__all__ = ["IMAGE_PROCESSING", "VisionLLMClassifier", "cap_image_side"]

IMAGE_PROCESSING = ("paper", "checkpoint")
"""How a vision LLM prepares images: as the paper's scripts did for the family (``paper``: LLaVA-
OneVision one padded square view, InternVL at most four tiles, Qwen-VL resized to its patch grid
before the 1680 px cap), or as the checkpoint's processor does by itself (``checkpoint``)."""


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


class VisionLLMClassifier(
    _AnsweringMixin, _NodeScoringMixin, _FeaturesMixin, _PrefixCacheMixin, HierClassifier
):
    """A transformers vision LLM that answers multiple-choice questions by letter logits.

    Subclasses name the transformers class and ``model_type`` of their family and override the
    hooks: :meth:`prompt_positions` and :meth:`suffix_positions` (the RoPE positions of a
    padded prompt batch and of text continuing a cached prefix), :meth:`image_transform`
    (what happens to a decoded image before the processor), :meth:`paper_processor` (the
    processor set as the paper's scripts prepare images), and for :meth:`features`
    :meth:`vision_site` and :meth:`vision_tokens` (where the vision tower's features are read,
    and how they split per image). :attr:`paper_dtype` is the precision the paper ran the family
    in (the default on CUDA).

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
        num_workers: image-decoding worker processes (``None``: one per core but one).
        process_on_device: run the image processor's resizing, normalising and patching on the
            model's device (transformers' torchvision-backed processors take a ``device``);
            ``None`` (default): on CUDA, where the processor supports it.
        image_processing: ``"paper"`` (default): images prepared as the paper's scripts prepared
            them for the family; ``"checkpoint"``: as the checkpoint's processor does by itself
            (see :data:`IMAGE_PROCESSING`).
        pipeline_stats: host time of the last calls (:class:`hierzoo.images.PipelineStats`):
            waiting for decoded images (``input_wait``) and inside the processor
            (``preprocess``: tokenising, and the image work unless it runs on the device).
    """

    label = "vision LLM"
    generative = True
    options = frozenset(
        {
            "token_budget",
            "batch_size",
            "prefix_cache",
            "batched_vision_attention",
            "num_workers",
            "process_on_device",
            "device_map",
            "attn_implementation",
            "image_processing",
        }
    )
    model_class: str = ""
    model_type: str = ""
    paper_dtype: torch.dtype = torch.bfloat16

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
        num_workers: int | None = None,
        process_on_device: bool | None = None,
        image_processing: str = "paper",
    ):
        if image_processing not in IMAGE_PROCESSING:
            raise ValueError(
                f"Expected `image_processing` to be one of {IMAGE_PROCESSING}, but got "
                f"{image_processing!r}."
            )
        if token_budget is not None and token_budget < 1:
            raise ValueError(f"Expected `token_budget` >= 1, but got {token_budget!r}.")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"Expected `batch_size` >= 1, but got {batch_size!r}.")
        self.model = model
        self.image_processing = image_processing
        self.processor = (
            self.paper_processor(processor) if image_processing == "paper" else processor
        )
        self.name = name
        self.spec = spec
        self.device = model.device
        self.dtype = model.dtype
        self.token_budget = token_budget or _schedule.default_token_budget(model)
        self.batch_size = batch_size
        self.prefix_cache = prefix_cache
        self.num_workers = num_workers
        self.process_on_device = process_on_device
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
        attn_implementation: str | None = None,
        token_budget: int | None = None,
        batch_size: int | None = None,
        prefix_cache: bool = True,
        batched_vision_attention: bool = True,
        num_workers: int | None = None,
        process_on_device: bool | None = None,
        image_processing: str = "paper",
        **kwargs: Any,
    ) -> VisionLLMClassifier:
        """Load a checkpoint (hub id at ``spec.revision``, or a ``save_pretrained`` directory).

        Args:
            spec: the zoo spec (``spec.location`` is what loads).
            device: where the model runs (ignored with ``device_map``).
            dtype: weights' dtype; default on CUDA the precision the paper ran the family in
                (:attr:`paper_dtype`: float16 for LLaVA-OneVision, bfloat16 for the others),
                float32 on CPU.
            device_map: transformers' ``device_map`` (``"auto"`` spreads a model over GPUs).
            attn_implementation: ``"sdpa"`` (default), ``"eager"``, ``"flash_attention_2"`` ...
            token_budget, batch_size, prefix_cache, process_on_device: see the class attributes.
            batched_vision_attention: Qwen-VL families under ``sdpa`` / ``eager``: run the vision
                tower's attention as one call per window length instead of one per window
                (:meth:`batch_vision_attention`); ``False`` keeps transformers' own loop.
            num_workers: image-decoding worker processes (default: one per core but one).
            image_processing: ``"paper"`` or ``"checkpoint"`` (see the class attributes).
            **kwargs: passed to the model's ``from_pretrained``; another family's options are
                refused (:meth:`check_options`).
        """
        from hierzoo.models._factory import resolve_dtype

        cls.check_options(kwargs, spec.name, pass_through=True)
        transformers = _import_transformers()
        dtype = resolve_dtype(dtype, cls.paper_dtype if device.type == "cuda" else torch.float32)
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
            num_workers=num_workers,
            process_on_device=process_on_device,
            image_processing=image_processing,
        )

    @classmethod
    def from_model(
        cls,
        model: Any,
        processor: Any = None,
        *,
        name: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        spec: ModelSpec | None = None,
        **options: Any,
    ) -> VisionLLMClassifier:
        """Wrap the family's ``...ForConditionalGeneration`` held in memory (its weights used,
        not copied; moved to ``device`` and cast to ``dtype`` in place when given; a model spread
        over devices with ``device_map`` stays where it is).

        Args:
            model: the transformers model.
            processor: its processor, or a directory or hub id to load it from (default: where
                ``from_pretrained`` loaded the model from).
            name: what results call the model (default: where it was loaded from).
            **options: ``token_budget``, ``batch_size``, ``prefix_cache``,
                ``batched_vision_attention`` (on by default for Qwen-VL: it patches the attention
                modules of ``model``'s vision tower in place, with the same outputs),
                ``num_workers``, ``process_on_device``, ``image_processing``.

        Raises:
            TypeError: a model that is not the family's class with a language-model head.
            ValueError: no processor to be had.
            OptionError: an option of another family, or one that only loading takes.
        """
        from hierzoo.models._factory import resolve_device, resolve_dtype
        from hierzoo.models._hf import load_processor

        name = name or getattr(model, "name_or_path", "") or cls.model_class
        loading = sorted({"device_map", "attn_implementation"} & options.keys())
        if loading:
            raise OptionError(
                f"{', '.join(loading)}: options of loading a checkpoint (hierzoo.load); a model "
                "held in memory runs as it was loaded.",
                loading,
                [],
            )
        cls.check_options(options, name)
        transformers = _import_transformers()
        expected = getattr(transformers, cls.model_class)
        if not isinstance(model, expected):
            raise TypeError(
                f"A {cls.family} model scores answers through its language-model head: expected "
                f"a {cls.model_class} (AutoModelForImageTextToText), but got "
                f"{type(model).__name__}."
            )
        processor = load_processor(model, processor, f"{cls.family} model")
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
        return cls(model.eval(), processor, name=name, spec=spec, **options)

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

    def paper_processor(self, processor: Any) -> Any:
        """The processor to use under ``image_processing="paper"``: a copy set as the paper's
        scripts prepare images where that differs from the checkpoint's own settings (the
        processor passed in is not changed). Default: ``processor`` itself."""
        return processor

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
    @property
    def zoo_name(self) -> str | None:
        """The zoo name the model was loaded by, ``None`` for a directory or a model held in
        memory: the key of the paper's per-model settings (its default prompt variants,
        :func:`hierzoo.prompts.default_prompt_variant`)."""
        spec = self.spec
        return spec.name if spec is not None and spec.source is None else None

    def template(self, mode: str) -> tuple[str, str]:
        """``(head, tail)``: the chat-template text before and after the user text of a mode
        (see :func:`hierzoo.models.vlm._chat.split_template`), with the system message the
        paper sends this family (:func:`hierzoo.prompts.system_message`); ``head + user_text +
        tail`` is a full prompt."""
        if mode not in self._templates:
            self._templates[mode] = _chat.split_template(
                self.processor,
                mode,
                self.name,
                check_prefix=self.prefix_cache,
                system=prompts.system_message(mode, self.family),
            )
        return self._templates[mode]

    def letter_token_ids(self, n: int, mode: str = "image") -> list[int]:
        """Token ids of the first ``n`` option letters as the first assistant token (the
        letter-token rule, :func:`hierzoo.models.vlm._chat.letter_token_ids`)."""
        key = (mode, n)
        if key not in self._letter_cache:
            tail = self.template(mode)[1]
            self._letter_cache[key] = _chat.letter_token_ids(
                self.processor.tokenizer, tail, n, self.name
            )
        return self._letter_cache[key]

    def answer_end(self) -> str:
        """The text that closes an assistant turn right after its content (``<|im_end|>``)."""
        return _chat.answer_end(self.processor, self.name)

    # ------------------------------------------------------------------ inputs and scheduling
    def _image_groups(
        self,
        items: Sequence[ImageInput],
        batch_size: int | None,
        cost: Callable[[Image.Image], int],
        failed: Callable[[int, str], None],
    ) -> Iterator[list[tuple[int, Image.Image]]]:
        """Decoded images in groups (see :func:`hierzoo.models.vlm._schedule.image_groups`)."""
        return _schedule.image_groups(
            items,
            self.image_transform(),
            batch_size,
            self.token_budget,
            cost,
            failed,
            self.pipeline_stats,
            self.num_workers,
        )

    def _prefix_tokens(self, image: Image.Image) -> int:
        head, _ = self.template("image")
        return len(self._encode([head], [image], side="right")["input_ids"][0])

    def _row_chunks(self, n_rows: int, row_tokens: int, batch_size: int | None) -> Iterator[slice]:
        return _schedule.row_chunks(n_rows, row_tokens, batch_size, self.token_budget)

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

        image_processor = getattr(self.processor, "image_processor", None)
        if type(image_processor).__name__.endswith("Pil"):  # transformers' PIL backend
            return False
        kwargs = getattr(image_processor, "valid_kwargs", None)
        try:
            return kwargs is not None and "device" in typing.get_type_hints(kwargs)
        except Exception:  # an unresolvable annotation: do not guess
            return False
