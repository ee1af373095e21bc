"""Tiny, random-weight CLIP-style models built offline from the real classes.

- :func:`build_tiny_openclip`: an open_clip CLIP in the local-directory layout of a downloaded
  hub snapshot (``open_clip_config.json`` + ``open_clip_model.safetensors``); open_clip's own
  BPE vocabulary ships with open_clip, so ``vocab_size`` stays 49408.
- :func:`build_tiny_hf_clip` / :func:`build_tiny_siglip`: transformers ``CLIPModel`` /
  ``SiglipModel`` saved with ``save_pretrained``, with a byte-level BPE tokenizer trained here.

They load back through ``hierzoo.load(dir)`` like any real checkpoint.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any

import torch

__all__ = ["build_tiny_hf_clip", "build_tiny_openclip", "build_tiny_siglip", "tiny_openclip_config"]

_WORDS = (
    "a photo of a the bird animal plant food object order family genus species kingdom phylum "
    "class "
    "albatross sparrow warbler gull tern heron wren jay crow raven finch dog cat oak fern rose "
    "pizza "
    "procellariiformes passeriformes diomedeidae corvidae phoebastria corvus black footed laysan "
    "sooty "
)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_openclip_config(
    image_size: int = 32, width: int = 64, layers: int = 2, embed_dim: int = 32
) -> dict[str, Any]:
    """An open_clip ``model_cfg`` for a tiny ViT CLIP."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": image_size,
            "layers": layers,
            "width": width,
            "patch_size": 8,
            "head_width": 32,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": width,
            "heads": 2,
            "layers": layers,
        },
    }


def build_tiny_openclip(
    out_dir: str | PathLike[str], seed: int = 0, model_cfg: dict[str, Any] | None = None
) -> Path:
    """Write a random-weight open_clip model in the hub-snapshot layout; returns the directory."""
    import open_clip
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model_cfg or tiny_openclip_config()
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    with torch.no_grad():
        # a visible logit scale, so a bug that drops it changes the probabilities
        model.logit_scale.fill_(torch.log(torch.tensor(50.0)))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        out / "open_clip_model.safetensors",
    )
    preprocess = {
        "mean": list(_CLIP_MEAN),
        "std": list(_CLIP_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}, indent=2)
    )
    return out


def _bpe_tokenizer(special: dict[str, str], vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=special.get("unk_token")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(dict.fromkeys(special.values())),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([_WORDS] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def build_tiny_hf_clip(out_dir: str | PathLike[str], seed: int = 0) -> Path:
    """Write a random-weight transformers ``CLIPModel`` + ``CLIPProcessor``; returns the
    directory."""
    from tokenizers import processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    out = Path(out_dir)
    tokenizer = _bpe_tokenizer(
        {
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
        }
    )
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)],
    )
    tokenizer.model_max_length = 32
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        projection_dim=16,
        logit_scale_init_value=float(torch.log(torch.tensor(50.0))),
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=list(_CLIP_MEAN),
        image_std=list(_CLIP_STD),
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    model.save_pretrained(out)
    return out


def build_tiny_siglip(out_dir: str | PathLike[str], seed: int = 0) -> Path:
    """Write a random-weight transformers ``SiglipModel`` + ``SiglipProcessor``; returns the
    directory.

    SigLIP pools the last token, so its text is padded to ``max_length`` (64 here).
    """
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    out = Path(out_dir)
    from tokenizers import processors

    tokenizer = _bpe_tokenizer({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"})
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tokenizer.eos_token_id)]
    )
    tokenizer.model_max_length = 64
    config = SiglipConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": None,
            "projection_size": 32,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
    )
    torch.manual_seed(seed)
    model = SiglipModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(torch.log(torch.tensor(10.0)))
        model.logit_bias.fill_(-2.0)
    image_processor = SiglipImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    model.save_pretrained(out)
    return out
