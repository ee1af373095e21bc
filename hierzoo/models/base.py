"""The interface every model family implements (its results: :mod:`hierzoo.models.outputs`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

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
    "PathPrediction",
    "Protocol",
]


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
