"""Chat-completions requests: the paper's GPT-4o layout, logprob and restricted-answer options,
the cache key of a request and its printable (``--dry-run``) form.

Pure standard library. :func:`build_request` is a pure function of the question text (options
and closing instruction included), the image (a path, the file's bytes, or ``None`` in text mode)
and a :class:`RequestSettings`; it returns the JSON body that is sent, exactly.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

OPENAI_API_BASE = "https://api.openai.com/v1"
"""Where requests go unless ``api_base`` says otherwise."""

PAPER_MODELS = {"gpt-4o": "gpt-4o-2024-11-20"}
"""Zoo name -> the snapshot the paper's scripts request (evaluation/vllm/gpt/gpt_img_all.py:145)."""

SYSTEM_HELPFUL = "You are a helpful assistant."
"""The paper's GPT-4o system message, image and text runs (gpt_img_all.py:128)."""

ANSWERS = ("generate", "logits")
RESTRICTS = ("choice", "guided_choice", "regex", "allowed_token_ids")
DETAILS = ("low", "high", "auto")
MAX_TOP_LOGPROBS = 20
"""OpenAI's limit for ``top_logprobs`` (vLLM's default ``--max-logprobs`` is 20 too)."""

_IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


@dataclass(frozen=True)
class RequestSettings:
    """Everything in a request besides the question and the image.

    Attributes:
        model: the model the server is asked for (OpenAI's snapshot name, or the name a vLLM /
            SGLang server serves: by default its ``--model`` / ``--model-path``).
        system: the system message as a plain string, or ``None`` for no system turn.
        temperature: sampling temperature, or ``None`` to leave it to the server.
        seed: the sampling seed, or ``None``.
        max_tokens: the most tokens generated.
        detail: the image's ``detail`` (``"low"``: OpenAI's 512 px, 85-token rendering), or
            ``None`` to send none (vLLM and SGLang ignore it).
        image_first: put the image before the question text in the user turn (the local vision
            LLM layout) instead of after it (the paper's GPT-4o layout).
        image_mime: the media type written in the data URL; ``"auto"`` reads it from the file's
            first bytes (JPEG, PNG, GIF, WebP, BMP). The paper writes ``image/jpeg`` whatever
            the file is.
        top_logprobs: ask for ``logprobs`` with this many alternatives per generated token
            (1-20 for OpenAI; a vLLM server allows up to its ``--max-logprobs``), or ``None``.
        restrict: limit the answer to the option letters on the server: ``"choice"`` (vLLM >=
            0.12: ``structured_outputs: {"choice": [...]}``), ``"guided_choice"`` (vLLM before
            0.12: ``guided_choice``), ``"regex"`` (SGLang: a top-level ``regex``),
            ``"allowed_token_ids"`` (vLLM; the ids are the server tokenizer's and come from
            ``allowed_token_ids``), or ``None``.
        allowed_token_ids: the token ids for ``restrict="allowed_token_ids"``.
        extra: more top-level body fields, sent as they are (``{"top_k": 1}``); a field that
            the settings above already set is refused.
    """

    model: str
    system: str | None = SYSTEM_HELPFUL
    temperature: float | None = 0.2
    seed: int | None = 42
    max_tokens: int = 5
    detail: str | None = "low"
    image_first: bool = False
    image_mime: str = "image/jpeg"
    top_logprobs: int | None = None
    restrict: str | None = None
    allowed_token_ids: tuple[int, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"Expected `model` to be a model name, but got {self.model!r}.")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"Expected `max_tokens` >= 1, but got {self.max_tokens!r}.")
        if self.detail is not None and self.detail not in DETAILS:
            raise ValueError(
                f"Expected `detail` to be one of {DETAILS} or None, but got {self.detail!r}."
            )
        if self.top_logprobs is not None and (
            not isinstance(self.top_logprobs, int) or self.top_logprobs < 0
        ):
            raise ValueError(
                f"Expected `top_logprobs` to be a count >= 0 or None, but got "
                f"{self.top_logprobs!r}."
            )
        if self.restrict is not None and self.restrict not in RESTRICTS:
            raise ValueError(
                f"Expected `restrict` to be one of {RESTRICTS} or None, but got {self.restrict!r}."
            )
        if self.restrict == "allowed_token_ids" and not self.allowed_token_ids:
            raise ValueError(
                "restrict='allowed_token_ids' needs `allowed_token_ids`: the option letters' "
                "token ids in the server model's tokenizer."
            )
        if self.image_mime != "auto" and not self.image_mime.startswith("image/"):
            raise ValueError(
                f"Expected `image_mime` to be 'auto' or an image/* type, but got "
                f"{self.image_mime!r}."
            )


def paper_settings(model: str = "gpt-4o", *, answer: str = "generate") -> RequestSettings:
    """The paper's GPT-4o request settings (evaluation/vllm/gpt/gpt_img_all.py:125-150).

    ``model`` is a zoo name (``"gpt-4o"`` becomes ``"gpt-4o-2024-11-20"``) or a model name sent
    as it is. ``answer="generate"``: the paper's call, ``max_tokens`` 5, ``temperature`` 0.2,
    ``seed`` 42, system "You are a helpful assistant.", the question text then the image with
    ``detail: "low"``. ``answer="logits"``: the same request with one token and the top 20
    log-probabilities (``logprobs=True, top_logprobs=20``); the answer is read from them, not
    from the sampled token, so the temperature does not change which letter is chosen.
    """
    if answer not in ANSWERS:
        raise ValueError(f"Expected `answer` to be one of {ANSWERS}, but got {answer!r}.")
    settings = RequestSettings(model=PAPER_MODELS.get(model, model))
    if answer == "logits":
        settings = replace(settings, max_tokens=1, top_logprobs=MAX_TOP_LOGPROBS)
    return settings


