"""What models return: node scores, paths, answers and features (one dataclass each).

Decoders (:mod:`hierzoo.paths`), the runner and the metrics import these without importing the
model interface, as transformers' ``modeling_outputs`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hierzoo.prompts import UNKNOWN

if TYPE_CHECKING:
    from hierzoo.tasks import Question
    from hierzoo.taxonomy import Taxonomy

__all__ = ["STRATEGIES", "Answers", "Features", "NodeScores", "PathPrediction"]

STRATEGIES = ("independent", "topdown", "joint", "marginal")
"""How :func:`hierzoo.paths.decode_paths` turns node scores into paths."""


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
            level was not asked, the sample failed, or (generated replies) no option letter was
            found in the reply.
        probs: ``(N, L, C)`` float32, each option's probability (NaN padding); softmax over the
            options, or the sigmoid per option for SigLIP. With generated replies: the softmax
            over the option letters' logits at the first generated token.
        options: per sample and level, the options in the order they were asked.
        errors: per sample, ``None`` or why it failed.
        correct: ``(N, L)`` bool or ``None``; set in circular mode, where a level is right only if
            every rotation of its options was answered right.
        extra: family-specific details (the letters, the prompt variant, the seed ...).
        replies: per sample and level, the reply as generated (``None`` where the level was not
            asked), recorded as ``prediction_levelk``, when answers were generated and parsed
            (``Protocol(answer="generate")``, or a served model); ``None`` when they were read
            from logits.
        unknown: ``(N, L)`` bool, levels asked whose answer names no option (no option letter in
            the reply, or none in the top log-probabilities): recorded as the paper's
            ``Unknown``; ``None`` when every asked level has a choice.
        absent: per sample and level, the option letters missing from the server's top
            log-probabilities (``""`` when none), recorded as ``absent_levelk``; ``None`` when
            the answers were not read from log-probabilities.
        binary: yes/no statements (``--protocol binary``): per sample and level, each option's
            answer in ``options`` order, ``1`` yes, ``0`` no, ``-1`` a reply that is neither
            (``[]`` where not asked); ``choice`` is the first option answered yes (``-1``:
            none) and ``probs`` each option's probability of ``Yes`` against ``No``. ``None``
            under the other protocols.
        statement_replies: with ``binary`` and generated answers, per sample and level the
            reply to each option's statement, in ``options`` order.
        open: open-ended answers (``--protocol open``): per sample and level ``None`` (not
            asked) or a dict: ``name`` (the node answered, ``None`` when the reply matched
            none), ``how`` (``exact``, ``synonym``, ``fuzzy``, ``none``: how a generated reply
            was matched, :mod:`hierzoo.open_answers`; ``ranked``: the best of the level's nodes
            by log-likelihood), with a generated reply ``reply`` and ``score`` (the match's
            ratio), ranked ``ranked`` (the best names with their log-likelihoods). ``choice``
            is -1 and ``options`` empty (no options are asked).
        tokens: models behind an API: per sample ``(prompt, completion, cached prompt)`` tokens of
            the answers it used (its requests' usage, cache hits included); written to each
            record as ``tokens``.
    """

    choice: np.ndarray
    probs: np.ndarray
    options: list[list[list[str]]]
    errors: list[str | None]
    correct: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    replies: list[list[str | None]] | None = None
    unknown: np.ndarray | None = None
    absent: list[list[str]] | None = None
    binary: list[list[list[int]]] | None = None
    statement_replies: list[list[list[str]]] | None = None
    open: list[list[dict[str, Any] | None]] | None = None
    tokens: list[tuple[int, int, int]] | None = None

    def __len__(self) -> int:
        return len(self.options)

    def predicted(self, i: int) -> list[str | None]:
        """The chosen option's name at each level of sample ``i`` (``None`` where not answered,
        or where a generated reply named no option)."""
        return [
            opts[c] if c >= 0 else None for opts, c in zip(self.options[i], self.choice[i].tolist())
        ]

    def to_records(self, questions: Sequence[Question]) -> list[dict[str, Any]]:
        """The paper's result format, one dict per sample, plus each option's probability.

        Keys: ``image``, ``label``, and per asked level ``k``: ``ground_truth_levelk``,
        ``predicted_levelk``, ``predicted_levelk_letter``, ``choices_levelk`` (letter -> option)
        and ``probs_levelk`` (letter -> probability, where the answer has probabilities). A
        failed sample has ``error`` instead. With :attr:`replies`, :attr:`unknown` and
        :attr:`absent`: ``prediction_levelk`` (the reply as generated, the paper's field),
        ``"Unknown"`` as the predicted option and letter of a level whose answer names no option
        (as the paper records it), and ``absent_levelk`` (the letters missing from the top
        log-probabilities).

        With :attr:`binary` (yes/no statements) a level has ``ground_truth_levelk``,
        ``choices_levelk``, ``binary_levelk`` (option -> 1 | 0 | -1, in the order asked),
        ``predicted_levelk`` (the first option answered yes in that order, ``None`` if none:
        the paper's binary metric), ``probs_levelk`` (letter -> probability of ``Yes``) and,
        generated, ``replies_levelk`` (option -> reply).

        With :attr:`open` (open-ended answers) a level has ``ground_truth_levelk``,
        ``predicted_levelk`` (the node answered, ``None`` when a reply matched none: scored
        wrong), ``match_levelk`` (how: ``exact``, ``synonym``, ``fuzzy``, ``none`` or
        ``ranked``) and, generated, ``prediction_levelk`` (the reply as generated) and
        ``match_score_levelk``; ranked, ``ranked_levelk`` (name -> log-likelihood, best first).
        """
        out = []
        for i, q in enumerate(questions):
            row: dict[str, Any] = {"image": q.image, "label": q.label}
            if self.tokens is not None:
                prompt, completion, cached = self.tokens[i]
                row["tokens"] = {
                    "prompt": prompt,
                    "completion": completion,
                    "cached_prompt": cached,
                }
            if self.errors[i] is not None:
                row["error"] = self.errors[i]
                out.append(row)
                continue
            if self.open is not None:
                _open_record(row, q, self.open[i])
                out.append(row)
                continue
            if self.binary is not None:
                _binary_record(
                    row,
                    q,
                    self.options[i],
                    self.binary[i],
                    self.choice[i],
                    self.probs[i],
                    None if self.statement_replies is None else self.statement_replies[i],
                )
                out.append(row)
                continue
            for k, opts in enumerate(self.options[i]):
                c = int(self.choice[i, k])
                reply = self.replies[i][k] if self.replies is not None else None
                unknown = self.unknown is not None and bool(self.unknown[i, k])
                if not opts or (c < 0 and not unknown and reply is None):
                    continue
                letters = [chr(65 + j) for j in range(len(opts))]
                n = k + 1
                row[f"ground_truth_level{n}"] = q.answers[k]
                if reply is not None:
                    row[f"prediction_level{n}"] = reply
                row[f"predicted_level{n}"] = UNKNOWN if c < 0 else opts[c]
                row[f"predicted_level{n}_letter"] = UNKNOWN if c < 0 else letters[c]
                row[f"choices_level{n}"] = dict(zip(letters, opts))
                probs = self.probs[i, k, : len(opts)]
                if np.isfinite(probs).all():
                    row[f"probs_level{n}"] = {L: round(float(p), 6) for L, p in zip(letters, probs)}
                if self.absent is not None and self.absent[i][k]:
                    row[f"absent_level{n}"] = list(self.absent[i][k])
                if self.correct is not None:
                    row[f"correct_level{n}"] = bool(self.correct[i, k])
            out.append(row)
        return out


