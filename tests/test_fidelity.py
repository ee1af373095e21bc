"""hierzoo's requests under the paper's protocol against the paper's own, family by family: the
prompt tokens (system turn, user turn, image placement), the number of image tiles or views and
image tokens, and the pixels, compared with ``paper_reference`` (the transcription of the paper's
scripts and of the code they call) on the tiny models' processors and on processors built with
the real checkpoints' settings."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import paper_reference as pr
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402
from vlm_reference import IMAGE_POSITION, paper_inputs, paper_system  # noqa: E402

import hierzoo  # noqa: E402
from hierzoo import prompts  # noqa: E402
from hierzoo.models import Protocol, tiny  # noqa: E402
from hierzoo.models.vlm.internvl import pil_image_processor  # noqa: E402
from hierzoo.models.vlm.llava_onevision import pad_to_square  # noqa: E402
from hierzoo.models.vlm.qwen import paper_qwen_image  # noqa: E402
from hierzoo.tasks import read_questions  # noqa: E402

BUILDERS = {
    "qwen2.5-vl": tiny.build_tiny_qwen2_5_vl,
    "llava-onevision": tiny.build_tiny_llava_onevision,
    "internvl": tiny.build_tiny_internvl,
}
# landscape, portrait, square, InternVL's exact-ratio ties (2:1 at 1.5, 2x2 at 1:1) on both sides
# of the area rule, and sizes that are not multiples of any patch grid
SIZES = [(100, 75), (48, 90), (64, 64), (96, 64), (60, 40), (140, 140), (100, 100), (77, 131)]


def _image(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width * 7919 + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    return {
        name: hierzoo.load(build(root / name), device="cpu") for name, build in BUILDERS.items()
    }


def _hierzoo_request(m, text: str, image: Image.Image | None):
    """What hierzoo runs for one request: its prompt (template head + text + tail) and its
    image as the loader hands it over (the family's transform), through its encoder."""
    mode = "image" if image is not None else "text"
    head, tail = m.template(mode)
    if image is not None:
        transform = m.image_transform()
        image = transform(image) if transform is not None else image
    return m._encode([head + text + tail], [image] if image is not None else None, side="left")


# ---------------------------------------------------------------- prompts, tiles and tokens
@pytest.mark.parametrize("family", list(BUILDERS))
@pytest.mark.parametrize("mode", ["image", "text"])
def test_requests_equal_the_papers(models, family, mode):
    """Token for token the paper's prompt (its system message, the user turn with the image
    first, the image's token count), and the same pixels, for every level of a few CUB-200
    entries with the paper's option shuffle."""
    m = models[family]
    qs = read_questions("cub200-random")[:2]
    plan = prompts.plan_questions(
        qs,
        Protocol(taxonomy="cub200", mode=mode, shuffle_options=mode == "image"),
        family=family,
    )
    system = paper_system(family, mode)
    assert {r.system for r in plan.requests} == {system}
    image_id = m.model.config.image_token_id
    for r, size in zip(plan.requests, itertools.cycle(SIZES)):
        image = _image(*size) if mode == "image" else None
        ours = _hierzoo_request(m, r.text, image)
        ids, theirs = paper_inputs(m, system, r.text, image)
        ids = [image_id if t == IMAGE_POSITION else t for t in ids]
        assert ours["input_ids"][0].tolist() == ids, (family, size)
        decoded = m.processor.tokenizer.decode(ours["input_ids"][0])
        assert decoded.count(system) == 1  # sent, not an empty system turn
        if mode == "text":
            assert "pixel_values" not in ours
            continue
        if family == "llava-onevision":  # one padded view; the reference spliced its features
            want = pr.llava_pad_pixels(
                image,
                m.processor.image_processor.image_mean,
                m.processor.image_processor.image_std,
                m.model.config.vision_config.image_size,
            )
            assert tuple(ours["pixel_values"].shape[:2]) == (1, 1)
            torch.testing.assert_close(ours["pixel_values"][0, 0], want, atol=1e-6, rtol=0)
        else:
            assert ours["pixel_values"].shape == theirs["pixel_values"].shape
            torch.testing.assert_close(
                ours["pixel_values"], theirs["pixel_values"], atol=1e-5, rtol=0
            )


@pytest.mark.parametrize("family", list(BUILDERS))
def test_dry_run_describes_the_papers_requests(models, tmp_path, family):
    """What ``describe_requests`` (``hierzoo eval --dry-run``) shows is the paper's request:
    the prompt's token count, the image's tiles or views and its image tokens, for images of
    several shapes."""
    m = models[family]
    qs = read_questions("cub200-random")[:4]
    sizes = [(100, 75), (48, 90), (140, 140), (60, 40)]
    for q, size in zip(qs, sizes):
        q.path = tmp_path / f"{size[0]}x{size[1]}.png"
        _image(*size).save(q.path)
    protocol = Protocol(taxonomy="cub200", shuffle_options=True)
    plan = prompts.plan_questions(qs, protocol, family=family)
    described = m.describe_requests(qs, protocol=protocol)
    assert len(described) == len(plan.requests)
    system = paper_system(family, "image")
    for d, r in zip(described, plan.requests):
        image = Image.open(qs[r.sample].path)
        ids, _ = paper_inputs(m, system, r.text, image)
        (got,) = d["images"]
        n_image = sum(t in (IMAGE_POSITION, m.model.config.image_token_id) for t in ids)
        assert d["prompt_tokens"] == len(ids) and got["tokens"] == n_image, (family, d["sample"])
        if family == "internvl":
            side = m.model.config.vision_config.image_size[0]
            tiles = len(pr.load_image(image, input_size=side, max_num=4)[0])
        else:
            tiles = 1  # Qwen: one image; LLaVA: one padded view
        assert got["tiles"] == tiles, (family, sizes[d["sample"]])


def test_llava_text_mode_lower_cases_the_leaf(models):
    qs = read_questions("cub200-random")[:1]
    plan = prompts.plan_questions(
        qs, Protocol(taxonomy="cub200", mode="text"), family="llava-onevision"
    )
    label = qs[0].label
    assert label != label.lower()
    assert all(label.lower() in r.text and label not in r.text for r in plan.requests)
    other = prompts.plan_questions(qs, Protocol(taxonomy="cub200", mode="text"), family="internvl")
    assert all(label in r.text for r in other.requests)


# ---------------------------------------------------------------- LLaVA-OneVision: pad mode
def _real_llava_processor(tokenizer):
    """A processor with the llava-onevision-qwen2-7b-ov-hf settings (SigLIP so400m at 384 px:
    mean and std 0.5, bicubic; 729 patch features, strategy "full"; anyres_max_9), as
    transformers' conversion script builds it."""
    ip = transformers.LlavaOnevisionImageProcessor(
        size={"height": 384, "width": 384},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=3,
    )
    vp = transformers.LlavaOnevisionVideoProcessor(
        size={"height": 384, "width": 384}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return transformers.LlavaOnevisionProcessor(
        image_processor=ip,
        tokenizer=tokenizer,
        video_processor=vp,
        num_image_tokens=729,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=tiny._LLAVA_ONEVISION_CHAT_TEMPLATE,
    )


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (384, 384), (1024, 899), (31, 400)])
def test_llava_pad_view_with_the_real_processor_settings(models, size):
    """730 image positions (729 + the newline) and the paper's pixels at 384 px; the -hf
    processor by itself would give 1,728 for 500x375 (anyres)."""
    m = models["llava-onevision"]
    real = _real_llava_processor(m.processor.tokenizer)
    clf = copy.copy(m)
    clf.processor = real
    clf._templates = {}
    image = _image(*size)
    enc = _hierzoo_request(clf, "Which bird?", image)
    assert clf.pad_image_tokens() == pr.LLAVA_PAD_IMAGE_TOKENS == 730
    assert int((enc["input_ids"] == real.image_token_id).sum()) == 730
    assert tuple(enc["pixel_values"].shape) == (1, 1, 3, 384, 384)
    torch.testing.assert_close(
        enc["pixel_values"][0, 0], pr.llava_pad_pixels(image), atol=1e-6, rtol=0
    )
    square = pad_to_square(image, (127, 127, 127), (384, 384))
    paper = pr.expand2square(image, pr.llava_pad_background()).resize((384, 384), Image.BICUBIC)
    assert np.array_equal(np.asarray(square), np.asarray(paper))
    if size == (500, 375):
        anyres = real(text=["<image>"], images=[image], return_tensors="pt")
        assert int((anyres["input_ids"] == real.image_token_id).sum()) == 1728


