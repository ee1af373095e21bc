"""Text-only LLMs answering the paper's text questions: any chat (or base) model that
transformers loads with ``AutoModelForCausalLM`` (Qwen2, Qwen2.5, Qwen3, Llama, Mistral, Gemma,
... and InternLM2.5 through its own code).

The paper's "original LLM" runs (its ``evaluation/og_llm`` scripts): the question names the leaf
(text mode), no image, options in the file's order. A chat model gets its chat template over the
system message "You are a helpful assistant." and the question; InternLM2.5 keeps its own default
system message, as the paper's ``model.chat`` calls do; a base model gets the raw prompt
``question + " Answer:"`` with no template (the scripts' ``--base`` runs). The answer is read as
for the vision LLMs (:mod:`hierzoo.models.vlm`): the option letters' logits at the last prompt
position, many questions per fused pass, the system turn's KV cache shared by every question.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from hierzoo import prompts
from hierzoo.images import ImageInput
from hierzoo.models.base import checked_questions
from hierzoo.models.outputs import Answers, Features, NodeScores
from hierzoo.models.vlm import _chat
from hierzoo.models.vlm._lm import (
    LLMClassifier,
    load_checkpoint,
    place_model,
    refuse_loading_options,
)
from hierzoo.prompts import Protocol

if TYPE_CHECKING:
    from hierzoo.models._registry import ModelSpec
    from hierzoo.tasks import Question
    from hierzoo.taxonomy import Taxonomy

__all__ = [
    "BASE_TAIL",
    "FRAMINGS",
    "INTERNLM_SYSTEM",
    "InternLM2Classifier",
    "TextLLMClassifier",
    "TextProcessor",
]

FRAMINGS = ("chat", "base")
"""How a text-only LLM is prompted: its chat template (``chat``), or the raw question followed by
:data:`BASE_TAIL` (``base``, the paper's ``--base`` runs of a base model)."""

BASE_TAIL = " Answer:"
"""What the paper's base-model runs append to the question (``question + " Answer:"``)."""

PAPER_TEXT_VARIANTS = {
    "cub200": 1,
    "inat21-animal": 1,
    "inat21-plant": 1,
    "imagenet-animal": 2,
    "imagenet-artifact": 2,
}
"""The wording variant of the paper's text runs (``scripts/all_text_benchmarks.sh``,
``all_og_llm_on_text.sh``): 1 for CUB-200 and iNat21, 2 for ImageNet."""

INTERNLM_SYSTEM = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI "
    "Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the "
    "user such as English and 中文."
)
"""InternLM2's default ``meta_instruction``: the system message of the paper's InternLM2.5 runs
(``model.chat`` without one of its own)."""


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "Text-only LLMs need transformers, which is not installed: pip install 'hierzoo[vlm]'"
        ) from e
    return transformers


class TextProcessor:
    """A text-only model's processor: its tokenizer, called as a vision LLM's processor is.

    ``processor(text=[...], padding_side=...)`` tokenizes prompts that already hold their special
    tokens (a rendered chat template), so none are added; ``apply_chat_template`` takes the
    transformers message layout (content as a list of ``{"type": "text"}`` parts) and passes
    each message's text as the plain string that text-only chat templates expect.

    Attributes:
        tokenizer: the tokenizer.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    @property
    def chat_template(self) -> str | None:
        """The tokenizer's chat template (``None``: it has none)."""
        return getattr(self.tokenizer, "chat_template", None)

    def __call__(
        self,
        text: Sequence[str],
        images: Any = None,
        padding: bool = True,
        padding_side: str = "right",
        return_tensors: str = "pt",
        **kwargs: Any,
    ) -> Any:
        from transformers import BatchFeature

        if images is not None:
            raise ValueError("A text-only LLM takes no images.")
        enc = self.tokenizer(
            list(text),
            add_special_tokens=False,
            padding=padding,
            padding_side=padding_side,
            return_tensors=return_tensors,
        )
        return BatchFeature(dict(enc))

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        """The tokenizer's chat template over ``messages`` with plain-string contents; a system
        message whose content is empty is left out (the template's own default system turn, if
        it has one, takes its place).

        Raises:
            ValueError: a message with an image.
        """
        flat = []
        for m in messages:
            content = m["content"]
            if not isinstance(content, str):
                if any(part.get("type") != "text" for part in content):
                    raise ValueError("A text-only LLM takes no images.")
                content = "".join(part["text"] for part in content)
            if m["role"] == "system" and not content:
                continue
            flat.append({**m, "content": content})
        return self.tokenizer.apply_chat_template(flat, **kwargs)


