"""Features of a CLIP-style model's image tower (``image``, ``image:raw``, ``layer:K``) and of
its text tower (``text``), read with forward hooks in the same pass as scoring."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from hierzoo.images import ImageInput, as_list
from hierzoo.models._sites import SiteError, check_kinds, parse_sites
from hierzoo.models.base import as_names, check_batch_size
from hierzoo.models.outputs import Features
from hierzoo.taxonomy import as_taxonomy

if TYPE_CHECKING:
    from hierzoo.taxonomy import Taxonomy


class _ClipFeaturesMixin:
    """``features`` and ``text_features`` of :class:`~hierzoo.models.clip.ClipClassifier` (uses
    its ``_stream_pixels``, ``_encode_images``, ``_autocast``, ``text_embeddings`` and
    ``templates``; families override ``_vision_blocks``)."""

    def _vision_blocks(
        self,
    ) -> tuple[Sequence[torch.nn.Module], Callable[[torch.Tensor], torch.Tensor]]:
        """The image transformer's blocks (batch-first ``(B, T, D)`` hidden states) and how a
        block's hidden states pool to ``(B, D)``: the class token where the tower pools one,
        else the mean over its patch tokens."""
        raise SiteError(
            f"{type(self).__name__} does not expose its image transformer's blocks; use 'image'."
        )

    def features(
        self,
        images: ImageInput | Sequence[ImageInput],
        where: str | Sequence[str],
        *,
        taxonomy: Taxonomy | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Features:
        """Image features at ``image`` (the unit-norm embedding that scoring uses),
        ``image:raw`` (the same before normalisation) and ``layer:K`` (the hidden states after
        block ``K`` of the image transformer, ``0`` its input, negative from the end; pooled as
        the tower pools: its class token where it pools one, else the mean over the tokens).

        All sites come from one pass of the image tower per batch (forward hooks on the blocks),
        with the same loader, dtype and autocast as scoring. ``taxonomy`` is not used. See
        :meth:`HierClassifier.features`.
        """
        sites = parse_sites(where)
        check_kinds(sites, ("image", "image:raw", "layer"), self.family)
        check_batch_size(batch_size)
        items, _ = as_list(images)
        layers: dict[str, int] = {}
        hooks: list[Any] = []
        captured: dict[int, torch.Tensor] = {}
        pool: Callable[[torch.Tensor], torch.Tensor] | None = None
        if any(s.kind == "layer" for s in sites):
            blocks, pool = self._vision_blocks()
            for s in sites:
                if s.kind == "layer":
                    layers[s.name] = s.resolve_layer(len(blocks), "the image transformer")
        for k in sorted(set(layers.values())):
            if k == 0:
                hooks.append(
                    blocks[0].register_forward_pre_hook(_keep_input(captured, 0), with_kwargs=True)
                )
            else:
                hooks.append(blocks[k - 1].register_forward_hook(_keep_output(captured, k)))
        out: dict[str, torch.Tensor] = {}
        errors: list[str | None] = [None] * len(items)
        bar = _progress(len(items), "images", progress)
        try:
            for indices, pixels, failed in self._stream_pixels(items, batch_size):
                for i, err in failed.items():
                    errors[i] = err
                if pixels is not None:
                    captured.clear()
                    with torch.inference_mode(), self._autocast():
                        raw = self._encode_images(pixels).float()
                    for s in sites:
                        if s.kind == "image":
                            value = torch.nn.functional.normalize(raw, dim=-1)
                        elif s.kind == "image:raw":
                            value = raw
                        else:
                            value = pool(captured[layers[s.name]].float())
                        if s.name not in out:
                            out[s.name] = torch.full((len(items), value.shape[1]), float("nan"))
                        out[s.name][indices] = value.cpu()
                    self.images_encoded += len(indices)
                bar.update(len(indices) + len(failed))
        finally:
            for h in hooks:
                h.remove()
            bar.close()
        empty = torch.full((len(items), 0), float("nan"))
        return Features({s.name: out.get(s.name, empty) for s in sites}, errors)

    def text_features(
        self,
        names: Sequence[str],
        where: str | Sequence[str] = "text",
        *,
        taxonomy: Taxonomy | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Features:
        """``text``: each name's zero-shot text embedding, as scoring uses it (the templates
        filled, embedded, averaged and renormalised; cached). With ``taxonomy``, rank-aware
        templates get the rank of each name's level."""
        sites = parse_sites(where)
        check_kinds(sites, ("text",), self.family)
        names = as_names(names)
        taxonomy = as_taxonomy(taxonomy)
        ranks = None
        if taxonomy is not None and taxonomy.ranks and any("{rank}" in t for t in self.templates):
            ranks = [taxonomy.rank(int(taxonomy.level[taxonomy.node(n)])) for n in names]
        emb = self.text_embeddings(names, None, ranks).float().cpu()
        return Features({"text": emb}, [None] * len(names))


def _keep_input(store: dict[int, torch.Tensor], key: int) -> Callable[..., None]:
    """A forward pre-hook that keeps a block's input hidden states under ``key``."""

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        store[key] = args[0] if args else kwargs["hidden_states"]

    return hook


def _keep_output(store: dict[int, torch.Tensor], key: int) -> Callable[..., None]:
    """A forward hook that keeps a block's output hidden states under ``key``."""

    def hook(module: Any, args: tuple, output: Any) -> None:
        store[key] = output[0] if isinstance(output, tuple) else output

    return hook


def _class_token(hidden: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


def _mean_after_class_token(hidden: torch.Tensor) -> torch.Tensor:
    return hidden[:, 1:].mean(1)


def _mean_tokens(hidden: torch.Tensor) -> torch.Tensor:
    return hidden.mean(1)


def _progress(total: int, unit: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, disable=not enabled, dynamic_ncols=True)