def test_llava_checkpoint_image_processing_keeps_anyres(models, tmp_path):
    m = models["llava-onevision"]
    native = hierzoo.wrap(m.model, m.processor, image_processing="checkpoint")
    image = _image(100, 75)
    assert native.image_transform() is None
    enc = _hierzoo_request(native, "Which bird?", image)
    ours = _hierzoo_request(m, "Which bird?", image)
    n = lambda e: int((e["input_ids"] == m.model.config.image_token_id).sum())  # noqa: E731
    assert n(ours) == m.pad_image_tokens() == 17 and n(enc) > n(ours)


def test_image_processing_is_part_of_the_run_identity(models):
    """Runs whose images were prepared differently never resume or mix; a bad value is refused
    naming the choices."""
    m = models["internvl"]
    native = hierzoo.wrap(m.model, m.processor, image_processing="checkpoint")
    assert m.identity(None)["image_processing"] == "paper"
    assert native.identity(None)["image_processing"] == "checkpoint"
    with pytest.raises(ValueError, match=r"`image_processing` to be one of .*'pad'"):
        hierzoo.wrap(m.model, m.processor, image_processing="pad")


# ---------------------------------------------------------------- InternVL: load_image(max_num=4)
def _real_internvl_image_processor():
    """The InternVL3-*-hf image processor settings (transformers' conversion script): 448 px
    tiles, ImageNet mean and std, bicubic, crop_to_patches with max_patches 12."""
    return transformers.GotOcr2ImageProcessor(
        size={"height": 448, "width": 448},
        image_mean=list(pr.IMAGENET_MEAN),
        image_std=list(pr.IMAGENET_STD),
        crop_to_patches=True,
        min_patches=1,
        max_patches=12,
        resample=3,
    )


