"""Tiny, random-weight vision LLMs and text-only LLMs built offline from the real transformers
classes.

Each vision-LLM builder writes a directory that loads back with ``AutoProcessor.from_pretrained``
and ``AutoModelForImageTextToText.from_pretrained``: float32 weights drawn from ``seed``, a
byte-level BPE tokenizer trained locally with the family's special tokens, the family's
chat-template layout, an image processor and a video processor. The text-only builders
(``build_tiny_qwen2_lm``, ``build_tiny_llama_lm``) write a ``...ForCausalLM`` and its tokenizer,
which load with ``AutoTokenizer`` and ``AutoModelForCausalLM``. One forward pass takes
milliseconds on a CPU, so tests can run the real model code paths without downloading a
checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import (
    Regex,
    Tokenizer,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

__all__ = [
    "build_tiny_internvl",
    "build_tiny_internvl_chat",
    "build_tiny_llama_lm",
    "build_tiny_llava_onevision",
    "build_tiny_qwen2_5_vl",
    "build_tiny_qwen2_lm",
    "build_tiny_qwen3_vl",
]

_TRAINING_TEXT = (
    "You are a helpful assistant.",
    "system user assistant",
    "Look at the image and answer the question with the letter of the correct option.",
    "Which bird is shown in the image? A. Black footed Albatross B. Laysan Albatross "
    "C. Sooty Albatross D. Groove billed Ani",
    "Answer: A",
    "Answer: B",
    "Answer: C",
    "Answer: D",
    "A B C D (A) (B) (C) (D) A. B. C. D.",
    "What is the order of the bird? What is the family of the bird?",
    "What is the genus of the bird? What is the species of the bird?",
    "kingdom phylum class order family genus species",
    "Animalia Chordata Aves Passeriformes Charadriiformes Piciformes Corvidae Laridae Picidae",
    "sparrow warbler gull tern heron hummingbird woodpecker kingfisher cardinal jay wren",
    "Plantae Fungi Mammalia Reptilia Insecta taxonomy hierarchy level",
)

_IM_START = "<|im_start|>"
_IM_END = "<|im_end|>"
_ENDOFTEXT = "<|endoftext|>"

_TEXT_SIZE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}

_IMAGE_SIDE = 64
_QWEN_PATCH = 8
_QWEN_MERGE = 2
_QWEN_PIXELS = {"shortest_edge": 32 * 32, "longest_edge": 128 * 128}
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]
_HALF = [0.5, 0.5, 0.5]

_QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_QWEN3_VL_CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}"
    "{%- else %}{%- for content in messages[0].content %}"
    "{%- if 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content_item in message.content %}"
    "{%- if 'text' in content_item %}{{- content_item.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_LLAVA_ONEVISION_CHAT_TEMPLATE = (
    # the template of the llava-hf/llava-onevision-qwen2-*-ov-hf checkpoints (transformers'
    # convert_llava_onevision_weights_to_hf.py), verbatim: a message's content must be a list of
    # typed parts; a plain-string content renders as nothing
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


_QWEN2_5_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_LLAMA3_BOS = "<|begin_of_text|>"
_LLAMA3_EOT = "<|eot_id|>"
_LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim }}{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


def _train_tokenizer(
    named_tokens: Mapping[str, str],
    extra_tokens: Sequence[str] = (),
    vocab_size: int = 512,
    texts: Sequence[str] = _TRAINING_TEXT,
) -> Qwen2Tokenizer:
    """Train a byte-level BPE on a few lines of text and wrap it in Qwen2's tokenizer class.

    The pre-tokenizer and normalizer are Qwen2's, so words split as they do for the real
    checkpoints (``"A"`` and ``" A"`` are distinct single tokens). ``named_tokens`` become
    attributes of the tokenizer (``tokenizer.image_token``) as the processors expect; they,
    ``extra_tokens`` and the ChatML tokens are special tokens with the lowest ids.
    """
    specials = list(
        dict.fromkeys([_ENDOFTEXT, _IM_START, _IM_END, *named_tokens.values(), *extra_tokens])
    )
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    merges = [tuple(pair) for pair in json.loads(backend.to_str())["model"]["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=backend.get_vocab(),
        merges=merges,
        unk_token=None,
        eos_token=_IM_END,
        pad_token=_ENDOFTEXT,
        extra_special_tokens=dict(named_tokens),
    )
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [t for t in specials if t not in tokenizer.all_special_tokens]},
        replace_extra_special_tokens=False,
    )
    return tokenizer


def _with_bos(trained: Qwen2Tokenizer, bos: str, **tokens: str) -> PreTrainedTokenizerFast:
    """``trained`` as a tokenizer that puts ``bos`` (one of its special tokens) before every
    text, as Llama's and InternLM2's do; ``tokens``: its other special tokens and settings."""
    backend = trained.backend_tokenizer
    bos_id = trained.convert_tokens_to_ids(bos)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, **tokens)


def _save(out_dir: str | PathLike[str], model: PreTrainedModel, processor: ProcessorMixin) -> Path:
    """Save ``model`` and ``processor`` (chat template set on it and its tokenizer) to
    ``out_dir``."""
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    processor.tokenizer.chat_template = processor.chat_template
    model.eval().save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _text_config(tokenizer: Qwen2Tokenizer, **overrides: object) -> dict[str, object]:
    """Return the keyword arguments of a tiny Qwen-style text decoder for ``tokenizer``."""
    return {
        **_TEXT_SIZE,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.convert_tokens_to_ids(_ENDOFTEXT),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **overrides,
    }


def _qwen_tokenizer(vocab_size: int = 512, texts: Sequence[str] = _TRAINING_TEXT) -> Qwen2Tokenizer:
    """Return a tiny tokenizer with the Qwen-VL vision tokens."""
    return _train_tokenizer(
        {
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
        vocab_size=vocab_size,
        texts=texts,
    )


def _qwen_vision_token_ids(tokenizer: Qwen2Tokenizer) -> dict[str, int]:
    """Return the ``*_token_id`` fields of a Qwen-VL config for ``tokenizer``."""
    return {
        "image_token_id": tokenizer.image_token_id,
        "video_token_id": tokenizer.video_token_id,
        "vision_start_token_id": tokenizer.vision_start_token_id,
        "vision_end_token_id": tokenizer.vision_end_token_id,
    }


def build_tiny_qwen2_5_vl(out_dir: str | PathLike[str], seed: int = 0) -> Path:
    """Build and save a tiny random Qwen2.5-VL; a 64x64 image becomes 16 image tokens."""
    torch.manual_seed(seed)
    tokenizer = _qwen_tokenizer()
    config = Qwen2_5_VLConfig(
        text_config=_text_config(
            tokenizer,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        ),
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": _QWEN_PATCH,
            "spatial_merge_size": _QWEN_MERGE,
            "temporal_patch_size": 2,
            "window_size": 2 * _QWEN_PATCH * _QWEN_MERGE,
            "fullatt_block_indexes": [1],
            "out_hidden_size": _TEXT_SIZE["hidden_size"],
            "tokens_per_second": 2,
        },
        **_qwen_vision_token_ids(tokenizer),
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    shared = {"patch_size": _QWEN_PATCH, "merge_size": _QWEN_MERGE, "temporal_patch_size": 2}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=dict(_QWEN_PIXELS), **shared),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=dict(_QWEN_PIXELS), **shared),
        chat_template=_QWEN2_5_VL_CHAT_TEMPLATE,
    )
    return _save(out_dir, model, processor)


def build_tiny_qwen3_vl(out_dir: str | PathLike[str], seed: int = 0) -> Path:
    """Build and save a tiny random Qwen3-VL with deepstack; a 64x64 image gives 16 image tokens."""
    torch.manual_seed(seed)
    tokenizer = _qwen_tokenizer()
    config = Qwen3VLConfig(
        text_config=_text_config(
            tokenizer,
            head_dim=16,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
        ),
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": _QWEN_PATCH,
            "spatial_merge_size": _QWEN_MERGE,
            "temporal_patch_size": 2,
            "out_hidden_size": _TEXT_SIZE["hidden_size"],
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        },
        **_qwen_vision_token_ids(tokenizer),
    )
    model = Qwen3VLForConditionalGeneration(config)
    shared = {
        "patch_size": _QWEN_PATCH,
        "merge_size": _QWEN_MERGE,
        "temporal_patch_size": 2,
        "image_mean": _HALF,
        "image_std": _HALF,
    }
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=dict(_QWEN_PIXELS), **shared),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(size=dict(_QWEN_PIXELS), **shared),
        chat_template=_QWEN3_VL_CHAT_TEMPLATE,
    )
    return _save(out_dir, model, processor)


def build_tiny_llava_onevision(out_dir: str | PathLike[str], seed: int = 0) -> Path:
    """Build and save a tiny random LLaVA-OneVision (SigLIP + Qwen2, anyres) in the -ov-hf layout.

    The chat template is the -ov-hf checkpoints' own, verbatim: it renders a plain-string
    message content (a system prompt passed as a string) as an empty turn, as the real ones do.
    """
    torch.manual_seed(seed)
    tokenizer = _train_tokenizer({"image_token": "<image>", "video_token": "<video>"})
    patch = 16
    pinpoints = [[_IMAGE_SIDE * h, _IMAGE_SIDE * w] for h in (1, 2) for w in (1, 2)]
    config = LlavaOnevisionConfig(
        text_config={"model_type": "qwen2", **_text_config(tokenizer)},
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": _IMAGE_SIDE,
            "patch_size": patch,
            "vision_use_head": False,
        },
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9",
    )
    model = LlavaOnevisionForConditionalGeneration(config)
    side = {"height": _IMAGE_SIDE, "width": _IMAGE_SIDE}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            size=dict(side), image_grid_pinpoints=pinpoints, image_mean=_HALF, image_std=_HALF
        ),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(
            size=dict(side), image_mean=_HALF, image_std=_HALF
        ),
        num_image_tokens=(_IMAGE_SIDE // patch) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=_LLAVA_ONEVISION_CHAT_TEMPLATE,
    )
    return _save(out_dir, model, processor)


def build_tiny_internvl(out_dir: str | PathLike[str], seed: int = 0) -> Path:
    """Build and save a tiny random InternVL (-hf format); each 64x64 tile gives 16 image tokens,
    and the processor crops up to 12 tiles and a thumbnail, as the -hf checkpoints' does."""
    torch.manual_seed(seed)
    tokenizer = _train_tokenizer(
        {
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        extra_tokens=("<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"),
    )
    patch = 8
    downsample_ratio = 0.5
    image_seq_length = int((_IMAGE_SIDE // patch) ** 2 * downsample_ratio**2)
    config = InternVLConfig(
        text_config={"model_type": "qwen2", **_text_config(tokenizer)},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": _IMAGE_SIDE,
            "patch_size": patch,
        },
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=image_seq_length,
        downsample_ratio=downsample_ratio,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = InternVLForConditionalGeneration(config)
    side = {"height": _IMAGE_SIDE, "width": _IMAGE_SIDE}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(
            size=dict(side),
            crop_to_patches=True,
            min_patches=1,
            max_patches=12,
            image_mean=_IMAGENET_MEAN,
            image_std=_IMAGENET_STD,
        ),
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(
            size=dict(side), image_mean=_IMAGENET_MEAN, image_std=_IMAGENET_STD
        ),
        image_seq_length=image_seq_length,
        chat_template=_INTERNVL_CHAT_TEMPLATE,
    )
    return _save(out_dir, model, processor)


def _remote_internvl_weights(config: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights under the names and shapes of OpenGVLab's InternVL modelling code
    (``InternVisionModel``, the ``mlp1`` projector, ``InternLM2ForCausalLM``) for ``config``."""

    def rand(*shape: int, scale: float = 0.05, base: float = 0.0) -> torch.Tensor:
        return base + scale * torch.randn(*shape, generator=gen)

    vis, llm = config["vision_config"], config["llm_config"]
    d, inter, side, patch = (
        vis[k] for k in ("hidden_size", "intermediate_size", "image_size", "patch_size")
    )
    n_pos = 1 + (side // patch) ** 2
    w: dict[str, torch.Tensor] = {
        "vision_model.embeddings.class_embedding": rand(1, 1, d),
        "vision_model.embeddings.patch_embedding.weight": rand(d, 3, patch, patch),
        "vision_model.embeddings.patch_embedding.bias": rand(d),
        "vision_model.embeddings.position_embedding": rand(1, n_pos, d),
    }
    for i in range(vis["num_hidden_layers"]):
        at = f"vision_model.encoder.layers.{i}."
        w |= {
            at + "attn.qkv.weight": rand(3 * d, d, scale=0.2),
            at + "attn.qkv.bias": rand(3 * d),
            at + "attn.proj.weight": rand(d, d, scale=0.2),
            at + "attn.proj.bias": rand(d),
            at + "mlp.fc1.weight": rand(inter, d, scale=0.2),
            at + "mlp.fc1.bias": rand(inter),
            at + "mlp.fc2.weight": rand(d, inter, scale=0.2),
            at + "mlp.fc2.bias": rand(d),
            at + "norm1.weight": rand(d, base=1.0),
            at + "norm1.bias": rand(d),
            at + "norm2.weight": rand(d, base=1.0),
            at + "norm2.bias": rand(d),
            at + "ls1": rand(d, base=0.5),
            at + "ls2": rand(d, base=0.5),
        }
    h, v = llm["hidden_size"], llm["vocab_size"]
    shuffled = 4 * d  # the pixel shuffle (0.5) puts 4 features in one
    w |= {
        "mlp1.0.weight": rand(shuffled, base=1.0),
        "mlp1.0.bias": rand(shuffled),
        "mlp1.1.weight": rand(h, shuffled, scale=0.2),
        "mlp1.1.bias": rand(h),
        "mlp1.3.weight": rand(h, h, scale=0.2),
        "mlp1.3.bias": rand(h),
        "language_model.model.tok_embeddings.weight": rand(v, h, scale=0.5),
        "language_model.model.norm.weight": rand(h, base=1.0),
        "language_model.output.weight": rand(v, h, scale=0.2),
    }
    heads, kv = llm["num_attention_heads"], llm["num_key_value_heads"]
    hd, ffn = h // heads, llm["intermediate_size"]
    if llm["architectures"] == ["Qwen2ForCausalLM"]:  # transformers' own names inside
        w["language_model.lm_head.weight"] = w.pop("language_model.output.weight")
        w["language_model.model.embed_tokens.weight"] = w.pop(
            "language_model.model.tok_embeddings.weight"
        )
        for i in range(llm["num_hidden_layers"]):
            at = f"language_model.model.layers.{i}."
            w |= {
                at + "self_attn.q_proj.weight": rand(heads * hd, h, scale=0.2),
                at + "self_attn.q_proj.bias": rand(heads * hd),
                at + "self_attn.k_proj.weight": rand(kv * hd, h, scale=0.2),
                at + "self_attn.k_proj.bias": rand(kv * hd),
                at + "self_attn.v_proj.weight": rand(kv * hd, h, scale=0.2),
                at + "self_attn.v_proj.bias": rand(kv * hd),
                at + "self_attn.o_proj.weight": rand(h, heads * hd, scale=0.2),
                at + "mlp.gate_proj.weight": rand(ffn, h, scale=0.2),
                at + "mlp.up_proj.weight": rand(ffn, h, scale=0.2),
                at + "mlp.down_proj.weight": rand(h, ffn, scale=0.2),
                at + "input_layernorm.weight": rand(h, base=1.0),
                at + "post_attention_layernorm.weight": rand(h, base=1.0),
            }
        return w
    for i in range(llm["num_hidden_layers"]):
        at = f"language_model.model.layers.{i}."
        w |= {
            at + "attention.wqkv.weight": rand((heads + 2 * kv) * hd, h, scale=0.2),
            at + "attention.wo.weight": rand(h, heads * hd, scale=0.2),
            at + "feed_forward.w1.weight": rand(ffn, h, scale=0.2),
            at + "feed_forward.w3.weight": rand(ffn, h, scale=0.2),
            at + "feed_forward.w2.weight": rand(h, ffn, scale=0.2),
            at + "attention_norm.weight": rand(h, base=1.0),
            at + "ffn_norm.weight": rand(h, base=1.0),
        }
    return w


def build_tiny_internvl_chat(
    out_dir: str | PathLike[str], seed: int = 0, llm: str = "internlm2"
) -> Path:
    """Build and save a tiny random InternVL 2.5 in OpenGVLab's own format (``model_type``
    ``internvl_chat``: its config layout and weight names, InternViT + ``mlp1`` + the language
    model); each 56x56 tile gives 4 image tokens. No modelling code is saved: hierzoo converts
    the weights.

    ``llm="internlm2"`` (as ``OpenGVLab/InternVL2_5-8B``): InternLM2 with fused ``wqkv``,
    grouped-query attention and dynamic NTK rope, and a tokenizer that puts ``<s>`` before every
    text, as InternLM2's does. ``llm="qwen2"`` (as InternVL2.5-1B / 4B / 38B / 78B): Qwen2 under
    transformers' own names, a tokenizer that adds nothing, and the config keys such checkpoints
    carry that transformers' classes must not take (``attn_implementation`` ...)."""
    if llm not in ("internlm2", "qwen2"):
        raise ValueError(f"Expected `llm` to be 'internlm2' or 'qwen2', but got {llm!r}.")
    gen = torch.Generator().manual_seed(seed)
    trained = _train_tokenizer(
        {},
        extra_tokens=("<s>", "</s>", "<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>"),
    )
    bos_id = trained.convert_tokens_to_ids("<s>")
    if llm == "internlm2":
        tokenizer = _with_bos(trained, "<s>", eos_token="</s>", pad_token="</s>")
        language = {
            "architectures": ["InternLM2ForCausalLM"],
            "model_type": "internlm2",
            "bias": False,
            "rope_scaling": {"factor": 2.0, "type": "dynamic"},
        }
    else:
        tokenizer = trained
        language = {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "attn_implementation": "flash_attention_2",
            "use_bfloat16": True,
            "torch_dtype": "bfloat16",
            "rope_scaling": None,
            "use_sliding_window": False,
        }
    config = {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "template": "internvl2_5",
        "downsample_ratio": 0.5,
        "dynamic_image_size": True,
        "force_image_size": 56,
        "max_dynamic_patch": 12,
        "min_dynamic_patch": 1,
        "ps_version": "v2",
        "select_layer": -1,
        "use_thumbnail": True,
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            "hidden_act": "gelu",
            "hidden_size": 32,
            "image_size": 56,
            "intermediate_size": 64,
            "layer_norm_eps": 1e-06,
            "norm_type": "layer_norm",
            "num_attention_heads": 2,
            "num_channels": 3,
            "num_hidden_layers": 2,
            "patch_size": 14,
            "qk_normalization": False,
            "qkv_bias": True,
        },
        "llm_config": {
            **language,
            "bos_token_id": bos_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "hidden_act": "silu",
            "hidden_size": 64,
            "intermediate_size": 96,
            "max_position_embeddings": 512,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "num_hidden_layers": 2,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000,
            "tie_word_embeddings": False,
            "vocab_size": len(tokenizer),
        },
    }
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    save_file(_remote_internvl_weights(config, gen), str(path / "model.safetensors"))
    tokenizer.save_pretrained(path)
    return path


def _save_lm(out_dir: str | PathLike[str], model: PreTrainedModel, tokenizer: object) -> Path:
    """Save a causal LM and its tokenizer (its chat template included) to ``out_dir``."""
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)  # type: ignore[attr-defined]
    return path


