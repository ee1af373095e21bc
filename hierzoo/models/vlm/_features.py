"""Features of a vision LLM: the vision tower, the projector, the LLM's hidden states over the
image tokens or at the answer position, read with forward hooks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from hierzoo import prompts
from hierzoo.images import ImageInput, as_list
from hierzoo.models._sites import Site, SiteError, check_kinds, parse_sites
from hierzoo.models.base import as_names, check_batch_size
from hierzoo.models.outputs import Features
from hierzoo.models.vlm._prefix_cache import _cache_of, _Prefix, _right_pad
from hierzoo.taxonomy import as_taxonomy

if TYPE_CHECKING:
    from hierzoo.taxonomy import Taxonomy


class _Stop(Exception):
    """Raised by a forward hook once every wanted hidden state is kept: the rest of the
    forward pass is not needed."""


@contextmanager
def _tap(lm: Any, layers: set[int], stop_at: int | None) -> Iterator[dict[int, torch.Tensor]]:
    """Keep the LLM's hidden states ``K`` in ``layers`` (as ``output_hidden_states`` numbers
    them: 0 the input of the first layer, ``K`` the output of layer ``K - 1``, the last one after
    the final norm) in the yielded dict while a forward runs. Once hidden state ``stop_at`` is
    kept, the forward is stopped (a :class:`_Stop` raised in the hook, swallowed here)."""
    store: dict[int, torch.Tensor] = {}
    n = len(lm.layers)
    hooks = []

    def keep(k: int, value: torch.Tensor) -> None:
        if k in layers:
            store[k] = value
        if k == stop_at:
            raise _Stop

    for k in layers | ({stop_at} if stop_at is not None else set()):
        if k == 0:

            def pre(module: Any, args: tuple, kwargs: dict) -> None:
                keep(0, args[0] if args else kwargs["hidden_states"])

            hooks.append(lm.layers[0].register_forward_pre_hook(pre, with_kwargs=True))
        else:

            def post(module: Any, args: tuple, output: Any, k: int = k) -> None:
                keep(k, output[0] if isinstance(output, tuple) else output)

            hooks.append((lm.layers[k - 1] if k < n else lm.norm).register_forward_hook(post))
    try:
        yield store
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def _tap_module(module: Any, where: str) -> Iterator[list[Any]]:
    """Keep the first positional input (``where="input"``) or the output of ``module`` each
    time it runs."""
    kept: list[Any] = []
    if where == "input":
        hook = module.register_forward_pre_hook(
            lambda m, args, kwargs: kept.append(args[0] if args else next(iter(kwargs.values()))),
            with_kwargs=True,
        )
    else:
        hook = module.register_forward_hook(lambda m, args, output: kept.append(output))
    try:
        yield kept
    finally:
        hook.remove()


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` float32 means of ``hidden`` ``(B, T, D)`` over the positions where ``mask``."""
    m = mask.to(hidden.device, torch.float32)[..., None]
    return ((hidden.float() * m).sum(1) / m.sum(1).clamp(min=1)).cpu()