def test_internvl_tile_counts_equal_the_papers_over_a_grid_of_sizes():
    """The grid of transformers' GotOcr2 tiling at max 4 equals the paper's
    dynamic_preprocess(max_num=4) (its tie-break included) for every size in 50..2100 px."""
    paper = pil_image_processor(_real_internvl_image_processor(), max_patches=4)
    ratios = pr.target_ratios(1, 4)
    sizes = [(w, h) for w in range(50, 2101, 23) for h in range(50, 2101, 29)]
    ties = [(600, 400), (450, 300), (700, 700), (600, 600), (1344, 896), (224, 448), (896, 1344)]
    for w, h in sizes + ties:
        cols, rows = pr.find_closest_aspect_ratio(w / h, ratios, w, h, 448)
        want = cols * rows + (1 if cols * rows > 1 else 0)
        assert paper.get_number_of_image_patches(h, w, {}) == want, (w, h)


@pytest.mark.parametrize(
    ("size", "tiles"),
    [((500, 375), 1), ((500, 333), 3), ((600, 400), 3), ((450, 300), 1), ((700, 700), 5)],
)
def test_internvl_pixels_equal_the_papers_at_448(size, tiles):
    image = _image(*size)
    ours = pil_image_processor(_real_internvl_image_processor(), max_patches=4)(
        images=[image], return_tensors="pt"
    )
    got, want = pr.load_image(image, max_num=4)
    assert len(got) == tiles and ours["num_patches"].tolist() == [tiles]
    torch.testing.assert_close(ours["pixel_values"], want, atol=1e-5, rtol=0)
    # the checkpoint's own max 12 cuts the 500x375 photo into 12 tiles and a thumbnail
    if size == (500, 375):
        native = _real_internvl_image_processor()(images=[image], return_tensors="pt")
        assert native["num_patches"].tolist() == [13]


