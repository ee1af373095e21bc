"""The ``openai-chat`` family: a model behind an OpenAI-compatible chat-completions API (OpenAI,
vLLM, SGLang) as a :class:`~hierzoo.models.base.HierClassifier`.

It answers the requests of :func:`hierzoo.prompts.plan_questions` as they are: each request is
built by :func:`~hierzoo.models.api.request.build_request` and sent through
:meth:`ChatClient.run <hierzoo.models.api.client.ChatClient.run>` (many in flight, retried,
cached), and a question-set entry is finished, and yielded by :meth:`iter_answers`, as soon as
all its levels are answered.

Two request layouts (``layout``):

- ``"gpt-4o"``, the paper's GPT-4o scripts (the default for OpenAI's models): system "You are a
  helpful assistant.", the question text then the image (the file's bytes as a base64
  ``image/jpeg`` data URL, ``detail: "low"``), ``temperature`` 0.2, ``seed`` 42, at most 5
  tokens; options in the file's order, every level asked, the leaf included; the paper's GPT
  wording per taxonomy and mode (:data:`PAPER_GPT_VARIANTS`).
- ``"vision-llm"``, the local vision-LLM path (the default for every other model, such as a
  Qwen2.5-VL on a vLLM server): the planner's system message, the image then the question text,
  the options shuffled as the local path shuffles them, ``temperature`` 0. The server renders the
  messages with the checkpoint's chat template, as the local path does.

Answers: ``protocol.answer == "logits"`` asks for one token with ``top_logprobs`` and reads the
letter by :func:`~hierzoo.models.api.logprobs.letter_answer`; ``"generate"`` parses the reply by
the paper's rule (:func:`hierzoo.prompts.parse_paper_answer`), records it as
``prediction_levelK``, and records ``Unknown`` when no option letter is in it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import openai  # noqa: F401  (the backend: without it the factory names `pip install 'hierzoo[api]'`)
import torch

from hierzoo import prompts
from hierzoo.models.api.client import ApiSettings, ChatClient, ChatResult
from hierzoo.models.api.logprobs import (
    NoLogprobsError,
    ResponseFormatError,
    reply_text,
    response_letter_answer,
)
from hierzoo.models.api.request import (
    MAX_TOP_LOGPROBS,
    OPENAI_API_BASE,
    PAPER_MODELS,
    RequestSettings,
    build_request,
    describe_request,
    paper_settings,
)
from hierzoo.models.base import HierClassifier, checked_questions
from hierzoo.models.outputs import Answers
from hierzoo.prompts import Protocol, QuestionPlan, Request

if TYPE_CHECKING:
    from hierzoo.images import ImageInput
    from hierzoo.models._registry import ModelSpec
    from hierzoo.models.outputs import Features, NodeScores
    from hierzoo.tasks import Question
    from hierzoo.taxonomy import Taxonomy

__all__ = ["LAYOUTS", "PAPER_GPT_VARIANTS", "NotAvailableOverApi", "OpenAIChatClassifier"]

LAYOUTS = ("gpt-4o", "vision-llm")
"""How requests are laid out: the paper's GPT-4o scripts, or the local vision-LLM path."""

OPENAI_MODEL_PREFIXES = ("gpt-", "chatgpt-", "o1", "o3", "o4")
"""Model names that are OpenAI's, whatever server is asked: they take the GPT-4o layout."""

PAPER_GPT_VARIANTS: dict[tuple[str, str], int] = {
    ("imagenet-animal", "image"): 1,
    ("imagenet-artifact", "image"): 1,
    ("cub200", "text"): 1,
    ("inat21-animal", "text"): 1,
    ("inat21-plant", "text"): 1,
    ("imagenet-animal", "text"): 2,
    ("imagenet-artifact", "text"): 2,
}
"""The wording variant of the paper's GPT-4o scripts per (taxonomy, mode); 0 elsewhere.
Image runs: ``evaluation/vllm/gpt/gpt_img_all.py:51-104`` (variant 1 on both ImageNet
taxonomies); text runs: ``evaluation/llm/gpt/gpt_{cub,natural}_text.py`` (variant 1) and
``gpt_imgnet_text.py:61`` (variant 2)."""

