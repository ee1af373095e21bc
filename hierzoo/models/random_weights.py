"""Real-size zoo architectures with random weights, built without downloading anything.

For timing on machines without network access: the model's real layer sizes, so its
FLOPs, memory and image-token counts are those of the checkpoint; the tokenizer is a small
local one (prompts tokenize a little differently from the real vocabulary), so treat text
lengths as approximate. Weights are initialised directly on the target device.

``size="tiny"`` builds the same family at toy size, so a benchmark script runs end to end on a
CPU before it is sent to a GPU.
"""

from __future__ import annotations

from typing import Any

import torch

from hierzoo.models._registry import ZOO, ModelSpec
from hierzoo.models.base import HierClassifier

# transformers CLIP / SigLIP architectures of the zoo (the checkpoints' config.json sizes)
_HF_CLIP = {
    "clip-vit-l-14.openai": {
        "kind": "clip",
        "text": {
            "vocab_size": 49408,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 77,
        },
        "vision": {
            "image_size": 224,
            "patch_size": 14,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
        },
        "projection_dim": 768,
    },
    "siglip-so400m": {
        "kind": "siglip",
        "text": {
            "vocab_size": 32000,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "max_position_embeddings": 64,
        },
        "vision": {
            "image_size": 384,
            "patch_size": 14,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
        },
    },
    "siglip2-so400m": {
        "kind": "siglip",
        "text": {
            "vocab_size": 256000,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "max_position_embeddings": 64,
        },
        "vision": {
            "image_size": 384,
            "patch_size": 14,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
        },
    },
}

# Qwen2.5-VL language-model sizes (config.json of the Qwen/Qwen2.5-VL-*-Instruct checkpoints);
# all four share the 32-block, 1280-wide vision tower.
_QWEN2_5_VL = {
    "qwen2.5-vl-3b": {
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "qwen2.5-vl-7b": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
    },
    "qwen2.5-vl-32b": {
        "hidden_size": 5120,
        "intermediate_size": 27648,
        "num_hidden_layers": 64,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "vocab_size": 152064,
    },
    "qwen2.5-vl-72b": {
        "hidden_size": 8192,
        "intermediate_size": 29568,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "vocab_size": 152064,
    },
}
_QWEN2_5_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "hidden_act": "silu",
}


def supported() -> list[str]:
    """Zoo names that ``--random-weights`` can build."""
    openclip = [n for n, s in ZOO.items() if s.family == "openclip" and s.arch]
    return openclip + list(_HF_CLIP) + list(_QWEN2_5_VL)


def build_random(
    name: str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    size: str = "real",
    seed: int = 0,
    **options: Any,
) -> HierClassifier:
    """A zoo model's architecture with random weights, as a ready ``HierClassifier``.

    ``options`` are the family's, as for :func:`hierzoo.load` (``num_workers``,
    ``decode_on_device``, ``worker_decode`` for CLIP; ``batched_vision_attention``,
    ``token_budget`` ... for Qwen2.5-VL).

    Raises:
        ValueError: a name with no bundled architecture, listing those there are.
        OptionError: an option of another family.
    """
    if size not in ("real", "tiny"):
        raise ValueError(f"Expected `size` to be 'real' or 'tiny', but got {size!r}.")
    if name not in supported():
        raise ValueError(
            f"No bundled architecture for {name!r}; --random-weights covers {supported()}."
        )
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    spec = ZOO[name]
    torch.manual_seed(seed)
    if spec.family == "openclip":
        return _openclip(spec, device, dtype, size, options)
    if name in _HF_CLIP:
        return _hf_clip(spec, device, dtype, size, options)
    return _qwen2_5_vl(spec, device, dtype, size, options)


def _openclip(
    spec: ModelSpec, device: torch.device, dtype: torch.dtype, size: str, options: dict[str, Any]
) -> HierClassifier:
    import open_clip

    from hierzoo.models.clip import OpenClipClassifier
    from hierzoo.models.tiny_clip import tiny_openclip_config

    if size == "tiny":
        model = open_clip.CLIP(**tiny_openclip_config())
        preprocess = open_clip.image_transform(32, is_train=False)
        tokenizer = open_clip.get_tokenizer("ViT-B-32")
    else:
        with torch.device(device):
            model, _, preprocess = open_clip.create_model_and_transforms(spec.arch, pretrained=None)
        tokenizer = open_clip.get_tokenizer(spec.arch)
    return OpenClipClassifier.from_model(
        model,
        tokenizer,
        preprocess,
        name=f"{spec.name} (random weights)",
        device=device,
        dtype=dtype,
        **options,
    )


