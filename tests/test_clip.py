"""CLIP-family models: tiny real-architecture checkpoints loaded the way users load real ones."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

import hierzoo
from hierzoo.models import Protocol, UnknownModelError, list_models, resolve
from hierzoo.models._factory import family_class
from hierzoo.models.tiny_clip import build_tiny_hf_clip, build_tiny_openclip, build_tiny_siglip
from hierzoo.paths import decode_paths
from hierzoo.tasks import QuestionError, build_questions, read_questions

BUILDERS = {
    "openclip": build_tiny_openclip,
    "hf-clip": build_tiny_hf_clip,
    "siglip": build_tiny_siglip,
}


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip-models")
    return {name: build(root / name, seed=i) for i, (name, build) in enumerate(BUILDERS.items())}


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        size = (int(rng.integers(40, 120)), int(rng.integers(40, 120)))
        img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        p = root / f"img{i}.jpg"
        img.save(p)
        paths.append(str(p))
    return paths


@pytest.fixture
def load(model_dirs, tmp_path):
    def _load(name, **kw):
        kw.setdefault("cache_dir", tmp_path / "cache")
        return hierzoo.load(str(model_dirs[name]), device="cpu", **kw)

    return _load


def _reference(name, model_dir):
    """The libraries' own model, loaded independently of hierzoo."""
    if name == "openclip":
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
        tok = open_clip.get_tokenizer(f"local-dir:{model_dir}")
        model.eval()

        def enc_text(texts):
            return model.encode_text(tok(texts))

        def enc_image(img):
            return model.encode_image(preprocess(img)[None])

        bias = 0.0
        return enc_text, enc_image, float(model.logit_scale.detach().exp()), bias
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(model_dir).eval()
    proc = AutoProcessor.from_pretrained(model_dir)
    siglip = name == "siglip"

    def enc_text(texts):
        kw = {"padding": "max_length", "max_length": 64} if siglip else {"padding": True}
        inputs = proc(text=texts, return_tensors="pt", **kw)
        if siglip:
            inputs.pop("attention_mask", None)
        return model.get_text_features(**inputs).pooler_output

    def enc_image(img):
        return model.get_image_features(**proc(images=img, return_tensors="pt")).pooler_output

    bias = float(model.logit_bias) if siglip else 0.0
    return enc_text, enc_image, float(model.logit_scale.detach().exp()), bias


def _unit(x):
    return torch.nn.functional.normalize(x.float(), dim=-1)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_embeddings_equal_the_libraries_own(name, load, model_dirs, images):
    clf = load(name)
    enc_text, enc_image, scale, bias = _reference(name, model_dirs[name])
    names = ["black-footed albatross", "Corvus", "a b"]
    with torch.no_grad():
        ours = clf.text_embeddings(names, templates=("{}",))
        theirs = _unit(enc_text(names))
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        ours_img, errors = clf.encode_images(images[:3])
        theirs_img = torch.cat([_unit(enc_image(Image.open(p).convert("RGB"))) for p in images[:3]])
    assert errors == [None] * 3
    torch.testing.assert_close(ours_img, theirs_img, atol=1e-5, rtol=1e-5)
    assert clf.logit_scale == pytest.approx(scale) and clf.logit_bias == pytest.approx(bias)


def _questions(images, n=12):
    qs = read_questions("cub200-similar")[:n]
    for q, p in zip(qs, images):
        q.path = p
    return qs


