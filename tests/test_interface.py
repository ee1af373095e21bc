"""The model interface carries what orchestration needs: code outside hierzoo/models/ never
asks which family it holds, never calls a classifier's private methods and never changes a
classifier's settings after construction."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("open_clip")

import hierzoo  # noqa: E402
from hierzoo.models import HierClassifier, Protocol, tiny  # noqa: E402
from hierzoo.models._factory import family_class  # noqa: E402
from hierzoo.models._registry import FAMILIES  # noqa: E402
from hierzoo.models.base import OptionError  # noqa: E402
from hierzoo.models.tiny_clip import build_tiny_openclip  # noqa: E402

ROOT = Path(__file__).resolve().parents[1] / "hierzoo"
SETTINGS = {
    "num_workers",
    "device_preprocess",
    "decode_on_device",
    "normalize_on_device",
    "worker_decode",
    "batched_vision_attention",
    "token_budget",
    "batch_size",
    "prefix_cache",
    "process_on_device",
    "templates",
}


def _outside_models() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if "models" not in p.relative_to(ROOT).parts]


def test_code_outside_the_models_never_names_a_family_or_reaches_inside():
    families = set(FAMILIES)
    found = []
    for path in _outside_models():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT.parent)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, (ast.Name, ast.Attribute, ast.alias)):
                ident = getattr(node, "id", None) or getattr(node, "attr", None) or node.name
                if ident and "CLIP_FAMILIES" in ident:
                    found.append(f"{where}: CLIP_FAMILIES")
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in ("clf", "classifier")
            ):
                found.append(f"{where}: {node.value.id}.{node.attr}")
            if isinstance(node, ast.Compare):
                text = ast.unparse(node)
                if ".family" in text or any(repr(f) in text for f in families):
                    found.append(f"{where}: {text}")
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Attribute) and t.attr in SETTINGS:
                        found.append(f"{where}: sets {ast.unparse(t)}")
    assert found == []


def test_every_family_declares_what_callers_need():
    for family in FAMILIES:
        cls = family_class(family)
        assert issubclass(cls, HierClassifier)
        assert cls.label != HierClassifier.label and cls.options, family
        for method in ("from_spec", "from_model"):
            assert getattr(cls, method).__func__ is not getattr(HierClassifier, method).__func__
    assert family_class("qwen2.5-vl").generative and not family_class("openclip").generative


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("interface")
    clip = hierzoo.load(build_tiny_openclip(root / "clip"), device="cpu", cache_dir=False)
    vlm = hierzoo.load(tiny.build_tiny_qwen2_5_vl(root / "qwen"), device="cpu", num_workers=0)
    return clip, vlm


def test_default_protocols_are_the_papers(pair):
    clip, vlm = pair
    assert clip.default_protocol("cub200") == Protocol(taxonomy="cub200")
    # a vision-LLM setting given to a CLIP model is passed on for check_protocol to refuse
    with pytest.raises(ValueError, match="--prompt-variant"):
        clip.check_protocol(clip.default_protocol("cub200", prompt_variant=2))
    vlm.check_protocol(vlm.default_protocol("cub200", prompt_variant=2))
    assert vlm.default_protocol("cub200", seed=3) == Protocol(
        taxonomy="cub200", shuffle_options=True, seed=3
    )
    assert not vlm.default_protocol("cub200", keep_option_order=True).shuffle_options
    assert not vlm.default_protocol("cub200", mode="text").shuffle_options  # the paper's text runs
    assert vlm.default_protocol("cub200", prompt_variant=2).prompt_variant == 2


def test_what_a_benchmark_times(pair, tmp_path):
    from PIL import Image

    clip, vlm = pair
    assert clip.timed_module() is clip.model.visual
    assert vlm.timed_module() is vlm.model and vlm.benchmark_forward([], 1) is None
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((40, 50, 3), 60 * i, dtype=np.uint8)).save(paths[-1])
    forward = clip.benchmark_forward(paths, 2)
    pixels = torch.stack([clip.transform(Image.open(p).convert("RGB")) for p in paths[:2]])
    torch.testing.assert_close(forward(), clip.encode_pixels(pixels))
    emb, _ = clip.encode_images(paths[:2])
    torch.testing.assert_close(torch.nn.functional.normalize(forward(), dim=-1), emb)


def test_settings_are_passed_at_construction(pair):
    clip, vlm = pair
    assert vlm.num_workers == 0
    with pytest.raises(OptionError, match="token_budget: options of vision LLMs") as caught:
        clip.from_model(clip.model, clip.tokenizer, clip.transform, token_budget=5)
    assert caught.value.options == ["token_budget"] and caught.value.owners == [
        "vision LLM",
        "text-only LLM",
    ]
    with pytest.raises(OptionError, match="colour: not options of open_clip models"):
        clip.from_model(clip.model, clip.tokenizer, clip.transform, colour="red")
    with pytest.raises(OptionError, match="device_map: options of loading a checkpoint"):
        type(vlm).from_model(vlm.model, vlm.processor, device_map="auto")


def test_an_internvl_directory_in_opengvlabs_format_is_internvl(tmp_path):
    """The paper's InternVL2.5-8B exists only in OpenGVLab's own format (model_type
    internvl_chat): such a directory is the internvl family, converted on load
    (tests/test_internvl_chat.py); another unknown config is refused."""
    from hierzoo.models import UnknownModelError, resolve

    config = {"model_type": "internvl_chat", "architectures": ["InternVLChatModel"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = resolve(str(tmp_path))
    assert (spec.family, spec.checkpoint_format) == ("internvl", "internvl_chat")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnknownModelError, match="not a model hierzoo knows"):
        resolve(str(tmp_path))
