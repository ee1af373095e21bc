"""Feature sites: where in a model :meth:`HierClassifier.features` reads a vector.

The grammar (``K`` a layer, negative from the end; ``L`` a taxonomy level, 0 = the top level):

========================  =================================================================
``image``                 CLIP: the final unit-norm image embedding (what scoring uses)
``image:raw``             CLIP: the same embedding before normalisation
``layer:K``               CLIP: block ``K`` of the image transformer (0 = its input), pooled
``text``                  CLIP text features: a name's zero-shot text embedding
``vision``                vision LLMs: the vision tower's features, mean over the patches
``projector``             vision LLMs: the image tokens as they enter the LLM, mean over them
``llm:K``                 vision LLMs: hidden state ``K`` of the LLM (0 = the input
                          embeddings), mean over the image tokens (or a name's tokens)
``llm:K:answer:L``        vision LLMs: hidden state ``K`` at the answer position of the
                          open question of level ``L``
========================  =================================================================
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

KINDS = ("image", "image:raw", "layer", "text", "vision", "projector", "llm", "llm-answer")
EXAMPLES = "'image', 'image:raw', 'layer:6', 'vision', 'projector', 'llm:-1' or 'llm:-1:answer:0'"

_LAYER = re.compile(r"^(layer|llm):(-?\d+)$")
_ANSWER = re.compile(r"^llm:(-?\d+):answer(?::(\d+))?$")


class SiteError(ValueError):
    """A feature site that does not parse, or that a model does not have."""


@dataclass(frozen=True)
class Site:
    """A parsed feature site.

    Attributes:
        name: the canonical spelling (``"llm:-1:answer:2"``).
        kind: one of :data:`KINDS` (``llm-answer`` for ``llm:K:answer:L``).
        layer: ``K`` as written (negative counts from the end), or ``None``.
        level: ``L`` for answer sites, else ``None``.
    """

    name: str
    kind: str
    layer: int | None = None
    level: int | None = None

    def resolve_layer(self, n_layers: int, what: str) -> int:
        """``layer`` as an index in ``0..n_layers`` (``-1`` is ``n_layers``).

        Raises:
            SiteError: a layer outside ``-(n_layers + 1)..n_layers``, naming the range.
        """
        k = int(self.layer if self.layer is not None else -1)
        if not -(n_layers + 1) <= k <= n_layers:
            raise SiteError(
                f"Expected the layer of {self.name!r} in {-(n_layers + 1)}..{n_layers} ({what} has "
                f"{n_layers} layers: 0 is its input, {n_layers} its last layer, -1 the same), but "
                f"got {k}."
            )
        return k if k >= 0 else n_layers + 1 + k


def parse_site(text: str) -> Site:
    """One site from its spelling (case and surrounding spaces ignored).

    ``llm:K:answer`` without a level parses with ``level=None``: callers that extract features
    need the level; the probe expands it to one site per level.

    Raises:
        SiteError: text that is no site, with examples of sites.
    """
    raw = text.strip().lower() if isinstance(text, str) else text
    if raw in ("image", "image:raw", "text", "vision", "projector"):
        return Site(raw, raw)
    if isinstance(raw, str):
        m = _LAYER.match(raw)
        if m:
            return Site(f"{m[1]}:{int(m[2])}", m[1], layer=int(m[2]))
        m = _ANSWER.match(raw)
        if m:
            level = int(m[2]) if m[2] is not None else None
            name = f"llm:{int(m[1])}:answer" + (f":{level}" if level is not None else "")
            return Site(name, "llm-answer", layer=int(m[1]), level=level)
    raise SiteError(f"Expected a feature site such as {EXAMPLES}, but got {text!r}.")


def parse_sites(where: str | Sequence[str]) -> list[Site]:
    """Sites from one spelling, a comma list, or a sequence of either; duplicates dropped.

    Raises:
        SiteError: an empty list or a site that does not parse.
    """
    items = [where] if isinstance(where, str) else list(where)
    names = [part for item in items for part in str(item).split(",") if part.strip()]
    if not names:
        raise SiteError(
            f"Expected at least one feature site such as {EXAMPLES}, but got {where!r}."
        )
    out: dict[str, Site] = {}
    for name in names:
        site = parse_site(name)
        out.setdefault(site.name, site)
    return list(out.values())


def check_kinds(sites: Sequence[Site], allowed: Sequence[str], family: str) -> None:
    """Raise :class:`SiteError` for a site whose kind the family does not have, or an answer
    site without its level."""
    for s in sites:
        if s.kind not in allowed:
            shown = ", ".join(_SPELLING[k] for k in allowed)
            raise SiteError(
                f"Expected a feature site of {family} models ({shown}), but got {s.name!r}."
            )
        if s.kind == "llm-answer" and s.level is None:
            raise SiteError(
                f"Site {s.name!r} needs the level whose question it answers: {s.name}:L with L the "
                "0-based taxonomy level (the probe adds it for every level)."
            )


_SPELLING = {
    "image": "image",
    "image:raw": "image:raw",
    "layer": "layer:K",
    "text": "text",
    "vision": "vision",
    "projector": "projector",
    "llm": "llm:K",
    "llm-answer": "llm:K:answer:L",
}
