"""The tiny random vision LLMs load with the Auto classes and run one forward pass offline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from hierzoo.models.tiny import (  # noqa: E402
    build_tiny_internvl,
    build_tiny_llava_onevision,
    build_tiny_qwen2_5_vl,
    build_tiny_qwen3_vl,
)

SYSTEM = "You are a helpful assistant."
QUESTION = "Which bird is shown? A. gull B. tern C. wren D. jay"

BUILDERS: dict[str, Callable[..., Path]] = {
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
    "qwen3_vl": build_tiny_qwen3_vl,
    "llava_onevision": build_tiny_llava_onevision,
    "internvl": build_tiny_internvl,
}

EXPECTED_PROMPT = {
    "qwen2_5_vl": (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|image_pad|><|vision_end|>{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    ),
    "qwen3_vl": (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|image_pad|><|vision_end|>{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    ),
    "llava_onevision": (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
        f"<image>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    ),
    "internvl": (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
        f"<IMG_CONTEXT>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    ),
}

EXPECTED_IMAGE_TOKENS = {
    "qwen2_5_vl": {(64, 64): 16, (80, 48): 15},
    "qwen3_vl": {(64, 64): 16, (80, 48): 15},
    "llava_onevision": {(64, 64): 36, (80, 48): 44},
    "internvl": {(64, 64): 16, (80, 48): 112},  # max_patches 12: 3x2 tiles and a thumbnail
}

TEXT_KEYS = {"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"}


def _messages(system_as_list: bool) -> list[dict]:
    system = [{"type": "text", "text": SYSTEM}] if system_as_list else SYSTEM
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
    ]


def _image(width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(width * 1000 + height).integers(0, 256, (height, width, 3))
    return Image.fromarray(pixels.astype(np.uint8))


def _count_image_features(model, encoding) -> int:
    image_inputs = {k: v for k, v in encoding.items() if k not in TEXT_KEYS}
    features = model.get_image_features(**image_inputs, return_dict=True).pooler_output
    features = features if isinstance(features, (list, tuple)) else [features]
    return sum(f.reshape(-1, f.shape[-1]).shape[0] for f in features)


@pytest.fixture(scope="module", params=list(BUILDERS))
def family(request, tmp_path_factory) -> tuple[str, Path]:
    name = request.param
    return name, BUILDERS[name](tmp_path_factory.mktemp(name))


@pytest.fixture(scope="module")
def loaded(family):
    name, path = family
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    return name, processor, model


def test_saved_directory_loads_with_auto_classes(loaded):
    name, processor, model = loaded
    assert model.dtype == torch.float32
    assert processor.video_processor is not None
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    assert model.num_parameters() < 1_000_000


def _expected(name: str, system_as_list: bool) -> str:
    """The official templates' rendering; the -ov-hf LLaVA-OneVision template renders a
    plain-string content as nothing (an empty system turn)."""
    if name == "llava_onevision" and not system_as_list:
        return EXPECTED_PROMPT[name].replace(SYSTEM, "", 1)
    return EXPECTED_PROMPT[name]


@pytest.mark.parametrize("system_as_list", [False, True])
def test_chat_template_follows_official_layout(loaded, system_as_list):
    name, processor, _ = loaded
    prompt = processor.apply_chat_template(
        _messages(system_as_list), tokenize=False, add_generation_prompt=True
    )
    assert prompt == _expected(name, system_as_list)


def test_llava_template_drops_a_plain_string_system_message(loaded):
    """As the paper_reference transcription of the -ov-hf template says it does."""
    from paper_reference import llava_ov_hf_render

    name, processor, _ = loaded
    for system_as_list in (False, True):
        messages = _messages(system_as_list)
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if name == "llava_onevision":
            assert prompt == llava_ov_hf_render(messages, add_generation_prompt=True)
        assert (SYSTEM in prompt) == (system_as_list or name != "llava_onevision")


def test_chat_template_without_generation_prompt(loaded):
    name, processor, _ = loaded
    prompt = processor.apply_chat_template(_messages(False), tokenize=False)
    assert prompt == _expected(name, False).removesuffix("<|im_start|>assistant\n")


def test_default_system_prompt_only_for_qwen2_5_vl(loaded):
    name, processor, _ = loaded
    user_only = _messages(False)[1:]
    prompt = processor.apply_chat_template(user_only, tokenize=False, add_generation_prompt=True)
    system_turn = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
    expected = EXPECTED_PROMPT[name].removeprefix(system_turn)
    if name == "qwen2_5_vl":
        expected = system_turn + expected
    assert prompt == expected


@pytest.mark.parametrize("size", [(64, 64), (80, 48)])
def test_forward_on_image(loaded, size):
    name, processor, model = loaded
    prompt = processor.apply_chat_template(
        _messages(True), tokenize=False, add_generation_prompt=True
    )
    encoding = processor(text=[prompt], images=[_image(*size)], return_tensors="pt")
    if name.startswith("qwen"):
        assert "mm_token_type_ids" in encoding
    n_image_tokens = int((encoding["input_ids"] == model.config.image_token_id).sum())
    with torch.no_grad():
        assert n_image_tokens == _count_image_features(model, encoding)
        logits = model(**encoding).logits
    assert n_image_tokens == EXPECTED_IMAGE_TOKENS[name][size]
    assert logits.shape == (1, encoding["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(logits).all()


def test_answer_letters_are_single_tokens(loaded):
    _, processor, _ = loaded
    tokenizer = processor.tokenizer
    for letter in "ABCD":
        assert len(tokenizer(letter, add_special_tokens=False)["input_ids"]) == 1
        assert len(tokenizer(" " + letter, add_special_tokens=False)["input_ids"]) == 1
        after_header = tokenizer("assistant\n" + letter, add_special_tokens=False)["input_ids"]
        assert after_header[-1] == tokenizer.convert_tokens_to_ids(letter)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_builders_are_deterministic(tmp_path, name):
    build = BUILDERS[name]
    first = build(tmp_path / "a", seed=0)
    second = build(tmp_path / "b", seed=0)
    other = build(tmp_path / "c", seed=1)
    weights = [(p / "model.safetensors").read_bytes() for p in (first, second, other)]
    assert weights[0] == weights[1]
    assert weights[0] != weights[2]
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
