"""The interface every model family implements (its results: :mod:`hierzoo.models.outputs`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from hierzoo.images import ImageInput
from hierzoo.models.outputs import STRATEGIES, Answers, Features, NodeScores, PathPrediction
from hierzoo.prompts import Protocol

if TYPE_CHECKING:
    from hierzoo.models._registry import ModelSpec
    from hierzoo.tasks import Question
    from hierzoo.taxonomy import Taxonomy

__all__ = [
    "STRATEGIES",
    "Answers",
    "Features",
    "HierClassifier",
    "NodeScores",
    "OptionError",
    "PathPrediction",
    "Protocol",
]


class OptionError(ValueError):
    """Options that a model family does not take.

    Attributes:
        options: the options refused.
        owners: what the families that do take them call their models (``["vision LLM"]``);
            empty when no family takes them.
    """

    def __init__(self, message: str, options: Sequence[str], owners: Sequence[str]):
        super().__init__(message)
        self.options = list(options)
        self.owners = list(owners)


def _no_dry_run(cls: type) -> str:
    family = getattr(cls, "family", "") or cls.__name__
    return (
        f"{family!r} models ({getattr(cls, 'label', 'model')}s) cannot describe their requests "
        "(--dry-run): it shows the prompts of models that answer the questions through a "
        "language model, such as the vision LLMs."
    )


class HierClassifier(ABC):
    """A model that scores the nodes of a taxonomy for images, whatever its family.

    Subclasses implement :meth:`score_nodes` and :meth:`answer`; :meth:`predict_path` decodes
    node scores into paths. Images are paths, PIL images or preprocessed ``(C, H, W)`` tensors
    (or ``(N, C, H, W)``), one or many; a bad image is recorded in the result's ``errors``,
    never raised.

    A family also says what orchestration needs, so that callers never ask which family they
    hold: how it loads (:meth:`from_spec`, :meth:`from_model`), which options it takes
    (:attr:`options`, checked by :meth:`check_options`), the paper's protocol for it
    (:meth:`default_protocol`), whether it answers through a language model
    (:attr:`generative`), and what a benchmark times (:meth:`timed_module`,
    :meth:`benchmark_forward`). Settings are passed at construction.

    Attributes:
        family: the family's name in the zoo (``"openclip"``, ``"qwen2.5-vl"`` ...).
        label: what messages call a model of the family (``"vision LLM"``).
        generative: whether it answers through a language model (letter logits of a prompt);
            ``False``: it scores names by embedding similarity, every node of a level at once.
        options: the keyword options its loaders and constructor take.
        default_mode: the question mode :meth:`default_protocol` asks in unless told
            (``"image"``; ``"text"`` for text-only LLMs).
        protocols: the ways of asking (:data:`hierzoo.prompts.PROTOCOLS`) it answers under;
            :meth:`check_protocol` refuses the others by name.
        name: the zoo name or the path the model was loaded from.
        spec: the zoo spec, when loaded from the zoo.
        device: where the model runs.
    """

    family: ClassVar[str] = ""
    label: ClassVar[str] = "model"
    generative: ClassVar[bool] = False
    options: ClassVar[frozenset[str]] = frozenset()
    protocols: ClassVar[tuple[str, ...]] = ("paper",)
    default_mode: ClassVar[str] = "image"
    name: str = ""
    spec: ModelSpec | None = None
    device: torch.device = torch.device("cpu")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_spec(
        cls,
        spec: ModelSpec,
        *,
        device: torch.device,
        dtype: str | torch.dtype | None = None,
        **options: Any,
    ) -> HierClassifier:
        """Load the checkpoint a zoo spec describes (what :func:`hierzoo.load` calls).

        Args:
            spec: the spec (``spec.location`` is what loads: a hub id or a local directory).
            device: where the model runs.
            dtype: the weights' dtype; default the family's.
            **options: the family's options (:attr:`options`).

        Raises:
            OptionError: an option of another family, or of none.
        """
        raise NotImplementedError(f"{cls.__name__} does not load checkpoints.")

    @classmethod
    def from_model(
        cls,
        model: Any,
        processor: Any = None,
        *,
        name: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **options: Any,
    ) -> HierClassifier:
        """The classifier around a model held in memory, its weights used, not copied (what
        :func:`hierzoo.wrap` calls).

        Args:
            model: the family's model object.
            processor: its tokenizer or processor (default: derived from the model where the
                family can).
            name: what results call the model (default: where it was loaded from, or its class).
            device: move the model there first; default: where it is.
            dtype: cast the weights first; default: their dtype.
            **options: the family's options (:attr:`options`).

        Raises:
            OptionError: an option of another family, or of none.
        """
        raise NotImplementedError(f"{cls.__name__} does not wrap models held in memory.")

    @classmethod
    def for_dry_run(cls, spec: ModelSpec, **options: Any) -> HierClassifier:
        """The classifier of a checkpoint with what :meth:`describe_requests` needs and without
        its weights (``hierzoo eval --dry-run``): a family implements it where it can describe
        its requests without loading the model.

        Raises:
            ValueError: the family cannot (default).
            OptionError: an option of another family.
        """
        raise ValueError(_no_dry_run(cls))

    @classmethod
    def check_options(
        cls, options: Iterable[str], name: str, *, pass_through: bool = False
    ) -> None:
        """Refuse options the family does not take, naming them and who takes them.

        ``pass_through``: options that no family takes are allowed (they go on to the backend,
        such as transformers' ``from_pretrained``); another family's are still refused.

        Raises:
            OptionError: ``"batched_vision_attention: options of vision LLMs, but 'bioclip2' is
                an open_clip model; drop them."``
        """
        unknown = sorted(set(options) - cls.options)
        if not unknown:
            return
        from hierzoo.models._factory import option_owners

        owners = {o: option_owners(o) for o in unknown}
        bad = [o for o in unknown if owners[o]] if pass_through else unknown
        if not bad:
            return
        labels = list(dict.fromkeys(label for o in bad for label in owners[o]))
        shown = ", ".join(bad)
        if all(owners[o] for o in bad):
            kinds = " and ".join(f"{label}s" for label in labels)
            article = "an" if cls.label[:1].lower() in "aeiou" else "a"
            message = (
                f"{shown}: options of {kinds}, but {name!r} is {article} {cls.label}; drop them."
            )
        else:
            message = (
                f"{shown}: not options of {cls.label}s ({name!r}); the options are "
                f"{', '.join(sorted(cls.options))}."
            )
        raise OptionError(message, bad, labels)

    # ------------------------------------------------------------------ what callers ask
    def default_protocol(
        self,
        taxonomy: str | Taxonomy | None = None,
        *,
        mode: str | None = None,
        seed: int = 42,
        prompt_variant: int | None = None,
        keep_option_order: bool = False,
        answer: str = "logits",
        circular: bool = False,
        templates: Sequence[str] | None = None,
        first_level: int = 0,
        name: str = "paper",
    ) -> Protocol:
        """The protocol the paper uses for this family under a run's settings.

        ``mode`` defaults to the family's :attr:`default_mode`. The options of image runs are
        shuffled by the seeded generator unless ``keep_option_order`` (the paper's vision-LLM
        runs); text runs keep the file's order. A family then applies its own settings
        (:meth:`_paper_protocol`: CLIP-style models keep the file's order, GPT-4o the paper's
        GPT wording, text-only LLMs the text runs' wording); settings it cannot answer under
        are passed on, for :meth:`check_protocol` to refuse.
        """
        mode = self.default_mode if mode is None else mode
        protocol = Protocol(
            taxonomy=taxonomy,
            prompt_variant=prompt_variant,
            shuffle_options=mode == "image" and not keep_option_order,
            answer=answer,
            seed=seed,
            circular=circular,
            mode=mode,
            templates=tuple(templates) if templates else None,
            first_level=first_level,
            name=name,
        )
        return self._paper_protocol(protocol)

    def _paper_protocol(self, protocol: Protocol) -> Protocol:
        """The family's own settings over the protocol :meth:`default_protocol` builds; the
        default keeps it as it is."""
        return protocol

    @classmethod  # noqa: B027 (optional hook)
    def check_mode(cls, mode: str, task: str = "questions", name: str = "") -> None:
        """Raise ``ValueError`` naming the setting to use when no model of the family can run
        ``mode`` (``"image"`` / ``"text"``) or ``task`` (``"questions"`` / ``"path"``) at all:
        a run asks before it reads an image or loads the model. The default accepts any (a
        model may still refuse a protocol's details in :meth:`check_protocol`)."""

    def check_protocol(self, protocol: Protocol) -> None:
        """Raise ``ValueError`` naming the setting when this model cannot answer under
        ``protocol`` (a run calls it before it writes anything). The default refuses a
        :attr:`Protocol.name <hierzoo.prompts.Protocol.name>` not in :attr:`protocols`;
        families that override it call it too."""
        if protocol.name not in self.protocols:
            names = ", ".join(self.protocols)
            raise ValueError(
                f"--protocol {protocol.name} (Protocol(name={protocol.name!r})) is not available "
                f"for {self.label}s such as {self.name!r}; they answer under: {names}."
            )

    def check_task(self, task: str) -> None:  # noqa: B027 (optional hook)
        """Raise ``ValueError`` saying what is missing when this model cannot do a run's
        ``task`` (``"questions"``, or ``"path"``: :meth:`predict_path` over the whole taxonomy);
        a run calls it before it writes anything. The default accepts both."""

    def identity(self, protocol: Protocol | None) -> dict[str, Any]:
        """Items of a run's identity (``hierzoo eval``'s ``run.json``) that only the loaded model
        knows, merged over the runner's own. Default ``{}``: the runner identifies a checkpoint
        by its files. A model behind an API gives ``model_content`` (the model and the server
        asked) and ``requests`` (every request setting that changes its answers)."""
        return {}

    def provenance(self) -> dict[str, Any]:
        """What this model adds to a run's provenance (``summary.json``); default ``{}``. A
        model behind an API gives its server and the token usage and estimated cost."""
        return {}

    def describe_requests(
        self,
        questions: Sequence[Question],
        *,
        protocol: Protocol | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The first ``limit`` requests (all when ``None``) that :meth:`answer` would make for
        ``questions`` under ``protocol``, one plain dict each (JSON values), without running the
        model (``hierzoo eval --dry-run N`` prints them): at least ``sample`` (the entry's
        position), ``level`` (``K`` of its ``levelK`` keys), ``text`` (the prompt as sent),
        ``images`` (per image what the model receives) and ``letters``, and ``max_new_tokens``
        with generated answers; the vision LLMs' fields are in their
        :meth:`~hierzoo.models.vlm.VisionLLMClassifier.describe_requests`.

        Raises:
            ValueError: the family cannot describe its requests (default).
        """
        raise ValueError(_no_dry_run(type(self)))

    def timed_module(self) -> torch.nn.Module:
        """The module whose forward passes a benchmark times as the model's work (a CLIP
        model's image tower; a vision LLM's whole network). Default: ``self.model``."""
        model = getattr(self, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise NotImplementedError(f"{type(self).__name__} names no module to time.")
        return model

    def benchmark_forward(
        self, images: Sequence[ImageInput], batch_size: int
    ) -> Callable[[], Any] | None:
        """A function that runs the model's forward alone on ``batch_size`` of ``images``,
        preprocessed once beforehand and already on the device (what a benchmark repeats to
        measure the encoder without the input pipeline); ``None`` when the family has no
        forward separate from its inputs (default)."""
        return None

    @abstractmethod
    def score_nodes(
        self,
        images: ImageInput | Sequence[ImageInput],
        taxonomy: Taxonomy,
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> NodeScores:
        """Raw scores of every node of every level for each image: one ``(N, n_nodes)`` matrix."""

    @abstractmethod
    def answer(
        self,
        questions: Sequence[Question],
        *,
        protocol: Protocol | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Answers:
        """Answer every level of every four-choice question-set entry (see :class:`Answers`).

        Images come from each question's resolved ``path`` (else its recorded ``image``).
        """

    def iter_answers(
        self,
        questions: Sequence[Question],
        *,
        protocol: Protocol | None = None,
        batch_size: int | None = None,
        chunk_size: int = 256,
    ) -> Iterator[tuple[list[int], Answers]]:
        """Answer in pieces, for long runs that write as they go: yields ``(positions, answers)``
        with ``answers`` covering ``questions[p] for p in positions``. Families override this to
        stream from one image loader; the default answers ``chunk_size`` questions at a time."""
        questions, protocol = checked_questions(questions, protocol)
        check_batch_size(chunk_size, "chunk_size")
        for start in range(0, len(questions), chunk_size):
            positions = list(range(start, min(start + chunk_size, len(questions))))
            yield (
                positions,
                self.answer(
                    [questions[p] for p in positions], protocol=protocol, batch_size=batch_size
                ),
            )

    def predict_path(
        self,
        images: ImageInput | Sequence[ImageInput],
        taxonomy: Taxonomy,
        strategy: str = "joint",
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> PathPrediction:
        """A root-to-leaf path per image, decoded from :meth:`score_nodes` (see
        :mod:`hierzoo.paths`).

        Strategies: ``independent`` (best node per level, what the paper measures; may be
        inconsistent), ``topdown`` (greedy among the children of the chosen node), ``joint``
        (the path with the highest sum of per-level log-probabilities), ``marginal`` (a softmax
        over leaves summed up the tree, then the best node per level top-down).
        """
        from hierzoo.paths import decode_paths
        from hierzoo.taxonomy import as_taxonomy

        if strategy not in STRATEGIES:
            raise ValueError(
                f"Expected `strategy` to be one of {STRATEGIES}, but got {strategy!r}."
            )
        taxonomy = as_taxonomy(taxonomy)
        scores = self.score_nodes(images, taxonomy, batch_size=batch_size, progress=progress)
        return decode_paths(scores, strategy)

    def features(
        self,
        images: ImageInput | Sequence[ImageInput],
        where: str | Sequence[str],
        *,
        taxonomy: Taxonomy | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Features:
        """Feature vectors of images at one or more sites, computed in one pass per batch.

        Args:
            images: as for :meth:`score_nodes`.
            where: a site (``"image"``, ``"layer:6"``, ``"vision"``, ``"projector"``,
                ``"llm:-1"``, ``"llm:-1:answer:2"`` ...), a comma list, or a sequence of them;
                see :mod:`hierzoo.models._sites` and docs/probing.md for what each family has.
            taxonomy: the taxonomy whose level questions answer sites ask (vision LLMs).

        Returns:
            :class:`Features`: per site an ``(N, D)`` float32 CPU tensor; an image that cannot be
            read gets a NaN row and its message in ``errors``, never an exception (``(N, 0)``
            when no image could be read).

        Raises:
            hierzoo.models._sites.SiteError: a site this family does not have, or a layer out of
                range.
            NotImplementedError: the family extracts no features.
        """
        raise NotImplementedError(
            f"{type(self).__name__} ({self.family or 'this family'}) does not extract features."
        )

    def text_features(
        self,
        names: Sequence[str],
        where: str | Sequence[str],
        *,
        taxonomy: Taxonomy | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Features:
        """Feature vectors of names (taxonomy nodes) put into a text prompt, at one or more
        sites (CLIP: ``text``; vision LLMs: ``llm:K``, ``llm:K:answer:L``). See docs/probing.md.

        Raises:
            NotImplementedError: the family extracts no text features.
        """
        raise NotImplementedError(
            f"{type(self).__name__} ({self.family or 'this family'}) does not extract text "
            "features."
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={str(self.device)!r})"


def check_batch_size(batch_size: Any, what: str = "batch_size") -> None:
    """A batch size given by a caller: ``None`` (the model's own) or a whole number >= 1.

    Raises:
        ValueError: anything else, naming the value.
    """
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Expected `{what}` to be a whole number >= 1, but got {batch_size!r}.")


def as_names(names: Any) -> list[str]:
    """Names (taxonomy nodes) given to a text method, as a list.

    Raises:
        TypeError: one string (not a list of them) or an entry that is not a string.
        ValueError: no name.
    """
    if isinstance(names, str):
        raise TypeError(
            f"Expected a list of names, but got one string {names!r}; pass [{names!r}]."
        )
    names = list(names)
    if not names:
        raise ValueError("Expected at least one name, but got none.")
    for n in names:
        if not isinstance(n, str) or not n.strip():
            raise TypeError(f"Expected names as non-empty strings, but got {n!r} among them.")
    return names


def checked_questions(questions: Any, protocol: Any) -> tuple[list[Question], Protocol | None]:
    """The questions and protocol a caller gave :meth:`HierClassifier.answer`, checked.

    Raises:
        TypeError: one question (not a list of them), an entry that is not a
            :class:`~hierzoo.tasks.Question`, or a protocol that is not a :class:`Protocol`.
    """
    from hierzoo.tasks import Question

    if isinstance(questions, Question):
        raise TypeError("Expected a list of questions, but got one Question; pass [question].")
    questions = list(questions)
    bad = next((q for q in questions if not isinstance(q, Question)), None)
    if bad is not None:
        raise TypeError(
            f"Expected Question entries (hierzoo.tasks.read_questions or build_questions make "
            f"them), but got {type(bad).__name__} {str(bad)[:60]!r}."
        )
    if protocol is not None and not isinstance(protocol, Protocol):
        raise TypeError(
            f"Expected `protocol` to be a Protocol (e.g. Protocol(name={protocol!r})), but got "
            f"{type(protocol).__name__} {protocol!r}."
        )
    return questions, protocol
