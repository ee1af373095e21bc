"""The interface every model family implements, and the results it returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hierzoo.images import ImageInput

if TYPE_CHECKING:
    from hierzoo.models._registry import ModelSpec
    from hierzoo.tasks import Question
    from hierzoo.taxonomy import Taxonomy

STRATEGIES = ("independent", "topdown", "joint", "marginal")
MODES = ("image", "text")


@dataclass(frozen=True)
class Protocol:
    """How questions are asked. Fields a family does not use must keep their defaults.

    Attributes:
        taxonomy: the bundled taxonomy the questions come from (rank names and the noun of the
            paper's prompts); ``None`` uses generic prompts.
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
    """

    taxonomy: str | None = None
    prompt_variant: int | None = None
    shuffle_options: bool = False
    seed: int = 42
    circular: bool = False
    mode: str = "image"
    templates: tuple[str, ...] | None = None
    first_level: int = 0

    def __post_init__(self) -> None:
        if self.first_level < 0:
            raise ValueError(f"Expected `first_level` >= 0, but got {self.first_level!r}.")
        if self.mode not in MODES:
            raise ValueError(f"Expected `mode` to be one of {MODES}, but got {self.mode!r}.")
        if self.prompt_variant is not None and not 0 <= self.prompt_variant <= 4:
            raise ValueError(f"Expected `prompt_variant` in 0..4, but got {self.prompt_variant!r}.")
        if self.templates is not None and (
            isinstance(self.templates, str) or not all("{}" in t for t in self.templates)
        ):
            raise ValueError(
                f"Expected `templates` to be a tuple of strings with '{{}}', but got "
                f"{self.templates!r}."
            )
        for t in self.templates or ():
            try:
                filled = t.replace("{rank}", "").format("")
            except (IndexError, KeyError, ValueError):
                filled = None
            if filled is None or t.replace("{rank}", "").count("{}") != 1:
                raise ValueError(
                    f"Template {t!r} has a placeholder hierzoo cannot fill: expected one '{{}}' "
                    "for the name and optionally '{rank}' (write a literal brace as '{{' or '}}')."
                )


@dataclass
class NodeScores:
    """Raw scores of every taxonomy node for every image.

    Attributes:
        logits: ``(N, n_nodes)`` float32 on the CPU; the columns of level ``k`` are
            ``taxonomy.level_offsets[k]:level_offsets[k+1]``.
        kind: how a level's scores become probabilities: ``"softmax"`` over the level's nodes
            (CLIP, and vision-LLM log-likelihoods), or ``"sigmoid"`` per node (SigLIP).
        taxonomy: the taxonomy scored.
        errors: per image, ``None`` or why it could not be scored (its row is NaN).
    """

    logits: torch.Tensor
    kind: str
    taxonomy: Taxonomy
    errors: list[str | None] = field(default_factory=list)

    def level(self, k: int) -> torch.Tensor:
        """``(N, n_k)`` scores of level ``k``."""
        o = self.taxonomy.level_offsets
        return self.logits[:, o[k] : o[k + 1]]

    def log_probs(self) -> torch.Tensor:
        """``(N, n_nodes)`` per-level log-probabilities (log-softmax within each level, or
        log-sigmoid per node)."""
        if self.kind == "sigmoid":
            return torch.nn.functional.logsigmoid(self.logits)
        o = self.taxonomy.level_offsets.tolist()
        return torch.cat(
            [torch.log_softmax(self.logits[:, a:b], dim=1) for a, b in zip(o[:-1], o[1:])], dim=1
        )


@dataclass
class PathPrediction:
    """One root-to-leaf path per image.

    Attributes:
        node_ids: ``(N, L)`` int64 node ids per level, ``-1`` past the end of a path (and for a
            failed image).
        names: per image, the node names from the top level down.
        scores: ``(N, L)`` float, the chosen node's probability at each level under the
            strategy (per-level probability, or the marginal for ``marginal``); NaN past the end.
        consistent: ``(N,)`` bool, whether the path exists in the taxonomy (always true except
            for ``independent``).
        strategy: the strategy used.
        errors: per image, ``None`` or why it failed.
    """

    node_ids: np.ndarray
    names: list[list[str]]
    scores: np.ndarray
    consistent: np.ndarray
    strategy: str
    errors: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class Answers:
    """Answers to four-choice questions, one row per question-set entry (image), one column per
    level.

    Attributes:
        choice: ``(N, L)`` int, index of the chosen option in ``options[i][k]``; ``-1`` where the
            level was not asked or the sample failed.
        probs: ``(N, L, C)`` float32, each option's probability (NaN padding); softmax over the
            options, or the sigmoid per option for SigLIP.
        options: per sample and level, the options in the order they were asked.
        errors: per sample, ``None`` or why it failed.
        correct: ``(N, L)`` bool or ``None``; set in circular mode, where a level is right only if
            every rotation of its options was answered right.
        extra: family-specific details (the letters, the prompt variant, the seed ...).
    """

    choice: np.ndarray
    probs: np.ndarray
    options: list[list[list[str]]]
    errors: list[str | None]
    correct: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.options)

    def predicted(self, i: int) -> list[str | None]:
        """The chosen option's name at each level of sample ``i`` (``None`` where not answered)."""
        return [
            opts[c] if c >= 0 else None for opts, c in zip(self.options[i], self.choice[i].tolist())
        ]

    def to_records(self, questions: Sequence[Question]) -> list[dict[str, Any]]:
        """The paper's result format, one dict per sample, plus each option's probability.

        Keys: ``image``, ``label``, and per asked level ``k``: ``ground_truth_levelk``,
        ``predicted_levelk``, ``predicted_levelk_letter``, ``choices_levelk`` (letter -> option)
        and ``probs_levelk`` (letter -> probability). A failed sample has ``error`` instead.
        """
        out = []
        for i, q in enumerate(questions):
            row: dict[str, Any] = {"image": q.image, "label": q.label}
            if self.errors[i] is not None:
                row["error"] = self.errors[i]
                out.append(row)
                continue
            for k, opts in enumerate(self.options[i]):
                c = int(self.choice[i, k])
                if c < 0 or not opts:
                    continue
                letters = [chr(65 + j) for j in range(len(opts))]
                n = k + 1
                row[f"ground_truth_level{n}"] = q.answers[k]
                row[f"predicted_level{n}"] = opts[c]
                row[f"predicted_level{n}_letter"] = letters[c]
                row[f"choices_level{n}"] = dict(zip(letters, opts))
                row[f"probs_level{n}"] = {
                    L: round(float(p), 6) for L, p in zip(letters, self.probs[i, k, : len(opts)])
                }
                if self.correct is not None:
                    row[f"correct_level{n}"] = bool(self.correct[i, k])
            out.append(row)
        return out


@dataclass
class Features:
    """Feature vectors at one or more sites of a model (see :mod:`hierzoo.models._sites`).

    Attributes:
        data: site name -> ``(N, D_site)`` float32 tensor on the CPU, one row per input; a failed
            input's row is NaN.
        errors: per input, ``None`` or why it failed.
    """

    data: dict[str, torch.Tensor]
    errors: list[str | None] = field(default_factory=list)

    def __getitem__(self, site: str) -> torch.Tensor:
        from hierzoo.models._sites import parse_site

        name = parse_site(site).name
        if name not in self.data:
            raise KeyError(f"No features at {site!r}; these hold {list(self.data)}.")
        return self.data[name]

    def __len__(self) -> int:
        return len(self.errors)

    @property
    def tensor(self) -> torch.Tensor:
        """The ``(N, D)`` tensor of the only site (raises when there are several)."""
        if len(self.data) != 1:
            raise ValueError(
                f"These features hold {len(self.data)} sites {list(self.data)}; index by site."
            )
        return next(iter(self.data.values()))


class HierClassifier(ABC):
    """A model that scores the nodes of a taxonomy for images, whatever its family.

    Subclasses implement :meth:`score_nodes` and :meth:`answer`; :meth:`predict_path` decodes
    node scores into paths. Images are paths, PIL images or preprocessed ``(C, H, W)`` tensors
    (or ``(N, C, H, W)``), one or many; a bad image is recorded in the result's ``errors``,
    never raised.

    Attributes:
        name: the zoo name or the path the model was loaded from.
        spec: the zoo spec, when loaded from the zoo.
        device: where the model runs.
    """

    family: str = ""
    name: str = ""
    spec: ModelSpec | None = None
    device: torch.device = torch.device("cpu")

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

    def check_protocol(self, protocol: Protocol) -> None:  # noqa: B027 (optional hook)
        """Raise ``ValueError`` naming the setting when this model cannot answer under
        ``protocol`` (a run calls it before it writes anything); the default accepts any."""

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

        if strategy not in STRATEGIES:
            raise ValueError(
                f"Expected `strategy` to be one of {STRATEGIES}, but got {strategy!r}."
            )
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
