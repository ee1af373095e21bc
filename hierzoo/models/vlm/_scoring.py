"""Node scores of a vision LLM: the log-likelihood of every node's name as the whole answer to
its level's open question, read from the prefix cache."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

from hierzoo import prompts
from hierzoo.images import ImageInput, as_list
from hierzoo.models.base import check_batch_size
from hierzoo.models.outputs import NodeScores
from hierzoo.models.vlm._prefix_cache import _cache_of, _Prefix, _right_pad
from hierzoo.taxonomy import as_taxonomy

if TYPE_CHECKING:
    from hierzoo.taxonomy import Taxonomy

LOGIT_ELEMENTS = 1 << 26


@dataclass
class _NodePlan:
    contexts: list[list[int]]
    answers: list[list[int]]
    levels: list[int]


class _NodeScoringMixin:
    """``score_nodes`` of :class:`~hierzoo.models.vlm.VisionLLMClassifier`."""

    # ------------------------------------------------------------------ node scores
    def score_nodes(
        self,
        images: ImageInput | Sequence[ImageInput],
        taxonomy: Taxonomy,
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> NodeScores:
        """Log-likelihood of every node name as the whole answer to its level's open question.

        Per image and level the prompt is the paper's question of the level (no options, no
        instruction; the taxonomy's own prompts when it is a bundled one, else the generic
        ones) and the answer is the node's name followed by the end-of-turn token. The image
        prefix runs once per image, each level's question once per image from its cache, and
        every node name from the cache of its level. ``kind="softmax"``: a level's
        probabilities are the softmax of its nodes' log-likelihoods (renormalised over the
        level). A failed image gets a NaN row and its message in ``errors``.
        """
        from tqdm.auto import tqdm

        self._require_weights()
        taxonomy = as_taxonomy(taxonomy)
        check_batch_size(batch_size)
        items, _ = as_list(images)
        if any(isinstance(x, torch.Tensor) for x in items):
            raise ValueError(
                f"{type(self).__name__} reads images through its own processor: pass paths or PIL "
                "images, not preprocessed tensors."
            )
        plan = self._node_plan(taxonomy)
        logits = torch.full((len(items), taxonomy.n_nodes), float("nan"))
        errors: list[str | None] = [None] * len(items)
        context = max(len(c) for c in plan.contexts)
        batch_size = batch_size or self.batch_size
        with (
            torch.inference_mode(),
            tqdm(total=len(items), unit="img", disable=not progress, desc=self.name) as bar,
        ):

            def failed(j: int, msg: str) -> None:
                errors[j] = msg
                bar.update(1)

            def cost(image: Image.Image) -> int:
                return taxonomy.depth * (self._prefix_tokens(image) + context)

            for group in self._image_groups(items, batch_size, cost, failed):
                rows = [j for j, _ in group]
                logits[rows] = self._node_loglik([img for _, img in group], plan, batch_size)
                bar.update(len(group))
        return NodeScores(logits=logits, kind="softmax", taxonomy=taxonomy, errors=errors)

    def _prompt_key(self, taxonomy: Taxonomy) -> tuple[Taxonomy, int]:
        """What words a taxonomy's questions (:func:`hierzoo.prompts.question_text` takes the
        taxonomy: the paper's prompts for a bundled one, else generic ones with its ranks), and
        the paper's default variant for it and this family."""
        return taxonomy, prompts.default_prompt_variant(taxonomy, self.family, model=self.zoo_name)

    def _node_plan(self, taxonomy: Taxonomy) -> _NodePlan:
        key, variant = self._prompt_key(taxonomy)
        _, tail = self.template("image")
        end = self.answer_end()
        tok = self.processor.tokenizer
        contexts = [
            prompts.question_text(key, k, variant=variant) + tail for k in range(taxonomy.depth)
        ]
        context_ids = tok(contexts, add_special_tokens=False)["input_ids"]
        full = tok(
            [contexts[int(lev)] + name + end for name, lev in zip(taxonomy.names, taxonomy.level)],
            add_special_tokens=False,
        )["input_ids"]
        answers = []
        for node, ids in enumerate(full):
            ctx = context_ids[int(taxonomy.level[node])]
            if ids[: len(ctx)] != ctx:
                raise ValueError(
                    f"The tokens of node {taxonomy.names[node]!r} merge with the end of the prompt "
                    f"for {self.name!r}; its log-likelihood cannot be read from the prompt's cache."
                )
            answers.append(ids[len(ctx) :])
        return _NodePlan(context_ids, answers, [int(x) for x in taxonomy.level])

    def _node_loglik(
        self,
        images: list[Image.Image],
        plan: _NodePlan,
        batch_size: int | None,
        framing: prompts.Framing | None = None,
    ) -> torch.Tensor:
        """``(len(images), n_nodes)`` log-likelihoods of the node names for a group of images
        (``framing``: a protocol's own system message, default the paper's)."""
        n_img, depth = len(images), len(plan.contexts)
        prefix = self._prefix(images, n_img, "image", framing)
        rows = [g for g in range(n_img) for _ in range(depth)]
        out, attention, mask = self._continue(
            prefix, rows, [plan.contexts[k] for _ in range(n_img) for k in range(depth)]
        )
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        level = _Prefix(_cache_of(out), attention, prefix.start[rows] + mask.sum(-1))
        n_nodes = len(plan.answers)
        longest = max(len(t) for t in plan.answers)
        per_chunk = max(1, self.token_budget // (attention.shape[1] + longest))
        per_chunk = min(per_chunk, max(1, LOGIT_ELEMENTS // (longest * first.shape[-1])))
        pairs = [(g, node) for g in range(n_img) for node in range(n_nodes)]
        scores = torch.empty(n_img, n_nodes)
        for lo in range(0, len(pairs), per_chunk):
            chunk = pairs[lo : lo + per_chunk]
            ctx_rows = [g * depth + plan.levels[node] for g, node in chunk]
            answers = [plan.answers[node] for _, node in chunk]
            total = first[ctx_rows, [t[0] for t in answers]]
            out, _, _ = self._continue(level, ctx_rows, [t[:-1] for t in answers], last_only=False)
            logp = torch.log_softmax(out.logits.float(), dim=-1)
            targets, mask = _right_pad([t[1:] for t in answers], 0)
            targets, mask = targets.to(logp.device), mask.to(logp.device)
            total = total + (logp.gather(-1, targets[..., None])[..., 0] * mask).sum(-1)
            g_idx = torch.tensor([g for g, _ in chunk])
            n_idx = torch.tensor([node for _, node in chunk])
            scores[g_idx, n_idx] = total.cpu()
        return scores
