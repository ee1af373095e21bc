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

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from hierzoo import prompts
from hierzoo.images import ImageInput
from hierzoo.models.vlm import _schedule
from hierzoo.models.vlm._lm import (
    LLMClassifier,
    load_checkpoint,
    place_model,
    refuse_loading_options,
)
from hierzoo.models.vlm._requests import _RequestsMixin

if TYPE_CHECKING:
    from hierzoo.models._registry import ModelSpec
    from hierzoo.prompts import Protocol

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


class VisionLLMClassifier(_RequestsMixin, LLMClassifier):
    """A transformers vision LLM that answers multiple-choice questions by letter logits.

    Subclasses name the transformers class and ``model_type`` of their family and override the
    hooks: :meth:`prompt_positions` and :meth:`suffix_positions` (the RoPE positions of a
    padded prompt batch and of text continuing a cached prefix), :meth:`image_transform`
    (what happens to a decoded image before the processor), :meth:`paper_processor` (the
    processor set as the paper's scripts prepare images), :meth:`image_views` (the views of an
    image in the processor's output, for :meth:`describe_requests`), and for :meth:`features`
    :meth:`vision_site` and :meth:`vision_tokens` (where the vision tower's features are read,
    and how they split per image). :attr:`paper_dtype` is the precision the paper ran the family
    in (the default on CUDA).

    Attributes:
        model: the transformers model (eval mode); ``None`` for a classifier made by
            :meth:`for_dry_run`, which describes its requests but cannot answer them.
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
    protocols = ("paper", "cot", "bio-cot", "taxonomy-context", "binary", "open")
    options = LLMClassifier.options | {
        "batched_vision_attention",
        "num_workers",
        "process_on_device",
        "image_processing",
    }
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
        self.image_processing = image_processing
        super().__init__(
            model,
            self.paper_processor(processor) if image_processing == "paper" else processor,
            name=name,
            spec=spec,
            token_budget=token_budget,
            batch_size=batch_size,
            prefix_cache=prefix_cache,
        )
        self.num_workers = num_workers
        self.process_on_device = process_on_device
        self.config = model.config if model is not None else None
        self.batched_vision_attention = (
            self.batch_vision_attention(batched_vision_attention) if model is not None else False
        )

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
        _import_transformers()
        dtype = resolve_dtype(dtype, cls.paper_dtype if device.type == "cuda" else torch.float32)
        model, processor = cls._load_checkpoint(
            spec,
            device=device,
            dtype=dtype,
            device_map=device_map,
            attn_implementation=attn_implementation,
            **kwargs,
        )
        return cls(
            model,
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
    def _load_checkpoint(
        cls,
        spec: ModelSpec,
        *,
        device: torch.device,
        dtype: torch.dtype,
        device_map: str | dict[str, Any] | None,
        attn_implementation: str | None,
        **kwargs: Any,
    ) -> tuple[Any, Any]:
        """The checkpoint's model (on ``device``, eval mode) and processor."""
        processor = cls._load_processor(spec)
        model = load_checkpoint(
            getattr(_import_transformers(), cls.model_class),
            spec,
            device=device,
            dtype=dtype,
            device_map=device_map,
            attn_implementation=attn_implementation,
            **kwargs,
        )
        return model, processor

    @classmethod
    def _load_config(cls, spec: ModelSpec, **options: Any) -> tuple[Any, Any]:
        """The checkpoint's config and processor, without its weights (:meth:`for_dry_run`)."""
        processor = cls._load_processor(spec)
        hub = {"revision": spec.revision} if spec.source is None else {}
        return _import_transformers().AutoConfig.from_pretrained(spec.location, **hub), processor

    @classmethod
    def _load_processor(cls, spec: ModelSpec) -> Any:
        """The checkpoint's processor, after checking that its config is the family's.

        Raises:
            ValueError: the checkpoint holds another family's model.
        """
        transformers = _import_transformers()
        hub = {"revision": spec.revision} if spec.source is None else {}
        config = transformers.AutoConfig.from_pretrained(spec.location, **hub)
        if config.model_type != cls.model_type:
            raise ValueError(
                f"{spec.location!r} holds a {config.model_type!r} model, but {cls.__name__} loads "
                f"{cls.model_type!r}; load it by its directory or hub id so hierzoo picks its "
                "family."
            )
        return transformers.AutoProcessor.from_pretrained(spec.location, **hub)

    @classmethod
    def for_dry_run(cls, spec: ModelSpec, **options: Any) -> VisionLLMClassifier:
        """The checkpoint's classifier without its weights: its config and processor (tokenizer,
        image processor, chat template) only, a few megabytes whatever the model's size, so
        :meth:`describe_requests` shows what a run would ask and nothing can be answered.

        Args:
            spec: the zoo spec (a hub id reads the processor's files at ``spec.revision``).
            **options: the options :meth:`from_spec` takes; ``prefix_cache`` (it decides how
                prompts split) and ``image_processing`` (how images are prepared) are used, the
                others are checked and ignored.

        Raises:
            OptionError: an option of another family.
            ValueError: the checkpoint holds another family's model.
        """
        cls.check_options(options, spec.name, pass_through=True)
        config, processor = cls._load_config(spec, **options)
        clf = cls(
            None,
            processor,
            name=spec.name,
            spec=spec,
            prefix_cache=options.get("prefix_cache", True),
            image_processing=options.get("image_processing", "paper"),
        )
        clf.config = config
        return clf

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
        from hierzoo.models._hf import load_processor

        name = name or getattr(model, "name_or_path", "") or cls.model_class
        refuse_loading_options(options)
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
        place_model(model, device, dtype)
        return cls(model.eval(), processor, name=name, spec=spec, **options)

    def identity(self, protocol: Protocol | None) -> dict[str, Any]:
        """The image processing (``image_processing``): a run prepared one way never resumes
        or mixes with one prepared the other."""
        return {**super().identity(protocol), "image_processing": self.image_processing}

    # ------------------------------------------------------------------ protocols
    def check_protocol(self, protocol: Protocol) -> None:
        """Also refuse, before any model work, a ``taxonomy-context`` prompt longer than the
        model's context (:meth:`context_limit`), naming both sizes."""
        super().check_protocol(protocol)
        if protocol.name != "taxonomy-context":
            return
        framing = prompts.protocol_framing(protocol, self.family)
        head, tail = self.template(protocol.mode, framing)
        tokens = len(self.processor.tokenizer(head + tail, add_special_tokens=False)["input_ids"])
        limit, source = self.context_limit()
        if limit is not None and tokens >= limit:
            raise ValueError(
                f"--protocol taxonomy-context puts the taxonomy {protocol.taxonomy_name!r} "
                f"({self.context_tokens(protocol)} tokens) in every prompt of {self.name!r}: "
                f"{tokens} tokens before the image and the question, but the model attends to "
                f"at most {limit} ({source}). Use a smaller taxonomy, or a model with a longer "
                "context."
            )

    def context_tokens(self, protocol: Protocol) -> int | None:
        """The tokens the whole taxonomy costs in each prompt under ``taxonomy-context``
        (``"Here is a taxonomy: "`` and the taxonomy, by this model's tokenizer); ``None`` under
        other protocols."""
        if protocol.name != "taxonomy-context":
            return None
        table = prompts.protocol_table("taxonomy-context")
        text = table["prefix"] + prompts.taxonomy_context(protocol.taxonomy)
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def context_limit(self) -> tuple[int | None, str]:
        """``(tokens, where it comes from)``: the longest sequence the model attends to, the
        smaller of its language model's ``max_position_embeddings`` and the tokenizer's
        ``model_max_length`` (where set); ``(None, "")`` when neither says."""
        found = []
        config = self.config
        text = getattr(config, "text_config", None) or getattr(config, "llm_config", None)
        for where, cfg in (("text_config", text), ("config", config)):
            n = getattr(cfg, "max_position_embeddings", None)
            if isinstance(n, int) and n > 0:
                found.append((n, f"{where}.max_position_embeddings"))
                break
        n = getattr(self.processor.tokenizer, "model_max_length", None)
        if isinstance(n, int) and 0 < n < 10**8:
            found.append((n, "tokenizer model_max_length"))
        return min(found) if found else (None, "")

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

    def image_views(self, inputs: Any) -> tuple[int, list[int]]:
        """``(views, [width, height])`` of the one image of a processor output: how many tiles or
        views of it the vision tower receives (thumbnail included), and the pixel size of each.
        Default: ``pixel_values`` of ``(tiles, channels, height, width)``."""
        pixels = inputs["pixel_values"]
        return int(pixels.shape[0]), [int(pixels.shape[-1]), int(pixels.shape[-2])]

    def image_transform(self) -> Callable[[Image.Image], Any] | None:
        """A picklable function applied to each decoded image in the loader workers, or ``None``."""
        return None

    def paper_processor(self, processor: Any) -> Any:
        """The processor to use under ``image_processing="paper"``: a copy set as the paper's
        scripts prepare images where that differs from the checkpoint's own settings (the
        processor passed in is not changed). Default: ``processor`` itself."""
        return processor

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
    def template(self, mode: str, framing: prompts.Framing | None = None) -> tuple[str, str]:
        """``(head, tail)``: the chat-template text before and after the user text of a mode
        (see :func:`hierzoo.models.vlm._chat.split_template`), with the system message the
        paper sends this family (:func:`hierzoo.prompts.system_message`) unless ``framing``
        (a protocol's own, :func:`hierzoo.prompts.protocol_framing`) brings one;
        ``head + user_text + tail`` is a full prompt."""
        if framing is None or framing.system is None:
            preamble = framing.preamble if framing is not None else None
            framing = prompts.Framing(prompts.system_message(mode, self.family), preamble)
        return super().template(mode, framing)

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

    def _prefix_tokens(self, image: Image.Image, framing: Any = None) -> int:
        head, _ = self.template("image", framing)
        return len(self.processor(text=[head], images=[image])["input_ids"][0])

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