def test_internvl_paper_processor_is_a_copy(models):
    """The paper's tiling works on a copy: the processor passed in keeps the checkpoint's
    settings, and image_processing="checkpoint" uses it as it is."""
    m = models["internvl"]
    given = transformers.AutoProcessor.from_pretrained(m.spec.location)
    paper = hierzoo.wrap(m.model, given)
    assert paper.processor.image_processor.max_patches == 4
    assert type(paper.processor.image_processor).__name__ == "GotOcr2ImageProcessorPil"
    assert given.image_processor.max_patches == 12
    assert type(given.image_processor).__name__ == "GotOcr2ImageProcessor"
    native = hierzoo.wrap(m.model, given, image_processing="checkpoint")
    assert native.processor is given
    image = _image(100, 75)  # 4:3: one tile at max 4, 4x3 and a thumbnail at 12
    n = lambda e: int((e["input_ids"] == m.model.config.image_token_id).sum())  # noqa: E731
    per_tile = m.model.config.image_seq_length
    assert n(_hierzoo_request(paper, "Q?", image)) == per_tile
    assert n(_hierzoo_request(native, "Q?", image)) == 13 * per_tile


# ---------------------------------------------------------------- Qwen-VL: resize, then the cap
QWEN_REAL = {
    "factor": 28,
    "min_pixels": pr.QWEN_MIN_PIXELS,
    "max_pixels": pr.QWEN_MAX_PIXELS,
    "processor_min_pixels": pr.QWEN_PROCESSOR_MIN_PIXELS,
    "processor_max_pixels": pr.QWEN_PROCESSOR_MAX_PIXELS,
}


@pytest.mark.parametrize(
    ("size", "final", "tokens"),
    [
        ((500, 375), (504, 364), 234),
        ((2000, 1500), (1680, 1288), 2760),  # capped first (the old order): 1680x1260, 2700
        ((3000, 2000), (1680, 1120), 2400),  # int() truncation: 1679x1114 before the processor
        ((1700, 1000), (1680, 980), 2100),
        ((1500, 2100), (1204, 1680), 2580),
    ],
)
def test_qwen_image_follows_the_papers_order(size, final, tokens):
    image = _image(*size)
    ours = paper_qwen_image(image, **QWEN_REAL)
    handed, processed = pr.paper_qwen_sizes(*size)
    assert ours.size == processed == final
    assert pr.qwen_image_tokens(*final) == tokens
    # pixel for pixel what the paper's processor gets after its own (PIL) resize
    paper = pr.paper_qwen_image(image)
    assert paper.size == handed
    if paper.size != final:
        paper = paper.resize(final, Image.BICUBIC)
    assert np.array_equal(np.asarray(ours), np.asarray(paper))