GENERATE_TOKENS = {"gpt-4o": {"image": 5, "text": 5}, "vision-llm": {"image": 10, "text": 5}}
"""Default ``max_tokens`` of ``--answer generate``: GPT-4o's 5 (gpt_img_all.py:147); the vision
LLMs' 10 in image runs and 5 in text runs (the Qwen and LLaVA image scripts, every text
script)."""


class NotAvailableOverApi(NotImplementedError, ValueError):
    """What a chat-completions server cannot give (node scores, features, a forward to time).

    A ``NotImplementedError`` (the interface's "this family does not do that") and a
    ``ValueError`` (the command line reports it in one line)."""


def is_openai_model(model: str) -> bool:
    """Whether ``model`` names one of OpenAI's models (``gpt-4o-2024-11-20``, ``o3`` ...)."""
    return model.lower().startswith(OPENAI_MODEL_PREFIXES)


def local_family(model: str) -> str | None:
    """The local family of a served model, when its name is a zoo checkpoint's hub id (or a
    path ending in its name, as vLLM names a model loaded from a directory): it picks the
    paper's default prompt variant for that family. ``None`` for other names."""
    from hierzoo.models._registry import ZOO

    tail = PurePosixPath(model.rstrip("/")).name.lower()
    for spec in ZOO.values():
        if spec.served:
            continue
        if spec.hub_id.lower() == model.lower() or spec.hub_id.split("/")[-1].lower() == tail:
            return spec.family
    return None


