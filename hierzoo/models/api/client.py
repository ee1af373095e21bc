"""Sending chat-completions requests: many in flight, retried, cached, counted.

:class:`ChatClient` sends request bodies (see :mod:`hierzoo.models.api.request`) through the
official ``openai`` client (imported on first use; ``pip install 'hierzoo[api]'``) from a pool of
threads, and yields one :class:`ChatResult` per request as each completes.

- **Concurrency.** ``concurrency`` worker threads share one ``openai.OpenAI`` client (its
  connection pool is thread-safe); at most twice that many requests are taken from the input at a
  time, so a lazy input (images read as they are needed) stays lazy. Results come in completion
  order, each with the position of its request; identical requests in one run are sent once.
- **Retries.** The ``openai`` client's own retries are off (``max_retries=0``). A 408, 409, 429
  or 5xx answer, a timeout and a dropped connection are retried up to ``max_retries`` times: after
  the time the server asks for in ``Retry-After`` (seconds or an HTTP date; OpenAI's
  ``retry-after-ms`` first), capped at ``retry_after_max``; without one, after a delay drawn
  uniformly from ``[0, min(backoff_max, backoff_base * 2 ** (attempt - 1))]`` ("full jitter").
  After the last retry the request's result carries an ``error`` and the run goes on. Any other
  4xx (a request the server refuses, such as an image it cannot read) is an error at once.
- **Stops.** A 401 or 403 (the key is missing, wrong or not allowed) raises
  :class:`ApiAuthError`, and a 404 (no such model or endpoint) :class:`ApiNotFoundError`, at
  once: no further request is started, requests in flight are finished and cached. So does
  :class:`ApiUnreachableError` when a request failed to connect on its first
  :data:`UNREACHABLE_ATTEMPTS` attempts while no request got any answer (the server is down or
  ``api_base`` is wrong), instead of retrying every request for hours. An answer that holds
  ``NaN`` or ``Infinity`` (not JSON) is that request's error at once, neither retried nor
  cached.
- **Cache.** Each response is written to the :class:`~hierzoo.models.api.cache.ResponseCache` as
  it arrives, before it is yielded; a request whose response is cached is not sent. A finished
  run sent again sends nothing; a run killed part-way pays again only for the requests that were
  in flight.
- **The key** is read from the environment variable ``api_key_env`` when the client is made and
  handed to the ``openai`` client only. It is not part of the cache key, the cache files, the
  results, :attr:`ChatClient.usage`, any ``repr`` or any message hierzoo writes or raises; a
  server message that quotes it has it replaced by ``[API key]``.
"""

from __future__ import annotations

import concurrent.futures as cf
import email.utils
import json
import math
import os
import random
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hierzoo.models.api.cache import ResponseCache, ResponseCacheWarning
from hierzoo.models.api.logprobs import (
    NoLogprobsError,
    ResponseFormatError,
    first_choice,
    first_token_top_logprobs,
    letter_answer,
    reply_text,
)
from hierzoo.models.api.request import (
    OPENAI_API_BASE,
    describe_request,
    normalize_api_base,
    request_key,
)
from hierzoo.models.api.usage import Usage, response_usage

DEFAULT_CONCURRENCY = 16
"""Requests in flight by default: enough to keep a vLLM server's batches full and within the
request-rate limits of OpenAI's usage tiers at typical latencies (429s are retried)."""

RETRY_STATUSES = frozenset({408, 409, 429})
"""Statuses retried besides every 5xx."""

_NO_KEY = "EMPTY"
"""Sent when no key is set and the server is not OpenAI's (vLLM and SGLang servers started
without ``--api-key`` accept any)."""


_NO_CONNECTION = -1
"""The status of an attempt that got no connection to the server."""
_INVALID = -2
"""The status of an answer that is not valid JSON for a number it holds (NaN, Infinity)."""


class ApiError(ValueError):
    """A failure that stops a run (the message says what to change): a ``ValueError``, so the
    command line reports it in one line, as any other setting to fix."""