def image_mime_type(data: bytes) -> str | None:
    """The media type of image bytes from their first bytes, or ``None`` when not recognised."""
    for magic, mime in _IMAGE_MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_data_url(image: str | os.PathLike[str] | bytes, mime: str = "image/jpeg") -> str:
    """``data:{mime};base64,...`` of a file's bytes, unchanged (the paper's ``encode_image``).

    Raises:
        FileNotFoundError / OSError: the file cannot be read.
        ValueError: ``mime="auto"`` and the bytes are no known image format.
    """
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    if mime == "auto":
        found = image_mime_type(data)
        if found is None:
            where = "" if isinstance(image, bytes) else f"{image}: "
            raise ValueError(
                f"{where}not a JPEG, PNG, GIF, WebP or BMP file (first bytes {data[:8]!r}); "
                "pass image_mime='image/...' to send it under a type you name."
            )
        mime = found
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _choice_regex(letters: Sequence[str]) -> str:
    return "(" + "|".join(re.escape(c) for c in letters) + ")"


def build_request(
    question: str,
    image: str | os.PathLike[str] | bytes | None,
    settings: RequestSettings,
    *,
    letters: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The chat-completions body for one question.

    Args:
        question: the user text, options and closing instruction included.
        image: the image file (or its bytes), sent as a base64 data URL of the bytes as they
            are; ``None`` for a text-only request (the paper's text mode: the user content is
            the one text item).
        settings: model and parameters.
        letters: the option letters, needed when ``settings.restrict`` limits the answer.

    Returns:
        The JSON body: ``model``, ``messages`` (system string, then the user turn as a list of
        content items), ``max_tokens``, ``temperature``, ``seed``, ``logprobs`` /
        ``top_logprobs``, the restriction field, then ``settings.extra``.

    Raises:
        ValueError: a restriction without ``letters``, or an ``extra`` field that the settings
            already set.
    """
    text_item: dict[str, Any] = {"type": "text", "text": question}
    content: list[dict[str, Any]] = [text_item]
    if image is not None:
        url: dict[str, Any] = {"url": image_data_url(image, settings.image_mime)}
        if settings.detail is not None:
            url["detail"] = settings.detail
        image_item = {"type": "image_url", "image_url": url}
        content = [image_item, text_item] if settings.image_first else [text_item, image_item]
    messages: list[dict[str, Any]] = []
    if settings.system is not None:
        messages.append({"role": "system", "content": settings.system})
    messages.append({"role": "user", "content": content})

    body: dict[str, Any] = {
        "model": settings.model,
        "messages": messages,
        "max_tokens": settings.max_tokens,
    }
    if settings.temperature is not None:
        body["temperature"] = settings.temperature
    if settings.seed is not None:
        body["seed"] = settings.seed
    if settings.top_logprobs is not None:
        body["logprobs"] = True
        body["top_logprobs"] = settings.top_logprobs
    if settings.restrict is not None:
        if settings.restrict != "allowed_token_ids" and not letters:
            raise ValueError(
                f"restrict={settings.restrict!r} limits the answer to the option letters: pass "
                "`letters` (e.g. 'ABCD')."
            )
        if settings.restrict == "choice":
            body["structured_outputs"] = {"choice": list(letters or ())}
        elif settings.restrict == "guided_choice":
            body["guided_choice"] = list(letters or ())
        elif settings.restrict == "regex":
            body["regex"] = _choice_regex(letters or ())
        else:
            body["allowed_token_ids"] = list(settings.allowed_token_ids or ())
    clash = sorted(set(body) & set(settings.extra))
    if clash:
        raise ValueError(
            f"`extra` sets {clash}, which the request settings already set; change those "
            "settings instead."
        )
    body.update(copy.deepcopy(dict(settings.extra)))
    return body


def _describe_url(url: str) -> str:
    head, sep, payload = url.partition(";base64,")
    if not url.startswith("data:") or not sep:
        return url
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError:
        return f"{head};base64,<{len(payload)} characters, not valid base64>"
    return f"{head};base64,<{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}>"


def describe_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """The request as ``--dry-run`` prints it: every base64 image replaced by its size and the
    SHA-256 of its bytes (``sha256sum FILE`` gives the same digest), everything else as sent."""
    out = copy.deepcopy(dict(request))
    for message in out.get("messages", []):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for item in content:
            image_url = item.get("image_url") if isinstance(item, dict) else None
            if isinstance(image_url, dict) and isinstance(image_url.get("url"), str):
                image_url["url"] = _describe_url(image_url["url"])
    return out


def normalize_api_base(api_base: str | None) -> str:
    """``api_base`` without trailing slashes; ``None`` is OpenAI's."""
    base = OPENAI_API_BASE if api_base is None else str(api_base).strip()
    if not re.match(r"^https?://[^/\s]+", base):
        raise ValueError(
            f"Expected `api_base` to be an http(s) URL such as 'http://HOST:8000/v1', but got "
            f"{api_base!r}."
        )
    return base.rstrip("/")


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys: one text per value (NaN refused)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def request_key(request: Mapping[str, Any], api_base: str | None = None) -> str:
    """The response-cache key of a request: the SHA-256 of the canonical JSON of the normalized
    base URL and the whole body (model, messages with the image bytes, every parameter). The API
    key is not part of it."""
    text = canonical_json({"api_base": normalize_api_base(api_base), "request": request})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
