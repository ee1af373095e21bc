"""InternVL checkpoints in OpenGVLab's own format (``model_type`` ``internvl_chat``, the format of
``OpenGVLab/InternVL2_5-8B``), converted on load into transformers' ``InternVL`` classes.

OpenGVLab publishes InternVL 2.5 only as "remote code": the weights with its own modelling
files. hierzoo does not run those files; it reads the weights and config and builds the same
network from transformers' classes (the mapping transformers' own conversion script applies to
these checkpoints): the InternViT vision tower as ``InternVLVisionModel`` (its fused ``qkv``
split into ``q_proj`` / ``k_proj`` / ``v_proj``), the ``mlp1`` projector as
``InternVLMultiModalProjector``, and the language model as the transformers class of its
architecture: InternLM2 as ``LlamaForCausalLM`` (the same computation; its fused ``wqkv``, laid
out per key-value head as ``[q x groups, k, v]``, split into the three projections), Qwen2 and
Llama as they are. The tokenizer is the checkpoint's own (InternLM2's is remote code too: hence
``trust_remote_code``), with a chat template that renders the prompt InternVL's ``model.chat``
builds, the tokenizer's BOS included where ``tokenizer(query)`` adds one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from hierzoo.models._registry import read_config
from hierzoo.models.vlm import _chat

__all__ = [
    "CHAT_TEMPLATE",
    "REMOTE_FORMAT",
    "build_processor",
    "checkpoint_dir",
    "convert_state_dict",
    "generation_config",
    "load_remote",
    "native_config",
    "read_remote_config",
]

REMOTE_FORMAT = "internvl_chat"
"""The ``model_type`` of OpenGVLab's InternVL format."""

