"""What a chat-completions response says: the reply text, and the option letter read from the
first generated token's ``top_logprobs``.

Pure standard library.

The letter rule (:func:`letter_answer`): a letter's log-probability is that of the top-list entry
whose ``token`` is exactly the letter (``"A"``; ``" A"`` or ``"A."`` are other tokens and do not
count), as the local vision-LLM path scores the letter as the first assistant token. Entries with
the same token text (possible with byte-level tokenizers) are summed as probabilities. A letter
with no entry in the list has a log-probability below the last one shown, by an unknown amount:
it gets probability 0, the other letters' probabilities are renormalised over the letters present,
and it is listed in ``absent``. The answer is the present letter with the highest
log-probability (the first in letter order on a tie); when no letter is in the list there is no
answer (``choice`` -1, every probability NaN).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class ResponseFormatError(ValueError):
    """A response lacks what an answer needs (its message, or the log-probabilities)."""


class NoLogprobsError(ResponseFormatError):
    """The server returns no log-probabilities at all: no answer by letter log-probabilities
    can be read from it (the run must answer by generation instead)."""


@dataclass(frozen=True)
class LetterAnswer:
    """The option letter read from one ``top_logprobs`` list.

    Attributes:
        letters: the option letters asked, in order.
        choice: index of the answer in ``letters``; -1 when no letter is in the list.
        probs: per letter, its probability renormalised over the letters present (0.0 for an
            absent letter; all NaN when none is present).
        logprobs: per letter, its log-probability as the server gave it, or ``None`` if absent.
        absent: the letters not in the list (their log-probability is below ``floor``).
        floor: the lowest log-probability shown (``None`` for an empty list).
        letter_mass: the total probability of the present letters' tokens (how much of the
            first token's distribution falls on option letters).
    """

    letters: tuple[str, ...]
    choice: int
    probs: tuple[float, ...]
    logprobs: tuple[float | None, ...]
    absent: tuple[str, ...]
    floor: float | None
    letter_mass: float

    @property
    def letter(self) -> str | None:
        """The answer's letter, or ``None`` when no letter was in the list."""
        return self.letters[self.choice] if self.choice >= 0 else None

    @property
    def any_absent(self) -> bool:
        """Whether at least one option letter was missing from the top list (counted by the
        run's summary)."""
        return bool(self.absent)


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def letter_answer(
    top_logprobs: Sequence[Mapping[str, Any]], letters: Sequence[str]
) -> LetterAnswer:
    """Read the option letter from the first token's ``top_logprobs`` (see the module's rule).

    Args:
        top_logprobs: ``[{"token": "A", "logprob": -0.1, ...}, ...]`` as in
            ``choices[0].logprobs.content[0].top_logprobs``.
        letters: the option letters, e.g. ``"ABCD"``.

    Raises:
        ResponseFormatError: an entry without a string ``token`` or a numeric ``logprob``.
    """
    letters = tuple(letters)
    found: dict[str, list[float]] = {}
    shown: list[float] = []
    for entry in top_logprobs:
        token, logprob = entry.get("token"), entry.get("logprob")
        if not isinstance(token, str) or isinstance(logprob, bool):
            raise ResponseFormatError(f"A top_logprobs entry has no token and logprob: {entry!r}.")
        try:
            value = float(logprob)
        except (TypeError, ValueError):
            raise ResponseFormatError(
                f"A top_logprobs entry has no numeric logprob: {entry!r}."
            ) from None
        if math.isnan(value):
            raise ResponseFormatError(f"A top_logprobs entry has a NaN logprob: {entry!r}.")
        shown.append(value)
        if token in letters:
            found.setdefault(token, []).append(value)
    lps: list[float | None] = [_logsumexp(found[c]) if c in found else None for c in letters]
    present = [v for v in lps if v is not None]
    absent = tuple(c for c, v in zip(letters, lps) if v is None)
    floor = min(shown) if shown else None
    if not present:
        nan = float("nan")
        return LetterAnswer(letters, -1, (nan,) * len(letters), tuple(lps), absent, floor, 0.0)
    total = _logsumexp(present)
    probs = tuple(0.0 if v is None else math.exp(v - total) for v in lps)
    best = max(range(len(letters)), key=lambda i: (lps[i] is not None, lps[i] or 0.0, -i))
    return LetterAnswer(letters, best, probs, tuple(lps), absent, floor, math.exp(total))


def first_choice(response: Mapping[str, Any]) -> Mapping[str, Any]:
    """``response["choices"][0]``.

    Raises:
        ResponseFormatError: the response has no choice.
    """
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise ResponseFormatError(
            f"The response has no choices (keys {sorted(response)}); is the server a "
            "chat-completions endpoint?"
        )
    return choices[0]


def reply_text(response: Mapping[str, Any]) -> str:
    """The generated text, ``choices[0].message.content`` (``""`` when the server sent none)."""
    message = first_choice(response).get("message")
    if not isinstance(message, Mapping):
        raise ResponseFormatError("The response's first choice has no message.")
    content = message.get("content")
    return content if isinstance(content, str) else ""


def first_token_top_logprobs(response: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """``choices[0].logprobs.content[0].top_logprobs``: the alternatives for the first generated
    token.

    Raises:
        ResponseFormatError: the server returned no log-probabilities (some servers, such as
            ``transformers serve``, never do: answer by generation instead).
    """
    logprobs = first_choice(response).get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not isinstance(content, list) or not content or not isinstance(content[0], Mapping):
        raise NoLogprobsError(
            "The server returned no log-probabilities for the first token; it cannot answer by "
            "letter log-probabilities (--answer logits). Use --answer generate."
        )
    top = content[0].get("top_logprobs")
    if not isinstance(top, list):
        raise NoLogprobsError(
            "The server returned no top_logprobs for the first token; ask with top_logprobs > 0."
        )
    return top


def response_letter_answer(response: Mapping[str, Any], letters: Sequence[str]) -> LetterAnswer:
    """:func:`letter_answer` of a whole response."""
    return letter_answer(first_token_top_logprobs(response), letters)