def build_tiny_qwen2_lm(out_dir: str | PathLike[str], seed: int = 0) -> Path:
    """Build and save a tiny random text-only ``Qwen2ForCausalLM`` with a Qwen2.5-Instruct-style
    chat template (plain-string message content; its own default system message when none is
    given) and a tokenizer that adds no BOS, as Qwen's."""
    torch.manual_seed(seed)
    tokenizer = _train_tokenizer({})
    tokenizer.chat_template = _QWEN2_5_CHAT_TEMPLATE
    model = Qwen2ForCausalLM(Qwen2Config(**_text_config(tokenizer)))
    return _save_lm(out_dir, model, tokenizer)


def build_tiny_llama_lm(out_dir: str | PathLike[str], seed: int = 0) -> Path:
    """Build and save a tiny random text-only ``LlamaForCausalLM`` with a Llama-3-style chat
    template (``<|start_header_id|>`` turns, contents trimmed) and a tokenizer that puts
    ``<|begin_of_text|>`` before every text, as Llama 3's does."""
    torch.manual_seed(seed)
    trained = _train_tokenizer(
        {}, extra_tokens=(_LLAMA3_BOS, "<|start_header_id|>", "<|end_header_id|>", _LLAMA3_EOT)
    )
    tokenizer = _with_bos(
        trained,
        _LLAMA3_BOS,
        eos_token=_LLAMA3_EOT,
        pad_token=_ENDOFTEXT,
        chat_template=_LLAMA3_CHAT_TEMPLATE,
    )
    bos_id = tokenizer.bos_token_id
    config = LlamaConfig(
        **{
            **_TEXT_SIZE,
            "vocab_size": len(tokenizer),
            "bos_token_id": bos_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    )
    return _save_lm(out_dir, LlamaForCausalLM(config), tokenizer)
