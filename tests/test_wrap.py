"""hierzoo.wrap on models held in memory: the same results as hierzoo.load(dir), no weight
copies, and a peft LoRA adapter seen through the user's own PeftModel."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("open_clip")

from PIL import Image  # noqa: E402

import hierzoo  # noqa: E402
from hierzoo.models import Protocol, tiny  # noqa: E402
from hierzoo.models.tiny_clip import (  # noqa: E402
    build_tiny_hf_clip,
    build_tiny_openclip,
    build_tiny_siglip,
)
from hierzoo.tasks import Question, read_questions  # noqa: E402

CLIPS = {
    "openclip": build_tiny_openclip,
    "hf-clip": build_tiny_hf_clip,
    "siglip": build_tiny_siglip,
}
VLMS = {
    "qwen2.5-vl": tiny.build_tiny_qwen2_5_vl,
    "qwen3-vl": tiny.build_tiny_qwen3_vl,
    "llava-onevision": tiny.build_tiny_llava_onevision,
    "internvl": tiny.build_tiny_internvl,
}
LEAVES = ["Black-footed Albatross", "Laysan Albatross", "Common Raven", "Fish Crow"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("wrap-models")
    out = {name: build(root / name, seed=i) for i, (name, build) in enumerate(CLIPS.items())}
    out.update({name: build(root / name) for name, build in VLMS.items()})
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("wrap-images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(64, 64), (80, 48)]):
        p = root / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def questions(images) -> list[Question]:
    qs = copy.deepcopy(read_questions("cub200-similar")[: len(images)])
    for q, p in zip(qs, images):
        q.path = p
    return qs


@pytest.fixture(scope="module")
def small_taxonomy():
    return hierzoo.load_taxonomy("cub200").restrict(leaves=LEAVES)


def _shares_storage(user_model, clf_model) -> None:
    assert clf_model is user_model
    ours = dict(clf_model.named_parameters())
    for name, p in user_model.named_parameters():
        assert ours[name].data_ptr() == p.data_ptr(), name


def _same_answers(a, b) -> None:
    assert a.options == b.options
    np.testing.assert_array_equal(a.choice, b.choice)
    np.testing.assert_array_equal(a.probs, b.probs)


# ---------------------------------------------------------------------------- CLIP families
def _user_clip(name, path):
    """What a user holds: the model loaded by its own library, and its tokenizer / processor."""
    if name == "openclip":
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}")
        return model, open_clip.get_tokenizer(f"local-dir:{path}"), {"preprocess": preprocess}
    from transformers import AutoModel, AutoProcessor

    return AutoModel.from_pretrained(path), AutoProcessor.from_pretrained(path), {}


@pytest.mark.parametrize("name", list(CLIPS))
def test_wrapped_clip_equals_loaded(
    name, dirs, images, questions, small_taxonomy, tmp_path, monkeypatch
):
    monkeypatch.setenv("HIERZOO_CACHE", str(tmp_path / "default-cache"))
    loaded = hierzoo.load(dirs[name], device="cpu", cache_dir=tmp_path / "cache")
    model, tok, kw = _user_clip(name, dirs[name])
    clf = hierzoo.wrap(model, tok, **kw)
    assert type(clf) is type(loaded) and clf.score_kind == loaded.score_kind
    _shares_storage(model, clf.model)
    assert clf.wrapped is model and not model.training
    names = list(small_taxonomy.names)
    assert torch.equal(clf.text_embeddings(names), loaded.text_embeddings(names))
    img, errors = clf.encode_images(images)
    assert errors == [None, None] and torch.equal(img, loaded.encode_images(images)[0])
    _same_answers(clf.answer(questions), loaded.answer(questions))
    a = clf.predict_path(images, small_taxonomy, strategy="joint")
    b = loaded.predict_path(images, small_taxonomy, strategy="joint")
    np.testing.assert_array_equal(a.node_ids, b.node_ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    # no global state: a second wrap has its own memory cache, and nothing reached the disk
    again = hierzoo.wrap(model, tok, **kw)
    assert again.text_cache is not clf.text_cache and again.text_cache.root is None
    assert not (tmp_path / "default-cache").exists()


def test_open_clip_defaults_and_wrappers(dirs, images, questions):
    model, tok, kw = _user_clip("openclip", dirs["openclip"])
    given = hierzoo.wrap(model, tok, **kw)
    derived = hierzoo.wrap(model)  # tokenizer and preprocessing derived from the model
    _same_answers(derived.answer(questions), given.answer(questions))
    parallel = hierzoo.wrap(torch.nn.DataParallel(model), tok, **kw, name="mine", num_workers=0)
    assert parallel.model is model and parallel.name == "mine" and parallel.num_workers == 0
    _same_answers(parallel.answer(questions), given.answer(questions))


def test_wrap_errors_name_the_fix(dirs):
    from transformers import AutoModel

    with pytest.raises(TypeError, match="does not know a builtins.object"):
        hierzoo.wrap(object())
    with pytest.raises(TypeError, match="model_type 'bert'"):
        from transformers import BertConfig, BertModel

        hierzoo.wrap(
            BertModel(
                BertConfig(
                    hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8
                )
            )
        )
    model = AutoModel.from_pretrained(dirs["hf-clip"])
    with pytest.raises(ValueError, match="needs its processor"):
        hierzoo.wrap(model, object())
    with pytest.raises(ValueError, match="`preprocess` is for open_clip"):
        hierzoo.wrap(model, preprocess=lambda x: x)
    with pytest.raises(TypeError, match="already a HierClassifier"):
        hierzoo.wrap(hierzoo.wrap(model))


# ---------------------------------------------------------------------------- vision LLMs
def _user_vlm(path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)


@pytest.mark.parametrize("family", list(VLMS))
def test_wrapped_vision_llm_equals_loaded(family, dirs, questions, small_taxonomy, images):
    loaded = hierzoo.load(dirs[family], device="cpu")
    model, processor = _user_vlm(dirs[family])
    clf = hierzoo.wrap(model, processor)
    assert type(clf) is type(loaded) and clf.family == family
    _shares_storage(model, clf.model)
    protocol = Protocol(taxonomy="cub200", shuffle_options=True)
    _same_answers(
        clf.answer(questions, protocol=protocol), loaded.answer(questions, protocol=protocol)
    )
    text = Protocol(taxonomy="cub200", mode="text")
    _same_answers(clf.answer(questions, protocol=text), loaded.answer(questions, protocol=text))
    if family == "qwen2.5-vl":
        a = clf.score_nodes(images[:1], small_taxonomy).logits
        assert torch.equal(a, loaded.score_nodes(images[:1], small_taxonomy).logits)
    # the processor defaults to where from_pretrained loaded the model from
    assert type(hierzoo.wrap(model)) is type(loaded)
    with pytest.raises(ValueError, match="needs its processor"):
        hierzoo.wrap(model, processor.tokenizer)


def test_vision_llm_without_its_head_is_refused(dirs):
    from transformers import AutoModel

    with pytest.raises(TypeError, match="expected a Qwen2_5_VLForConditionalGeneration"):
        hierzoo.wrap(AutoModel.from_pretrained(dirs["qwen2.5-vl"]))


def test_lora_adapter_changes_answers_and_matches_the_merged_checkpoint(dirs, questions, tmp_path):
    from peft import LoraConfig, get_peft_model

    protocol = Protocol(taxonomy="cub200", shuffle_options=True)
    base = hierzoo.load(dirs["qwen2.5-vl"], device="cpu").answer(questions, protocol=protocol)
    model, processor = _user_vlm(dirs["qwen2.5-vl"])
    torch.manual_seed(0)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)",
        init_lora_weights=False,  # random, non-zero B: the adapter changes the outputs
    )
    peft_model = get_peft_model(model, config)
    clf = hierzoo.wrap(peft_model, processor)
    assert clf.wrapped is peft_model and clf.model is peft_model.get_base_model()
    assert "peft:LORA:default" in clf.name
    _shares_storage(peft_model.get_base_model(), clf.model)
    adapted = clf.answer(questions, protocol=protocol)
    assert np.abs(adapted.probs - base.probs).max() > 1e-2
    with peft_model.disable_adapter():  # the user's object stays in charge
        off = clf.answer(questions, protocol=protocol)
    np.testing.assert_allclose(off.probs, base.probs, atol=1e-6)
    merged_dir = tmp_path / "merged"
    peft_model.merge_and_unload().save_pretrained(merged_dir)
    processor.save_pretrained(merged_dir)
    merged = hierzoo.load(merged_dir, device="cpu").answer(questions, protocol=protocol)
    np.testing.assert_allclose(merged.probs, adapted.probs, atol=1e-5)
    np.testing.assert_array_equal(merged.choice, adapted.choice)