# remote name -> transformers name, applied in order (the vision tower's fused qkv and the
# language model's fused wqkv are split separately)
_VISION_RENAMES = (
    (r"^vision_model\.", "model.vision_tower."),
    (r"\.layers\.", ".layer."),
    (r"embeddings\.class_embedding$", "embeddings.cls_token"),
    (r"embeddings\.position_embedding$", "embeddings.position_embeddings"),
    (r"embeddings\.patch_embedding\.", "embeddings.patch_embeddings.projection."),
    (r"\.ls1$", ".lambda_1"),
    (r"\.ls2$", ".lambda_2"),
    (r"\.attn\.proj\.", ".attention.projection_layer."),
    (r"\.attn\.", ".attention."),
    (r"\.norm1\.", ".layernorm_before."),
    (r"\.norm2\.", ".layernorm_after."),
)
_PROJECTOR_RENAMES = (
    (r"^mlp1\.0\.", "model.multi_modal_projector.layer_norm."),
    (r"^mlp1\.1\.", "model.multi_modal_projector.linear_1."),
    (r"^mlp1\.3\.", "model.multi_modal_projector.linear_2."),
)
_INTERNLM2_RENAMES = (
    (r"^language_model\.output\.", "lm_head."),
    (r"^language_model\.model\.", "model.language_model."),
    (r"\.tok_embeddings\.", ".embed_tokens."),
    (r"\.attention\.wo\.", ".self_attn.o_proj."),
    (r"\.feed_forward\.w1\.", ".mlp.gate_proj."),
    (r"\.feed_forward\.w3\.", ".mlp.up_proj."),
    (r"\.feed_forward\.w2\.", ".mlp.down_proj."),
    (r"\.attention_norm\.", ".input_layernorm."),
    (r"\.ffn_norm\.", ".post_attention_layernorm."),
)
_NATIVE_LM_RENAMES = (
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^language_model\.model\.", "model.language_model."),
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
}
_TURN_END = "<|im_end|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""The turns of InternVL's ``internvl2_5`` conversation template (the template of transformers'
``-hf`` InternVL checkpoints); the image is ``<IMG_CONTEXT>``, which the processor expands to
``<img>`` + its image tokens + ``</img>``, as ``model.chat`` replaces ``<image>``. A tokenizer
that puts a BOS before every text (InternLM2's) gets it in front (:func:`build_processor`)."""

_NOT_CONFIG = frozenset(
    {
        "architectures",
        "auto_map",
        "_name_or_path",
        "attn_implementation",
        "_attn_implementation_autoset",
        "use_flash_attn",
        "use_bfloat16",
        "torch_dtype",
        "dtype",
        "transformers_version",
    }
)
"""Keys of a language model's config in OpenGVLab's format that say how it was run or saved,
not what the network is: transformers' classes do not take them (``attn_implementation`` would
ask for flash-attn)."""

_TEXT_ARCHITECTURES = {
    "InternLM2ForCausalLM": "llama",
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
}


def read_remote_config(path: str | Path) -> dict[str, Any] | None:
    """A directory's ``config.json`` as a dict when it is in OpenGVLab's InternVL format."""
    config = read_config(path)
    return config if config is not None and config.get("model_type") == REMOTE_FORMAT else None


def _rename(key: str, rules: tuple[tuple[str, str], ...]) -> str:
    for pattern, new in rules:
        key = re.sub(pattern, new, key)
    return key


def _text_architecture(remote: dict[str, Any]) -> str:
    llm = remote.get("llm_config") or {}
    arch = (llm.get("architectures") or [""])[0]
    if arch not in _TEXT_ARCHITECTURES:
        raise ValueError(
            f"This InternVL checkpoint's language model is a {arch or 'unnamed'!r}; hierzoo "
            f"converts those of {sorted(_TEXT_ARCHITECTURES)} (InternVL 2 / 2.5). Use a "
            "checkpoint in transformers' format (model_type 'internvl', the '-hf' repositories)."
        )
    return arch


def native_config(remote: dict[str, Any], image_token_id: int) -> Any:
    """The ``transformers.InternVLConfig`` of a checkpoint in OpenGVLab's format (its
    ``config.json`` as a dict); ``image_token_id``: the tokenizer's ``<IMG_CONTEXT>``.

    Raises:
        ValueError: a language model or a vision feature layout hierzoo does not convert.
    """
    from transformers import InternVLConfig, InternVLVisionConfig, LlamaConfig, Qwen2Config

    arch = _text_architecture(remote)
    if remote.get("ps_version", "v2") != "v2":
        raise ValueError(
            f"This InternVL checkpoint shuffles image features as {remote['ps_version']!r}; "
            "transformers' InternVL (and hierzoo) implement 'v2' (InternVL 2 and later)."
        )
    llm = dict(remote["llm_config"])
    vis = remote["vision_config"]
    side = int(remote.get("force_image_size") or vis["image_size"])
    patch = int(vis["patch_size"])
    vision = InternVLVisionConfig(
        hidden_size=vis["hidden_size"],
        intermediate_size=vis["intermediate_size"],
        num_hidden_layers=vis["num_hidden_layers"],
        num_attention_heads=vis["num_attention_heads"],
        hidden_act=vis.get("hidden_act", "gelu"),
        layer_norm_eps=vis.get("layer_norm_eps", 1e-6),
        image_size=[side, side],
        patch_size=[patch, patch],
        num_channels=vis.get("num_channels", 3),
        attention_bias=vis.get("qkv_bias", True),
        use_qk_norm=vis.get("qk_normalization", False),
        norm_type=vis.get("norm_type", "layer_norm"),
        use_absolute_position_embeddings=True,
        attention_dropout=0.0,
        projection_dropout=0.0,
        hidden_dropout_prob=0.0,
    )
    heads = llm["num_attention_heads"]
    common = {
        "vocab_size": llm["vocab_size"],
        "hidden_size": llm["hidden_size"],
        "intermediate_size": llm["intermediate_size"],
        "num_hidden_layers": llm["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": llm.get("num_key_value_heads", heads),
        "hidden_act": llm.get("hidden_act", "silu"),
        "max_position_embeddings": llm.get("max_position_embeddings", 32768),
        "rms_norm_eps": llm.get("rms_norm_eps", 1e-6),
        "bos_token_id": llm.get("bos_token_id"),
        "eos_token_id": llm.get("eos_token_id"),
        "pad_token_id": llm.get("pad_token_id"),
        "tie_word_embeddings": llm.get("tie_word_embeddings", False),
    }
    if arch == "InternLM2ForCausalLM":
        rope = {"rope_type": "default", "rope_theta": float(llm.get("rope_theta", 10000))}
        scaling = llm.get("rope_scaling") or {}
        if scaling:
            kind = scaling.get("type") or scaling.get("rope_type")
            if kind not in ("dynamic", "linear"):
                raise ValueError(f"Unknown InternLM2 rope_scaling {scaling!r}.")
            rope.update(rope_type=kind, factor=float(scaling["factor"]))
        text = LlamaConfig(
            **common,
            head_dim=llm["hidden_size"] // heads,
            attention_bias=bool(llm.get("bias", False)),
            rope_parameters=rope,
        )
    else:
        keep = {k: v for k, v in llm.items() if k not in _NOT_CONFIG}
        cls = LlamaConfig if _TEXT_ARCHITECTURES[arch] == "llama" else Qwen2Config
        text = cls(**{**keep, **common})
    return InternVLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=image_token_id,
        image_seq_length=int((side // patch) ** 2 * remote.get("downsample_ratio", 0.5) ** 2),
        downsample_ratio=remote.get("downsample_ratio", 0.5),
        vision_feature_layer=remote.get("select_layer", -1),
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=common["tie_word_embeddings"],
    )


def _split_wqkv(wqkv: torch.Tensor, heads: int, kv_heads: int) -> tuple[torch.Tensor, ...]:
    """InternLM2's fused ``wqkv`` (``(kv_heads * (groups + 2) * head_dim, hidden)``, per
    key-value head its ``groups`` query heads, then its key, then its value) as the weights of
    ``q_proj``, ``k_proj``, ``v_proj``."""
    groups = heads // kv_heads
    rows, hidden = wqkv.shape
    head_dim = rows // (kv_heads * (groups + 2))
    blocks = wqkv.reshape(kv_heads, groups + 2, head_dim, hidden)
    q = blocks[:, :groups].reshape(heads * head_dim, hidden)
    k = blocks[:, groups].reshape(kv_heads * head_dim, hidden)
    v = blocks[:, groups + 1].reshape(kv_heads * head_dim, hidden)
    return q.contiguous(), k.contiguous(), v.contiguous()


def convert_state_dict(
    remote_state: dict[str, torch.Tensor], remote: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint in OpenGVLab's format (``remote_state``, ``remote`` its
    config) under transformers' ``InternVLForConditionalGeneration`` names."""
    arch = _text_architecture(remote)
    llm = remote["llm_config"]
    heads = llm["num_attention_heads"]
    kv_heads = llm.get("num_key_value_heads", heads)
    dim = remote["vision_config"]["hidden_size"]
    out: dict[str, torch.Tensor] = {}
    for key, value in remote_state.items():
        if key.startswith("vision_model."):
            new = _rename(key, _VISION_RENAMES)
            if ".attention.qkv." in new:
                for part, piece in zip(
                    "qkv", (value[:dim], value[dim : 2 * dim], value[2 * dim :])
                ):
                    out[new.replace(".attention.qkv.", f".attention.{part}_proj.")] = piece
                continue
        elif key.startswith("mlp1."):
            new = _rename(key, _PROJECTOR_RENAMES)
        elif key.startswith("language_model.") and arch == "InternLM2ForCausalLM":
            new = _rename(key, _INTERNLM2_RENAMES)
            if ".attention.wqkv." in new:
                q, k, v = _split_wqkv(value, heads, kv_heads)
                for part, piece in zip("qkv", (q, k, v)):
                    out[new.replace(".attention.wqkv.", f".self_attn.{part}_proj.")] = piece
                continue
        elif key.startswith("language_model."):
            new = _rename(key, _NATIVE_LM_RENAMES)
        else:
            new = key
        out[new] = value
    return out


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
        return [path / name for name in sorted(set(shards))]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    raise ValueError(
        f"{str(path)!r} holds no model.safetensors (or its index); hierzoo reads InternVL "
        "checkpoints in OpenGVLab's format from safetensors files."
    )


def load_remote(
    path: str | Path, config: Any, dtype: torch.dtype, device: torch.device | None = None
) -> Any:
    """``InternVLForConditionalGeneration`` with the converted weights of the checkpoint at
    ``path`` (``config``: :func:`native_config` of it), in ``dtype`` on ``device`` (default the
    CPU; the weights are read straight onto it, one shard at a time), eval mode.

    Raises:
        ValueError: weights the conversion does not account for, or that it lacks.
    """
    from safetensors.torch import load_file
    from transformers import InternVLForConditionalGeneration

    path = Path(path)
    remote = read_remote_config(path)
    state: dict[str, torch.Tensor] = {}
    device = torch.device("cpu") if device is None else torch.device(device)
    for file in _weight_files(path):
        shard = load_file(str(file), device=str(device))
        state.update({k: v.to(dtype) for k, v in shard.items()})
        del shard
    state = convert_state_dict(state, remote)
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    expected = set(model.state_dict())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"The weights of {str(path)!r} do not convert to transformers' InternVL: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    # the rotary embeddings' frequencies are buffers, not weights: build those modules again
    # off the meta device
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, type(module)(module.config))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"The InternVL conversion left {left[:5]} without values.")
    return model.to(device=device, dtype=dtype).eval()


def checkpoint_dir(spec: Any) -> Path:
    """The local directory of a spec's checkpoint: its ``source``, or the hub snapshot (its
    config, weights, tokenizer and code files; from the local cache when offline)."""
    if spec.source is not None:
        return Path(spec.source)
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ImportError(
            "Loading hub checkpoints needs huggingface_hub: pip install 'hierzoo[vlm]'."
        ) from e
    patterns = ["*.json", "*.safetensors", "*.py", "*.model", "*.txt"]
    return Path(snapshot_download(spec.hub_id, revision=spec.revision, allow_patterns=patterns))


def build_processor(path: str | Path) -> tuple[Any, Any]:
    """The ``InternVLProcessor`` (the checkpoint's own tokenizer, loaded with
    ``trust_remote_code``; images tiled as the checkpoint's config says: 448 px tiles, at most
    ``max_dynamic_patch``, a thumbnail when there are several) and the converted
    ``InternVLConfig`` of a checkpoint in OpenGVLab's format.

    Raises:
        ValueError: a tokenizer without InternVL's image tokens, or a tiling transformers'
            processor does not do (no thumbnail).
    """
    from transformers import (
        AutoTokenizer,
        GotOcr2ImageProcessor,
        InternVLProcessor,
        InternVLVideoProcessor,
        PretrainedConfig,
    )

    path = Path(path)
    config = read_remote_config(path)
    # an empty config: the tokenizer's own files say its class (and its code); the checkpoint's
    # config class (code too) is never imported
    tokenizer = AutoTokenizer.from_pretrained(
        str(path), trust_remote_code=True, config=PretrainedConfig()
    )
    for attr, token in _IMAGE_TOKENS.items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer of {str(path)!r} has no {token} token.")
        setattr(tokenizer, attr, token)
        setattr(tokenizer, attr + "_id", token_id)
    tokenizer.video_token, tokenizer.video_token_id = "<video>", tokenizer.unk_token_id
    if config.get("dynamic_image_size", True) and not config.get("use_thumbnail", True):
        raise ValueError(
            f"{str(path)!r} tiles images without a thumbnail; transformers' InternVL processor "
            "always adds one."
        )
    native = native_config(config, tokenizer.context_image_token_id)
    height, width = native.vision_config.image_size
    side = {"height": height, "width": width}
    dynamic = bool(config.get("dynamic_image_size", True))
    # what tokenizer(query) puts first in model.chat (InternLM2's <s>), written by the template
    lead = _chat.leading_special_text(tokenizer, str(path), "InternVL's prompt")
    template = ("{% raw %}" + lead + "{% endraw %}" if lead else "") + CHAT_TEMPLATE
    tokenizer.chat_template = template
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(
            size=dict(side),
            crop_to_patches=dynamic,
            min_patches=int(config.get("min_dynamic_patch", 1)),
            max_patches=int(config.get("max_dynamic_patch", 12)) if dynamic else 1,
            image_mean=list(IMAGENET_MEAN),
            image_std=list(IMAGENET_STD),
            resample=3,  # bicubic, as InternVL's build_transform
        ),
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(
            size=dict(side), image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)
        ),
        image_seq_length=native.image_seq_length,
        chat_template=template,
    )
    return processor, native


def generation_config(path: str | Path, tokenizer: Any) -> Any:
    """The checkpoint's generation config, ending a reply at ``<|im_end|>`` as ``model.chat``
    sets ``eos_token_id`` to its template's separator."""
    from transformers import GenerationConfig

    has_own = (Path(path) / "generation_config.json").is_file()
    config = GenerationConfig.from_pretrained(str(path)) if has_own else GenerationConfig()
    config.eos_token_id = tokenizer.convert_tokens_to_ids(_TURN_END)
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    return config
