"""Models behind an OpenAI-compatible chat-completions API: OpenAI (GPT-4o as in the paper), and
vLLM or SGLang servers.

The request builder, the logprob reading, usage and the cache are plain Python;
``ChatClient`` imports the ``openai`` package when it is made (``pip install 'hierzoo[api]'``), so
importing this package imports neither openai nor torch. :class:`OpenAIChatClassifier` (the
``openai-chat`` family, ``hierzoo.load("openai:MODEL")``) imports both. See docs/served.md.
"""

from typing import Any

_LAZY = {
    "ApiAuthError": "hierzoo.models.api.client",
    "ApiError": "hierzoo.models.api.client",
    "ApiNotFoundError": "hierzoo.models.api.client",
    "ApiUnreachableError": "hierzoo.models.api.client",
    "ApiSettings": "hierzoo.models.api.client",
    "ChatClient": "hierzoo.models.api.client",
    "ChatResult": "hierzoo.models.api.client",
    "DEFAULT_CONCURRENCY": "hierzoo.models.api.client",
    "retry_after_seconds": "hierzoo.models.api.client",
    "retry_delay": "hierzoo.models.api.client",
    "ResponseCache": "hierzoo.models.api.cache",
    "ResponseCacheWarning": "hierzoo.models.api.cache",
    "LetterAnswer": "hierzoo.models.api.logprobs",
    "ResponseFormatError": "hierzoo.models.api.logprobs",
    "first_token_top_logprobs": "hierzoo.models.api.logprobs",
    "letter_answer": "hierzoo.models.api.logprobs",
    "reply_text": "hierzoo.models.api.logprobs",
    "response_letter_answer": "hierzoo.models.api.logprobs",
    "OPENAI_API_BASE": "hierzoo.models.api.request",
    "PAPER_MODELS": "hierzoo.models.api.request",
    "RequestSettings": "hierzoo.models.api.request",
    "build_request": "hierzoo.models.api.request",
    "describe_request": "hierzoo.models.api.request",
    "image_data_url": "hierzoo.models.api.request",
    "paper_settings": "hierzoo.models.api.request",
    "request_key": "hierzoo.models.api.request",
    "PRICES": "hierzoo.models.api.usage",
    "Usage": "hierzoo.models.api.usage",
    "estimate_cost": "hierzoo.models.api.usage",
    "NotAvailableOverApi": "hierzoo.models.api.openai_chat",
    "OpenAIChatClassifier": "hierzoo.models.api.openai_chat",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hierzoo.models.api' has no attribute {name!r}")
