"""Token usage summed over responses, and the estimated cost for known OpenAI models.

Pure standard library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

PRICES_DATE = "2025-06"
PRICES_SOURCE = "https://platform.openai.com/docs/pricing (standard tier, not Batch)"
PRICES: dict[str, tuple[float, float | None, float]] = {
    # model: (input, cached input or None when not discounted, output), USD per 1M tokens
    "gpt-4o-2024-11-20": (2.50, 1.25, 10.00),
    "gpt-4o-2024-08-06": (2.50, 1.25, 10.00),
    "gpt-4o-2024-05-13": (5.00, None, 15.00),
    "gpt-4o-mini-2024-07-18": (0.15, 0.075, 0.60),
    "gpt-4.1-2025-04-14": (2.00, 0.50, 8.00),
    "gpt-4.1-mini-2025-04-14": (0.40, 0.10, 1.60),
    "gpt-4.1-nano-2025-04-14": (0.10, 0.025, 0.40),
}
"""USD per 1M tokens of OpenAI's dated snapshots, as listed at :data:`PRICES_SOURCE` on
:data:`PRICES_DATE`. Moving aliases (``gpt-4o``) are not listed: their snapshot, and so their
price, changes over time. Image inputs are billed as the prompt tokens they count as (85 for a
``detail: "low"`` image on GPT-4o), which ``usage.prompt_tokens`` already includes."""


def estimate_cost(
    model: str, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int = 0
) -> float | None:
    """Estimated USD for the tokens at :data:`PRICES`, or ``None`` for a model not listed.

    ``cached_prompt_tokens`` (part of ``prompt_tokens``) are billed at the cached-input price
    where OpenAI discounts them.
    """
    price = PRICES.get(model)
    if price is None:
        return None
    full, cached, out = price
    cached = full if cached is None else cached
    uncached = prompt_tokens - cached_prompt_tokens
    return (uncached * full + cached_prompt_tokens * cached + completion_tokens * out) / 1e6


def response_usage(response: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(prompt_tokens, completion_tokens, cached_prompt_tokens)`` of one response (zeros for
    what the server did not report)."""
    usage = response.get("usage")
    if not isinstance(usage, Mapping):
        return 0, 0, 0
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None

    def count(value: Any) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return count(usage.get("prompt_tokens")), count(usage.get("completion_tokens")), count(cached)


@dataclass
class Usage:
    """Requests and tokens of a run.

    Tokens are summed twice: over every answer the run used (``prompt_tokens`` ...: what the
    whole evaluation costs, cache hits included) and over the responses received in this process
    (``sent_prompt_tokens`` ...: what this process paid).

    Attributes:
        requests: responses received from the server.
        cache_hits: answers read from the response cache.
        errors: requests that ended in an error record.
        retries: requests sent again after a retryable failure.
    """

    requests: int = 0
    cache_hits: int = 0
    errors: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    sent_prompt_tokens: int = 0
    sent_completion_tokens: int = 0
    sent_cached_prompt_tokens: int = 0

    def add_response(self, response: Mapping[str, Any], *, cached: bool) -> None:
        """Count one answer (``cached``: read from the cache, not received now)."""
        p, c, pc = response_usage(response)
        self.prompt_tokens += p
        self.completion_tokens += c
        self.cached_prompt_tokens += pc
        if cached:
            self.cache_hits += 1
        else:
            self.requests += 1
            self.sent_prompt_tokens += p
            self.sent_completion_tokens += c
            self.sent_cached_prompt_tokens += pc

    def cost(self, model: str) -> float | None:
        """Estimated USD of every answer the run used (see :func:`estimate_cost`)."""
        return estimate_cost(
            model, self.prompt_tokens, self.completion_tokens, self.cached_prompt_tokens
        )

    def sent_cost(self, model: str) -> float | None:
        """Estimated USD of the responses received in this process."""
        return estimate_cost(
            model,
            self.sent_prompt_tokens,
            self.sent_completion_tokens,
            self.sent_cached_prompt_tokens,
        )

    def summary(self, model: str) -> dict[str, Any]:
        """The counts, and for a model in :data:`PRICES` the estimated costs with the price
        table's date and source (``None`` costs for other models), for a run's provenance."""
        out: dict[str, Any] = asdict(self)
        cost, sent = self.cost(model), self.sent_cost(model)
        out["estimated_cost_usd"] = None if cost is None else round(cost, 6)
        out["estimated_sent_cost_usd"] = None if sent is None else round(sent, 6)
        out["prices"] = None
        if model in PRICES:
            full, cached, output = PRICES[model]
            out["prices"] = {
                "usd_per_1m_tokens": {"input": full, "cached_input": cached, "output": output},
                "date": PRICES_DATE,
                "source": PRICES_SOURCE,
            }
        return out
