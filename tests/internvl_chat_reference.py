"""InternVL 2.5 as OpenGVLab's modelling code computes it, written out in plain torch over the
weights of a checkpoint in its own format (``model_type`` ``internvl_chat``): the slow, obvious
computation that hierzoo's conversion into transformers' classes must equal.

Transcribed from the definitions in OpenGVLab/InternVL ``internvl_chat/internvl/model/``:

- ``internvl_chat/modeling_intern_vit.py``: patch embedding (a conv with stride = patch), the
  class token, learned position embeddings; per layer ``x + ls1 * attn(norm1(x))`` then
  ``x + ls2 * mlp(norm2(x))``, attention with one fused ``qkv`` reshaped to
  ``(B, N, 3, heads, head_dim)``, scale ``head_dim ** -0.5``, GELU MLP.
- ``internvl_chat/modeling_internvl_chat.py`` ``extract_feature``: the last layer without its
  class token, reshaped to its grid, ``pixel_shuffle`` (``ps_version`` v2), then ``mlp1``
  (LayerNorm, Linear, GELU, Linear); ``chat`` / ``generate``: the text embeddings with the image
  features written where ``<IMG_CONTEXT>`` is.
- ``internlm2/modeling_internlm2.py``: RMSNorm (in float32), ``wqkv`` rearranged
  ``"b q (h gs d) -> b q h gs d"`` with ``gs = 2 + groups``, queries the first ``groups``
  slices, key and value the last two; rotary embedding (``rotate_half``, base ``rope_theta``)
  on positions ``0..L-1``; keys and values repeated per group; causal softmax attention;
  ``wo``; SwiGLU ``w2(silu(w1 x) * w3 x)``; final norm; ``output``.
- Qwen2 (InternVL2.5-1B / 4B / 38B / 78B): the same decoder with separate ``q_proj`` /
  ``k_proj`` / ``v_proj`` (with biases), ``o_proj``, ``gate_proj`` / ``up_proj`` /
  ``down_proj``, ``lm_head``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _vit(w: dict[str, torch.Tensor], vis: dict[str, Any], pixels: torch.Tensor) -> torch.Tensor:
    d, heads = vis["hidden_size"], vis["num_attention_heads"]
    patch = vis["patch_size"]
    x = F.conv2d(
        pixels,
        w["vision_model.embeddings.patch_embedding.weight"],
        w["vision_model.embeddings.patch_embedding.bias"],
        stride=patch,
    )
    x = x.flatten(2).transpose(1, 2)  # (B, N, D)
    cls = w["vision_model.embeddings.class_embedding"].expand(x.shape[0], 1, d)
    x = torch.cat([cls, x], dim=1) + w["vision_model.embeddings.position_embedding"]
    eps = vis["layer_norm_eps"]
    for i in range(vis["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        h = F.layer_norm(x, (d,), w[p + "norm1.weight"], w[p + "norm1.bias"], eps)
        b, n, _ = h.shape
        qkv = (h @ w[p + "attn.qkv.weight"].T + w[p + "attn.qkv.bias"]).reshape(
            b, n, 3, heads, d // heads
        )
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = torch.softmax((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5, dim=-1) @ v
        att = att.transpose(1, 2).reshape(b, n, d)
        att = att @ w[p + "attn.proj.weight"].T + w[p + "attn.proj.bias"]
        x = x + w[p + "ls1"] * att
        h = F.layer_norm(x, (d,), w[p + "norm2.weight"], w[p + "norm2.bias"], eps)
        h = F.gelu(h @ w[p + "mlp.fc1.weight"].T + w[p + "mlp.fc1.bias"])
        x = x + w[p + "ls2"] * (h @ w[p + "mlp.fc2.weight"].T + w[p + "mlp.fc2.bias"])
    return x


def _pixel_shuffle(x: torch.Tensor, scale: float) -> torch.Tensor:
    n, width, height, c = x.size()
    x = x.view(n, width, int(height * scale), int(c / scale))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(height * scale), int(width * scale), int(c / (scale * scale)))
    return x.permute(0, 2, 1, 3).contiguous()  # ps_version v2


def image_features(
    w: dict[str, torch.Tensor], config: dict[str, Any], pixels: torch.Tensor
) -> torch.Tensor:
    """``extract_feature``: ``(tiles, tokens per tile, hidden)``."""
    vit = _vit(w, config["vision_config"], pixels)[:, 1:, :]
    side = int(vit.shape[1] ** 0.5)
    vit = vit.reshape(vit.shape[0], side, side, -1)
    vit = _pixel_shuffle(vit, config["downsample_ratio"])
    vit = vit.reshape(vit.shape[0], -1, vit.shape[-1])
    h = F.layer_norm(vit, (vit.shape[-1],), w["mlp1.0.weight"], w["mlp1.0.bias"], 1e-5)
    h = F.gelu(h @ w["mlp1.1.weight"].T + w["mlp1.1.bias"])
    return h @ w["mlp1.3.weight"].T + w["mlp1.3.bias"]


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def logits(
    w: dict[str, torch.Tensor],
    config: dict[str, Any],
    input_ids: list[int],
    pixels: torch.Tensor | None,
    image_token_id: int,
) -> torch.Tensor:
    """``(L, vocab)`` logits of one prompt (``pixels``: its tiles, or ``None`` for text)."""
    llm = config["llm_config"]
    hidden, heads = llm["hidden_size"], llm["num_attention_heads"]
    kv = llm["num_key_value_heads"]
    groups, hd, eps = heads // kv, hidden // heads, llm["rms_norm_eps"]
    internlm = llm["architectures"] == ["InternLM2ForCausalLM"]
    names = _INTERNLM2 if internlm else _QWEN2
    ids = torch.tensor(input_ids)
    x = w[names["embed"]][ids].clone()
    if pixels is not None:
        feats = image_features(w, config, pixels).reshape(-1, hidden)
        at = ids == image_token_id
        assert int(at.sum()) == len(feats)
        x[at] = feats
    n = len(ids)
    assert n <= llm["max_position_embeddings"]  # dynamic NTK leaves shorter prompts alone
    inv = 1.0 / (llm["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    freqs = torch.outer(torch.arange(n, dtype=torch.float32), inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()
    causal = torch.full((n, n), float("-inf")).triu(1)
    for i in range(llm["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        h = _rms(x, w[p + names["norm1"]], eps)
        if internlm:
            qkv = (h @ w[p + "attention.wqkv.weight"].T).reshape(n, kv, groups + 2, hd)
            q = qkv[:, :, :groups, :].reshape(n, heads, hd).transpose(0, 1)  # (heads, L, hd)
            k = qkv[:, :, -2, :].transpose(0, 1)  # (kv, L, hd)
            v = qkv[:, :, -1, :].transpose(0, 1)
        else:
            q, k, v = (
                (h @ w[p + f"self_attn.{c}_proj.weight"].T + w[p + f"self_attn.{c}_proj.bias"])
                .reshape(n, -1, hd)
                .transpose(0, 1)
                for c in "qkv"
            )
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k = k.repeat_interleave(groups, dim=0)  # key-value head j serves query heads j*groups..
        v = v.repeat_interleave(groups, dim=0)
        att = torch.softmax(q @ k.transpose(-2, -1) / hd**0.5 + causal, dim=-1) @ v
        att = att.transpose(0, 1).reshape(n, heads * hd)
        x = x + att @ w[p + names["out"]].T
        h = _rms(x, w[p + names["norm2"]], eps)
        up = F.silu(h @ w[p + names["gate"]].T) * (h @ w[p + names["up"]].T)
        x = x + up @ w[p + names["down"]].T
    x = _rms(x, w["language_model.model.norm.weight"], eps)
    return x @ w[names["head"]].T


_INTERNLM2 = {
    "embed": "language_model.model.tok_embeddings.weight",
    "head": "language_model.output.weight",
    "norm1": "attention_norm.weight",
    "norm2": "ffn_norm.weight",
    "out": "attention.wo.weight",
    "gate": "feed_forward.w1.weight",
    "up": "feed_forward.w3.weight",
    "down": "feed_forward.w2.weight",
}
_QWEN2 = {
    "embed": "language_model.model.embed_tokens.weight",
    "head": "language_model.lm_head.weight",
    "norm1": "input_layernorm.weight",
    "norm2": "post_attention_layernorm.weight",
    "out": "self_attn.o_proj.weight",
    "gate": "mlp.gate_proj.weight",
    "up": "mlp.up_proj.weight",
    "down": "mlp.down_proj.weight",
}