def _hf_clip(
    spec: ModelSpec, device: torch.device, dtype: torch.dtype, size: str, options: dict[str, Any]
) -> HierClassifier:
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
    )

    from hierzoo.models.clip import HFClipClassifier
    from hierzoo.models.tiny_clip import _bpe_tokenizer

    arch = _HF_CLIP[spec.name]
    text, vision = dict(arch["text"]), dict(arch["vision"])
    if size == "tiny":
        text.update(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
        )
        vision.update(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        )
    side = vision["image_size"]
    if arch["kind"] == "clip":
        tok = _bpe_tokenizer(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
            }
        )
        text.update(
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        config = CLIPConfig(
            text_config=text,
            vision_config=vision,
            projection_dim=arch.get("projection_dim", 16) if size == "real" else 16,
        )
        processor = CLIPProcessor(
            image_processor=CLIPImageProcessor(
                size={"shortest_edge": side}, crop_size={"height": side, "width": side}
            ),
            tokenizer=tok,
        )
        model_cls = CLIPModel
    else:
        tok = _bpe_tokenizer({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"})
        text.update(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
        config = SiglipConfig(text_config=text, vision_config=vision)
        processor = SiglipProcessor(
            image_processor=SiglipImageProcessor(
                size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3
            ),
            tokenizer=tok,
        )
        model_cls = SiglipModel
    with torch.device(device):
        model = model_cls(config)
    return HFClipClassifier.from_model(
        model,
        processor,
        name=f"{spec.name} (random weights)",
        device=device,
        dtype=dtype,
        **options,
    )


_QWEN_PATCHES = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2}
_QWEN_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}


def qwen_image_processor() -> Any:
    """The Qwen2.5-VL checkpoints' image processor (patch 14, merge 2, 56x56 to 28x28x1280
    pixels), built locally."""
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(size=dict(_QWEN_PIXELS), **_QWEN_PATCHES)


def _qwen2_5_vl(
    spec: ModelSpec,
    device: torch.device,
    dtype: torch.dtype,
    size: str,
    options: dict[str, Any],
) -> HierClassifier:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLVideoProcessor,
    )

    from hierzoo.models import tiny
    from hierzoo.models.vlm import Qwen2_5_VLClassifier

    if size == "tiny":
        path = tiny.build_tiny_qwen2_5_vl(_scratch_dir(spec.name))
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device)
        processor = __import__("transformers").AutoProcessor.from_pretrained(path)
        return Qwen2_5_VLClassifier.from_model(
            model, processor, name=f"{spec.name} (tiny random weights)", **options
        )
    tokenizer = tiny._qwen_tokenizer(vocab_size=8192, texts=_prompt_corpus())
    text = dict(_QWEN2_5_VL[spec.name])
    text.update(
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(_QWEN2_5_VISION, out_hidden_size=text["hidden_size"])
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, **tiny._qwen_vision_token_ids(tokenizer)
    )
    config.tie_word_embeddings = bool(text.get("tie_word_embeddings", False))
    default_dtype = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default_dtype)
    processor = Qwen2_5_VLProcessor(
        image_processor=qwen_image_processor(),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=dict(_QWEN_PIXELS), **_QWEN_PATCHES),
        chat_template=tiny._QWEN2_5_VL_CHAT_TEMPLATE,
    )
    processor.tokenizer.chat_template = processor.chat_template
    return Qwen2_5_VLClassifier.from_model(
        model, processor, name=f"{spec.name} (random weights)", spec=spec, **options
    )


def _prompt_corpus() -> list[str]:
    """The paper's prompts and the bundled taxonomies' names: a local BPE trained on them (8k
    vocabulary) splits the benchmark's prompts into about as many tokens as the real vocabulary."""
    from hierzoo import bundled_taxonomies, load_taxonomy, prompts

    data = prompts.paper_prompts()
    texts = [data["system_image"], data["system_text"], data["instruction"]]
    for entry in data["taxonomies"].values():
        texts += entry["image_prompts"] + entry["text_prompts"]
    texts = texts * 20
    for name in bundled_taxonomies():
        tax = load_taxonomy(name)
        texts += [" ".join(tax.names[i : i + 50]) for i in range(0, tax.n_nodes, 50)]
        texts += [
            " ".join(n.lower() for n in tax.names[i : i + 50]) for i in range(0, tax.n_nodes, 50)
        ]
    return texts


def _scratch_dir(name: str) -> Any:
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix=f"hierzoo-{name}-"))