@pytest.mark.parametrize("name", list(BUILDERS))
def test_answer_equals_the_paper_loop(name, load, model_dirs, images):
    """Per question: encode the image, encode the four option prompts, cosine, argmax."""
    clf = load(name)
    enc_text, enc_image, scale, bias = _reference(name, model_dirs[name])
    qs = _questions(images)
    answers = clf.answer(qs, batch_size=5)
    with torch.no_grad():
        for i, q in enumerate(qs):
            img = _unit(enc_image(Image.open(q.path).convert("RGB")))
            for k, opts in enumerate(q.choices):
                txt = _unit(enc_text([f"a photo of a {o}." for o in opts]))
                logits = scale * img @ txt.T + bias
                assert answers.choice[i, k] == int(logits.argmax())
                expected = torch.sigmoid(logits) if name == "siglip" else torch.softmax(logits, -1)
                np.testing.assert_allclose(answers.probs[i, k], expected[0].numpy(), atol=1e-5)
    records = answers.to_records(qs)
    assert records[0]["predicted_level1"] == qs[0].choices[0][answers.choice[0, 0]]
    assert set(records[0]["choices_level4"]) == {"A", "B", "C", "D"}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_batch_size_and_cache_do_not_change_results(name, load, images, tmp_path):
    tax = hierzoo.load_taxonomy("cub200")
    cold = load(name, cache_dir=tmp_path / "c1")
    a = cold.score_nodes(images, tax, batch_size=1)
    assert cold.texts_encoded == len(set(tax.names))  # each distinct name once
    encoded = cold.texts_encoded
    b = cold.score_nodes(images, tax, batch_size=7)
    assert cold.texts_encoded == encoded  # memory cache
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    warm = load(name, cache_dir=tmp_path / "c1")
    c = warm.score_nodes(images, tax, batch_size=12)
    assert warm.texts_encoded == 0  # disk cache: the second run encodes no text
    torch.testing.assert_close(a.logits, c.logits, atol=1e-5, rtol=1e-5)
    qs = _questions(images)
    x = cold.answer(qs, batch_size=1)
    y = warm.answer(qs, batch_size=12)
    assert (x.choice == y.choice).all()
    np.testing.assert_allclose(x.probs, y.probs, atol=1e-5)


def test_score_nodes_is_one_product_of_the_embeddings(load, images):
    clf = load("siglip")
    tax = hierzoo.load_taxonomy("food101")
    scores = clf.score_nodes(images[:4], tax)
    img, _ = clf.encode_images(images[:4])
    txt = clf.text_embeddings(list(tax.names))
    torch.testing.assert_close(
        scores.logits, clf.logit_scale * img @ txt.T + clf.logit_bias, atol=1e-5, rtol=1e-5
    )
    assert scores.kind == "sigmoid"
    assert scores.level(2).shape == (4, tax.level_sizes[2])


@pytest.mark.parametrize("strategy", ["independent", "topdown", "joint", "marginal"])
def test_predict_path_end_to_end(load, images, strategy):
    clf = load("openclip")
    tax = hierzoo.load_taxonomy("imagenet-artifact")
    pred = clf.predict_path(images[:5], tax, strategy=strategy)
    again = decode_paths(clf.score_nodes(images[:5], tax), strategy)
    assert (pred.node_ids == again.node_ids).all()
    for names, ids in zip(pred.names, pred.node_ids):
        assert names == [tax.names[i] for i in ids if i >= 0]
        if strategy != "independent":
            assert tax.is_leaf[ids[ids >= 0][-1]]
    one = clf.predict_path(images[0], tax, strategy=strategy)
    assert one.names[0] == pred.names[0]


def test_image_inputs_paths_pil_and_tensors(load, images):
    clf = load("openclip")
    tax = hierzoo.load_taxonomy("cub200")
    pil = [Image.open(p) for p in images[:3]]
    tensors = torch.stack([clf.transform(im.convert("RGB")) for im in pil])
    a = clf.score_nodes(images[:3], tax).logits
    b = clf.score_nodes(pil, tax).logits
    c = clf.score_nodes(tensors, tax).logits
    d = clf.score_nodes(tensors[0], tax).logits
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(a[:1], d)


def test_bad_images_are_recorded_not_raised(load, images, tmp_path):
    clf = load("hf-clip")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not a jpeg")
    tax = hierzoo.load_taxonomy("cub200")
    scores = clf.score_nodes(
        [images[0], str(tmp_path / "missing.jpg"), str(empty), str(corrupt)], tax
    )
    assert scores.errors[0] is None
    assert "No image file" in scores.errors[1]
    assert "empty" in scores.errors[2]
    assert "Cannot decode" in scores.errors[3]
    assert torch.isnan(scores.logits[1:]).all() and not torch.isnan(scores.logits[0]).any()
    qs = _questions(images, 3)
    qs[1].path = None
    qs[1].image = "/nowhere/x.jpg"
    answers = clf.answer(qs)
    assert answers.errors[1] is not None and (answers.choice[1] == -1).all()
    assert answers.to_records(qs)[1]["error"]