class OpenAIChatClassifier(HierClassifier):
    """A model behind an OpenAI-compatible chat-completions server (see the module docstring
    and docs/served.md).

    Args:
        model: the model the server is asked for (``gpt-4o`` is the paper's snapshot
            ``gpt-4o-2024-11-20``).
        name: what results call it.
        spec: the zoo spec it was loaded from.
        api_base: the server's base URL; ``None`` is OpenAI's.
        api_key_env: the environment variable holding the key (default ``OPENAI_API_KEY``).
        concurrency: requests in flight (default 16).
        timeout: seconds one attempt may take (default 120).
        max_retries: retries of a failed request (default 8).
        layout: ``"gpt-4o"`` or ``"vision-llm"`` (:data:`LAYOUTS`); default ``"gpt-4o"`` for
            OpenAI's models and OpenAI's server, ``"vision-llm"`` otherwise.
        restrict: limit the answer to the option letters on the server (``"choice"``,
            ``"guided_choice"``, ``"regex"``, ``"allowed_token_ids"``; see
            :class:`~hierzoo.models.api.request.RequestSettings`).
        allowed_token_ids: the letters' token ids in the server model's tokenizer, for
            ``restrict="allowed_token_ids"``.
        top_logprobs: alternatives per token asked with ``--answer logits`` (default 20,
            OpenAI's limit; a vLLM server allows up to its ``--max-logprobs``).
        max_tokens: the longest reply with ``--answer generate`` (default
            :data:`GENERATE_TOKENS`).
        image_mime: the media type of the image data URLs; default ``image/jpeg`` in the
            GPT-4o layout (as the paper), read from the file (``"auto"``) otherwise.
        cache_dir: the response cache's folder; ``None`` is ``$HIERZOO_CACHE/api``; ``False``
            keeps no cache.

    Raises:
        ApiAuthError: no key is set for OpenAI's server.
        ValueError: a bad option value, naming it.
    """

    family: ClassVar[str] = "openai-chat"
    label: ClassVar[str] = "API model"
    protocols: ClassVar[tuple[str, ...]] = ("paper", "cot")
    generative: ClassVar[bool] = True
    options: ClassVar[frozenset[str]] = frozenset(
        {
            "api_base",
            "api_key_env",
            "concurrency",
            "timeout",
            "max_retries",
            "layout",
            "restrict",
            "allowed_token_ids",
            "top_logprobs",
            "max_tokens",
            "image_mime",
            "cache_dir",
        }
    )

    def __init__(
        self,
        model: str,
        *,
        name: str = "",
        spec: ModelSpec | None = None,
        api_base: str | None = None,
        api_key_env: str | None = None,
        concurrency: int | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        layout: str | None = None,
        restrict: str | None = None,
        allowed_token_ids: Sequence[int] | None = None,
        top_logprobs: int | None = None,
        max_tokens: int | None = None,
        image_mime: str | None = None,
        cache_dir: str | Path | bool | None = None,
        connect: bool = True,
    ):
        self.model = PAPER_MODELS.get(model, model)
        self.name = name or model
        self.spec = spec
        defaults = ApiSettings()
        self.api = ApiSettings(
            api_base=api_base,
            api_key_env=defaults.api_key_env if api_key_env is None else api_key_env,
            concurrency=defaults.concurrency if concurrency is None else concurrency,
            timeout=defaults.timeout if timeout is None else timeout,
            max_retries=defaults.max_retries if max_retries is None else max_retries,
            cache=cache_dir is not False,
            cache_dir=None if cache_dir in (None, False, True) else str(cache_dir),
        )
        if layout is None:
            gpt = is_openai_model(self.model) or self.api.base_url == OPENAI_API_BASE
            layout = "gpt-4o" if gpt else "vision-llm"
        if layout not in LAYOUTS:
            raise ValueError(f"Expected `layout` to be one of {LAYOUTS}, but got {layout!r}.")
        self.layout = layout
        for what, value in (("top_logprobs", top_logprobs), ("max_tokens", max_tokens)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"Expected `{what}` to be an integer >= 1, but got {value!r}.")
        self.top_logprobs = top_logprobs or MAX_TOP_LOGPROBS
        self.max_tokens = max_tokens
        self.restrict = restrict
        self.allowed_token_ids = tuple(allowed_token_ids) if allowed_token_ids else None
        self.image_mime = image_mime or ("image/jpeg" if layout == "gpt-4o" else "auto")
        self.prompt_family = None if layout == "gpt-4o" else local_family(self.model)
        for answer in prompts.ANSWERS:  # every setting checked now, not at the first request
            for mode in prompts.MODES:
                self.request_settings(answer, mode)
        # connect=False (``--dry-run``): requests are built and described, none is sent, so
        # no client and no key are needed
        self.client = ChatClient(self.api) if connect else None
        self.absent_letter_levels = 0

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_spec(
        cls,
        spec: ModelSpec,
        *,
        device: torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **options: Any,
    ) -> OpenAIChatClassifier:
        """The model a spec names, asked over the API (``hierzoo.load("openai:MODEL", ...)``).

        ``device`` is ignored (the model runs on the server); ``dtype`` is refused.

        Raises:
            OptionError: an option of another family, or of none.
            ValueError: a ``dtype``, or a bad option value.
            ApiAuthError: no key is set for OpenAI's server.
        """
        cls.check_options(options, spec.name)
        if dtype is not None:
            raise ValueError(
                f"dtype={str(dtype)!r}: {spec.name!r} answers over an API, so there are no "
                "weights here to cast; drop --dtype."
            )
        return cls(spec.hub_id, name=spec.name, spec=spec, **options)

    @classmethod
    def for_dry_run(cls, spec: ModelSpec, **options: Any) -> OpenAIChatClassifier:
        """The classifier with its request settings and no client (``hierzoo eval
        --dry-run``): :meth:`describe_requests` builds the request bodies; no key is needed and
        nothing is sent.

        Raises:
            OptionError: an option of another family, or of none.
            ValueError: a bad option value.
        """
        cls.check_options(options, spec.name)
        return cls(spec.hub_id, name=spec.name, spec=spec, connect=False, **options)

    @classmethod
    def from_model(cls, model: Any, processor: Any = None, **options: Any) -> HierClassifier:
        """Not possible: a model behind an API is not held in memory.

        Raises:
            TypeError: always, naming how to load one.
        """
        raise TypeError(
            "A model behind an API is not held in memory, so hierzoo.wrap cannot take it; load "
            "it with hierzoo.load('openai:MODEL', api_base=...)."
        )

    # ------------------------------------------------------------------ settings
    def request_settings(self, answer: str, mode: str = "image") -> RequestSettings:
        """Every request setting but the question and the image, for an answer mode
        (``"logits"`` or ``"generate"``) and a question mode (``"image"`` or ``"text"``). The
        vision-LLM layout takes its system message from each request of the planner."""
        if self.layout == "gpt-4o":
            settings = paper_settings(self.model, answer=answer)
        else:
            settings = RequestSettings(
                model=self.model,
                system=None,
                temperature=0.0,
                seed=None,
                max_tokens=1,
                detail=None,
                image_first=True,
            )
        logits = answer == "logits"
        return replace(
            settings,
            max_tokens=1 if logits else self.max_tokens or GENERATE_TOKENS[self.layout][mode],
            top_logprobs=self.top_logprobs if logits else None,
            image_mime=self.image_mime,
            restrict=self.restrict,
            allowed_token_ids=self.allowed_token_ids,
        )

    def _paper_protocol(self, protocol: Protocol) -> Protocol:
        """The GPT-4o layout: the file's option order and the paper's GPT wording
        (:data:`PAPER_GPT_VARIANTS`). The vision-LLM layout: the local vision LLMs' protocol
        (image runs shuffled by the seeded generator)."""
        if self.layout == "vision-llm":
            return protocol
        tax = protocol.taxonomy_name
        variant = protocol.prompt_variant
        if variant is None and tax in prompts.paper_taxonomies():
            variant = PAPER_GPT_VARIANTS.get((tax, protocol.mode), 0)
        return replace(protocol, shuffle_options=False, prompt_variant=variant)

    def check_protocol(self, protocol: Protocol) -> None:
        super().check_protocol(protocol)
        if protocol.templates is not None:
            raise ValueError(
                f"Protocol.templates is for CLIP models (--template); {self.name!r} is asked the "
                f"paper's questions, so leave it None (got {protocol.templates!r})."
            )

    def check_task(self, task: str) -> None:
        if task != "questions":
            raise NotAvailableOverApi(self._no_node_scores())

    @property
    def content(self) -> str:
        """What identifies this model's answers: the model asked and the server asked."""
        return f"api:{self.model}@{self.api.base_url}"

    def identity(self, protocol: Protocol | None) -> dict[str, Any]:
        """``model_content`` (the model and the server) and ``requests``: the layout, the prompt
        variant and every request setting of the protocol's answer and mode (never the key, its
        variable, or how requests are scheduled)."""
        out: dict[str, Any] = {"model_content": self.content}
        if protocol is not None:
            settings = dataclasses.asdict(self.request_settings(protocol.answer, protocol.mode))
            settings["allowed_token_ids"] = list(settings["allowed_token_ids"] or []) or None
            settings["extra"] = dict(settings["extra"])
            variant = protocol.prompt_variant
            if variant is None:
                variant = prompts.default_prompt_variant(protocol.taxonomy, self.prompt_family)
            out["requests"] = {
                "layout": self.layout,
                "prompt_variant": variant,
                "settings": settings,
            }
        return out

    def provenance(self) -> dict[str, Any]:
        """The server and model asked, and the token usage (with the estimated cost for OpenAI's
        dated snapshots) of the answers this object read."""
        usage = self.client.usage.summary(self.model)
        usage["levels_with_absent_letters"] = self.absent_letter_levels
        return {
            "api": {"api_base": self.api.base_url, "model": self.model, "layout": self.layout},
            "usage": usage,
        }

    # ------------------------------------------------------------------ answering
    def answer(
        self,
        questions: Sequence[Question],
        *,
        protocol: Protocol | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Answers:
        """Answer every level of every question-set entry over the API (see :class:`Answers`).

        ``batch_size`` is ignored (``concurrency`` sets the requests in flight). A request that
        fails after its retries (or whose image cannot be read) makes its entry's ``error``.
        ``replies`` holds the raw replies (``--answer generate``), ``unknown`` the levels where
        no option letter could be read, ``absent`` the letters missing from the top
        log-probabilities (``--answer logits``).

        Raises:
            ApiAuthError: the server refused the key (at once; nothing more is sent).
            ApiNotFoundError: the server has no such model.
            ResponseFormatError: ``--answer logits`` and the server returns no
                log-probabilities.
        """
        questions, protocol = checked_questions(questions, protocol)
        run = _Run(self, questions, protocol)
        for _ in run.finished(progress):
            pass
        return run.collect(range(len(questions)))

    def iter_answers(
        self,
        questions: Sequence[Question],
        *,
        protocol: Protocol | None = None,
        batch_size: int | None = None,
        chunk_size: int = 256,
    ) -> Iterator[tuple[list[int], Answers]]:
        """:meth:`answer` in pieces: yields ``(positions, answers)`` for the entries whose every
        level has been answered, as they complete (at most ``chunk_size`` per piece), so a run
        writes each answer as it arrives."""
        questions, protocol = checked_questions(questions, protocol)
        run = _Run(self, questions, protocol)
        for done in run.finished(progress=False):
            for lo in range(0, len(done), chunk_size):
                piece = done[lo : lo + chunk_size]
                yield piece, run.collect(piece)

    def describe_requests(
        self,
        questions: Sequence[Question],
        *,
        protocol: Protocol | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The first ``limit`` requests (all when ``None``), as ``--dry-run`` prints them: per
        request its ``sample``, ``level``, ``letters``, ``text``, ``images``,
        ``max_new_tokens``, and the ``request`` body exactly as sent but with each image as its
        size and SHA-256 (:func:`~hierzoo.models.api.request.describe_request`); ``error``
        instead of ``request`` when it cannot be built (an unreadable image). Sends nothing."""
        run = _Run(self, questions, protocol)
        wanted = run.plan.requests[:limit] if limit is not None else run.plan.requests
        out = []
        for r, body in zip(wanted, run.bodies(wanted)):
            item: dict[str, Any] = {
                "sample": r.sample,
                "level": r.level + 1,
                "rotation": r.rotation,
                "letters": r.letters,
                "text": r.text,
                "images": [r.image] if r.image is not None else [],
                "max_new_tokens": run.settings(r).max_tokens,
            }
            if isinstance(body, BaseException):
                item["error"] = f"{type(body).__name__}: {body}"
            else:
                item["request"] = describe_request(body)
            out.append(item)
        return out

    # ------------------------------------------------------------------ what a server lacks
    def _no_node_scores(self) -> str:
        return (
            f"{self.name!r} answers over a chat-completions API, which returns a reply and the "
            "log-probabilities of at most a few tokens, not a score for every node of a taxonomy: "
            "predict_path and score_nodes (--task path) need those. Ask it the four-choice "
            "questions (answer, --task questions), or decode paths with a local model "
            "(`hierzoo models`)."
        )

    def score_nodes(
        self,
        images: ImageInput | Sequence[ImageInput],
        taxonomy: Taxonomy,
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> NodeScores:
        """Not available over a chat-completions API.

        Raises:
            NotAvailableOverApi: always, saying what is missing and what to use instead.
        """
        raise NotAvailableOverApi(self._no_node_scores())

    def features(
        self,
        images: ImageInput | Sequence[ImageInput],
        where: str | Sequence[str],
        *,
        taxonomy: Taxonomy | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Features:
        """Not available over a chat-completions API.

        Raises:
            NotAvailableOverApi: always, saying what is missing and what to use instead.
        """
        raise NotAvailableOverApi(
            f"{self.name!r} answers over a chat-completions API, which returns text and token "
            "log-probabilities, not the model's hidden states: features (hierzoo probe) need a "
            "local model; load the checkpoint itself (`hierzoo models`)."
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
        """Not available over a chat-completions API.

        Raises:
            NotAvailableOverApi: always.
        """
        return self.features([], where)

    def timed_module(self) -> torch.nn.Module:
        """Not available: the forward passes run on the server.

        Raises:
            NotAvailableOverApi: always.
        """
        raise NotAvailableOverApi(
            f"{self.name!r} runs on a server; hierzoo bench times a local model's forward "
            "passes. Time the server with its own tools, or a run's questions_per_second."
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model!r}, api_base={self.api.base_url!r}, "
            f"layout={self.layout!r})"
        )


class _Run:
    """One pass over a question set: the plan, the requests built lazily, each result recorded
    as it arrives, and the :class:`Answers` of finished entries."""

    def __init__(
        self, clf: OpenAIChatClassifier, questions: Sequence[Question], protocol: Protocol | None
    ):
        protocol = protocol or Protocol()
        clf.check_protocol(protocol)
        self.clf = clf
        self.questions = questions
        self.protocol = protocol
        self.plan: QuestionPlan = prompts.plan_questions(
            questions, protocol, family=clf.prompt_family
        )
        self._settings: dict[str | None, RequestSettings] = {}
        n_req, width = len(self.plan.requests), max(self.plan.n_letters, 1)
        self.chosen = np.full(n_req, -1, dtype=np.int64)
        self.probs = np.full((n_req, width), np.nan, dtype=np.float32)
        self.unknown = np.zeros(n_req, dtype=bool)
        self.replies: list[str | None] = [None] * n_req
        self.absent = [""] * n_req
        self.errors: list[str | None] = [None] * len(questions)
        self.tokens = np.zeros((len(questions), 3), dtype=np.int64)

    # ------------------------------------------------------------------ requests
    def settings(self, r: Request) -> RequestSettings:
        """The request settings of ``r`` (the vision-LLM layout takes the planner's system)."""
        system = r.system if self.clf.layout == "vision-llm" else None
        if system not in self._settings:
            settings = self.clf.request_settings(self.protocol.answer, self.protocol.mode)
            if system is not None:
                settings = replace(settings, system=system)
            self._settings[system] = settings
        return self._settings[system]

    def bodies(self, requests: Sequence[Request]) -> Iterator[dict[str, Any] | BaseException]:
        """The body of each request, built as it is needed; an image that cannot be read (or a
        body that cannot be built) is that request's exception, in its turn. Each image file is
        read once for all the levels that follow it."""
        last: tuple[int, bytes | BaseException] | None = None
        for r in requests:
            image: bytes | None = None
            if r.image is not None:
                if last is None or last[0] != r.sample:
                    q = self.questions[r.sample]
                    source = q.path if q.path is not None else q.image
                    try:
                        with open(source, "rb") as f:
                            last = (r.sample, f.read())
                    except OSError as e:
                        last = (r.sample, e)
                if isinstance(last[1], BaseException):
                    yield last[1]
                    continue
                image = last[1]
            try:
                yield build_request(r.text, image, self.settings(r), letters=r.letters)
            except ValueError as e:
                yield ValueError(f"{r.image}: {e}" if r.image is not None else str(e))

    # ------------------------------------------------------------------ results
    def finished(self, progress: bool) -> Iterator[list[int]]:
        """Send every request; yield the entries finished by each result (first the entries
        with nothing to ask)."""
        plan = self.plan
        left = np.array([len(rows) for rows in plan.by_sample], dtype=np.int64)
        empty = [i for i, n in enumerate(left.tolist()) if n == 0]
        if empty:
            yield empty
        if not plan.requests:
            return
        results = self.clf.client.run(
            self.bodies(plan.requests),
            progress=progress,
            total=len(plan.requests),
            desc=f"{self.clf.name} requests",
        )
        try:
            for result in results:
                i = plan.requests[result.index].sample
                self.record(result)
                left[i] -= 1
                if left[i] == 0:
                    yield [i]
        finally:
            results.close()

    def record(self, result: ChatResult) -> None:
        j = result.index
        r = self.plan.requests[j]
        self.tokens[r.sample] += result.usage
        if not result.ok:
            if self.errors[r.sample] is None:
                self.errors[r.sample] = f"level {r.level + 1}: {result.error}"
            return
        if self.protocol.answer == "logits":
            try:
                read = response_letter_answer(result.response, r.letters)
            except NoLogprobsError:
                raise  # the server gives none: the run cannot answer this way
            except ResponseFormatError as e:  # one unreadable answer: this entry's error
                if self.errors[r.sample] is None:
                    self.errors[r.sample] = f"level {r.level + 1}: {e}"
                return
            self.chosen[j] = read.choice
            self.probs[j, : len(r.letters)] = read.probs
            self.absent[j] = "".join(read.absent)
            self.unknown[j] = read.choice < 0
            self.clf.absent_letter_levels += bool(read.absent)
        else:
            reply = reply_text(result.response)
            letter = prompts.parse_answer(reply, r.letters, self.protocol.parse)
            self.replies[j] = reply
            self.chosen[j] = r.letters.index(letter) if letter is not None else -1
            self.unknown[j] = letter is None

    def collect(self, samples: Sequence[int]) -> Answers:
        """The :class:`Answers` of the entries ``samples`` (in that order)."""
        plan = self.plan
        n = len(samples)
        depth = max((len(o) for o in plan.options), default=0)
        width = max(plan.n_letters, 1)
        choice = np.full((n, depth), -1, dtype=np.int64)
        probs = np.full((n, depth, width), np.nan, dtype=np.float32)
        unknown = np.zeros((n, depth), dtype=bool)
        rotations = np.full((n, depth, width), -1, dtype=np.int64)
        correct = np.zeros((n, depth), dtype=bool) if self.protocol.circular else None
        replies: list[list[str | None]] = [[None] * depth for _ in range(n)]
        absent: list[list[str]] = [[""] * depth for _ in range(n)]
        for row, i in enumerate(samples):
            if self.errors[i] is not None:
                continue
            right: dict[int, int] = {}
            for j in plan.by_sample[i]:
                r = plan.requests[j]
                k, c = r.level, int(self.chosen[j])
                if c >= 0:
                    rotations[row, k, r.rotation] = plan.orders[i][k].index(r.order[c])
                if r.rotation == 0:
                    choice[row, k] = c
                    probs[row, k, : len(r.order)] = self.probs[j, : len(r.order)]
                    unknown[row, k] = self.unknown[j]
                    replies[row][k] = self.replies[j]
                    absent[row][k] = self.absent[j]
                    right[k] = r.answer
            if correct is not None:
                for k, answer in right.items():
                    m = len(plan.orders[i][k])
                    correct[row, k] = bool(np.all(rotations[row, k, :m] == answer))
        generate = self.protocol.answer == "generate"
        extra: dict[str, Any] = {
            "model": self.clf.model,
            "family": self.clf.family,
            "layout": self.clf.layout,
            "protocol": self.protocol.to_dict(),
            "prompt_variant": plan.prompt_variant,
            "seed": self.protocol.seed if self.protocol.shuffle_options else None,
            "letters": prompts.letters(width),
        }
        if self.protocol.circular:
            extra["rotation_choices"] = rotations
        return Answers(
            choice=choice,
            probs=probs,
            options=[plan.options[i] for i in samples],
            errors=[self.errors[i] for i in samples],
            correct=correct,
            extra=extra,
            replies=replies if generate else None,
            unknown=unknown,
            absent=None if generate else absent,
            tokens=[tuple(int(t) for t in self.tokens[i]) for i in samples],
        )
