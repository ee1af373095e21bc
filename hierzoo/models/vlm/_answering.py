"""Answering the paper's questions: the requests of :func:`hierzoo.prompts.plan_questions`,
scored in fused passes (from the prefix cache, or as full prompts), and collected into
:class:`~hierzoo.models.outputs.Answers`."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from hierzoo import prompts
from hierzoo.models.outputs import Answers
from hierzoo.prompts import Protocol, QuestionPlan
from hierzoo.tasks import Question


class _Row(NamedTuple):
    """One request as the model runs it: its user text, and the tokens of text + template tail."""

    text: str
    ids: list[int]


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

    def check_protocol(self, protocol: Protocol) -> None:
        if protocol.answer != "logits":
            raise ValueError(
                f"--answer {protocol.answer} is not available for {type(self).__name__}; use "
                "--answer logits."
            )
        if protocol.templates is not None:
            raise ValueError(
                f"Protocol.templates is for CLIP models (--template); {type(self).__name__} asks "
                f"the paper's questions, so leave it None (got {protocol.templates!r})."
            )

    def _prepare(
        self, questions: Sequence[Question], protocol: Protocol | None, batch_size: int | None
    ) -> tuple[Protocol, QuestionPlan, torch.Tensor, list[str | None]]:
        protocol = protocol or Protocol()
        self.check_protocol(protocol)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"Expected `batch_size` >= 1, but got {batch_size!r}.")
        plan = prompts.plan_questions(questions, protocol, family=self.family, model=self.zoo_name)
        logits = torch.full((len(plan.requests), max(plan.n_letters, 1)), float("nan"))
        return protocol, plan, logits, [None] * len(questions)

    def _score(
        self,
        questions: Sequence[Question],
        plan: QuestionPlan,
        mode: str,
        logits: torch.Tensor,
        errors: list[str | None],
        batch_size: int | None,
        progress: bool,
    ) -> Iterator[list[int]]:
        """Fill ``logits`` (one row per request) and ``errors``; yields the entries finished by
        each fused pass (and by failed images)."""
        from tqdm.auto import tqdm

        if not plan.requests:
            return
        head, tail = self.template(mode)
        letter_ids = self.letter_token_ids(plan.n_letters, mode)
        tok = self.processor.tokenizer
        texts = [r.text for r in plan.requests]
        ids = tok([t + tail for t in texts], add_special_tokens=False)["input_ids"]
        rows = [_Row(t, i) for t, i in zip(texts, ids)]
        batch_size = batch_size or self.batch_size
        run = self._run_prefixed if self.prefix_cache else self._run_plain
        with (
            torch.inference_mode(),
            tqdm(total=len(rows), unit="q", disable=not progress, desc=self.name) as bar,
        ):
            wanted = [i for i, rows in enumerate(plan.by_sample) if rows]
            longest = max(len(r.ids) for r in rows)
            per_image = max(len(rows) for rows in plan.by_sample)
            if mode == "text":
                head_tokens = len(tok(head, add_special_tokens=False)["input_ids"])
                step = batch_size or max(
                    1, self.token_budget // (per_image * (head_tokens + longest))
                )
                for lo in range(0, len(wanted), step):
                    group = [(i, None) for i in wanted[lo : lo + step]]
                    self._run_group(
                        run, mode, group, plan, rows, letter_ids, batch_size, logits, bar
                    )
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
                self._run_group(run, mode, group, plan, rows, letter_ids, batch_size, logits, bar)
                yield [i for i, _ in group] + failures
                failures.clear()
            yield failures

    def _run_group(
        self,
        run: Callable[..., Iterator[tuple[list[int], torch.Tensor]]],
        mode: str,
        group: list[tuple[int, Image.Image | None]],
        plan: QuestionPlan,
        rows: list[_Row],
        letter_ids: list[int],
        batch_size: int | None,
        logits: torch.Tensor,
        bar: Any,
    ) -> None:
        images = [img for _, img in group] if mode == "image" else None
        groups = [[rows[j] for j in plan.by_sample[i]] for i, _ in group]
        flat = [j for i, _ in group for j in plan.by_sample[i]]
        for local, out in run(mode, images, groups, letter_ids, batch_size):
            logits[[flat[t] for t in local]] = out
            bar.update(len(local))

    def _letter_logits(self, logits: torch.Tensor, letter_ids: list[int]) -> torch.Tensor:
        return logits[:, -1, letter_ids].float().cpu()

    def _run_prefixed(
        self,
        mode: str,
        images: list[Image.Image] | None,
        groups: list[list[_Row]],
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
        groups: list[list[_Row]],
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
        plan: QuestionPlan,
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
            right: dict[int, int] = {}
            for j in plan.by_sample[i]:
                r = plan.requests[j]
                k, m = r.level, len(r.order)
                p = torch.softmax(logits[j, :m], dim=0).numpy()
                c = int(p.argmax())
                rotations[row, k, r.rotation] = plan.orders[i][k].index(r.order[c])
                if r.rotation == 0:
                    choice[row, k] = c
                    probs[row, k, :m] = p
                    letter_logits[row, k, :m] = logits[j, :m].numpy()
                    right[k] = r.answer
            if correct is not None:
                for k, answer in right.items():
                    m = len(plan.orders[i][k])
                    correct[row, k] = bool(np.all(rotations[row, k, :m] == answer))
        extra: dict[str, Any] = {
            "model": self.name,
            "family": self.family,
            "protocol": protocol.to_dict(),
            "prompt_variant": plan.prompt_variant,
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