class ApiAuthError(ApiError):
    """The server refused the API key (401 / 403), or no key is set for OpenAI."""


class ApiNotFoundError(ApiError):
    """The server has no such model or endpoint (404)."""


class ApiUnreachableError(ApiError):
    """No connection to the server: every attempt of a request failed to connect, through its
    retries, while no other request got any answer."""


UNREACHABLE_ATTEMPTS = 4
"""Attempts of one request, all failing to connect while the server answered nothing else, after
which the run stops (a server that is down or a wrong --api-base) instead of retrying every
request for hours."""


@dataclass(frozen=True)
class ApiSettings:
    """Where requests go and how they are sent.

    Attributes:
        api_base: the server's base URL (``http://HOST:8000/v1`` for vLLM, ``:30000/v1`` for
            SGLang); ``None`` is OpenAI's (``https://api.openai.com/v1``).
        api_key_env: the environment variable that holds the key.
        concurrency: requests in flight.
        timeout: seconds one attempt may take before it is retried.
        max_retries: retries of one request after its first attempt.
        backoff_base: seconds of the first retry's jitter range (doubled per retry).
        backoff_max: the largest jitter range, in seconds.
        retry_after_max: the longest wait a server's ``Retry-After`` gets, in seconds.
        cache: use the response cache.
        cache_dir: the cache's folder; ``None`` is ``$HIERZOO_CACHE/api``.
    """

    api_base: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float = 120.0
    max_retries: int = 8
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    retry_after_max: float = 120.0
    cache: bool = True
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        normalize_api_base(self.api_base)
        if not isinstance(self.api_key_env, str) or not self.api_key_env.strip():
            raise ValueError(
                f"Expected `api_key_env` to name an environment variable, but got "
                f"{self.api_key_env!r}."
            )
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError(f"Expected `concurrency` >= 1, but got {self.concurrency!r}.")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"Expected `max_retries` >= 0, but got {self.max_retries!r}.")
        for name in ("timeout", "backoff_base", "backoff_max", "retry_after_max"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
                raise ValueError(f"Expected `{name}` to be seconds >= 0, but got {value!r}.")
        if self.timeout <= 0:
            raise ValueError(f"Expected `timeout` > 0 seconds, but got {self.timeout!r}.")

    @property
    def base_url(self) -> str:
        """The normalized base URL."""
        return normalize_api_base(self.api_base)

    @property
    def is_openai(self) -> bool:
        """Whether requests go to OpenAI's API."""
        return self.base_url == OPENAI_API_BASE


@dataclass(frozen=True)
class ChatResult:
    """The outcome of one request.

    Attributes:
        index: the request's position in the input.
        key: its cache key.
        response: the server's JSON response, or ``None`` after an error.
        error: ``None``, or why the request failed after its retries.
        cached: read from the response cache (nothing was sent).
        attempts: requests sent for it in this run (0 for a cache hit).
    """

    index: int
    key: str
    response: dict[str, Any] | None
    error: str | None
    cached: bool
    attempts: int

    @property
    def ok(self) -> bool:
        """Whether the request has a response."""
        return self.error is None

    @property
    def reply(self) -> str | None:
        """The generated text (``None`` after an error)."""
        return None if self.response is None else reply_text(self.response)

    @property
    def usage(self) -> tuple[int, int, int]:
        """``(prompt_tokens, completion_tokens, cached_prompt_tokens)``."""
        return (0, 0, 0) if self.response is None else response_usage(self.response)


@dataclass
class _Outcome:
    response: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = 0
    retries: int = 0
    fatal: ApiError | None = None
    cancelled: bool = False


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait a response asks for: ``retry-after-ms`` (milliseconds), else ``Retry-After`` as
    seconds or as an HTTP date (relative to ``now``, default ``time.time()``); ``None`` when
    neither is given or readable. A date in the past is 0."""
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = lowered.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def retry_delay(
    attempt: int,
    headers: Mapping[str, str],
    settings: ApiSettings,
    rng: random.Random,
    now: float | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry): the server's
    ``Retry-After`` capped at ``retry_after_max``, else full jitter
    ``uniform(0, min(backoff_max, backoff_base * 2 ** (attempt - 1)))``."""
    asked = retry_after_seconds(headers, now)
    if asked is not None:
        return min(asked, settings.retry_after_max)
    return rng.uniform(0.0, min(settings.backoff_max, settings.backoff_base * 2 ** (attempt - 1)))


def _server_message(body: object) -> str:
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
        if isinstance(body.get("message"), str):
            return body["message"]
        if isinstance(body.get("detail"), str):
            return body["detail"]
    return str(body) if body else ""


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ChatClient:
    """Sends chat-completions requests to one server: ``concurrency`` in flight from a thread
    pool, retryable failures retried (``Retry-After`` or full-jitter backoff), each response
    cached as it arrives, tokens counted in :attr:`usage` (see docs/served.md).

    Args:
        settings: where and how; ``None`` uses OpenAI with the defaults.
        cache: the response cache; ``None`` opens the one ``settings`` names (or none when
            ``settings.cache`` is false); ``False`` uses none.
        rng: the generator of the retry jitter.

    Raises:
        ApiAuthError: no key is set and the server is OpenAI's.
        ImportError: the ``openai`` package is missing, with the command that installs it.
    """

    def __init__(
        self,
        settings: ApiSettings | None = None,
        *,
        cache: ResponseCache | bool | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or ApiSettings()
        if cache is None:
            cache = self.settings.cache
        if cache is True:
            cache = ResponseCache(self.settings.cache_dir)
        self.cache: ResponseCache | None = cache if isinstance(cache, ResponseCache) else None
        self.usage = Usage()
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._answers = 0  # HTTP answers of any kind so far (read without a lock: a counter)
        key = os.environ.get(self.settings.api_key_env, "").strip()
        if not key:
            if self.settings.is_openai:
                raise ApiAuthError(
                    f"No API key: ${self.settings.api_key_env} is not set. Set it to your OpenAI "
                    "key (or name another variable with --api-key-env / api_key_env)."
                )
            if self.settings.api_key_env != ApiSettings.api_key_env:  # named, but not set
                warnings.warn(
                    f"${self.settings.api_key_env} (--api-key-env) is not set; requests go to "
                    f"{self.settings.base_url} without a key.",
                    stacklevel=2,
                )
            key = _NO_KEY
        self._secret = key
        try:
            import openai
        except ImportError:
            raise ImportError(
                "Models behind an API need the openai package: pip install 'hierzoo[api]'"
            ) from None
        self._openai = openai
        self._client = openai.OpenAI(
            api_key=key,
            base_url=self.settings.base_url,
            max_retries=0,
            timeout=self.settings.timeout,
        )

    def __repr__(self) -> str:
        return (
            f"ChatClient(api_base={self.settings.base_url!r}, "
            f"api_key_env={self.settings.api_key_env!r}, "
            f"concurrency={self.settings.concurrency}, cache={self.cache!r})"
        )

    def _scrub(self, text: str) -> str:
        if self._secret and self._secret != _NO_KEY:
            text = text.replace(self._secret, "[API key]")
        return text

    # ------------------------------------------------------------------ one request
    def _attempt(self, request: Mapping[str, Any]) -> tuple[dict[str, Any] | None, Any]:
        """One HTTP call: ``(response, None)``, or ``(None, (status, headers, message))``."""
        openai = self._openai
        body = dict(request)
        model, messages = body.pop("model"), body.pop("messages")
        failure: tuple[int | None, Mapping[str, str], str] | None = None
        try:
            raw = self._client.chat.completions.with_raw_response.create(
                model=model, messages=messages, extra_body=body
            )
            text = raw.text
        except openai.APIStatusError as e:
            self._answers += 1
            failure = (
                e.status_code,
                dict(e.response.headers),
                _server_message(e.body) or e.response.reason_phrase or "",
            )
        except openai.APITimeoutError:
            failure = (None, {}, f"no answer within {self.settings.timeout:g} s (timeout)")
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e.__context__
            why = f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
            failure = (_NO_CONNECTION, {}, f"connection failed ({why})")
        if failure is not None:
            return None, failure
        self._answers += 1
        constants: list[str] = []
        try:
            response = json.loads(text, parse_constant=lambda c: constants.append(c) or 0.0)
        except ValueError:
            return None, (None, {}, f"the server's answer is not JSON ({text[:80]!r})")
        if constants:
            return None, (_INVALID, {}, f"the server's answer holds {constants[0]}, not a number")
        if not isinstance(response, dict):
            return None, (None, {}, "the server's answer is not a JSON object")
        return response, None

    def _send(self, request: Mapping[str, Any], key: str, stop: threading.Event) -> _Outcome:
        outcome = _Outcome()
        answers_before = self._answers
        while True:
            if stop.is_set():
                outcome.cancelled = True
                return outcome
            outcome.attempts += 1
            response, failure = self._attempt(request)
            if response is not None:
                try:
                    first_choice(response)
                    if request.get("logprobs"):  # what an answer reads is readable
                        letter_answer(first_token_top_logprobs(response), ())
                except NoLogprobsError:
                    pass  # the server gives none at all: its answerer stops the run
                except ResponseFormatError as e:  # this request's error, not cached
                    outcome.error = self._scrub(str(e))
                    return outcome
                outcome.response = response
                self._store(key, request, response)
                return outcome
            status, headers, message = failure
            message = self._scrub(_clip(message))
            where = self.settings.base_url
            if status == _INVALID:  # a reply no retry would mend: this request's error
                outcome.error = message
                return outcome
            if status == _NO_CONNECTION:
                status = None
                if outcome.attempts >= UNREACHABLE_ATTEMPTS and self._answers == answers_before:
                    stop.set()
                    outcome.fatal = ApiUnreachableError(
                        f"Cannot reach the server at {where}: {outcome.attempts} attempts of a "
                        f"request failed to connect and no request was answered ({message}). "
                        "Check that the server is running and --api-base; the answers so far "
                        "are kept, so the same command resumes."
                    )
                    return outcome
            if status in (401, 403):
                stop.set()
                outcome.fatal = ApiAuthError(
                    f"The server at {where} refused the API key from "
                    f"${self.settings.api_key_env} (HTTP {status}: {message}). Set "
                    f"${self.settings.api_key_env} to a valid key for this server, or name the "
                    "variable that holds it with --api-key-env."
                )
                return outcome
            if status == 404:
                stop.set()
                outcome.fatal = ApiNotFoundError(
                    f"The server at {where} has no model {request.get('model')!r} or no "
                    f"chat-completions endpoint (HTTP 404: {message}). Check the model name "
                    f"(GET {where}/models lists what it serves) and --api-base (it usually "
                    "ends in /v1)."
                )
                return outcome
            what = "HTTP " + str(status) if status is not None else "no response"
            retryable = status is None or status in RETRY_STATUSES or status >= 500
            if not retryable:
                outcome.error = f"{what}: {message}"
                return outcome
            if outcome.attempts > self.settings.max_retries:
                outcome.error = (
                    f"{what}: {message} (gave up after {outcome.attempts} attempts; the "
                    "request is sent again when the run is resumed)"
                )
                return outcome
            with self._rng_lock:
                delay = retry_delay(outcome.attempts, headers, self.settings, self._rng)
            outcome.retries += 1
            if stop.wait(delay):
                outcome.cancelled = True
                return outcome

    def _store(self, key: str, request: Mapping[str, Any], response: Mapping[str, Any]) -> None:
        if self.cache is None:
            return
        try:
            self.cache.put(
                key, response, api_base=self.settings.base_url, request=describe_request(request)
            )
        except OSError as e:
            warnings.warn(
                f"Could not write the response cache entry {self.cache.path(key)} "
                f"({e.strerror or e}); this answer is not cached.",
                ResponseCacheWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------------ many requests
    def run(
        self,
        requests: Iterable[Mapping[str, Any] | BaseException],
        *,
        progress: bool = False,
        total: int | None = None,
        desc: str = "requests",
    ) -> Iterator[ChatResult]:
        """Send every request (cached ones are not sent) and yield one :class:`ChatResult` per
        request as it completes.

        Args:
            requests: chat-completions bodies, consumed lazily. An item that is an exception
                (a request that could not be built, such as an unreadable image) gives a
                result with that error in its turn, and the run goes on.
            progress: show a progress bar (requests per second, cache hits, errors, retries).
            total: the number of requests, for the bar (``len(requests)`` when it has one).
            desc: the bar's label.

        Raises:
            ApiAuthError: the server refused the key (401 / 403).
            ApiNotFoundError: the server has no such model or endpoint (404).
            ValueError: an item is neither a request body nor an exception.

        Stopping early (closing the iterator, or an exception in the consumer) starts no new
        request; requests in flight are finished and cached.
        """
        if total is None and hasattr(requests, "__len__"):
            total = len(requests)  # type: ignore[arg-type]
        base = self.settings.base_url
        width = self.settings.concurrency
        stop = threading.Event()
        pool = cf.ThreadPoolExecutor(max_workers=width, thread_name_prefix="hierzoo-api")
        pending: dict[cf.Future[_Outcome], str] = {}
        waiting: dict[str, list[int]] = {}
        source = enumerate(requests)
        exhausted = False
        bar = _progress(progress, total, desc)
        counts = {"cached": 0, "errors": 0, "retries": 0}
        try:
            while True:
                while not exhausted and len(pending) < 2 * width:
                    try:
                        index, request = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    if isinstance(request, BaseException):
                        self.usage.errors += 1
                        counts["errors"] += 1
                        _tick(bar, counts)
                        error = self._scrub(f"{type(request).__name__}: {request}")
                        yield ChatResult(index, "", None, error, False, 0)
                        continue
                    if not isinstance(request, Mapping) or not {"model", "messages"} <= set(
                        request
                    ):
                        raise ValueError(
                            f"Request {index} is not a chat-completions body with 'model' and "
                            f"'messages' ({type(request).__name__}); build it with build_request."
                        )
                    key = request_key(request, base)
                    if key in waiting:
                        waiting[key].append(index)
                        continue
                    hit = self.cache.get(key) if self.cache is not None else None
                    if hit is not None:
                        self.usage.add_response(hit, cached=True)
                        counts["cached"] += 1
                        _tick(bar, counts)
                        yield ChatResult(index, key, hit, None, True, 0)
                        continue
                    waiting[key] = [index]
                    pending[pool.submit(self._send, request, key, stop)] = key
                if not pending:
                    return
                done, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
                for future in done:
                    key = pending.pop(future)
                    indices = waiting.pop(key)
                    outcome = future.result()
                    if outcome.fatal is not None:
                        raise outcome.fatal
                    self.usage.retries += outcome.retries
                    counts["retries"] += outcome.retries
                    if outcome.cancelled:
                        continue
                    for n, index in enumerate(indices):
                        if outcome.response is not None:
                            self.usage.add_response(outcome.response, cached=n > 0)
                        else:
                            self.usage.errors += 1
                            counts["errors"] += 1
                        _tick(bar, counts)
                        yield ChatResult(
                            index,
                            key,
                            outcome.response,
                            outcome.error,
                            cached=n > 0,
                            attempts=outcome.attempts if n == 0 else 0,
                        )
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            if bar is not None:
                bar.close()

    def send(self, request: Mapping[str, Any]) -> ChatResult:
        """Send one request (or read it from the cache)."""
        return list(self.run([request]))[0]


def _progress(show: bool, total: int | None, desc: str) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="req", dynamic_ncols=True)


def _tick(bar: Any, counts: Mapping[str, int]) -> None:
    if bar is not None:
        bar.set_postfix(counts, refresh=False)
        bar.update(1)