class TextLLMClassifier(LLMClassifier):
    """A text-only LLM (``AutoModelForCausalLM``) answering the paper's text questions by their
    option-letter logits.

    Text mode only: the question names the leaf and no image is shown; image mode, node scores
    and image features are refused with the mode to use. :meth:`default_protocol` is the
    paper's text protocol (the file's option order, the text runs' wording variant).

    Attributes:
        framing: ``"chat"`` (the chat template over :attr:`system_message` and the question) or
            ``"base"`` (``question + " Answer:"``, no template; the letters are read as
            ``" A"``, ``" B"`` ...).
        system_message: the system turn of the chat framing (``""``: none is sent, and the
            chat template's own default, if it has one, takes its place).
        text_prompt_variants: the paper's wording variant per bundled taxonomy
            (:meth:`paper_prompt_variant`).
    """

    family = "llm"
    label = "text-only LLM"
    protocols = ("paper", "cot", "open")
    default_mode = "text"
    options = LLMClassifier.options | {"framing", "system_message"}
    default_system_message: ClassVar[str] = prompts.system_message("text")
    text_prompt_variants: ClassVar[dict[str, int]] = PAPER_TEXT_VARIANTS
    requires_remote_code: ClassVar[bool] = False

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "",
        spec: ModelSpec | None = None,
        token_budget: int | None = None,
        batch_size: int | None = None,
        prefix_cache: bool = True,
        framing: str | None = None,
        system_message: str | None = None,
    ):
        processor = tokenizer if isinstance(tokenizer, TextProcessor) else TextProcessor(tokenizer)
        super().__init__(
            model,
            processor,
            name=name,
            spec=spec,
            token_budget=token_budget,
            batch_size=batch_size,
            prefix_cache=prefix_cache,
        )
        if framing is None:
            framing = getattr(spec, "framing", None) or (
                "chat" if processor.chat_template else "base"
            )
        if framing not in FRAMINGS:
            raise ValueError(f"Expected `framing` to be one of {FRAMINGS}, but got {framing!r}.")
        if framing == "chat" and not processor.chat_template:
            raise ValueError(
                f"{name!r} has no chat template (a base model?); load it with framing='base' to "
                'ask question + " Answer:" as the paper\'s base-model runs do.'
            )
        self.framing = framing
        self.system_message = (
            self.default_system_message if system_message is None else system_message
        )
        if framing == "base":
            self.letter_separator = " "
        self.template("text")  # a template that cannot ask the paper's questions fails here

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
        trust_remote_code: bool = False,
        token_budget: int | None = None,
        batch_size: int | None = None,
        prefix_cache: bool = True,
        framing: str | None = None,
        system_message: str | None = None,
        **kwargs: Any,
    ) -> TextLLMClassifier:
        """Load a checkpoint (hub id at ``spec.revision``, or a ``save_pretrained`` directory)
        with ``AutoTokenizer`` and ``AutoModelForCausalLM``.

        Args:
            spec: the zoo spec (``spec.location`` is what loads; ``spec.framing`` the default
                framing).
            device: where the model runs (ignored with ``device_map``).
            dtype: weights' dtype; default bfloat16 on CUDA, float32 on CPU.
            device_map: transformers' ``device_map`` (``"auto"`` spreads a model over GPUs).
            attn_implementation: ``"sdpa"`` (default), ``"eager"``, ``"flash_attention_2"`` ...
            trust_remote_code: run the checkpoint's own modelling code (InternLM2.5 has no
                transformers class); refused without it for families that need it.
            token_budget, batch_size, prefix_cache: as for vision LLMs.
            framing: ``"chat"`` or ``"base"`` (default: the spec's; else ``"chat"`` when the
                tokenizer has a chat template, ``"base"`` when it has none).
            system_message: the chat framing's system turn (default: the family's; ``""``: none,
                the template's own default system turn where it has one).
            **kwargs: passed to ``from_pretrained``; another family's options are refused.

        Raises:
            ValueError: a checkpoint that needs its own code without ``trust_remote_code``, or
                one whose config is not a text-only causal LM.
        """
        from hierzoo.models._factory import resolve_dtype
        from hierzoo.models._registry import is_causal_lm_config

        cls.check_options(kwargs, spec.name, pass_through=True)
        if cls.requires_remote_code and not trust_remote_code:
            raise ValueError(
                f"{spec.name!r} runs its checkpoint's own modelling code ({spec.location}); load "
                "it with trust_remote_code=True (hierzoo eval --trust-remote-code) if you trust "
                "that code."
            )
        transformers = _import_transformers()
        dtype = resolve_dtype(dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
        hub: dict[str, Any] = {"revision": spec.revision} if spec.source is None else {}
        if trust_remote_code:
            hub["trust_remote_code"] = True
        config = transformers.AutoConfig.from_pretrained(spec.location, **hub)
        if not is_causal_lm_config(config.to_dict()):
            raise ValueError(
                f"{spec.location!r} holds a {config.model_type!r} model, not a text-only causal "
                "LM; load it by its directory or hub id so hierzoo picks its family."
            )
        tokenizer = transformers.AutoTokenizer.from_pretrained(spec.location, **hub)
        model = load_checkpoint(
            transformers.AutoModelForCausalLM,
            spec,
            device=device,
            dtype=dtype,
            device_map=device_map,
            attn_implementation=attn_implementation,
            **kwargs,
        )
        return cls(
            model,
            tokenizer,
            name=spec.name,
            spec=spec,
            token_budget=token_budget,
            batch_size=batch_size,
            prefix_cache=prefix_cache,
            framing=framing,
            system_message=system_message,
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
    ) -> TextLLMClassifier:
        """Wrap a causal LM held in memory (its weights used, not copied; moved to ``device``
        and cast to ``dtype`` in place when given).

        Args:
            model: a transformers ``...ForCausalLM``.
            processor: its tokenizer (or a processor holding one), or a directory or hub id to
                load it from (default: where ``from_pretrained`` loaded the model from).
            name: what results call the model (default: where it was loaded from).
            **options: ``token_budget``, ``batch_size``, ``prefix_cache``, ``framing``,
                ``system_message``.

        Raises:
            TypeError: a model without a language-model head.
            ValueError: no tokenizer to be had.
            OptionError: an option of another family, or one that only loading takes.
        """
        name = name or getattr(model, "name_or_path", "") or type(model).__name__
        refuse_loading_options(options)
        cls.check_options(options, name)
        transformers = _import_transformers()
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if not isinstance(model, transformers.PreTrainedModel) or head is None:
            raise TypeError(
                f"A {cls.label} answers through its language-model head: expected a "
                f"...ForCausalLM (AutoModelForCausalLM), but got {type(model).__name__}."
            )
        tokenizer = _load_tokenizer(model, processor)
        place_model(model, device, dtype)
        return cls(model.eval(), tokenizer, name=name, spec=spec, **options)

    # ------------------------------------------------------------------ the protocol
    @classmethod
    def check_mode(cls, mode: str, task: str = "questions", name: str = "") -> None:
        """A text-only LLM runs the text questions only.

        Raises:
            ValueError: image mode or the path task, naming ``--mode text``.
        """
        who = f"{name!r} is a {cls.label}" if name else f"A {cls.label}"
        if task == "path":
            raise ValueError(
                f"{who}: it sees no image, so it cannot predict paths for images (--task path); "
                "ask it the text questions: --task questions --mode text."
            )
        if mode != "text":
            raise ValueError(
                f"{who}: it sees no image and answers the text questions only (the leaf named "
                "in the question); use --mode text (Protocol(mode='text'))."
            )

    def check_protocol(self, protocol: Protocol) -> None:
        type(self).check_mode(protocol.mode, name=self.name)
        super().check_protocol(protocol)

    def paper_prompt_variant(self, taxonomy: str | Taxonomy | None) -> int:
        """The wording variant the paper's text runs use for ``taxonomy``
        (:attr:`text_prompt_variants`; 0 for a taxonomy the paper did not ask)."""
        key = Protocol(taxonomy=taxonomy).taxonomy_name
        return self.text_prompt_variants.get(
            key, prompts.default_prompt_variant(taxonomy, self.family)
        )

    def _paper_protocol(self, protocol: Protocol) -> Protocol:
        """The paper's text protocol: text mode (:attr:`default_mode`), the file's option order,
        the text runs' wording variant (:meth:`paper_prompt_variant`) unless ``prompt_variant``
        is given. Another ``mode`` is passed on, for :meth:`check_protocol` to refuse."""
        return self._with_variant(protocol)

    def _with_variant(self, protocol: Protocol | None) -> Protocol:
        """``protocol`` (default :meth:`default_protocol`) with the paper's variant filled in."""
        if protocol is None:
            return self.default_protocol()
        if protocol.prompt_variant is not None:
            return protocol
        return replace(protocol, prompt_variant=self.paper_prompt_variant(protocol.taxonomy))

    # ------------------------------------------------------------------ answering
    def answer(
        self,
        questions: Sequence[Question],
        *,
        protocol: Protocol | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Answers:
        """Answer every level but the leaf of every question-set entry in text mode (see
        :meth:`hierzoo.models.vlm.VisionLLMClassifier.answer`).

        ``protocol`` defaults to :meth:`default_protocol` (text mode); a protocol without a
        ``prompt_variant`` gets the paper's text variant for its taxonomy. ``extra`` also holds
        ``framing``.

        Raises:
            ValueError: image mode (use text mode), or a bad protocol value.
        """
        questions, protocol = checked_questions(questions, protocol)
        answers = super().answer(
            questions,
            protocol=self._with_variant(protocol),
            batch_size=batch_size,
            progress=progress,
        )
        answers.extra["framing"] = self.framing
        return answers

    def iter_answers(
        self,
        questions: Sequence[Question],
        *,
        protocol: Protocol | None = None,
        batch_size: int | None = None,
        chunk_size: int = 256,
    ) -> Iterator[tuple[list[int], Answers]]:
        """Stream :meth:`answer` in pieces of consecutive entries (at most ``chunk_size``)."""
        questions, protocol = checked_questions(questions, protocol)
        for positions, answers in super().iter_answers(
            questions,
            protocol=self._with_variant(protocol),
            batch_size=batch_size,
            chunk_size=chunk_size,
        ):
            answers.extra["framing"] = self.framing
            yield positions, answers

    # ------------------------------------------------------------------ prompts
    def template(self, mode: str = "text", framing: Any = None) -> tuple[str, str]:
        """``(head, tail)`` around the user text: the chat template's (system turn and user
        header; end of turn and assistant header), or for the base framing the tokenizer's own
        leading special tokens (a BOS, where it adds one) and ``" Answer:"``. The system turn is
        the classifier's :attr:`system_message`; no protocol of this family brings its own.

        Raises:
            ValueError: image mode, or a protocol's own framing (``framing``).
        """
        type(self).check_mode(mode, name=self.name)
        if framing is not None:
            raise ValueError(
                f"{self.name!r} sends its own system turn (system_message); no protocol of text "
                "LLMs replaces it."
            )
        if mode in self._templates:
            return self._templates[mode]
        if self.framing == "base":
            tok = self.processor.tokenizer
            head, tail = _chat.leading_special_text(tok, self.name, "the base framing"), BASE_TAIL
        else:
            try:
                head, tail = _chat.split_template(
                    self.processor, mode, self.name, check_prefix=False, system=self.system_message
                )
            except ValueError:
                raise
            except Exception as e:  # a template's own refusal (a Jinja exception)
                raise ValueError(
                    f"The chat template of {self.name!r} cannot render the paper's conversation "
                    f"({type(e).__name__}: {e}); load it with system_message='' to send no "
                    "system turn, or with framing='base'."
                ) from e
        if self.prefix_cache and not (
            head and _chat.clean_boundary(self.processor.tokenizer, head, tail)
        ):
            # nothing before the question to share, or tokens that merge across its end: every
            # question runs as one full prompt (the same answers, without the shared head)
            if head:
                warnings.warn(
                    f"The tokens of {self.name!r} merge across the end of the system turn "
                    f"{head[-20:]!r}: asking with full prompts (prefix_cache=False).",
                    stacklevel=2,
                )
            self.prefix_cache = False
        self._templates[mode] = (head, tail)
        return head, tail

    def answer_end(self) -> str:
        """The text that closes an assistant turn (chat framing)."""
        return _chat.answer_end(self.processor, self.name, system=self.system_message)

    def _prompt_key(self, taxonomy: Taxonomy) -> tuple[Taxonomy, int]:
        return taxonomy, self.paper_prompt_variant(taxonomy)

    def _language_model(self) -> Any:
        return self.model.get_decoder()

    # ------------------------------------------------------------------ what needs images
    def score_nodes(
        self,
        images: ImageInput | Sequence[ImageInput],
        taxonomy: Taxonomy,
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> NodeScores:
        """Not for text-only LLMs: node scores are per image.

        Raises:
            NotImplementedError: always, naming what a text-only LLM does instead.
        """
        raise NotImplementedError(
            f"{self.name!r} is a {self.label}: it sees no image, so it has no node scores or "
            "paths per image; ask it the text questions (answer(..., protocol=Protocol("
            "mode='text')), hierzoo eval --mode text)."
        )

    def features(
        self,
        images: ImageInput | Sequence[ImageInput],
        where: str | Sequence[str],
        *,
        taxonomy: Taxonomy | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Features:
        """Not for text-only LLMs: it has no image input.

        Raises:
            NotImplementedError: always, naming :meth:`text_features`.
        """
        raise NotImplementedError(
            f"{self.name!r} is a {self.label}: it sees no image; its hidden states for names "
            "are text_features(names, 'llm:K') (or 'llm:K:answer:L')."
        )


class InternLM2Classifier(TextLLMClassifier):
    """InternLM2 / InternLM2.5 chat models (``internlm/internlm2_5-7b-chat``): the checkpoint's
    own modelling code (load with ``trust_remote_code=True``), its default system message
    (:data:`INTERNLM_SYSTEM`), and the wording variants of the paper's InternLM runs (2 for
    iNat21, 1 for ImageNet: the other way round from every other text run)."""

    family = "internlm2"
    default_system_message = INTERNLM_SYSTEM
    text_prompt_variants = {
        **PAPER_TEXT_VARIANTS,
        "inat21-animal": 2,
        "inat21-plant": 2,
        "imagenet-animal": 1,
        "imagenet-artifact": 1,
    }
    requires_remote_code = True


def _load_tokenizer(model: Any, given: Any) -> Any:
    """The tokenizer ``given`` (or the one a processor holds), loaded from a path or hub id, or
    from where the model was loaded (``model.name_or_path``).

    Raises:
        ValueError: no tokenizer to be had.
    """
    if given is None:
        given = getattr(model, "name_or_path", "") or None
        if given is None:
            raise ValueError(
                "A text-only LLM needs its tokenizer: hierzoo.wrap(model, "
                "AutoTokenizer.from_pretrained(CHECKPOINT)) (this model does not say where it was "
                "loaded from)."
            )
    if isinstance(given, str) or hasattr(given, "__fspath__"):
        from transformers import AutoTokenizer

        try:
            given = AutoTokenizer.from_pretrained(str(given))
        except Exception as e:  # not found, offline, no tokenizer files ...
            raise ValueError(
                f"Could not load the tokenizer of the text-only LLM from {str(given)!r} "
                f"({type(e).__name__}: {e}); pass it: hierzoo.wrap(model, tokenizer)."
            ) from e
    if isinstance(given, TextProcessor) or hasattr(given, "image_processor"):
        given = given.tokenizer
    if not callable(given) or not hasattr(given, "apply_chat_template"):
        raise ValueError(
            f"A text-only LLM needs its tokenizer, but got a {type(given).__name__}; pass "
            "AutoTokenizer.from_pretrained(CHECKPOINT)."
        )
    return given
