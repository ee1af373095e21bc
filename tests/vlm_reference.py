"""The paper's request for a tiny vision LLM, built from ``paper_reference`` (the transcription of
the paper's scripts and of the code they call) and the model's own tokenizer, processor
configuration and weights, never from hierzoo's prompt or image code: what hierzoo's requests
must equal.

Per family, as the paper's scripts run them:

- Qwen-VL: the rendered Qwen prompt; the image resized by qwen_vl_utils (to the model's patch
  grid), capped at 1680 px, then through the model's processor with transformers' PIL backend
  (the slow processor of the transformers the paper ran).
- LLaVA-OneVision: LLaVA-NeXT's CHATML conversation, the text around ``<image>`` tokenized piece
  by piece (``tokenizer_image_token``), the image padded to a square (``pad`` mode) and resized
  to the tower's input, its SigLIP features through the projector followed by the
  ``image_newline`` embedding spliced in where ``<image>`` was (LLaVA-NeXT's single-image
  branch), the model run on those embeddings.
- InternVL: the query InternVL's ``model.chat`` builds (its built-in system message, ``<img>``,
  256 (here: the tiny model's count) ``<IMG_CONTEXT>`` per tile, ``</img>``) and the tiles of
  ``load_image(max_num=4)``.
"""

from __future__ import annotations

import copy
from typing import Any

import paper_reference as pr
import torch
from PIL import Image

IMAGE_POSITION = -1
"""What :func:`paper_request` puts in its token list where LLaVA's image features go."""


def paper_system(family: str, mode: str) -> str:
    """The system message the paper's scripts send a family. LLaVA-OneVision's image runs used a
    template of the authors' fork ('qwen_animal') whose system turn is unknown: hierzoo's
    documented assumption, the expert message of the Qwen image runs, stands in for it."""
    if family == "internvl":
        return pr.INTERNVL_SYSTEM
    return pr.SYSTEM_EXPERT if mode == "image" else pr.SYSTEM_HELPFUL


def _pil_processor(m: Any) -> Any:
    from transformers import AutoImageProcessor

    proc = copy.copy(m.processor)
    proc.image_processor = AutoImageProcessor.from_pretrained(m.spec.location, backend="pil")
    return proc


def paper_inputs(
    m: Any, system: str, text: str, image: Image.Image | None, answer: str = ""
) -> tuple[list[int], dict[str, Any]]:
    """``(token ids, model keyword arguments)`` of one request as the paper makes it, with
    ``answer`` after the open assistant turn; LLaVA's image positions are ``IMAGE_POSITION`` in
    the ids and its inputs are ``inputs_embeds``."""
    family, model, tok = m.family, m.model, m.processor.tokenizer
    if image is not None:
        image = image.convert("RGB")
    if family in ("qwen2.5-vl", "qwen3-vl"):
        prompt = pr.qwen2_5_vl_render(system, text, image=image is not None) + answer
        if image is None:
            enc = m.processor(text=[prompt], return_tensors="pt")
        else:
            ip = m.processor.image_processor
            f = int(ip.patch_size) * int(ip.merge_size)
            ready = pr.paper_qwen_image(image, f, 4 * f * f, 16384 * f * f)
            enc = _pil_processor(m)(text=[prompt], images=[ready], return_tensors="pt")
        return enc["input_ids"][0].tolist(), dict(enc)
    if family == "llava-onevision":
        prompt = pr.chatml(system, ("<image>\n" if image is not None else "") + text) + answer
        ids = pr.tokenizer_image_token(prompt, lambda c: tok(c)["input_ids"])
        if image is None:
            t = torch.tensor([ids])
            return ids, {"input_ids": t, "attention_mask": torch.ones_like(t)}
        cfg = model.config
        ip = m.processor.image_processor
        side = cfg.vision_config.image_size
        pixels = pr.llava_pad_pixels(image, ip.image_mean, ip.image_std, size=side)
        with torch.no_grad():
            hidden = model.model.vision_tower(pixels[None], output_hidden_states=True)
            feats = hidden.hidden_states[cfg.vision_feature_layer]
            if cfg.vision_feature_select_strategy == "default":
                feats = feats[:, 1:]
            feats = model.model.multi_modal_projector(feats)[0]
            feats = torch.cat([feats, model.model.image_newline[None]])
            at = ids.index(pr.LLAVA_IMAGE_TOKEN_INDEX)
            embeds = model.get_input_embeddings()(torch.tensor(ids[:at] + ids[at + 1 :]))
            embeds = torch.cat([embeds[:at], feats, embeds[at:]])[None]
        expanded = ids[:at] + [IMAGE_POSITION] * len(feats) + ids[at + 1 :]
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        return expanded, {"inputs_embeds": embeds, "attention_mask": mask}
    if family == "internvl":
        tiles, pixels = (None, None)
        if image is not None:
            side = model.config.vision_config.image_size
            side = side[0] if isinstance(side, (list, tuple)) else side
            tiles, pixels = pr.load_image(image, input_size=side, max_num=4)
        n = len(tiles) if tiles is not None else None
        query = pr.internvl_query(text, n, system, model.config.image_seq_length) + answer
        enc = tok([query], return_tensors="pt")
        kwargs = dict(enc)
        if pixels is not None:
            kwargs["pixel_values"] = pixels
        return enc["input_ids"][0].tolist(), kwargs
    raise ValueError(f"no paper reference for {family!r}")


def paper_request(
    m: Any,
    system: str,
    text: str,
    image: Image.Image | None,
    answer: str = "",
    **forward: Any,
) -> tuple[list[int], Any]:
    """``(token ids, model output)``: one forward pass of the paper's request."""
    ids, kwargs = paper_inputs(m, system, text, image, answer)
    with torch.no_grad():
        return ids, m.model(**kwargs, **forward)


def paper_generate(
    m: Any, system: str, text: str, image: Image.Image | None, max_new_tokens: int
) -> str:
    """The reply to the paper's request as its scripts get it: ``model.generate`` greedy on
    :func:`paper_inputs`, the new tokens decoded without special tokens. LLaVA's spliced image
    features go with the prompt's ids (the image positions as the image token), so that logits
    processors such as a repetition penalty see the prompt, as in hierzoo's generation."""
    ids, inputs = paper_inputs(m, system, text, image)
    if "inputs_embeds" in inputs:
        image_id = m.model.config.image_token_id
        prompt = [image_id if t == IMAGE_POSITION else t for t in ids]
        inputs = {**inputs, "input_ids": torch.tensor([prompt])}
    with torch.no_grad():
        out = m.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1] :]
    return m.processor.batch_decode(
        new, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )[0]