def test_templates_and_protocol_checks(load, images):
    clf = load("openclip")
    qs = _questions(images, 2)
    ensemble = clf.answer(
        qs, protocol=Protocol(templates=("a photo of a {}.", "an image of {}, a bird."))
    )
    assert ensemble.extra["templates"] == ["a photo of a {}.", "an image of {}, a bird."]
    ranked = clf.answer(
        qs, protocol=Protocol(taxonomy="cub200", templates=("a photo of the {rank} {}.",))
    )
    assert ranked.choice.shape == (2, 4)
    with pytest.raises(ValueError, match="rank names"):
        clf.answer(
            qs, protocol=Protocol(taxonomy="food101", templates=("a photo of the {rank} {}.",))
        )
    with pytest.raises(ValueError, match="language model"):
        clf.answer(qs, protocol=Protocol(mode="text"))
    with pytest.raises(ValueError, match="[Cc]ircular"):
        clf.answer(qs, protocol=Protocol(circular=True))
    bad = _questions(images, 1)
    bad[0].choices[1] = ["a", "b", "c", "d"]
    with pytest.raises(QuestionError, match="not among its options"):
        clf.answer(bad)


def test_rank_aware_templates_embed_each_level_with_its_rank(load):
    clf = load("openclip")
    one = clf.text_embeddings(["corvus"], templates=("a photo of the {rank} {}.",), ranks=["genus"])
    direct = clf.text_embeddings(["a photo of the genus corvus."], templates=("{}",))
    torch.testing.assert_close(one, direct)


def test_rank_aware_templates_with_a_users_taxonomy(load, images):
    """Protocol(taxonomy=Taxonomy) fills {rank} from the user's own ranks: each option is
    embedded with the rank of its level, as text_embeddings does for those ranks directly."""
    tax = hierzoo.Taxonomy.from_paths(
        {
            "Black-footed Albatross": ["Seabirds", "Diomedeidae", "Black-footed Albatross"],
            "Laysan Albatross": ["Seabirds", "Diomedeidae", "Laysan Albatross"],
            "Common Raven": ["Songbirds", "Corvidae", "Common Raven"],
            "Fish Crow": ["Songbirds", "Corvidae", "Fish Crow"],
        },
        ranks=["group", "family", "species"],
        name="my-birds",
    )
    clf = load("openclip")
    qs = build_questions(tax, [(p, tax.labels[i]) for i, p in enumerate(images[:4])])
    template = ("a photo of the {rank} {}.",)
    got = clf.answer(qs, protocol=Protocol(taxonomy=tax, templates=template))
    for i, q in enumerate(qs):
        img, _ = clf.encode_images([q.image])
        for k, options in enumerate(q.choices):
            rank = ["group", "family", "species"][k]
            txt = clf.text_embeddings(options, templates=template, ranks=[rank] * len(options))
            logits = (clf.logit_scale * img @ txt.T + clf.logit_bias)[0]
            assert got.choice[i, k] == int(logits.argmax())
    unranked = hierzoo.Taxonomy.from_paths(
        {leaf: tax.path_names(int(tax.leaf_ids[i])) for i, leaf in enumerate(tax.labels)},
        name="my-birds",
    )
    with pytest.raises(ValueError, match="'my-birds' has none"):
        clf.answer(qs, protocol=Protocol(taxonomy=unranked, templates=template))


def test_built_questions_run_on_any_taxonomy(load, images):
    tax = hierzoo.load_taxonomy("imagenet-animal")
    qs = build_questions(
        tax, [(p, tax.labels[i]) for i, p in enumerate(images[:4])], distractors="similar"
    )
    for q, p in zip(qs, images):
        q.path = p
    answers = load("siglip").answer(qs)
    assert all(len(answers.predicted(i)) == qs[i].n_levels for i in range(4))


