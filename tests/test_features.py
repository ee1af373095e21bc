"""Features at named sites, against what the libraries themselves give at the same site, and
the resumable feature store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("open_clip")

from PIL import Image  # noqa: E402

import hierzoo  # noqa: E402
from hierzoo import prompts  # noqa: E402
from hierzoo.features import (  # noqa: E402
    FeatureStoreError,
    extract_features,
    feature_errors,
    load_features,
    shard_path,
    site_dirname,
)
from hierzoo.models import HierClassifier, tiny  # noqa: E402
from hierzoo.models._sites import SiteError, parse_site, parse_sites  # noqa: E402
from hierzoo.models.tiny_clip import build_tiny_hf_clip, build_tiny_openclip, build_tiny_siglip  # noqa: E402

VLMS = {
    "qwen2.5-vl": tiny.build_tiny_qwen2_5_vl,
    "qwen3-vl": tiny.build_tiny_qwen3_vl,
    "llava-onevision": tiny.build_tiny_llava_onevision,
    "internvl": tiny.build_tiny_internvl,
}
CLIPS = {
    "openclip": build_tiny_openclip,
    "hf-clip": build_tiny_hf_clip,
    "siglip": build_tiny_siglip,
}
SIZES = [(64, 64), (100, 75), (48, 90)]
TOL = 1e-5


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("feature-models")
    return {name: build(root / name) for name, build in {**CLIPS, **VLMS}.items()}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("feature-images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(SIZES):
        p = root / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def cub():
    return hierzoo.load_taxonomy("cub200")


def _load(model_dirs, name, **options):
    return hierzoo.load(
        str(model_dirs[name]),
        device="cpu",
        **({"cache_dir": False} if name in CLIPS else {}),
        **options,
    )


def _rgb(path):
    return Image.open(path).convert("RGB")


# ----------------------------------------------------------------------------- sites
def test_site_grammar():
    assert parse_site(" LLM:-1 ").name == "llm:-1"
    assert parse_site("llm:2:answer:3") == parse_site("llm:2:answer:3")
    s = parse_site("llm:-2:answer:1")
    assert (s.kind, s.layer, s.level) == ("llm-answer", -2, 1)
    assert parse_site("llm:-1:answer").level is None
    assert [s.name for s in parse_sites(["vision,projector", "llm:0", "vision"])] == [
        "vision",
        "projector",
        "llm:0",
    ]
    assert parse_site("layer:4").resolve_layer(12, "x") == 4
    assert parse_site("layer:-1").resolve_layer(12, "x") == 12
    assert parse_site("layer:-13").resolve_layer(12, "x") == 0
    with pytest.raises(SiteError, match=r"-13\.\.12"):
        parse_site("layer:13").resolve_layer(12, "the image transformer")
    for bad in ["", "llm", "llm:x", "layer:1:answer", "pixels"]:
        with pytest.raises(SiteError, match="such as 'image'"):
            parse_sites(bad)
    assert site_dirname("llm:-1:answer:2") == "llm_-1_answer_2"


def test_features_not_implemented_names_the_family():
    class Plain(HierClassifier):
        family = "plain"

        def score_nodes(self, *a, **k):
            raise NotImplementedError

        def answer(self, *a, **k):
            raise NotImplementedError

    with pytest.raises(NotImplementedError, match="plain"):
        Plain().features(["x.jpg"], "image")
    with pytest.raises(NotImplementedError, match="plain"):
        Plain().text_features(["x"], "text")


# ----------------------------------------------------------------------------- CLIP
def test_openclip_features_equal_open_clip(model_dirs, images):
    import open_clip

    clf = _load(model_dirs, "openclip")
    got = clf.features(
        [*images, "/no/such.jpg"], "image,image:raw,layer:0,layer:1,layer:-1", batch_size=2
    )
    assert got.errors[:3] == [None] * 3 and "No image file" in got.errors[3]
    assert all(torch.isnan(v[3]).all() for v in got.data.values())

    model, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{model_dirs['openclip']}"
    )
    model.eval()
    pixels = torch.stack([preprocess(_rgb(p)) for p in images])
    with torch.no_grad():
        raw = model.encode_image(pixels)
        inter = model.visual.forward_intermediates(
            pixels, intermediates_only=True, output_fmt="NLC", output_extra_tokens=True
        )
        embeds = model.visual._embeds(pixels)  # the first block's input
    cls = [embeds[:, 0]] + [t[:, 0] for t in inter["image_intermediates_prefix"]]
    torch.testing.assert_close(got["image:raw"][:3], raw, atol=TOL, rtol=0)
    torch.testing.assert_close(
        got["image"][:3], torch.nn.functional.normalize(raw, dim=-1), atol=TOL, rtol=0
    )
    for k, site in [(0, "layer:0"), (1, "layer:1"), (2, "layer:-1")]:
        torch.testing.assert_close(got[site][:3], cls[k], atol=TOL, rtol=0)


@pytest.mark.parametrize("pool", ["token", "avg", "map"])
def test_openclip_timm_tower_layers_equal_timm(images, tmp_path, pool):
    """layer:K of an open_clip model with a timm ViT tower (as hf-hub:timm/... SigLIP models
    have): the output of block K-1 from timm's own forward_intermediates, pooled as timm pools
    (class token, or the mean of the patch tokens)."""
    import open_clip

    from hierzoo.models.tiny_clip import build_tiny_openclip

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {
            "timm_model_name": "vit_tiny_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": pool,
            "timm_proj": "none" if pool == "map" else "linear",
            "image_size": 224,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    if pool == "map":
        cfg["embed_dim"] = 192
    model_dir = build_tiny_openclip(tmp_path / "timm", model_cfg=cfg)
    clf = hierzoo.load(str(model_dir), device="cpu", cache_dir=False)
    got = clf.features(images, "layer:3,layer:-1,image:raw", batch_size=2)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model.eval()
    trunk = model.visual.trunk
    pixels = torch.stack([preprocess(_rgb(p)) for p in images])
    with torch.no_grad():
        spatial = trunk.forward_intermediates(
            pixels,
            indices=[2, 11],
            return_prefix_tokens=True,
            norm=False,
            output_fmt="NLC",
            intermediates_only=True,
        )
        raw = model.encode_image(pixels)
    for site, (patches, prefix) in zip(["layer:3", "layer:-1"], spatial):
        want = prefix[:, 0] if pool == "token" else patches.mean(1)
        torch.testing.assert_close(got[site], want, atol=TOL, rtol=0)
    torch.testing.assert_close(got["image:raw"], raw, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["hf-clip", "siglip"])
def test_transformers_clip_features_equal_output_hidden_states(model_dirs, images, name):
    from transformers import AutoModel, AutoProcessor

    clf = _load(model_dirs, name)
    got = clf.features(images, ["image", "layer:0", "layer:1", "layer:2"])
    model = AutoModel.from_pretrained(model_dirs[name]).eval()
    proc = AutoProcessor.from_pretrained(model_dirs[name])
    pixels = proc(images=[_rgb(p) for p in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
        emb = model.get_image_features(pixel_values=pixels).pooler_output
    pool = (
        (lambda h: h.mean(1)) if name == "siglip" else (lambda h: h[:, 0])
    )  # SigLIP: no class token
    for k in range(3):
        torch.testing.assert_close(got[f"layer:{k}"], pool(hidden[k]), atol=TOL, rtol=0)
    torch.testing.assert_close(
        got["image"], torch.nn.functional.normalize(emb, dim=-1), atol=TOL, rtol=0
    )


def test_clip_sites_are_checked(model_dirs, images):
    clf = _load(model_dirs, "openclip")
    with pytest.raises(SiteError, match="openclip models"):
        clf.features(images, "llm:-1")
    with pytest.raises(SiteError, match=r"-3\.\.2"):
        clf.features(images, "layer:3")
    text = clf.text_features(["sparrow", "gull"])
    torch.testing.assert_close(text["text"], clf.text_embeddings(["sparrow", "gull"]).cpu())


# ----------------------------------------------------------------------------- vision LLMs
def _reference_vision(m, images):
    """The vision tower's features and the projected image tokens per image, from the
    model's own get_image_features / vision tower with output_hidden_states."""
    head, _ = m.template("image")
    enc = m.processor(text=[head] * len(images), images=images, return_tensors="pt", padding=True)
    inner, cfg = m.model.model, m.model.config
    with torch.no_grad():
        if m.family.startswith("qwen"):
            out = inner.get_image_features(enc["pixel_values"], enc["image_grid_thw"])
            vision = torch.split(out.last_hidden_state, enc["image_grid_thw"].prod(-1).tolist())
            projected = list(out.pooler_output)
        elif m.family == "llava-onevision":
            from transformers.models.llava_onevision.modeling_llava_onevision import (
                image_size_to_num_patches,
            )

            out = inner.get_image_features(
                enc["pixel_values"],
                enc["image_sizes"],
                vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                vision_aspect_ratio=cfg.vision_aspect_ratio,
                batch_num_images=enc["batch_num_images"],
            )
            crops = [
                image_size_to_num_patches(s, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
                for s in enc["image_sizes"]
            ]
            pixels = torch.cat([p[:c] for p, c in zip(enc["pixel_values"], crops)])
            hidden = inner.vision_tower(pixels, output_hidden_states=True).hidden_states[
                cfg.vision_feature_layer
            ]
            vision = [t.flatten(0, 1) for t in torch.split(hidden, crops)]
            projected = list(out.pooler_output)
        else:
            out = inner.get_image_features(
                enc["pixel_values"],
                vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy,
            )
            tiles = (
                (enc["input_ids"] == cfg.image_token_id).sum(-1) // cfg.image_seq_length
            ).tolist()
            hidden = inner.vision_tower(pixel_values=enc["pixel_values"], output_hidden_states=True)
            hidden = hidden.hidden_states[cfg.vision_feature_layer][
                :, 1:
            ]  # select strategy "default"
            vision = [t.flatten(0, 1) for t in torch.split(hidden, tiles)]
            projected = [t.flatten(0, 1) for t in torch.split(out.pooler_output, tiles)]
    return torch.stack([v.mean(0) for v in vision]), torch.stack([p.mean(0) for p in projected])


@pytest.mark.parametrize("family", list(VLMS))
def test_vlm_features_equal_output_hidden_states(model_dirs, images, cub, family):
    # the checkpoints' own image processing, so that the processor here makes the same inputs;
    # the paper's (pad views, four tiles, the Qwen resize order) is checked below and in
    # test_fidelity.py
    m = _load(model_dirs, family, image_processing="checkpoint")
    sites = ["vision", "projector", "llm:0", "llm:1", "llm:-1", "llm:-1:answer:0", "llm:1:answer:3"]
    got = m.features([*images, "/no/such.jpg"], sites, taxonomy=cub, batch_size=2)
    assert got.errors[:3] == [None] * 3 and "No image file" in got.errors[3]
    assert all(torch.isnan(got[s][3]).all() for s in sites)
    head, tail = m.template("image")
    variant = prompts.default_prompt_variant("cub200", m.family)
    for i, path in enumerate(images):
        img = _rgb(path)
        enc = m.processor(text=[head], images=[img], return_tensors="pt")
        with torch.no_grad():
            hidden = m.model(**enc, output_hidden_states=True).hidden_states
        image_tokens = enc["input_ids"][0] == m.model.config.image_token_id
        for site, k in [("llm:0", 0), ("llm:1", 1), ("llm:-1", -1), ("projector", 0)]:
            torch.testing.assert_close(
                got[site][i], hidden[k][0, image_tokens].mean(0), atol=TOL, rtol=0
            )
        for site, level, k in [("llm:-1:answer:0", 0, -1), ("llm:1:answer:3", 3, 1)]:
            question = prompts.question_text("cub200", level, variant=variant)
            full = m.processor(text=[head + question + tail], images=[img], return_tensors="pt")
            with torch.no_grad():
                at = m.model(**full, output_hidden_states=True).hidden_states[k][0, -1]
            torch.testing.assert_close(got[site][i], at, atol=TOL, rtol=0)
    vision, projected = _reference_vision(m, [_rgb(p) for p in images])
    torch.testing.assert_close(got["vision"][:3], vision, atol=TOL, rtol=0)
    torch.testing.assert_close(got["projector"][:3], projected, atol=TOL, rtol=0)


def test_llava_pad_view_features_equal_the_papers_view(model_dirs, images, cub):
    """Under the paper's image processing a LLaVA-OneVision image is one padded view: the
    vision, projector and LLM features are those of LLaVA-NeXT's pad-mode computation
    (vlm_reference, from the transcription of its scripts)."""
    from vlm_reference import IMAGE_POSITION, paper_request, paper_system

    m = _load(model_dirs, "llava-onevision")
    got = m.features(images, ["vision", "projector", "llm:0", "llm:-1"], taxonomy=cub)
    cfg = m.model.config
    for i, path in enumerate(images):
        img = _rgb(path)
        ids, out = paper_request(
            m, paper_system(m.family, "image"), "", img, output_hidden_states=True
        )
        at = torch.tensor(ids) == IMAGE_POSITION
        hidden = out.hidden_states
        # the newline embedding is the last image position; the projector site reads its
        # input, the tower's patch features
        for site, k in [("projector", 0), ("llm:0", 0), ("llm:-1", -1)]:
            torch.testing.assert_close(got[site][i], hidden[k][0, at].mean(0), atol=TOL, rtol=0)
        import paper_reference as pr

        ip = m.processor.image_processor
        pixels = pr.llava_pad_pixels(img, ip.image_mean, ip.image_std, cfg.vision_config.image_size)
        with torch.no_grad():
            tower = m.model.model.vision_tower(pixels[None], output_hidden_states=True)
        vision = tower.hidden_states[cfg.vision_feature_layer][0]
        torch.testing.assert_close(got["vision"][i], vision.mean(0), atol=TOL, rtol=0)


@pytest.mark.parametrize("family", ["qwen3-vl", "internvl"])
def test_vlm_text_features_equal_output_hidden_states(model_dirs, cub, family):
    m = _load(model_dirs, family)
    names = ["Black-footed Albatross", "Laysan Albatross", "Corvidae"]
    got = m.text_features(names, ["llm:0", "llm:-1", "llm:-1:answer:2"], taxonomy=cub, batch_size=2)
    head, tail = m.template("text")
    tok = m.processor.tokenizer
    variant = prompts.default_prompt_variant("cub200", m.family)
    n_head = len(tok(head, add_special_tokens=False)["input_ids"])
    for i, name in enumerate(names):
        enc = tok(head + name + tail, add_special_tokens=False, return_tensors="pt")
        n_name = len(tok(head + name, add_special_tokens=False)["input_ids"]) - n_head
        with torch.no_grad():
            hidden = m.model(**enc, output_hidden_states=True).hidden_states
        for site, k in [("llm:0", 0), ("llm:-1", -1)]:
            torch.testing.assert_close(
                got[site][i], hidden[k][0, n_head : n_head + n_name].mean(0), atol=TOL, rtol=0
            )
        question = prompts.question_text("cub200", 2, variant=variant, mode="text", label=name)
        enc = tok(head + question + tail, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            at = m.model(**enc, output_hidden_states=True).hidden_states[-1][0, -1]
        torch.testing.assert_close(got["llm:-1:answer:2"][i], at, atol=TOL, rtol=0)


def test_vlm_sites_are_checked(model_dirs, images, cub):
    m = _load(model_dirs, "qwen2.5-vl")
    with pytest.raises(SiteError, match="qwen2.5-vl models"):
        m.features(images, "image")
    with pytest.raises(SiteError, match="needs the level"):
        m.features(images, "llm:-1:answer", taxonomy=cub)
    with pytest.raises(SiteError, match="pass taxonomy="):
        m.features(images, "llm:-1:answer:0")
    with pytest.raises(SiteError, match=r"0\.\.3"):
        m.features(images, "llm:-1:answer:4", taxonomy=cub)
    with pytest.raises(SiteError, match=r"-3\.\.2 \(the LLM"):
        m.features(images, "llm:7")


# ----------------------------------------------------------------------------- the store
class _Counting:
    """A classifier wrapper that counts the images it extracts features for."""

    def __init__(self, clf):
        self.clf = clf
        self.name = clf.name
        self.seen = 0

    def features(self, images, where, **kw):
        self.seen += len(images)
        return self.clf.features(images, where, **kw)


def test_store_resumes_and_redoes_missing_and_torn_shards(model_dirs, images, tmp_path):
    clf = _Counting(_load(model_dirs, "openclip"))
    items = [*images, images[0], "/no/such.jpg"]
    ids = [f"img{i}" for i in range(len(items))]
    sites = ["image", "layer:1"]
    store = tmp_path / "features"
    done = extract_features(clf, items, sites, store, ids=ids, shard_size=2)
    assert done == {"shards": 3, "written": 6, "skipped": 0} and clf.seen == 5
    direct = clf.clf.features(items, sites)
    for site in sites:
        back = load_features(store, site)
        assert back.ids == ids and back.errors == direct.errors
        torch.testing.assert_close(back.data, direct[site], equal_nan=True)
    assert json.loads((store / "manifest.json").read_text())["n_images"] == 5

    clf.seen = 0
    assert (
        extract_features(clf, items, sites, store, ids=ids, shard_size=2)["written"] == 0
        and clf.seen == 0
    )

    shard_path(store, "image", 1).unlink()  # a run killed before this shard was written
    path = shard_path(store, "layer:1", 2)
    path.write_bytes(path.read_bytes()[:40])  # a torn file
    with pytest.raises(FeatureStoreError, match="missing or torn"):
        load_features(store, "image")
    done = extract_features(clf, items, sites, store, ids=ids, shard_size=2)
    assert done["written"] == 2 and done["skipped"] == 4 and clf.seen == 3
    for site in sites:
        torch.testing.assert_close(load_features(store, site).data, direct[site], equal_nan=True)
    assert feature_errors(store, "image") == direct.errors

    with pytest.raises(FeatureStoreError, match="another run"):
        extract_features(clf, items[:4], sites, store, ids=ids[:4], shard_size=2)
    with pytest.raises(FeatureStoreError, match="another run"):
        extract_features(clf, items, sites, store, ids=ids, shard_size=3)
    with pytest.raises(ValueError, match="distinct"):
        extract_features(clf, items, sites, tmp_path / "other", ids=["a"] * 5)
