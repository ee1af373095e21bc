"""Window-batched vision attention (hierzoo.models._vision_attention) against transformers' own
per-chunk loop and against a per-chunk loop written here the obvious way, on tiny models."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402
from transformers import (  # noqa: E402
    AutoProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVisionConfig,
)
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl  # noqa: E402
from transformers.models.qwen2_vl.modeling_qwen2_vl import (  # noqa: E402
    Qwen2VisionTransformerPretrainedModel,
)

import hierzoo  # noqa: E402
from hierzoo.models import Protocol, tiny  # noqa: E402
from hierzoo.models import _vision_attention as va  # noqa: E402
from hierzoo.tasks import read_questions  # noqa: E402

TOL = 1e-5
# processor sizes (w, h) -> patch grids 8x8, 6x10, 10x12, 12x6, 14x16: windows of 16, 8 and 4
# patches in Qwen2.5-VL's windowed blocks, images of 64 to 224 patches in the full ones
SIZES = [(64, 64), (80, 48), (100, 75), (48, 90), (128, 112)]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_va")
    return {
        "qwen2.5-vl": tiny.build_tiny_qwen2_5_vl(root / "qwen2.5-vl"),
        "qwen3-vl": tiny.build_tiny_qwen3_vl(root / "qwen3-vl"),
    }


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)) for w, h in SIZES]


@pytest.fixture(scope="module")
def qwen25(tiny_dirs):
    return hierzoo.load(tiny_dirs["qwen2.5-vl"], device="cpu")


def _tower_outputs(tower, pixels, grid):
    with torch.no_grad():
        out = tower(pixels, grid_thw=grid)
    return out.last_hidden_state, out.pooler_output


def _attention_modules(tower):
    classes = va._target_classes()
    return [m for m in tower.modules() if type(m) in classes]


def _compare_tower(tower, pixels, grid):
    va.unpatch_vision_attention(tower)
    want = _tower_outputs(tower, pixels, grid)
    assert va.patch_vision_attention(tower) == len(_attention_modules(tower)) > 0
    got = _tower_outputs(tower, pixels, grid)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=TOL, rtol=0)


# ---------------------------------------------------------------------------- the vision tower
@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_patched_tower_equals_the_original_on_mixed_image_sizes(tiny_dirs, images, family):
    clf = hierzoo.load(tiny_dirs[family], device="cpu", batched_vision_attention=False)
    tower = clf.model.model.visual
    enc = clf.processor.image_processor(images=images, return_tensors="pt")
    grid = enc["image_grid_thw"]
    assert len({tuple(g) for g in grid.tolist()}) == len(SIZES)
    if family == "qwen2.5-vl":
        _, cu = modeling_qwen2_5_vl.get_vision_window_index(
            grid, spatial_merge_size=2, window_size=tower.window_size, patch_size=8
        )
        assert len(set(torch.diff(cu).tolist())) >= 3  # full, edge and corner windows
    _compare_tower(tower, enc["pixel_values"], grid)


def test_qwen2_vl_tower_is_covered_too(images):
    torch.manual_seed(0)
    config = Qwen2VLVisionConfig(
        depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=8
    )
    tower = Qwen2VisionTransformerPretrainedModel(config).eval()
    processor = Qwen2VLImageProcessor(
        patch_size=8, merge_size=2, size={"shortest_edge": 32 * 32, "longest_edge": 128 * 128}
    )
    enc = processor(images=images, return_tensors="pt")
    _compare_tower(tower, enc["pixel_values"], enc["image_grid_thw"])


def test_gather_indices_are_built_once_per_geometry(qwen25, images, monkeypatch):
    tower = qwen25.model.model.visual
    enc = qwen25.processor.image_processor(images=images[::-1], return_tensors="pt")
    built = []
    build = va._build_plan
    monkeypatch.setattr(va, "_build_plan", lambda *a: built.append(a[0]) or build(*a))
    _tower_outputs(tower, enc["pixel_values"], enc["image_grid_thw"])
    assert len(built) == 2  # the windows' cu_seqlens and the images' cu_seqlens
    _tower_outputs(tower, enc["pixel_values"], enc["image_grid_thw"])
    assert len(built) == 2  # same geometry: the plans are kept


# ---------------------------------------------------------------------------- one attention module
def _naive(module, hidden, cu, rotary):
    """The attention of each chunk on its own, written the obvious way."""
    n, dim = hidden.shape
    heads = module.num_heads
    q, k, v = module.qkv(hidden).reshape(n, 3, heads, -1).unbind(1)
    q, k = modeling_qwen2_5_vl.apply_rotary_pos_emb_vision(q, k, *rotary)
    out = torch.zeros(n, heads, dim // heads)
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        for h in range(heads):
            scores = q[start:end, h] @ k[start:end, h].T * module.scaling
            out[start:end, h] = scores.softmax(-1) @ v[start:end, h]
    return module.proj(out.reshape(n, dim))


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_one_module_matches_a_per_chunk_loop_with_one_call_per_length(impl, monkeypatch):
    torch.manual_seed(0)
    config = modeling_qwen2_5_vl.Qwen2_5_VLVisionConfig(hidden_size=32, num_heads=2)
    config._attn_implementation = impl
    module = modeling_qwen2_5_vl.Qwen2_5_VLVisionAttention(config).eval()
    wrapper = torch.nn.ModuleList([module])
    lengths = [5, 3, 5, 7, 3, 5, 1, 7]
    cu = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    hidden = torch.randn(sum(lengths), 32)
    angles = torch.rand(sum(lengths), 16)
    rotary = (angles.cos(), angles.sin())
    with torch.no_grad():
        want = _naive(module, hidden, cu, rotary)
        original = module(hidden, cu, position_embeddings=rotary)
        assert va.patch_vision_attention(wrapper) == 1 and va.is_patched(module)
        calls = []
        sdpa = torch.nn.functional.scaled_dot_product_attention
        monkeypatch.setattr(
            torch.nn.functional,
            "scaled_dot_product_attention",
            lambda *a, **k: calls.append(a[0].shape) or sdpa(*a, **k),
        )
        got = module(hidden, cu, position_embeddings=rotary)
    torch.testing.assert_close(original, want, atol=TOL, rtol=0)
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    if impl == "sdpa":
        assert sorted(calls, key=lambda s: s[2]) == [
            (1, 2, 1, 16),
            (2, 2, 3, 16),
            (3, 2, 5, 16),
            (2, 2, 7, 16),
        ]
    assert va.unpatch_vision_attention(wrapper) == 1
    assert "forward" not in module.__dict__ and not va.is_patched(module)


def test_a_wrong_grouping_is_caught_at_patch_time(monkeypatch):
    torch.manual_seed(0)
    config = modeling_qwen2_5_vl.Qwen2_5_VLVisionConfig(hidden_size=32, num_heads=2)
    config._attn_implementation = "sdpa"
    module = modeling_qwen2_5_vl.Qwen2_5_VLVisionAttention(config).eval()
    build = va._build_plan

    def scrambled(lengths, device):
        plan = build(lengths, device)
        return va._Plan(plan.groups, None if plan.inverse is None else plan.inverse.flip(0))

    monkeypatch.setattr(va, "_build_plan", scrambled)
    monkeypatch.setattr(va, "_checked", {})
    with pytest.warns(RuntimeWarning, match="differs from the original"):
        assert va.patch_vision_attention(torch.nn.ModuleList([module])) == 0
    assert "forward" not in module.__dict__ and not va.is_patched(module)


# ---------------------------------------------------------------------------- when it applies
def test_a_changed_transformers_forward_keeps_the_original_with_a_warning(qwen25, monkeypatch):
    clf = copy.deepcopy(qwen25)
    assert clf.batch_vision_attention(False) is False
    monkeypatch.setattr(va, "_MARKERS", (*va._MARKERS, "a line transformers never had"))
    monkeypatch.setattr(va, "_checked", {})
    with pytest.warns(RuntimeWarning, match="no longer contains.*a line transformers never had"):
        assert clf.batch_vision_attention(True) is False
    assert not any(va.is_patched(m) for m in clf.model.modules())
    monkeypatch.setattr(va, "_PARAMETERS", (["self", "hidden_states", "rotary_pos_emb"],))
    monkeypatch.setattr(va, "_checked", {})
    with pytest.warns(RuntimeWarning, match="its forward takes"):
        assert clf.batch_vision_attention(True) is False


def test_flash_attention_is_left_alone():
    config = modeling_qwen2_5_vl.Qwen2_5_VLVisionConfig(hidden_size=32, num_heads=2)
    config._attn_implementation = "flash_attention_2"
    module = modeling_qwen2_5_vl.Qwen2_5_VLVisionAttention(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert va.patch_vision_attention(torch.nn.ModuleList([module])) == 0
    assert not va.is_patched(module)


def test_only_the_vision_tower_is_patched_and_the_opt_out_leaves_it_alone(tiny_dirs):
    for family, path in tiny_dirs.items():
        on = hierzoo.load(path, device="cpu")
        tower = on.model.model.visual
        assert on.batched_vision_attention
        assert all(va.is_patched(m) for m in _attention_modules(tower))
        inside = {id(m) for m in tower.modules()}
        outside = [m for m in on.model.modules() if id(m) not in inside]
        assert outside and not any(va.is_patched(m) for m in outside), family
        assert not any("forward" in m.__dict__ for m in outside), family
        off = hierzoo.load(path, device="cpu", batched_vision_attention=False)
        assert not off.batched_vision_attention
        assert not any("forward" in m.__dict__ for m in off.model.modules())


def test_wrap_patches_in_place_and_false_puts_the_forward_back(tiny_dirs):
    from transformers import Qwen2_5_VLForConditionalGeneration

    path = tiny_dirs["qwen2.5-vl"]
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    modules = _attention_modules(model.model.visual)
    assert hierzoo.wrap(model, processor).batched_vision_attention
    assert all(va.is_patched(m) for m in modules)
    assert hierzoo.wrap(model, processor).batched_vision_attention  # patched once, not twice
    assert not hierzoo.wrap(
        model, processor, batched_vision_attention=False
    ).batched_vision_attention
    assert not any("forward" in m.__dict__ for m in modules)


# ---------------------------------------------------------------------------- end to end
def test_answers_are_the_same_with_and_without(tiny_dirs, qwen25, tmp_path):
    off = hierzoo.load(tiny_dirs["qwen2.5-vl"], device="cpu", batched_vision_attention=False)
    assert qwen25.batched_vision_attention and not off.batched_vision_attention
    rng = np.random.default_rng(1)
    questions = copy.deepcopy(read_questions("cub200-random")[: len(SIZES)])
    for i, (q, (w, h)) in enumerate(zip(questions, SIZES)):
        q.path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(q.path)
    protocol = Protocol(taxonomy="cub200")
    got = qwen25.answer(questions, protocol=protocol)
    want = off.answer(questions, protocol=protocol)
    assert np.array_equal(got.choice, want.choice)
    np.testing.assert_allclose(got.probs, want.probs, atol=TOL, rtol=0, equal_nan=True)
    np.testing.assert_allclose(
        got.extra["letter_logits"], want.extra["letter_logits"], atol=TOL, rtol=0, equal_nan=True
    )