def test_loading_by_directory_and_errors(model_dirs, tmp_path):
    assert resolve(str(model_dirs["openclip"])).family == "openclip"
    assert resolve(str(model_dirs["hf-clip"])).family == "hf-clip"
    assert resolve(str(model_dirs["siglip"])).family == "hf-siglip"
    with pytest.raises(UnknownModelError, match="Did you mean.*bioclip2"):
        resolve("bioclip-2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownModelError, match="open_clip_config.json"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(UnknownModelError, match="download it elsewhere"):
        resolve("hf-hub:nobody/not-a-model-xyz")
    assert resolve("hf-hub:imageomics/bioclip-2").name == "bioclip2"


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_entry_resolves_to_its_class(name):
    spec = resolve(name)
    assert spec.name == name and name == name.lower()
    cls = family_class(spec.family)
    assert cls.family == spec.family or (spec.family == "hf-siglip" and cls.family == "hf-clip")
    assert hasattr(cls, "from_spec")
    # a hub repository, or for a model behind an API (gpt-4o) the model name the server is asked
    assert (spec.served or spec.hub_id.count("/") == 1) and spec.licence and spec.paper


@pytest.mark.parametrize("name", ["openclip", "siglip"])
def test_streamed_answers_equal_one_call(name, load, images):
    clf = load(name)
    qs = _questions(images) + _questions(images)[:5]  # repeated images are encoded once
    whole = clf.answer(qs)
    seen = []
    encoded_before = clf.images_encoded
    for positions, part in clf.iter_answers(qs, batch_size=4):
        seen.extend(positions)
        assert (part.choice == whole.choice[positions]).all()
        np.testing.assert_allclose(part.probs, whole.probs[positions], atol=1e-6)
    assert seen == list(range(len(qs)))
    assert clf.images_encoded - encoded_before == len(images)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_decoding_on_the_device_matches_the_pil_pipeline(name, load, images, tmp_path):
    """The tensor twin of each model's preprocessing (what runs after nvJPEG on a GPU), run on
    the CPU here: embeddings close to the PIL pipeline's, the same errors for bad files."""
    pil = load(name)
    dev = load(name, decode_on_device=True)
    assert dev.device_preprocess is not None
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    png = tmp_path / "x.png"
    Image.open(images[0]).save(png)
    items = [*images[:6], str(bad), str(png), str(tmp_path / "missing.jpg")]
    a, err_a = pil.encode_images(items, batch_size=4)
    b, err_b = dev.encode_images(items, batch_size=4)
    assert (
        [e is None for e in err_a]
        == [e is None for e in err_b]
        == [True] * 6 + [False, True, False]
    )
    cos = (a[:6] * b[:6]).sum(-1)
    # antialiased tensor resize vs PIL (open_clip) or transformers' processor: close, not
    # bit-equal; the crop offsets must follow each library's rounding, or cosines fall to 0.97
    assert cos.min() > 0.999, cos
    torch.testing.assert_close(a[7], b[7], atol=0.05, rtol=0)


def test_prefetch_thread_yields_the_same_batches_and_raises_errors():
    from hierzoo.images import ImageBatch, prefetch

    def batches():
        for i in range(5):
            yield ImageBatch([i], torch.full((1, 2), float(i)), {})

    got = [b.data[0, 0].item() for b in prefetch(batches, torch.device("cpu"))]
    assert got == [0, 1, 2, 3, 4]

    def failing():
        yield ImageBatch([0], torch.zeros(1), {})
        raise RuntimeError("decoder broke")

    with pytest.raises(RuntimeError, match="decoder broke"):
        list(prefetch(failing, torch.device("cpu")))
    it = prefetch(batches, torch.device("cpu"), depth=1)
    assert next(it).indices == [0]
    it.close()  # leaving early stops the thread


# ---------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(BUILDERS))
def test_cuda_pipelines_match_the_cpu(name, model_dirs, images, tmp_path):
    """On CUDA: uint8 workers with normalising on the GPU (the default; bit-equal pixels are
    proven on the CPU in test_images) give the CPU's embeddings up to bf16 autocast; the tensor
    decode and nvJPEG decode stay close."""
    cpu = hierzoo.load(str(model_dirs[name]), device="cpu", cache_dir=False)
    a, _ = cpu.encode_images(images, batch_size=5)
    exact = hierzoo.load(str(model_dirs[name]), device="cuda", dtype="float32", cache_dir=False)
    assert (exact._split_transform(images) is not None) == (
        name == "openclip"
    )  # a Compose splits; a processor does not
    b, _ = exact.encode_images(images, batch_size=5)
    assert (b.cpu() * a).sum(-1).min() > 0.999  # float32 weights run under bf16 autocast on CUDA
    for kw, floor in (({"worker_decode": "tensor"}, 0.99), ({"decode_on_device": True}, 0.98)):
        other = hierzoo.load(
            str(model_dirs[name]), device="cuda", dtype="float32", cache_dir=False, **kw
        )
        c, err = other.encode_images(images, batch_size=5)
        assert err == [None] * len(images)
        assert (c.cpu() * a).sum(-1).min() > floor, kw


def test_vision_llm_options_are_refused_by_name(model_dirs):
    with pytest.raises(ValueError, match="batched_vision_attention: options of vision LLMs"):
        hierzoo.load(str(model_dirs["openclip"]), device="cpu", batched_vision_attention=False)


def test_templates_given_in_code_are_checked_as_the_cli_checks_them(tmp_path):
    """One template as a string is one template (not one per character); a template without
    ``{}``, with another placeholder, none at all or not a string is refused naming it."""
    import hierzoo
    from hierzoo.models.tiny_clip import build_tiny_openclip

    model = build_tiny_openclip(tmp_path / "m")
    clf = hierzoo.load(str(model), device="cpu", cache_dir=False, templates="a photo of {}.")
    assert clf.templates == ("a photo of {}.",)
    for bad, says in [
        (["a photo of"], "has 0 '{}'"),
        (["{name}"], "placeholder {name}"),
        ([], "at least one template"),
    ]:
        with pytest.raises(ValueError, match=re.escape(says)):
            hierzoo.load(str(model), device="cpu", cache_dir=False, templates=bad)
    with pytest.raises(TypeError, match="templates as strings"):
        hierzoo.load(str(model), device="cpu", cache_dir=False, templates=[3])
    with pytest.raises(ValueError, match="has 0 '{}'"):
        clf.text_embeddings(["Common Raven"], templates=["a bird"])


def test_model_inputs_in_the_forms_a_user_reaches_for_or_a_clear_error(tmp_path):
    """A taxonomy by name, NumPy pixel arrays; a batch size below 1, one string for a list of
    names: errors naming the fix, never NaN results."""
    import hierzoo
    from hierzoo.models.tiny_clip import build_tiny_openclip

    clf = hierzoo.load(str(build_tiny_openclip(tmp_path / "m")), device="cpu", cache_dir=False)
    tax = hierzoo.load_taxonomy("cub200")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (2, 40, 48, 3), dtype=np.uint8)
    as_pil = [Image.fromarray(a) for a in pixels]
    want = clf.predict_path(as_pil, tax)
    for images in (pixels, list(pixels)):
        got = clf.predict_path(images, "cub200")
        assert got.names == want.names and got.errors == [None, None]
    assert clf.predict_path(pixels[0], tax).names == want.names[:1]
    with pytest.raises(ValueError, match=r"dtype uint8.*Image.fromarray"):
        clf.predict_path(pixels.astype(np.float32) / 255, tax)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match=r"`batch_size` to be a whole number >= 1"):
            clf.predict_path(as_pil, tax, batch_size=bad)
        with pytest.raises(ValueError, match=r"`batch_size` to be a whole number >= 1"):
            clf.features(as_pil, "image", batch_size=bad)
    with pytest.raises(ValueError, match=r"`batch_size` to be a whole number >= 1"):
        hierzoo.load(str(tmp_path / "m"), device="cpu", cache_dir=False, batch_size=0)
    with pytest.raises(TypeError, match=r"one string 'Aves'; pass \['Aves'\]"):
        clf.text_features("Aves", "text")
    with pytest.raises(TypeError, match=r"non-empty strings, but got None"):
        clf.text_features(["Aves", None], "text")
    with pytest.raises(ValueError, match=r"at least one name"):
        clf.text_features([], "text")
    # preprocessed tensors: another float dtype is cast, NaN is that image's error, another
    # shape or integer pixels are refused naming the image
    x = clf.transform(as_pil[0])
    got = clf.predict_path([x, x.double(), torch.full_like(x, float("nan"))], tax)
    assert got.names[:2] == [want.names[0]] * 2
    assert got.errors == [None, None, "the image tensor holds NaN or infinity"]
    for bad in (torch.zeros(3, x.shape[1] + 1, x.shape[2]), (x * 255).to(torch.uint8)):
        with pytest.raises(ValueError, match=r"image 1 is .*; pass paths or PIL images"):
            clf.predict_path([x, bad], tax)


def test_answer_names_a_lone_question_and_a_protocol_given_by_name(tmp_path):
    import hierzoo
    from hierzoo.models.tiny_clip import build_tiny_openclip

    clf = hierzoo.load(str(build_tiny_openclip(tmp_path / "m")), device="cpu", cache_dir=False)
    qs = build_questions(hierzoo.load_taxonomy("cub200"), [("x.jpg", "Common Raven")], seed=0)
    with pytest.raises(TypeError, match=r"one Question; pass \[question\]"):
        clf.answer(qs[0])
    with pytest.raises(TypeError, match=r"Question entries.*got str 'x.jpg'"):
        clf.answer(["x.jpg"])
    with pytest.raises(TypeError, match=r"Protocol\(name='paper'\)"):
        clf.answer(qs, protocol="paper")
    with pytest.raises(TypeError, match=r"one Question"):
        next(clf.iter_answers(qs[0]))
    assert clf.answer(qs).errors[0] is not None  # a list of questions: answered (x.jpg fails)