def test_qwen_sizes_equal_the_papers_over_a_grid_of_sizes():
    """Only the sizes: the final image size of hierzoo's order equals the paper's over widths
    1600-4000 and heights 400-4000 (where the two orders differ in about one case in six)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    from hierzoo.models.vlm.qwen import grid_size

    differ = 0
    for w in range(1600, 4001, 61):
        for h in range(400, 4001, 67):
            _, final = pr.paper_qwen_sizes(w, h)
            gh, gw = grid_size(h, w, 28, pr.QWEN_MIN_PIXELS, pr.QWEN_MAX_PIXELS)
            if max(gw, gh) > 1680:
                s = 1680 / max(gw, gh)
                gw, gh = int(gw * s), int(gh * s)
            ph, pw = smart_resize(
                gh, gw, 28, pr.QWEN_PROCESSOR_MIN_PIXELS, pr.QWEN_PROCESSOR_MAX_PIXELS
            )
            assert (pw, ph) == final, (w, h)
            s = 1680 / max(w, h)
            cap_first = smart_resize(
                int(h * s),
                int(w * s),
                28,
                pr.QWEN_PROCESSOR_MIN_PIXELS,
                pr.QWEN_PROCESSOR_MAX_PIXELS,
            )
            differ += cap_first != (ph, pw)
    assert differ > 0  # the order matters on this grid


def test_qwen_pixels_through_the_processor_equal_the_papers_pil_processor():
    """The torchvision processor on hierzoo's prepared image equals the PIL (slow) processor the
    paper ran on its own image, within float tolerance: the resize is already done."""
    settings = {
        "patch_size": 14,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "size": {
            "shortest_edge": pr.QWEN_PROCESSOR_MIN_PIXELS,
            "longest_edge": pr.QWEN_PROCESSOR_MAX_PIXELS,
        },
    }
    fast = transformers.Qwen2VLImageProcessor(**settings)
    slow = transformers.Qwen2VLImageProcessorPil(**settings)
    for size in [(500, 375), (2000, 1500)]:
        image = _image(*size)
        ours = fast(images=[paper_qwen_image(image, **QWEN_REAL)], return_tensors="pt")
        theirs = slow(images=[pr.paper_qwen_image(image)], return_tensors="pt")
        assert torch.equal(ours["image_grid_thw"], theirs["image_grid_thw"])
        torch.testing.assert_close(ours["pixel_values"], theirs["pixel_values"], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- CLIP-style: loading, precision
def test_openclip_loads_as_the_paper_by_its_pretrained_tag():
    """The zoo's OpenCLIP ViT-L/14 loads as the paper's script loads it (architecture and
    pretrained tag), the tag names the same hub weights, and its preprocessing is the tag's
    (mean and std 0.5, which the hf-hub config does not fix)."""
    open_clip = pytest.importorskip("open_clip")
    from hierzoo.models._registry import resolve
    from hierzoo.models.clip.openclip import open_clip_args

    spec = resolve("openclip-vit-l-14.laion2b")
    assert open_clip_args(spec) == (pr.OPENCLIP_MODEL, {"pretrained": pr.OPENCLIP_PRETRAINED})
    tag = open_clip.get_pretrained_cfg(pr.OPENCLIP_MODEL, pr.OPENCLIP_PRETRAINED)
    assert tag["hf_hub"].rstrip("/") == spec.hub_id
    assert tag["mean"] == tag["std"] == (0.5, 0.5, 0.5)
    # models the paper did not load by tag keep the hub id; directories load as directories
    assert open_clip_args(resolve("bioclip2")) == ("hf-hub:imageomics/bioclip-2", {})
    local = resolve("openclip-vit-l-14.laion2b").__class__(
        name="x", family="openclip", hub_id="x", source="/some/dir", pretrained_tag="t"
    )
    assert open_clip_args(local) == ("local-dir:/some/dir", {})


@pytest.mark.parametrize(
    ("name", "paper"),
    [
        ("openclip-vit-l-14.laion2b", pr.OPENCLIP_AUTOCAST),
        ("siglip-so400m", pr.SIGLIP_AUTOCAST),
        ("bioclip2", "bfloat16"),  # not a paper model: hierzoo's own
    ],
)
def test_clip_precision_on_cuda_is_the_papers(tmp_path, name, paper):
    """float32 weights on CUDA run under the paper's autocast for its checkpoints (OpenCLIP
    float16, SigLIP none). Only the settings are read here: nothing runs on the device."""
    pytest.importorskip("open_clip")
    from hierzoo.models import tiny_clip
    from hierzoo.models._registry import resolve
    from hierzoo.models.clip.hf import HFClipClassifier
    from hierzoo.models.clip.openclip import OpenClipClassifier

    spec = resolve(name)
    if spec.family == "openclip":
        import open_clip

        d = tiny_clip.build_tiny_openclip(tmp_path / "m")
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{d}")
        clf = OpenClipClassifier.from_model(
            model, open_clip.get_tokenizer(f"local-dir:{d}"), preprocess, spec=spec, device="cpu"
        )
    else:
        d = tiny_clip.build_tiny_siglip(tmp_path / "m")
        model = transformers.AutoModel.from_pretrained(d)
        clf = HFClipClassifier.from_model(model, str(d), spec=spec, device="cpu")
    assert clf.dtype == torch.float32 and clf._precision == "float32"  # CPU: never autocast
    clf.device = torch.device("cuda")
    want = getattr(torch, paper) if paper is not None else None
    assert clf.paper_autocast == want
    short = {"float16": "+fp16-autocast", "bfloat16": "+bf16-autocast", None: ""}[paper]
    assert clf._precision == "float32" + short
