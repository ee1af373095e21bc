"""Answering the paper's questions: the requests of :func:`hierzoo.prompts.plan_questions`,
scored in fused passes (from the prefix cache, or as full prompts), and collected into
:class:`~hierzoo.models.outputs.Answers`.

Two answer protocols (:data:`hierzoo.prompts.ANSWERS`): ``logits`` reads the option letters'
logits at the last prompt position; ``generate`` continues the same fused passes greedily, as
the checkpoint's own ``generate`` would (its generation config, ``do_sample=False``), and parses
each reply by the paper's rule (:func:`hierzoo.prompts.parse_paper_answer`). The first generated
token's logits are the ``logits`` protocol's, so a generated run records both."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from hierzoo import prompts
from hierzoo.models.base import check_batch_size, checked_questions
from hierzoo.models.outputs import Answers, first_yes
from hierzoo.models.vlm._prefix_cache import _cache_of
from hierzoo.prompts import Protocol, QuestionPlan
from hierzoo.tasks import Question


class _Row(NamedTuple):
    """One request as the model runs it: its user text, and the tokens of text + template tail."""

    text: str
    ids: list[int]


@dataclass
class _Generation:
    """Greedy generation as the model's ``generate`` runs it: its generation config merged with
    ``do_sample=False`` and ``max_new_tokens`` (``config``), the end-of-sequence ids, and whether
    any logits processor (a repetition penalty ...) applies."""

    max_new_tokens: int
    config: Any
    eos: torch.Tensor | None
    processed: bool


@dataclass
class _Work:
    """One ``answer`` call's plan and what its passes fill in, per request: the first answer
    token's letter logits and (generate) the reply; per entry: the error, if any. ``system``:
    the system message of a protocol that has its own (``None``: the template's default)."""

    protocol: Protocol
    plan: QuestionPlan
    logits: torch.Tensor
    errors: list[str | None]
    replies: list[str | None] | None
    generation: _Generation | None
    framing: prompts.Framing | None = None


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
        circular rotations (``correct`` is set: a level is right only if every rotation is),
        text mode (no image; the leaf level is not asked) and the answer protocol: the option
        letters' logits (``answer="logits"``), or a greedy reply of at most
        ``protocol.reply_tokens(family)`` tokens parsed by the paper's rule
        (``answer="generate"``: ``replies`` is set, ``choice`` is ``-1`` where no option letter
        is in the reply, ``probs`` are the letter probabilities at the first generated token).
        ``choice`` and ``probs`` are the answers to the options in ``options`` order (the first
        rotation). ``extra`` holds the protocol, the prompt variant used, the seed, the letters,
        the letter logits, with generated replies ``max_new_tokens``, and in circular mode each
        rotation's choice (``rotation_choices``, positions in ``options``; ``-1``: no letter)
        and, generated, each rotation's reply (``rotation_replies``).

        Under ``protocol.name="binary"`` each option is one yes/no statement (``binary`` and,
        generated, ``statement_replies`` are set; ``extra["answer_logits"]`` holds the
        ``Yes`` / ``No`` logits); under ``"open"`` each level is asked without options and
        ``open`` is set: generated replies matched onto the level's nodes, or (``logits``) the
        level's nodes ranked by the log-likelihood of their names (docs/protocols.md).

        Raises:
            QuestionError: a level's answer is not among its options (before any model work).
            ValueError: ``protocol.templates`` is set, a bad protocol value, or (generate) a
                checkpoint whose generation config is not greedy under ``do_sample=False``.
        """
        questions, protocol = checked_questions(questions, protocol)
        if _ranked(protocol):
            return self._open_whole(questions, protocol, batch_size)
        work = self._prepare(questions, protocol, batch_size)
        for _ in self._score(questions, work, batch_size, progress):
            pass
        return self._collect(work, range(len(questions)))

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
        questions, protocol = checked_questions(questions, protocol)
        if _ranked(protocol):
            yield from self._iter_open_ranked(questions, protocol, batch_size, chunk_size)
            return
        work = self._prepare(questions, protocol, batch_size)
        done = np.array([not rows for rows in work.plan.by_sample], dtype=bool)
        next_q = 0
        steps = self._score(questions, work, batch_size, False)
        for finished in itertools.chain(steps, [[]]):
            done[finished] = True
            start = next_q
            while next_q < len(questions) and done[next_q]:
                next_q += 1
            for lo in range(start, next_q, chunk_size):
                piece = range(lo, min(lo + chunk_size, next_q))
                yield list(piece), self._collect(work, piece)

    def _open_whole(
        self, questions: Sequence[Question], protocol: Protocol, batch_size: int | None
    ) -> Answers:
        """The constrained open answers of all ``questions`` in one :class:`Answers`."""
        chunk = max(len(questions), 1)
        for _, answers in self._iter_open_ranked(questions, protocol, batch_size, chunk):
            return answers
        plan = prompts.plan_questions(questions, protocol, family=self.family)
        return self._open_answers(plan, protocol, [], [], [])  # no questions

    def check_protocol(self, protocol: Protocol) -> None:
        super().check_protocol(protocol)  # type: ignore[misc]
        if protocol.name == "open":
            from hierzoo.models.vlm._open import open_taxonomy

            open_taxonomy(protocol)
            if protocol.mode == "text" and protocol.answer == "logits":
                raise ValueError(
                    "--protocol open ranks the level's nodes by log-likelihood (--answer logits) "
                    "in image mode only; in text mode use --answer generate (the free reply)."
                )
        if protocol.templates is not None:
            raise ValueError(
                f"Protocol.templates is for CLIP models (--template); {type(self).__name__} asks "
                f"the paper's questions, so leave it None (got {protocol.templates!r})."
            )

    def _prepare(
        self, questions: Sequence[Question], protocol: Protocol | None, batch_size: int | None
    ) -> _Work:
        protocol = protocol or Protocol()
        self.check_protocol(protocol)
        check_batch_size(batch_size)
        plan = prompts.plan_questions(questions, protocol, family=self.family, model=self.zoo_name)
        self._require_weights()
        width = 0 if protocol.name == "open" else max(plan.n_letters, 1)
        logits = torch.full((len(plan.requests), width), float("nan"))
        generate = protocol.answer == "generate"
        return _Work(
            protocol,
            plan,
            logits,
            [None] * len(questions),
            [None] * len(plan.requests) if generate else None,
            self._generation(protocol.reply_tokens(self.family)) if generate else None,
            prompts.protocol_framing(protocol, self.family),
        )

    def _generation(self, max_new_tokens: int) -> _Generation:
        """The checkpoint's generation config as ``generate(max_new_tokens=..., do_sample=False)``
        merges it (transformers' own merge).

        Raises:
            ValueError: a config that does not decode greedily under ``do_sample=False`` (beam
                search ...), or that stops on strings.
        """
        from transformers.generation.configuration_utils import GenerationMode

        model = self.model
        config, _ = model._prepare_generation_config(
            None, do_sample=False, max_new_tokens=max_new_tokens
        )
        mode = config.get_generation_mode()
        if mode != GenerationMode.GREEDY_SEARCH or config.stop_strings:
            what = f"stop_strings {config.stop_strings!r}" if config.stop_strings else mode.value
            raise ValueError(
                f"The generation config of {self.name!r} decodes by {what} under do_sample=False; "
                "--answer generate runs greedy decoding only (set model.generation_config to a "
                "greedy one, or use --answer logits)."
            )
        model._prepare_special_tokens(config, True, device=self.device)
        probe = model._get_logits_processor(
            config, input_ids_seq_length=1, encoder_input_ids=None, device=self.device
        )
        return _Generation(max_new_tokens, config, config._eos_token_tensor, len(probe) > 0)

    def _score(
        self,
        questions: Sequence[Question],
        work: _Work,
        batch_size: int | None,
        progress: bool,
    ) -> Iterator[list[int]]:
        """Fill ``work``'s logits and replies (one row per request) and errors; yields the
        entries finished by each fused pass (and by failed images)."""
        from tqdm.auto import tqdm

        plan, mode = work.plan, work.protocol.mode
        if not plan.requests:
            return
        head, tail = self.template(mode, work.framing)
        if work.protocol.name == "binary":
            letter_ids = self.answer_token_ids(prompts.BINARY_ANSWERS, mode, work.framing)
        elif work.protocol.name == "open":
            letter_ids = []
        else:
            letter_ids = self.letter_token_ids(plan.n_letters, mode)
        tok = self.processor.tokenizer
        texts = [r.text for r in plan.requests]
        ids = tok([t + tail for t in texts], add_special_tokens=False)["input_ids"]
        rows = [_Row(t, i) for t, i in zip(texts, ids)]
        batch_size = batch_size or self.batch_size
        run = self._run_prefixed if self.prefix_cache else self._run_plain
        errors = work.errors
        with (
            torch.inference_mode(),
            tqdm(total=len(rows), unit="q", disable=not progress, desc=self.name) as bar,
        ):
            wanted = [i for i, rows in enumerate(plan.by_sample) if rows]
            longest = max(len(r.ids) for r in rows)
            if work.generation is not None:
                longest += work.generation.max_new_tokens
            per_image = max(len(rows) for rows in plan.by_sample)
            if mode == "text":
                head_tokens = len(tok(head, add_special_tokens=False)["input_ids"])
                step = batch_size or max(
                    1, self.token_budget // (per_image * (head_tokens + longest))
                )
                for lo in range(0, len(wanted), step):
                    group = [(i, None) for i in wanted[lo : lo + step]]
                    self._run_group(run, group, work, rows, letter_ids, batch_size, bar)
                    yield [i for i, _ in group]
                return
            items = [questions[i].path or questions[i].image for i in wanted]

            failures: list[int] = []

            def failed(j: int, msg: str) -> None:
                errors[wanted[j]] = msg
                failures.append(wanted[j])
                bar.update(len(plan.by_sample[wanted[j]]))

            def cost(image: Image.Image) -> int:
                prefix = self._prefix_tokens(image, work.framing)
                return prefix if self.prefix_cache else per_image * (prefix + longest)

            for group in self._image_groups(items, batch_size, cost, failed):
                group = [(wanted[j], img) for j, img in group]
                self._run_group(run, group, work, rows, letter_ids, batch_size, bar)
                yield [i for i, _ in group] + failures
                failures.clear()
            yield failures

    def _run_group(
        self,
        run: Callable[..., Iterator[tuple[list[int], torch.Tensor, list[str] | None]]],
        group: list[tuple[int, Image.Image | None]],
        work: _Work,
        rows: list[_Row],
        letter_ids: list[int],
        batch_size: int | None,
        bar: Any,
    ) -> None:
        plan, mode = work.plan, work.protocol.mode
        images = [img for _, img in group] if mode == "image" else None
        groups = [[rows[j] for j in plan.by_sample[i]] for i, _ in group]
        flat = [j for i, _ in group for j in plan.by_sample[i]]
        for local, out, replies in run(
            mode, images, groups, letter_ids, batch_size, work.generation, work.framing
        ):
            work.logits[[flat[t] for t in local]] = out
            if replies is not None and work.replies is not None:
                for t, reply in zip(local, replies):
                    work.replies[flat[t]] = reply
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
        generation: _Generation | None = None,
        framing: prompts.Framing | None = None,
    ) -> Iterator[tuple[list[int], torch.Tensor, list[str] | None]]:
        """Yield ``(row numbers, letter logits, replies)``: one prefix forward for all groups (one
        per image; one for all in text mode), then the rows' suffixes from copies of its KV cache,
        and (``generation``) the rows' greedy continuations from there (else replies ``None``).
        ``framing``: the protocol's own system message and text before the image (default:
        the paper's)."""
        prefix = self._prefix(images, len(groups) if images is not None else 1, mode, framing)
        owner = [g if images is not None else 0 for g, rows in enumerate(groups) for _ in rows]
        asks = [a for rows in groups for a in rows]
        width = prefix.mask.shape[1] + max(len(a.ids) for a in asks)
        width += generation.max_new_tokens if generation is not None else 0
        for part in self._row_chunks(len(asks), width, batch_size):
            out, attention, mask = self._continue(prefix, owner[part], [a.ids for a in asks[part]])
            replies = None
            if generation is not None:
                idx = torch.tensor(owner[part], device=self.device)
                start = prefix.start.index_select(0, idx) + mask.sum(-1)
                seqs = [prefix.ids[o] + a.ids for o, a in zip(owner[part], asks[part])]
                replies = self._generate(generation, out, attention, start, seqs)
            letters = self._letter_logits(out.logits, letter_ids)
            yield list(range(part.start, part.stop)), letters, replies

    def _run_plain(
        self,
        mode: str,
        images: list[Image.Image] | None,
        groups: list[list[_Row]],
        letter_ids: list[int],
        batch_size: int | None,
        generation: _Generation | None = None,
        framing: prompts.Framing | None = None,
    ) -> Iterator[tuple[list[int], torch.Tensor, list[str] | None]]:
        """Yield ``(row numbers, letter logits, replies)`` from full prompts, many rows per
        forward, and (``generation``) their greedy continuations (else replies ``None``)."""
        head, tail = self.template(mode, framing)
        owner = [g for g, rows in enumerate(groups) for _ in rows]
        asks = [a for rows in groups for a in rows]
        head_len = len(self.processor.tokenizer(head, add_special_tokens=False)["input_ids"])
        width = head_len + max(len(a.ids) for a in asks)
        width += generation.max_new_tokens if generation is not None else 0
        for part in self._row_chunks(len(asks), width, batch_size):
            texts = [head + a.text + tail for a in asks[part]]
            imgs = [images[g] for g in owner[part]] if images is not None else None
            enc = self._encode(texts, imgs, side="left")
            positions, start = self.prompt_positions(enc)
            out = self.model(
                **enc, position_ids=positions, use_cache=generation is not None, logits_to_keep=1
            )
            replies = None
            if generation is not None:
                mask = enc["attention_mask"]
                seqs = [row[m.bool()].tolist() for row, m in zip(enc["input_ids"], mask)]
                replies = self._generate(generation, out, mask, start, seqs)
            letters = self._letter_logits(out.logits, letter_ids)
            yield list(range(part.start, part.stop)), letters, replies

    def _generate(
        self,
        generation: _Generation,
        first: Any,
        attention: torch.Tensor,
        start: torch.Tensor,
        seqs: list[list[int]],
    ) -> list[str]:
        """The greedy replies of a batch of rows, continued from the forward ``first`` over their
        prompts (its last logits and its KV cache), as ``generate`` decodes each row alone.

        ``attention``: the rows' attention mask so far (any padding, anywhere); ``start``: the
        position of each row's next token; ``seqs``: each row's real prompt tokens (what logits
        processors such as the repetition penalty see: the row's own, never its padding).
        Each step feeds every row its chosen token; a row stops at an end-of-sequence token (kept
        out of the reply by ``skip_special_tokens``), all stop at ``max_new_tokens``.
        """
        model, device = self.model, self.device
        n = len(seqs)
        cache, logits = _cache_of(first), first.logits[:, -1]
        processors = None
        if generation.processed:
            history = [torch.tensor([s], dtype=torch.long, device=device) for s in seqs]
            processors = [
                model._get_logits_processor(
                    generation.config,
                    input_ids_seq_length=len(s),
                    encoder_input_ids=h,
                    device=device,
                    model_kwargs={"attention_mask": torch.ones_like(h)},
                )
                for s, h in zip(seqs, history)
            ]
        tokens: list[list[int]] = [[] for _ in range(n)]
        done = torch.zeros(n, dtype=torch.bool, device=device)
        ones = torch.ones((n, 1), dtype=attention.dtype, device=device)
        for step in range(generation.max_new_tokens):
            scores = logits.to(device=device, dtype=torch.float32)
            if processors is not None:
                scores = torch.cat(
                    [p(h, scores[i : i + 1]) for i, (p, h) in enumerate(zip(processors, history))]
                )
            chosen = scores.argmax(dim=-1)
            for i, (t, finished) in enumerate(zip(chosen.tolist(), done.tolist())):
                if not finished:
                    tokens[i].append(t)
            if processors is not None:
                history = [
                    torch.cat([h, chosen[i : i + 1, None]], dim=1) for i, h in enumerate(history)
                ]
            if generation.eos is not None:
                done |= torch.isin(chosen, generation.eos)
            if step == generation.max_new_tokens - 1 or bool(done.all()):
                break
            attention = torch.cat([attention, ones], dim=1)
            out = model(
                input_ids=chosen[:, None],
                attention_mask=attention,
                position_ids=self.suffix_positions(start + step, ones),
                **{self._cache_arg: cache},
                use_cache=True,
                logits_to_keep=1,
            )
            cache, logits = _cache_of(out), out.logits[:, -1]
        return self.processor.tokenizer.batch_decode(
            tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def _collect(self, work: _Work, samples: Sequence[int]) -> Answers:
        """The :class:`Answers` of the entries ``samples`` (in that order)."""
        if work.protocol.name == "binary":
            return self._collect_binary(work, samples)
        if work.protocol.name == "open":
            return self._collect_open(work, samples)
        plan, protocol, logits, errors = work.plan, work.protocol, work.logits, work.errors
        n = len(samples)
        depth = max((len(o) for o in plan.options), default=0)
        width = max(plan.n_letters, 1)
        choice = np.full((n, depth), -1, dtype=np.int64)
        probs = np.full((n, depth, width), np.nan, dtype=np.float32)
        rotations = np.full((n, depth, width), -1, dtype=np.int64)
        letter_logits = np.full((n, depth, width), np.nan, dtype=np.float32)
        correct = np.zeros((n, depth), dtype=bool) if protocol.circular else None
        generated = work.replies is not None
        replies: list[list[str | None]] = [[None] * depth for _ in range(n)]
        rotation_replies: list[list[list[str]]] = [[[] for _ in range(depth)] for _ in range(n)]
        for row, i in enumerate(samples):
            if errors[i] is not None:
                continue
            right: dict[int, int] = {}
            for j in plan.by_sample[i]:
                r = plan.requests[j]
                k, m = r.level, len(r.order)
                p = torch.softmax(logits[j, :m], dim=0).numpy()
                if work.replies is not None:
                    reply = work.replies[j] or ""
                    letter = prompts.parse_answer(reply, r.letters, protocol.parse)
                    c = r.letters.index(letter) if letter is not None else -1
                    rotation_replies[row][k].append(reply)
                else:
                    c = int(p.argmax())
                if c >= 0:
                    rotations[row, k, r.rotation] = plan.orders[i][k].index(r.order[c])
                if r.rotation == 0:
                    choice[row, k] = c
                    probs[row, k, :m] = p
                    letter_logits[row, k, :m] = logits[j, :m].numpy()
                    right[k] = r.answer
                    if work.replies is not None:
                        replies[row][k] = work.replies[j] or ""
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
        if work.generation is not None:
            extra["max_new_tokens"] = work.generation.max_new_tokens
        if protocol.circular:
            extra["rotation_choices"] = rotations
            if generated:
                extra["rotation_replies"] = rotation_replies
        return Answers(
            choice=choice,
            probs=probs,
            options=[plan.options[i] for i in samples],
            errors=[errors[i] for i in samples],
            correct=correct,
            extra=extra,
            replies=replies if generated else None,
        )

    def _collect_binary(self, work: _Work, samples: Sequence[int]) -> Answers:
        """The :class:`Answers` of yes/no statements (``--protocol binary``) for the entries
        ``samples``: per level each option's answer (1 yes, 0 no, -1 neither: the paper's parse
        of a reply, or ``Yes`` against ``No`` by logits) in asked order; ``choice`` the first
        option answered yes (-1: none), ``probs`` each option's probability of ``Yes`` against
        ``No`` at the answer position."""
        plan, protocol, logits, errors = work.plan, work.protocol, work.logits, work.errors
        n = len(samples)
        depth = max((len(o) for o in plan.options), default=0)
        width = max((len(opts) for o in plan.options for opts in o), default=1)
        choice = np.full((n, depth), -1, dtype=np.int64)
        probs = np.full((n, depth, width), np.nan, dtype=np.float32)
        yes_no = np.full((n, depth, width, 2), np.nan, dtype=np.float32)
        binary: list[list[list[int]]] = [[[] for _ in range(depth)] for _ in range(n)]
        generated = work.replies is not None
        replies: list[list[list[str]]] = [[[] for _ in range(depth)] for _ in range(n)]
        for row, i in enumerate(samples):
            if errors[i] is not None:
                continue
            for j in plan.by_sample[i]:
                r = plan.requests[j]
                k, pos = r.level, len(binary[row][r.level])
                pair = logits[j, :2]
                yes_no[row, k, pos] = pair.numpy()
                probs[row, k, pos] = float(torch.softmax(pair, dim=0)[0])
                if work.replies is not None:
                    reply = work.replies[j] or ""
                    replies[row][k].append(reply)
                    said = prompts.parse_yes_no(reply)
                else:
                    said = int(bool(pair[0] > pair[1]))
                binary[row][k].append(said)
            for k, said_k in enumerate(binary[row]):
                choice[row, k] = first_yes(said_k)
        extra: dict[str, Any] = {
            "model": self.name,
            "family": self.family,
            "protocol": protocol.to_dict(),
            "prompt_variant": None,
            "seed": protocol.seed if protocol.shuffle_options else None,
            "answers": list(prompts.BINARY_ANSWERS),
            "prefix_cache": self.prefix_cache,
            "answer_logits": yes_no,
        }
        if work.generation is not None:
            extra["max_new_tokens"] = work.generation.max_new_tokens
        return Answers(
            choice=choice,
            probs=probs,
            options=[plan.options[i] for i in samples],
            errors=[errors[i] for i in samples],
            extra=extra,
            binary=binary,
            statement_replies=replies if generated else None,
        )


def _ranked(protocol: Protocol | None) -> bool:
    """Whether a protocol asks for constrained open answers (``open`` read from logits)."""
    return protocol is not None and protocol.name == "open" and protocol.answer == "logits"
