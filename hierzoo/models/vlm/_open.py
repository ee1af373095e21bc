"""Open-ended answers (``--protocol open``): the model names the node of each level, either in
its own words (a generated reply mapped onto the level's nodes by
:func:`hierzoo.open_answers.match_reply`) or constrained to the level's nodes, ranked by the
log-likelihood of each node's name as the whole reply (the machinery of ``score_nodes``, under
the open question's prompt)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from hierzoo import prompts
from hierzoo.models.base import check_batch_size
from hierzoo.models.outputs import Answers
from hierzoo.models.vlm._scoring import _NodePlan
from hierzoo.open_answers import level_vocabulary, match_reply
from hierzoo.prompts import Protocol, QuestionPlan
from hierzoo.tasks import Question

if TYPE_CHECKING:
    from hierzoo.taxonomy import Taxonomy

TOP_RANKED = 5
"""How many of a level's best-ranked nodes a constrained answer records (``ranked_levelK``)."""


def open_taxonomy(protocol: Protocol) -> Taxonomy:
    """The taxonomy whose nodes open answers are mapped onto.

    Raises:
        ValueError: a protocol without a taxonomy.
    """
    from hierzoo.taxonomy import load_taxonomy

    if protocol.taxonomy is None:
        raise ValueError(
            "--protocol open maps each reply onto the nodes of its level, so it needs the "
            "taxonomy: pass --taxonomy NAME (Protocol(taxonomy=...))."
        )
    if isinstance(protocol.taxonomy, str):
        return load_taxonomy(protocol.taxonomy)
    return protocol.taxonomy


def _vocabularies(protocol: Protocol, depth: int) -> list[tuple[list[str], dict[str, str]]]:
    taxonomy = open_taxonomy(protocol)
    return [level_vocabulary(taxonomy, protocol.first_level + k) for k in range(depth)]


def _empty_answers(n: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, depth), -1, dtype=np.int64), np.full((n, depth, 1), np.nan, np.float32)