def first_yes(said: Sequence[int]) -> int:
    """The paper's binary prediction of one level (``utils/metric_binary.py``): the position of
    the first option answered yes (``1``) in the order asked, ``-1`` when none was."""
    return next((j for j, v in enumerate(said) if v == 1), -1)


def _open_record(row: dict[str, Any], q: Question, opened: list[dict[str, Any] | None]) -> None:
    """The fields of one sample's open-ended answers (see :meth:`Answers.to_records`)."""
    for k, answer in enumerate(opened):
        if answer is None:
            continue
        n = k + 1
        row[f"ground_truth_level{n}"] = q.answers[k]
        if "reply" in answer:
            row[f"prediction_level{n}"] = answer["reply"]
        row[f"predicted_level{n}"] = answer["name"]
        row[f"match_level{n}"] = answer["how"]
        if "score" in answer:
            row[f"match_score_level{n}"] = answer["score"]
        if "ranked" in answer:
            row[f"ranked_level{n}"] = answer["ranked"]


def _binary_record(
    row: dict[str, Any],
    q: Question,
    options: list[list[str]],
    binary: list[list[int]],
    choice: np.ndarray,
    probs: np.ndarray,
    replies: list[list[str]] | None,
) -> None:
    """The fields of one sample's yes/no statements (see :meth:`Answers.to_records`)."""
    for k, opts in enumerate(options):
        said = binary[k]
        if not opts or not said:
            continue
        n, c = k + 1, int(choice[k])
        letters = [chr(65 + j) for j in range(len(opts))]
        row[f"ground_truth_level{n}"] = q.answers[k]
        row[f"choices_level{n}"] = dict(zip(letters, opts))
        row[f"binary_level{n}"] = dict(zip(opts, said))
        row[f"predicted_level{n}"] = opts[c] if c >= 0 else None
        p = probs[k, : len(opts)]
        if np.isfinite(p).all():
            row[f"probs_level{n}"] = {L: round(float(v), 6) for L, v in zip(letters, p)}
        if replies is not None:
            row[f"replies_level{n}"] = dict(zip(opts, replies[k]))


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
