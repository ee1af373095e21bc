"""Open-ended answers (``--protocol open``): a reply in the model's own words mapped onto the
taxonomy's nodes of the level asked.

Pure Python (no torch). The tiers, tried in order:

1. ``exact``: the normalised reply equals a node's normalised name;
2. ``synonym``: it equals a synonym the taxonomy declares for a node of that level;
3. ``fuzzy``: the node name (or synonym) most similar to it by :class:`difflib.SequenceMatcher`
   ``ratio`` (``2 * matches / (len(a) + len(b))`` over the normalised strings), if that ratio is
   at least the threshold (:data:`FUZZY_THRESHOLD`); ties go to the node that comes first in
   the level;
4. ``none``: no match; the level is scored wrong.

Normalising (:func:`normalize`): Unicode NFKC, the first non-empty line, lower case, ``_``
as a space, Markdown emphasis, quotes, brackets and trailing punctuation removed, runs of
white space as one space.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hierzoo.taxonomy import Taxonomy

__all__ = [
    "FUZZY_THRESHOLD",
    "MATCH_TIERS",
    "Match",
    "level_vocabulary",
    "match_reply",
    "normalize",
]

FUZZY_THRESHOLD = 0.85
"""The least :class:`difflib.SequenceMatcher` ratio a fuzzy match needs: one wrong or missing
letter in a ten-letter name passes (0.95, 0.95), a different genus of a similar spelling
mostly does not."""
MATCH_TIERS = ("exact", "synonym", "fuzzy", "none")
"""How a reply was matched, in the order the tiers are tried."""

_STRIP = " \t\"'`*_()[]{}<>.,;:!?"


@dataclass(frozen=True)
class Match:
    """Where a reply landed.

    Attributes:
        name: the node's name as the taxonomy spells it (``None`` when unmatched).
        how: one of :data:`MATCH_TIERS`.
        score: the fuzzy ratio of the match, or of the closest name when none passed
            (``1.0`` for exact and synonym matches; ``0.0`` for an empty reply).
    """

    name: str | None
    how: str
    score: float


def normalize(text: str) -> str:
    """The form replies and names are compared in (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text)
    line = next((x for x in text.splitlines() if x.strip()), "")
    line = line.lower().replace("_", " ")
    line = re.sub(r"\s+", " ", line)
    return line.strip(_STRIP)


def _check_threshold(threshold: float) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"Expected `threshold` to be a number in (0, 1], but got {threshold!r}.")
    if not 0 < threshold <= 1:
        raise ValueError(
            f"Expected `threshold` in (0, 1] (1: exact and synonym matches only), but got "
            f"{threshold!r}."
        )


def match_reply(
    reply: str,
    names: Sequence[str],
    synonyms: Mapping[str, str] | None = None,
    *,
    threshold: float = FUZZY_THRESHOLD,
) -> Match:
    """Map a reply onto one of ``names`` (the nodes of a level).

    Args:
        reply: the model's reply, as generated.
        names: the level's node names, in the level's order.
        synonyms: other names of those nodes, ``{synonym: node name}``.
        threshold: the least ratio of a fuzzy match, in (0, 1].

    Raises:
        ValueError: a threshold outside (0, 1], or a synonym of a name not in ``names``.
    """
    _check_threshold(threshold)
    synonyms = dict(synonyms or {})
    unknown = sorted(t for t in synonyms.values() if t not in names)
    if unknown:
        raise ValueError(
            f"Synonyms name {unknown}, which are not among the level's names; give synonyms of "
            "the names passed."
        )
    text = normalize(reply)
    if not text:
        return Match(None, "none", 0.0)
    exact = {}
    for name in names:
        exact.setdefault(normalize(name), name)
    if text in exact:
        return Match(exact[text], "exact", 1.0)
    by_synonym = {}
    for synonym, name in synonyms.items():
        by_synonym.setdefault(normalize(synonym), name)
    if text in by_synonym:
        return Match(by_synonym[text], "synonym", 1.0)
    best, best_score = None, 0.0
    for key, name in [*exact.items(), *by_synonym.items()]:
        score = difflib.SequenceMatcher(None, text, key, autojunk=False).ratio()
        if score > best_score:
            best, best_score = name, score
    if best is not None and best_score >= threshold:
        return Match(best, "fuzzy", best_score)
    return Match(None, "none", best_score)


def level_vocabulary(taxonomy: Taxonomy, level: int) -> tuple[list[str], dict[str, str]]:
    """The node names of a taxonomy level (0 = the top level) in the level's order, and the
    synonyms the taxonomy declares for them, ``{synonym: node name}``.

    Raises:
        ValueError: a level outside the taxonomy.
    """
    if not 0 <= level < taxonomy.depth:
        raise ValueError(
            f"Expected `level` in 0..{taxonomy.depth - 1} for {taxonomy.name!r}, but got "
            f"{level!r}; the question set has more levels than the taxonomy."
        )
    nodes = taxonomy.level_nodes(level).tolist()
    names = [taxonomy.names[n] for n in nodes]
    members = set(nodes)
    synonyms = {s: taxonomy.names[n] for s, n in taxonomy.synonyms.items() if n in members}
    return names, synonyms