class _OpenMixin:
    """Open-ended answers of :class:`~hierzoo.models.vlm._lm.LLMClassifier` (uses its
    ``_score``-produced replies, ``template``, ``answer_end``, ``_image_groups``,
    ``_prefix_tokens`` and ``_node_loglik``)."""

    def _collect_open(self, work: Any, samples: Sequence[int]) -> Answers:
        """The :class:`Answers` of generated open replies (``work.replies``) for ``samples``:
        each reply matched onto its level's nodes."""
        plan, protocol, errors = work.plan, work.protocol, work.errors
        depth = max((len(o) for o in plan.orders), default=0)
        vocab = _vocabularies(protocol, depth)
        opened: list[list[dict[str, Any] | None]] = [[None] * depth for _ in samples]
        for row, i in enumerate(samples):
            if errors[i] is not None:
                continue
            for j in plan.by_sample[i]:
                r = plan.requests[j]
                reply = work.replies[j] or ""
                names, synonyms = vocab[r.level]
                m = match_reply(reply, names, synonyms)
                opened[row][r.level] = {
                    "reply": reply,
                    "name": m.name,
                    "how": m.how,
                    "score": round(m.score, 4),
                }
        return self._open_answers(work.plan, protocol, samples, errors, opened, work.generation)

    def _open_answers(
        self,
        plan: QuestionPlan,
        protocol: Protocol,
        samples: Sequence[int],
        errors: list[str | None],
        opened: list[list[dict[str, Any] | None]],
        generation: Any = None,
    ) -> Answers:
        depth = max((len(o) for o in plan.orders), default=0)
        choice, probs = _empty_answers(len(samples), depth)
        extra: dict[str, Any] = {
            "model": self.name,
            "family": self.family,
            "protocol": protocol.to_dict(),
            "prompt_variant": plan.prompt_variant,
            "seed": None,
            "prefix_cache": self.prefix_cache,
        }
        if generation is not None:
            extra["max_new_tokens"] = generation.max_new_tokens
        return Answers(
            choice=choice,
            probs=probs,
            options=[[[] for _ in range(depth)] for _ in samples],
            errors=[errors[i] for i in samples],
            extra=extra,
            open=opened,
        )

    # ------------------------------------------------------------------ constrained
    def _iter_open_ranked(
        self,
        questions: Sequence[Question],
        protocol: Protocol,
        batch_size: int | None,
        chunk_size: int,
    ) -> Iterator[tuple[list[int], Answers]]:
        """``(positions, answers)`` of the constrained variant (``answer="logits"``): per
        image and asked level, the level's nodes ranked by the log-likelihood of each name as
        the whole reply to the open question; the best is the answer."""
        self.check_protocol(protocol)
        check_batch_size(batch_size)
        plan = prompts.plan_questions(questions, protocol, family=self.family)
        self._require_weights()
        depth = max((len(o) for o in plan.orders), default=0)
        vocab = _vocabularies(protocol, depth)
        framing = prompts.protocol_framing(protocol, self.family)
        node_plan, spans = self._open_node_plan(plan, vocab, framing)
        for start in range(0, len(questions), chunk_size):
            positions = list(range(start, min(start + chunk_size, len(questions))))
            yield (
                positions,
                self._open_ranked(
                    questions, plan, positions, vocab, node_plan, spans, framing, batch_size
                ),
            )

    def _open_node_plan(
        self,
        plan: QuestionPlan,
        vocab: list[tuple[list[str], dict[str, str]]],
        framing: prompts.Framing,
    ) -> tuple[_NodePlan, list[tuple[int, int]]]:
        """The contexts (each level's user text + template tail) and every candidate name's
        tokens (name + end of turn), and per level the span of its candidates."""
        _, tail = self.template("image", framing)
        end = self.answer_end()
        tok = self.processor.tokenizer
        texts: dict[int, str] = {r.level: r.text for r in plan.requests}
        levels = sorted(texts)
        contexts = [texts.get(k, "") + tail for k in range(len(vocab))]
        context_ids = tok(contexts, add_special_tokens=False)["input_ids"]
        answers: list[list[int]] = []
        owner: list[int] = []
        spans: list[tuple[int, int]] = []
        for k, (names, _) in enumerate(vocab):
            lo = len(answers)
            if k in levels:
                full = tok([contexts[k] + n + end for n in names], add_special_tokens=False)
                for name, ids in zip(names, full["input_ids"]):
                    ctx = context_ids[k]
                    if ids[: len(ctx)] != ctx:
                        raise ValueError(
                            f"The tokens of node {name!r} merge with the end of the prompt for "
                            f"{self.name!r}; its log-likelihood cannot be read from the prompt's "
                            "cache: use --answer generate."
                        )
                    answers.append(ids[len(ctx) :])
                    owner.append(k)
            spans.append((lo, len(answers)))
        return _NodePlan(context_ids, answers, owner), spans

    def _open_ranked(
        self,
        questions: Sequence[Question],
        plan: QuestionPlan,
        positions: list[int],
        vocab: list[tuple[list[str], dict[str, str]]],
        node_plan: _NodePlan,
        spans: list[tuple[int, int]],
        framing: prompts.Framing,
        batch_size: int | None,
    ) -> Answers:
        wanted = [i for i in positions if plan.by_sample[i]]
        errors: list[str | None] = [None] * len(questions)
        scores: dict[int, torch.Tensor] = {}
        context = max(len(c) for c in node_plan.contexts)
        depth = len(node_plan.contexts)
        items = [questions[i].path or questions[i].image for i in wanted]

        def failed(j: int, msg: str) -> None:
            errors[wanted[j]] = msg

        def cost(image: Image.Image) -> int:
            return depth * (self._prefix_tokens(image) + context)

        batch_size = batch_size or self.batch_size
        with torch.inference_mode():
            for group in self._image_groups(items, batch_size, cost, failed):
                got = self._node_loglik([img for _, img in group], node_plan, batch_size, framing)
                for (j, _), row in zip(group, got):
                    scores[wanted[j]] = row
        opened: list[list[dict[str, Any] | None]] = []
        for i in positions:
            per_level: list[dict[str, Any] | None] = [None] * len(vocab)
            if errors[i] is None and i in scores:
                for j in plan.by_sample[i]:
                    k = plan.requests[j].level
                    lo, hi = spans[k]
                    level_scores = scores[i][lo:hi]
                    top = torch.argsort(level_scores, descending=True, stable=True)[:TOP_RANKED]
                    names = vocab[k][0]
                    per_level[k] = {
                        "name": names[int(top[0])],
                        "how": "ranked",
                        "ranked": {names[int(t)]: round(float(level_scores[t]), 4) for t in top},
                    }
            opened.append(per_level)
        return self._open_answers(plan, plan.protocol, positions, errors, opened)
