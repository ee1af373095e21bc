"""Answering the paper's questions: requests planned, scored in fused passes (from the prefix
cache, or as full prompts), and collected into :class:`~hierzoo.models.outputs.Answers`."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from hierzoo import prompts
from hierzoo.models.base import Protocol
from hierzoo.models.outputs import Answers
from hierzoo.tasks import Question


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


class _AnsweringMixin:
    """``answer`` and ``iter_answers`` of :class:`~hierzoo.models.vlm.VisionLLMClassifier`."""

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

    def _prepare(
        self, questions: Sequence[Question], protocol: Protocol | None, batch_size: int | None
    ) -> tuple[Protocol, _Plan, torch.Tensor, list[str | None]]:
        protocol = protocol or Protocol()
        if protocol.templates is not None:
            raise ValueError(
                f"Protocol.templates is for CLIP models; {type(self).__name__} asks the paper's "
                f"questions, so leave it None (got {protocol.templates!r})."
            )
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
