"""What a vision LLM would be asked, without asking it: :meth:`describe_requests` renders each
request's prompt and runs the processor on it (the same call a run makes), and reports what the
model would receive. No forward pass, no weights needed (:meth:`for_dry_run`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hierzoo import prompts
from hierzoo.images import ImageDataset
from hierzoo.prompts import Protocol
from hierzoo.tasks import Question


class _RequestsMixin:
    """``describe_requests`` of :class:`~hierzoo.models.vlm.VisionLLMClassifier` (uses its
    ``processor``, ``template``, ``image_transform``, ``image_views``, ``check_protocol`` and
    ``_encode``)."""

    def describe_requests(
        self,
        questions: Sequence[Question],
        *,
        protocol: Protocol | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The first ``limit`` requests (all when ``None``) that :meth:`answer` would make for
        ``questions`` under ``protocol``, in the order it plans them (entry, level, rotation),
        one plain dict each:

        - ``sample``: the entry's position in ``questions``; ``level``: ``K`` of its
          ``levelK`` keys (1: the first level); ``rotation`` (circular protocols only);
        - ``text``: the full prompt as the processor tokenizes it: the chat template rendered,
          special tokens included, each image as the template's one placeholder;
        - ``prompt_tokens``: the prompt's length in tokens, image tokens included (``None``
          when its image cannot be read);
        - ``images``: per image its ``path``, ``size`` (``[width, height]`` of each view as the
          vision tower receives it, after resizing), ``tiles`` (the tiles or views it receives,
          thumbnail included; 1 for Qwen-VL) and ``tokens`` (the image's tokens in the prompt),
          or ``error`` when it cannot be read; ``[]`` in text mode;
        - ``letters``: the option letters (``""`` for a yes/no statement, whose ``option``
          is the option it states, ``--protocol binary``); ``max_new_tokens`` with generated
          answers; ``context_tokens`` under ``taxonomy-context``: what the taxonomy costs of
          ``prompt_tokens`` (:meth:`context_tokens`).

        Images are read and transformed as a run reads them and go through the same processor
        call, so the sizes, tiles and tokens are the processor's own output.

        Raises:
            QuestionError: a level's answer is not among its options.
            ValueError: a protocol this model cannot answer, or a negative ``limit``.
        """
        protocol = protocol or Protocol()
        self.check_protocol(protocol)
        if limit is not None and (isinstance(limit, bool) or limit < 0):
            raise ValueError(f"Expected `limit` >= 0 or None, but got {limit!r}.")
        plan = prompts.plan_questions(questions, protocol, family=self.family, model=self.zoo_name)
        requests = plan.requests[:limit] if limit is not None else plan.requests
        if not requests:
            return []
        head, tail = self.template(protocol.mode, prompts.protocol_framing(protocol, self.family))
        reply_tokens = protocol.reply_tokens(self.family)
        context_tokens = self.context_tokens(protocol)
        images: dict[int, tuple[Any, str | None]] = {}
        if protocol.mode == "image":
            samples = list(dict.fromkeys(r.sample for r in requests))
            items = [questions[i].path or questions[i].image for i in samples]
            data = ImageDataset(items, self.image_transform())
            images = {i: data[j][1:] for j, i in enumerate(samples)}
        out = []
        for r in requests:
            text = head + r.text + tail
            entry: dict[str, Any] = {"sample": r.sample, "level": r.level + 1}
            if protocol.circular:
                entry["rotation"] = r.rotation
            entry["text"] = text
            described = []
            if protocol.mode == "image":
                image, error = images[r.sample]
                if image is None:
                    inputs = None
                    described.append({"path": r.image, "error": error})
                else:
                    inputs = self._encode([text], [image], side="left")
                    described.append({"path": r.image, **self._describe_image(inputs)})
            else:
                inputs = self._encode([text], None, side="left")
            entry["prompt_tokens"] = None if inputs is None else int(inputs["input_ids"].shape[1])
            entry["images"] = described
            entry["letters"] = r.letters
            if protocol.name == "binary":
                entry["option"] = r.options[0]
            if context_tokens is not None:
                entry["context_tokens"] = context_tokens
            if reply_tokens is not None:
                entry["max_new_tokens"] = reply_tokens
            out.append(entry)
        return out

    def _describe_image(self, inputs: Any) -> dict[str, Any]:
        """``size``, ``tiles`` and ``tokens`` of the one image of a processor output."""
        tiles, size = self.image_views(inputs)
        token = getattr(self.processor, "image_token_id", None)
        if token is None:
            token = self.processor.tokenizer.convert_tokens_to_ids(self.processor.image_token)
        tokens = int((inputs["input_ids"][0] == token).sum())
        return {"size": size, "tiles": tiles, "tokens": tokens}