class _FeaturesMixin:
    """``features`` and ``text_features`` of :class:`~hierzoo.models.vlm.VisionLLMClassifier`."""

    # ------------------------------------------------------------------ features
    def _language_model(self) -> Any:
        return self.model.model.language_model

    def _llm_layers(self, sites: Sequence[Site], kind: str) -> dict[str, int]:
        n = len(self._language_model().layers)
        return {
            s.name: s.resolve_layer(n, f"the LLM of {self.name!r}") for s in sites if s.kind == kind
        }

    def _answer_contexts(
        self, sites: Sequence[Site], taxonomy: Taxonomy | None, mode: str, label: str | None = None
    ) -> dict[int, str]:
        """Level -> the open question of that level and the prompt's tail (the text after the
        head), for the answer sites' levels."""
        levels = sorted({int(s.level) for s in sites if s.kind == "llm-answer"})
        if not levels:
            return {}
        if taxonomy is None:
            raise SiteError(
                f"Answer sites ({[s.name for s in sites if s.kind == 'llm-answer']}) ask the "
                "question of a "
                "taxonomy level: pass taxonomy=."
            )
        if levels[-1] >= taxonomy.depth:
            raise SiteError(
                f"Expected answer-site levels in 0..{taxonomy.depth - 1} (taxonomy "
                f"{taxonomy.name!r} has "
                f"{taxonomy.depth} levels), but got {levels[-1]}."
            )
        key, variant = self._prompt_key(taxonomy)
        tail = self.template(mode)[1]
        return {
            lev: prompts.question_text(key, lev, variant=variant, mode=mode, label=label) + tail
            for lev in levels
        }

    def features(
        self,
        images: ImageInput | Sequence[ImageInput],
        where: str | Sequence[str],
        *,
        taxonomy: Taxonomy | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Features:
        """Image features of the vision LLM at one or more sites (see docs/probing.md):

        - ``vision``: the vision tower's features as the model passes them on (its
          ``vision_feature_layer``, class token dropped where the model drops it; Qwen: the
          last block, before the patch merger), mean over every patch of the image (all tiles
          or crops);
        - ``projector``: the image tokens as they enter the LLM (the projector's output after
          the family's merging and packing: LLaVA-OneVision's newline tokens included), mean over
          them; equal to ``llm:0``;
        - ``llm:K``: the LLM's hidden state ``K`` as ``output_hidden_states`` numbers it (0: the
          input embeddings; ``K``: the output of layer ``K``; the last one after the final norm;
          negative from the end), mean over the image tokens;
        - ``llm:K:answer:L``: hidden state ``K`` at the answer position (the last prompt token,
          whose logits give the first answer token) of level ``L``'s open question, as
          :meth:`score_nodes` asks it (no options); needs ``taxonomy``.

        The prompt is the paper's (system turn, image, question). The image tokens attend only
        to what precedes them, so the pooled sites read one forward pass of the prompt's head
        (system turn, user header, image), stopped once the deepest wanted layer is kept; the
        answer sites continue every level's question from that head's KV cache. One pass per
        group of images (``batch_size``, else the token budget). A failed image gets a NaN row
        and its message in ``errors``.
        """
        from tqdm.auto import tqdm

        self._require_weights()
        sites = parse_sites(where)
        check_kinds(sites, ("vision", "projector", "llm", "llm-answer"), self.family)
        taxonomy = as_taxonomy(taxonomy)
        check_batch_size(batch_size)
        items, _ = as_list(images)
        if any(isinstance(x, torch.Tensor) for x in items):
            raise ValueError(
                f"{type(self).__name__} reads images through its own processor: pass paths or PIL "
                "images, not preprocessed tensors."
            )
        pooled = self._llm_layers(sites, "llm")
        if any(s.kind == "projector" for s in sites):
            pooled["projector"] = 0
        answer_layers = self._llm_layers(sites, "llm-answer")
        contexts = self._answer_contexts(sites, taxonomy, "image")
        tok = self.processor.tokenizer
        context_ids = {
            lev: tok(text, add_special_tokens=False)["input_ids"] for lev, text in contexts.items()
        }
        out: dict[str, torch.Tensor] = {}
        errors: list[str | None] = [None] * len(items)
        batch_size = batch_size or self.batch_size
        longest = max((len(c) for c in context_ids.values()), default=0)
        with (
            torch.inference_mode(),
            tqdm(total=len(items), unit="img", disable=not progress, desc=self.name) as bar,
        ):

            def failed(j: int, msg: str) -> None:
                errors[j] = msg
                bar.update(1)

            def cost(image: Image.Image) -> int:
                prefix = self._prefix_tokens(image)
                return prefix + len(context_ids) * (prefix + longest)

            for group in self._image_groups(items, batch_size, cost, failed):
                rows = [j for j, _ in group]
                values = self._image_features(
                    [img for _, img in group], sites, pooled, answer_layers, context_ids, batch_size
                )
                for name, value in values.items():
                    if name not in out:
                        out[name] = torch.full((len(items), value.shape[1]), float("nan"))
                    out[name][rows] = value
                bar.update(len(group))
        empty = torch.full((len(items), 0), float("nan"))
        return Features({s.name: out.get(s.name, empty) for s in sites}, errors)

    def _image_features(
        self,
        images: list[Image.Image],
        sites: Sequence[Site],
        pooled: dict[str, int],
        answer_layers: dict[str, int],
        context_ids: dict[int, list[int]],
        batch_size: int | None,
    ) -> dict[str, torch.Tensor]:
        """Every site's ``(len(images), D)`` features for one group of images."""
        head, _ = self.template("image")
        enc = self._encode([head] * len(images), images, side="right")
        positions, start = self.prompt_positions(enc)
        lm = self._language_model()
        layers = set(pooled.values())
        stop_at = None if context_ids else max(layers, default=0)
        want_vision = any(s.kind == "vision" for s in sites)
        module, where = self.vision_site() if want_vision else (None, "")
        values: dict[str, torch.Tensor] = {}
        out = None
        with (
            _tap(lm, layers, stop_at) as hidden,
            nullcontext() if module is None else _tap_module(module, where) as kept,
        ):
            out = self.model(
                **enc, position_ids=positions, use_cache=bool(context_ids), logits_to_keep=1
            )
        image_mask = enc["input_ids"] == self.model.config.image_token_id
        for s in sites:
            if s.kind == "vision":
                values[s.name] = torch.stack(
                    [t.float().mean(0) for t in self.vision_tokens(kept[0], enc)]
                ).cpu()
            elif s.kind in ("llm", "projector"):
                values[s.name] = _masked_mean(
                    hidden[pooled[s.name if s.kind == "llm" else "projector"]], image_mask
                )
        if not context_ids:
            return values
        prefix = _Prefix(_cache_of(out), enc["attention_mask"], start)
        levels = sorted(context_ids)
        rows = [(g, lev) for g in range(len(images)) for lev in levels]
        width = prefix.mask.shape[1] + max(len(c) for c in context_ids.values())
        kept_rows: dict[int, list[torch.Tensor]] = {k: [] for k in set(answer_layers.values())}
        for part in self._row_chunks(len(rows), width, batch_size):
            chunk = rows[part]
            wanted = set(answer_layers.values())
            with _tap(lm, wanted, max(wanted)) as hidden:
                self._continue(
                    prefix, [g for g, _ in chunk], [context_ids[lev] for _, lev in chunk]
                )
            for k in wanted:
                kept_rows[k].append(hidden[k][:, -1].float().cpu())
        for s in sites:
            if s.kind == "llm-answer":
                at = torch.cat(kept_rows[answer_layers[s.name]])
                values[s.name] = at[[i for i, (_, lev) in enumerate(rows) if lev == s.level]]
        return values

    def text_features(
        self,
        names: Sequence[str],
        where: str | Sequence[str] = "llm:-1",
        *,
        taxonomy: Taxonomy | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Features:
        """The LLM's hidden states for names (taxonomy nodes) in a text-only prompt: the paper's
        text-mode chat (system: "You are a helpful assistant.").

        - ``llm:K``: the name alone is the user turn; hidden state ``K`` averaged over the name's
          tokens (they attend only to what precedes them, so text after the name would not
          change them);
        - ``llm:K:answer:L``: the user turn is the paper's text-mode question of level ``L``
          naming the node (``Based on taxonomy, where does {name} fall in terms of {rank}?``),
          hidden state ``K`` at the answer position; needs ``taxonomy``.
        """
        self._require_weights()
        sites = parse_sites(where)
        check_kinds(sites, ("llm", "llm-answer"), self.family)
        names = as_names(names)
        taxonomy = as_taxonomy(taxonomy)
        check_batch_size(batch_size)
        pooled = self._llm_layers(sites, "llm")
        answer_layers = self._llm_layers(sites, "llm-answer")
        self._answer_contexts(sites, taxonomy, "text", label="x")  # checks taxonomy and levels
        head, tail = self.template("text")
        tok = self.processor.tokenizer
        head_ids = tok(head, add_special_tokens=False)["input_ids"]
        rows: list[
            tuple[str, int, list[int], int, int]
        ] = []  # (kind, name index, ids, span start, span end)
        for i, name in enumerate(names):
            if pooled:
                name_ids = tok(name, add_special_tokens=False)["input_ids"]
                ids = tok(name + tail, add_special_tokens=False)["input_ids"]
                if ids[: len(name_ids)] != name_ids:
                    raise ValueError(
                        f"The tokens of {name!r} merge with the end of the user turn for "
                        f"{self.name!r}; "
                        "its hidden states cannot be told apart."
                    )
                rows.append(
                    ("llm", i, head_ids + ids, len(head_ids), len(head_ids) + len(name_ids))
                )
            for lev, text in self._answer_contexts(sites, taxonomy, "text", label=name).items():
                ids = head_ids + tok(text, add_special_tokens=False)["input_ids"]
                rows.append((f"answer:{lev}", i, ids, len(ids) - 1, len(ids)))
        layers = set(pooled.values()) | set(answer_layers.values())
        lm = self._language_model()
        pad = tok.pad_token_id or 0
        width = max(len(r[2]) for r in rows)
        kept: dict[int, list[torch.Tensor]] = {k: [] for k in layers}
        from tqdm.auto import tqdm

        with (
            torch.inference_mode(),
            tqdm(total=len(rows), unit="prompt", disable=not progress, desc=self.name) as bar,
        ):
            for part in self._row_chunks(len(rows), width, batch_size):
                chunk = rows[part]
                ids, mask = _right_pad([r[2] for r in chunk], pad)
                ids, mask = ids.to(self.device), mask.to(self.device)
                positions, _ = self.prompt_positions({"attention_mask": mask})
                span = torch.zeros_like(mask)
                for j, r in enumerate(chunk):
                    span[j, r[3] : r[4]] = 1
                with _tap(lm, layers, max(layers)) as hidden:
                    self.model(
                        input_ids=ids,
                        attention_mask=mask,
                        position_ids=positions,
                        use_cache=False,
                        logits_to_keep=1,
                    )
                for k in layers:
                    kept[k].append(_masked_mean(hidden[k], span))
                bar.update(len(chunk))
        by_layer = {k: torch.cat(v) for k, v in kept.items()}
        data: dict[str, torch.Tensor] = {}
        for s in sites:
            kind = "llm" if s.kind == "llm" else f"answer:{s.level}"
            k = pooled[s.name] if s.kind == "llm" else answer_layers[s.name]
            data[s.name] = by_layer[k][[j for j, r in enumerate(rows) if r[0] == kind]]
        return Features(data, [None] * len(names))
