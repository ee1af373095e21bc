"""Vision LLMs on tiny random models: fused, prefix-cached letter scoring against the plain
per-question forward pass, written here the obvious way."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402
from vlm_reference import (  # noqa: E402
    paper_generate,
    paper_inputs,
    paper_request,
    paper_system,
)  # noqa: E402

import hierzoo  # noqa: E402
from hierzoo.models import Protocol, tiny  # noqa: E402
from hierzoo.models._factory import family_class  # noqa: E402
from hierzoo.models._registry import resolve  # noqa: E402
from hierzoo.tasks import Question, QuestionError, read_questions  # noqa: E402

FAMILIES = {
    "qwen2.5-vl": tiny.build_tiny_qwen2_5_vl,
    "qwen3-vl": tiny.build_tiny_qwen3_vl,
    "llava-onevision": tiny.build_tiny_llava_onevision,
    "internvl": tiny.build_tiny_internvl,
}
CLASSES = {
    "qwen2.5-vl": "Qwen2_5_VLClassifier",
    "qwen3-vl": "Qwen3VLClassifier",
    "llava-onevision": "LlavaOnevisionClassifier",
    "internvl": "InternVLClassifier",
}
RAW = json.loads(
    (Path(__file__).resolve().parents[1] / "hierzoo/data/prompts.json").read_text(encoding="utf-8")
)
SIZES = [(64, 64), (80, 48), (100, 75), (48, 90)]
TOL = 1e-5
CPU_BUDGET = 8192


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_vlm")
    return {name: build(root / name) for name, build in FAMILIES.items()}


@pytest.fixture(scope="session")
def models(tiny_dirs):
    return {name: hierzoo.load(path, device="cpu") for name, path in tiny_dirs.items()}


@pytest.fixture(params=list(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture
def model(models, family):
    m = models[family]
    m.prefix_cache = True
    m.batch_size = None
    return m


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(SIZES):
        pixels = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"img{i}.jpg", quality=90)
    (root / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    return root


@pytest.fixture(scope="session")
def cub_questions() -> list[Question]:
    return read_questions("cub200-random")


@pytest.fixture
def questions(image_dir, cub_questions) -> list[Question]:
    qs = copy.deepcopy(cub_questions[: len(SIZES)])
    for i, q in enumerate(qs):
        q.path = image_dir / f"img{i}.jpg"
    others = [c for c in qs[1].choices[0] if c != qs[1].answers[0]]
    qs[1].choices[0] = [others[0], qs[1].answers[0], others[1]]
    qs[2].choices[3] = [qs[2].answers[3], "laysan albatross"]
    return qs


# ---------------------------------------------------------------------------- reference
def reference_text(m, question: Question, level: int, options, *, mode="image", variant=None):
    """The user text of one question as the paper's scripts write it. ``variant`` defaults to
    the paper's (0 in image mode, 1 in text mode for CUB-200)."""
    variant = (0 if mode == "image" else 1) if variant is None else variant
    entry = RAW["taxonomies"]["cub200"]
    template = entry[f"{mode}_prompts"][variant]
    label = question.label.lower() if m.family == "llava-onevision" else question.label
    question_text = template.replace("{rank}", entry["ranks"][level]).replace("{label}", label)
    letters = "ABCDEFGH"[: len(options)]
    text = "\n".join(
        [question_text, *[f"{c}. {o}" for c, o in zip(letters, options)], RAW["instruction"]]
    )
    return text


def reference_logits(m, question: Question, level: int, options, *, mode="image", variant=None):
    """Letter logits of one question: the paper's prompt and image (built by
    ``vlm_reference`` from the transcription of its scripts), one forward pass, the last
    position's logits at the letters' token ids."""
    text = reference_text(m, question, level, options, mode=mode, variant=variant)
    image = Image.open(question.path) if mode == "image" else None
    _, out = paper_request(m, paper_system(m.family, mode), text, image)
    ids = m.processor.tokenizer.convert_tokens_to_ids(list("ABCDEFGH"[: len(options)]))
    return out.logits[0, -1, ids].float().numpy()


def reference_reply(m, question: Question, level: int, options, max_new_tokens: int, **kw) -> str:
    """The reply of one question as the paper's scripts get it: ``model.generate`` on the
    paper's prompt and image, greedy, the new tokens decoded without special tokens."""
    mode = kw.get("mode", "image")
    text = reference_text(m, question, level, options, **kw)
    image = Image.open(question.path) if mode == "image" else None
    return paper_generate(m, paper_system(m.family, mode), text, image, max_new_tokens)


def check_against_reference(m, questions, answers, *, mode="image", variant=None):
    for i, q in enumerate(questions):
        for k, options in enumerate(answers.options[i]):
            if not options:
                assert answers.choice[i, k] == -1
                continue
            ref = reference_logits(m, q, k, options, mode=mode, variant=variant)
            got = answers.extra["letter_logits"][i, k, : len(options)]
            np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
            assert answers.choice[i, k] == int(np.argmax(ref))
            probs = np.exp(ref - ref.max()) / np.exp(ref - ref.max()).sum()
            np.testing.assert_allclose(answers.probs[i, k, : len(options)], probs, atol=TOL)


# ---------------------------------------------------------------------------- loading
def test_zoo_families_resolve_to_their_classes():
    for fam, cls_name in CLASSES.items():
        assert family_class(fam).__name__ == cls_name
        assert family_class(fam).family == fam


def test_saved_directory_loads_as_its_family(models, tiny_dirs, family):
    m = models[family]
    assert type(m).__name__ == CLASSES[family]
    assert resolve(tiny_dirs[family]).family == family
    assert m.dtype == torch.float32 and m.device.type == "cpu"
    assert m.token_budget == 8192 and m.prefix_cache


def test_wrong_family_class_names_the_model_type(tiny_dirs):
    from hierzoo.models.vlm import InternVLClassifier

    spec = resolve(tiny_dirs["qwen2.5-vl"])
    with pytest.raises(ValueError, match="holds a 'qwen2_5_vl' model.*loads 'internvl'"):
        InternVLClassifier.from_spec(spec, device=torch.device("cpu"))


def test_missing_transformers_names_the_extra(monkeypatch):
    from hierzoo.models.vlm import _base

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'hierzoo\[vlm\]'"):
        _base._import_transformers()


def test_load_options(tiny_dirs):
    m = hierzoo.load(
        tiny_dirs["internvl"],
        device="cpu",
        dtype="bfloat16",
        token_budget=500,
        batch_size=3,
        prefix_cache=False,
        attn_implementation="eager",
    )
    assert m.dtype == torch.bfloat16 and m.token_budget == 500 and m.batch_size == 3
    assert not m.prefix_cache
    assert m.model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="`token_budget` >= 1, but got 0"):
        hierzoo.load(tiny_dirs["internvl"], device="cpu", token_budget=0)


# ---------------------------------------------------------------------------- prompts
def test_prompt_split_and_letter_tokens(model):
    for mode in ("image", "text"):
        head, tail = model.template(mode)
        user = "Q?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly."
        msgs = [
            {
                "role": "system",
                "content": [{"type": "text", "text": paper_system(model.family, mode)}],
            },
            {
                "role": "user",
                "content": ([{"type": "image"}] if mode == "image" else [])
                + [{"type": "text", "text": user}],
            },
        ]
        full = model.processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert head + user + tail == full
        assert tail.endswith("assistant\n")
    tok = model.processor.tokenizer
    assert model.letter_token_ids(4) == tok.convert_tokens_to_ids(list("ABCD"))
    assert model.letter_token_ids(4) != tok.convert_tokens_to_ids(["ĠA", "ĠB", "ĠC", "ĠD"])


# ---------------------------------------------------------------------------- scoring
@pytest.mark.parametrize("name", ["qwen2.5-vl", "qwen3-vl"])
def test_qwen_suffix_continues_at_the_largest_prefix_position(models, name, image_dir):
    m = models[name]
    head, tail = m.template("image")
    suffix = "What is it?\nA. gull\nB. tern" + tail
    image = Image.open(image_dir / "img1.jpg").convert("RGB")
    full = m.processor(text=[head + suffix], images=[image], return_tensors="pt")
    expected, _ = m.model.model.get_rope_index(
        full["input_ids"],
        mm_token_type_ids=full["mm_token_type_ids"],
        image_grid_thw=full["image_grid_thw"],
    )
    prefix = m.processor(text=[head], images=[image], return_tensors="pt")
    _, start = m.prompt_positions(prefix)
    n = full["input_ids"].shape[1] - prefix["input_ids"].shape[1]
    assert start.item() < prefix["input_ids"].shape[1]
    got = m.suffix_positions(start, torch.ones(1, n, dtype=torch.long))
    assert torch.equal(got, expected[:, :, -n:])


def test_fused_prefix_cached_answers_equal_the_plain_forward(model, questions):
    answers = model.answer(questions, protocol=Protocol(taxonomy="cub200"))
    assert answers.choice.shape == (len(questions), 4)
    assert [len(o) for o in answers.options[1]] == [len(c) for c in questions[1].choices]
    assert answers.errors == [None] * len(questions)
    check_against_reference(model, questions, answers)


def test_batch_sizes_and_prefix_cache_agree(model, questions):
    protocol = Protocol(taxonomy="cub200")
    runs = {}
    for prefix in (True, False):
        model.prefix_cache = prefix
        for bs in (1, 3, None):
            runs[prefix, bs] = model.answer(questions, protocol=protocol, batch_size=bs)
    model.token_budget, budget = 150, model.token_budget
    try:
        runs["small budget"] = model.answer(questions, protocol=protocol)
    finally:
        model.token_budget = budget
    base = runs[True, None]
    for key, got in runs.items():
        np.testing.assert_allclose(
            got.extra["letter_logits"],
            base.extra["letter_logits"],
            atol=TOL,
            rtol=0,
            err_msg=str(key),
        )
        assert np.array_equal(got.choice, base.choice), key


def test_processing_images_on_the_device_gives_the_same_answers(model, questions):
    """``process_on_device`` (the CUDA default) hands the processor a ``device``; here the CPU,
    so the answers must be the same, and the processor time is recorded."""
    protocol = Protocol(taxonomy="cub200")
    model.process_on_device = False
    model.pipeline_stats.reset()
    base = model.answer(questions, protocol=protocol)
    assert model.pipeline_stats.preprocess > 0 and model.pipeline_stats.batches > 0
    model.process_on_device = True
    try:
        supported = model._images_on_device()
        got = model.answer(questions, protocol=protocol)
    finally:
        model.process_on_device = None
    # all four families' processors are torchvision-backed in transformers 5; InternVL's tiles
    # are cut with the PIL backend under the paper's image processing (PIL resizing, as the
    # paper's scripts), which stays on the CPU
    assert supported == (model.family != "internvl")
    np.testing.assert_allclose(
        got.extra["letter_logits"], base.extra["letter_logits"], atol=TOL, rtol=0
    )
    assert np.array_equal(got.choice, base.choice)


def test_shuffled_options_follow_the_seeded_generator(model, questions):
    from hierzoo import prompts

    answers = model.answer(questions, protocol=Protocol(taxonomy="cub200", shuffle_options=True))
    orders = prompts.shuffled_orders([[len(c) for c in q.choices] for q in questions], seed=42)
    for i, q in enumerate(questions):
        assert answers.options[i] == [[q.choices[k][j] for j in o] for k, o in enumerate(orders[i])]
    assert answers.extra["seed"] == 42 and answers.extra["protocol"]["shuffle_options"]
    check_against_reference(model, questions[:2], answers)
    other = model.answer(
        questions, protocol=Protocol(taxonomy="cub200", shuffle_options=True, seed=7)
    )
    assert other.options != answers.options


def test_prompt_variant(model, questions):
    answers = model.answer(questions[:2], protocol=Protocol(taxonomy="cub200", prompt_variant=3))
    assert answers.extra["prompt_variant"] == 3
    check_against_reference(model, questions[:2], answers, variant=3)


def test_circular_mode(model, questions):
    qs = questions[:2]
    answers = model.answer(qs, protocol=Protocol(taxonomy="cub200", circular=True))
    plain = model.answer(qs, protocol=Protocol(taxonomy="cub200"))
    np.testing.assert_allclose(answers.probs, plain.probs, atol=TOL)
    assert answers.correct is not None and answers.correct.dtype == bool
    rotations = answers.extra["rotation_choices"]
    for i, q in enumerate(qs):
        for k, options in enumerate(answers.options[i]):
            picked = []
            for r in range(len(options)):
                rotated = options[r:] + options[:r]
                ref = reference_logits(model, q, k, rotated)
                picked.append(options.index(rotated[int(np.argmax(ref))]))
            assert rotations[i, k, : len(options)].tolist() == picked
            right = q.answer_index(k)
            assert answers.correct[i, k] == all(options[p] == q.choices[k][right] for p in picked)


def test_text_mode_skips_the_leaf_and_uses_no_image(model, questions):
    qs = questions[:2]
    for q in qs:
        q.path = Path("/nonexistent/image.jpg")
    answers = model.answer(qs, protocol=Protocol(taxonomy="cub200", mode="text"))
    assert answers.errors == [None, None]
    assert (answers.choice[:, 3] == -1).all() and (answers.choice[:, :3] >= 0).all()
    assert answers.options[0][3] == []
    check_against_reference(model, qs, answers, mode="text")
    model.prefix_cache = False
    plain = model.answer(qs, protocol=Protocol(taxonomy="cub200", mode="text"))
    np.testing.assert_allclose(
        plain.extra["letter_logits"], answers.extra["letter_logits"], atol=TOL, equal_nan=True
    )


def test_bad_images_become_errors_and_the_rest_go_on(model, questions, image_dir):
    questions[1].path = image_dir / "corrupt.jpg"
    questions[2].path = None
    questions[2].image = str(image_dir / "missing.jpg")
    answers = model.answer(questions, protocol=Protocol(taxonomy="cub200"))
    assert "corrupt.jpg" in answers.errors[1] and "missing.jpg" in answers.errors[2]
    assert answers.errors[0] is None and answers.errors[3] is None
    assert (answers.choice[1:3] == -1).all() and np.isnan(answers.probs[1:3]).all()
    check_against_reference(model, [questions[0]], answers)
    records = answers.to_records(questions)
    assert "error" in records[1] and records[0]["predicted_level1"] in questions[0].choices[0]


@pytest.mark.parametrize("mode", ["image", "text"])
def test_iter_answers_streams_the_same_answers(model, questions, image_dir, mode):
    questions[2].path = image_dir / "corrupt.jpg"
    protocol = Protocol(taxonomy="cub200", shuffle_options=True, mode=mode)
    whole = model.answer(questions, protocol=protocol)
    positions, pieces = [], []
    for pos, piece in model.iter_answers(questions, protocol=protocol, batch_size=1, chunk_size=2):
        assert len(pos) <= 2 and len(piece) == len(pos)
        positions += pos
        pieces.append(piece)
    assert positions == list(range(len(questions)))
    assert sum((p.options for p in pieces), []) == whole.options
    assert sum((p.errors for p in pieces), []) == whole.errors
    assert np.array_equal(np.concatenate([p.choice for p in pieces]), whole.choice)
    np.testing.assert_allclose(
        np.concatenate([p.probs for p in pieces]), whole.probs, atol=TOL, equal_nan=True
    )


def test_answer_not_among_options_fails_before_model_work(model, questions, monkeypatch):
    questions[2].answers[1] = "not an option"
    monkeypatch.setattr(model, "model", None)
    with pytest.raises(QuestionError, match="'not an option' of level 2 is not among its options"):
        model.answer(questions, protocol=Protocol(taxonomy="cub200"))


def test_protocol_values_are_checked(model, questions):
    with pytest.raises(ValueError, match="Protocol.templates is for CLIP models"):
        model.answer(questions, protocol=Protocol(templates=("a photo of a {}.",)))
    with pytest.raises(ValueError, match="`taxonomy`.*but got 'birds'"):
        model.answer(questions, protocol=Protocol(taxonomy="birds"))


def test_extra_records_the_protocol(model, questions):
    protocol = Protocol(taxonomy="cub200", shuffle_options=True, seed=3)
    answers = model.answer(questions[:1], protocol=protocol, progress=True)
    extra = answers.extra
    assert extra["protocol"] == {
        "taxonomy": "cub200",
        "prompt_variant": None,
        "shuffle_options": True,
        "seed": 3,
        "circular": False,
        "mode": "image",
        "templates": None,
        "first_level": 0,
        "answer": "logits",
        "max_new_tokens": None,
        "name": "paper",
    }
    assert "max_new_tokens" not in extra and answers.replies is None
    assert extra["prompt_variant"] == 0 and extra["seed"] == 3 and extra["letters"] == "ABCD"
    assert extra["family"] == model.family and extra["prefix_cache"] is True


def test_generic_prompts_without_a_taxonomy(model, questions):
    answers = model.answer(questions[:1])
    assert (answers.choice[0] >= 0).all()
    assert answers.extra["protocol"]["taxonomy"] is None


# ---------------------------------------------------------------------------- node scores
@pytest.fixture(scope="session")
def small_cub():
    from hierzoo import load_taxonomy
    from hierzoo.taxonomy import Taxonomy

    cub = load_taxonomy("cub200")
    leaves = [0, 1, 40, 120]
    paths = {cub.labels[i]: cub.path_names(int(cub.leaf_ids[i])) for i in leaves}
    return Taxonomy.from_paths(paths, ranks=cub.ranks, name="cub200")


def reference_node_loglik(m, image: Image.Image, question_text: str, name: str) -> float:
    """log p(name + end-of-turn | prompt), from one full forward of the paper's prompt + answer."""
    system = paper_system(m.family, "image")
    ctx, _ = paper_inputs(m, system, question_text, image)
    ids, out = paper_request(m, system, question_text, image, answer=name + "<|im_end|>")
    n = len(ctx)
    assert ids[:n] == ctx
    logp = torch.log_softmax(out.logits[0].float(), dim=-1)
    return float(sum(logp[t - 1, ids[t]] for t in range(n, len(ids))))


def test_node_scores_are_answer_log_likelihoods(model, small_cub, image_dir):
    from hierzoo import prompts

    paths = [image_dir / "img0.jpg", image_dir / "img1.jpg"]
    scores = model.score_nodes(paths, small_cub)
    assert scores.kind == "softmax" and scores.logits.shape == (2, small_cub.n_nodes)
    assert model.answer_end() == "<|im_end|>"
    for i, path in enumerate(paths):
        image = Image.open(path).convert("RGB")
        for node, name in enumerate(small_cub.names):
            question = prompts.question_text("cub200", int(small_cub.level[node]))
            ref = reference_node_loglik(model, image, question, name)
            assert abs(float(scores.logits[i, node]) - ref) < 1e-4, (i, name)
    again = model.score_nodes(paths[::-1], small_cub, batch_size=1)
    torch.testing.assert_close(again.logits, scores.logits.flip(0), atol=1e-4, rtol=0)


def test_predict_path_and_failed_images(model, small_cub, image_dir):
    images = [image_dir / "img2.jpg", image_dir / "corrupt.jpg", Image.open(image_dir / "img3.jpg")]
    scores = model.score_nodes(images, small_cub)
    assert scores.errors[0] is None and "corrupt.jpg" in scores.errors[1]
    assert torch.isnan(scores.logits[1]).all() and torch.isfinite(scores.logits[[0, 2]]).all()
    paths = model.predict_path([image_dir / "img2.jpg"], small_cub, "joint")
    assert paths.consistent.all() and len(paths.names[0]) == small_cub.depth
    with pytest.raises(ValueError, match="not preprocessed tensors"):
        model.score_nodes(torch.zeros(3, 8, 8), small_cub)


# ---------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_defaults_to_bfloat16(models, tiny_dirs, family, questions, small_cub):
    protocol = Protocol(taxonomy="cub200", circular=True)
    cpu = models[family].answer(questions, protocol=protocol)
    exact = hierzoo.load(tiny_dirs[family], device="cuda", dtype="float32")
    assert exact.device.type == "cuda" and exact.token_budget > CPU_BUDGET
    got = exact.answer(questions, protocol=protocol)
    np.testing.assert_allclose(
        got.extra["letter_logits"], cpu.extra["letter_logits"], atol=1e-4, equal_nan=True
    )
    assert np.array_equal(got.choice, cpu.choice)
    exact.prefix_cache = False
    plain = exact.answer(questions, protocol=protocol)
    np.testing.assert_allclose(
        plain.extra["letter_logits"], got.extra["letter_logits"], atol=1e-4, equal_nan=True
    )
    fast = hierzoo.load(tiny_dirs[family], device="cuda")
    assert fast.dtype == torch.bfloat16
    half = fast.answer(questions, protocol=protocol)
    np.testing.assert_allclose(
        half.extra["letter_logits"], cpu.extra["letter_logits"], atol=0.1, equal_nan=True
    )
    scores = fast.score_nodes([q.path for q in questions], small_cub)
    assert torch.isfinite(scores.logits).all()


def test_first_level_names_the_rank_of_a_set_that_starts_lower(model, questions):
    from dataclasses import replace

    from hierzoo.prompts import plan_questions

    lower = [replace(q, answers=q.answers[1:], choices=q.choices[1:]) for q in questions[:1]]
    plan = plan_questions(lower, Protocol(taxonomy="cub200", first_level=1), family=model.family)
    assert (
        "family of the bird" in plan.requests[0].text
        and "species of the bird" in plan.requests[-1].text
    )
    top = plan_questions(lower, Protocol(taxonomy="cub200"), family=model.family)
    assert "order of the bird" in top.requests[0].text


def test_clip_only_options_are_refused_by_name(tiny_dirs):
    with pytest.raises(
        ValueError, match="worker_decode, decode_on_device|decode_on_device, worker_decode"
    ):
        hierzoo.load(
            str(tiny_dirs["qwen2.5-vl"]),
            device="cpu",
            worker_decode="tensor",
            decode_on_device=True,
        )


def test_the_papers_loop_asks_what_the_model_is_asked(models, questions):
    """hierzoo.baselines' per-question loop asks the planner's requests: a level without an
    answer is not asked and draws no option order (it used to be asked, and to shift the
    order of every later level)."""
    from hierzoo.baselines import vlm_forward_loop

    m = models["qwen2.5-vl"]
    questions[0].answers[1] = None
    _, names = vlm_forward_loop(m, questions)
    answers = m.answer(questions, protocol=Protocol(taxonomy="cub200", shuffle_options=True))
    assert names == [answers.predicted(i) for i in range(len(questions))]


# ---------------------------------------------------------------------------- generated answers
def generate_protocol(**kw) -> Protocol:
    return Protocol(taxonomy="cub200", answer="generate", **kw)


@pytest.fixture
def generation_config(model):
    """The model's generation config, put back after the test."""
    saved = copy.deepcopy(model.model.generation_config)
    yield model.model.generation_config
    model.model.generation_config = saved


def check_replies(m, questions, answers, max_new_tokens, *, mode="image"):
    """Every reply equals ``generate`` on that question alone, and the choice is the paper's
    parse of it."""
    from hierzoo import prompts

    asked = 0
    for i, q in enumerate(questions):
        for k, options in enumerate(answers.options[i]):
            if not options:
                assert answers.replies[i][k] is None and answers.choice[i, k] == -1
                continue
            asked += 1
            ref = reference_reply(m, q, k, options, max_new_tokens, mode=mode)
            assert answers.replies[i][k] == ref, (i, k)
            letters = "ABCDEFGH"[: len(options)]
            letter = prompts.parse_paper_answer(ref, letters)
            assert answers.choice[i, k] == (letters.index(letter) if letter else -1)
    assert asked > 0


def test_generated_replies_equal_generate_per_question(model, questions):
    protocol = generate_protocol(shuffle_options=True)
    answers = model.answer(questions, protocol=protocol)
    paper = {"qwen2.5-vl": 10, "llava-onevision": 10, "internvl": 5, "qwen3-vl": 10}
    assert answers.extra["max_new_tokens"] == paper[model.family]
    check_replies(model, questions, answers, paper[model.family])
    # the letter probabilities are those of --answer logits: the first generated token's
    logits = model.answer(questions, protocol=Protocol(taxonomy="cub200", shuffle_options=True))
    np.testing.assert_allclose(answers.probs, logits.probs, atol=TOL, equal_nan=True)
    assert logits.replies is None
    # full prompts, one image per pass, one question per pass: the same replies
    runs = {"one image per pass": model.answer(questions, protocol=protocol, batch_size=1)}
    model.token_budget, budget = 150, model.token_budget
    try:
        runs["one question per pass"] = model.answer(questions, protocol=protocol)
    finally:
        model.token_budget = budget
    model.prefix_cache = False
    runs["full prompts"] = model.answer(questions, protocol=protocol)
    for key, got in runs.items():
        assert got.replies == answers.replies, key
        assert np.array_equal(got.choice, answers.choice), key
        np.testing.assert_allclose(got.probs, answers.probs, atol=TOL, equal_nan=True)


def test_generated_replies_in_text_mode(model, questions):
    qs = questions[:2]
    for q in qs:
        q.path = Path("/nonexistent/image.jpg")
    answers = model.answer(qs, protocol=generate_protocol(mode="text"))
    assert answers.extra["max_new_tokens"] == 5 and answers.errors == [None, None]
    check_replies(model, qs, answers, 5, mode="text")
    model.prefix_cache = False
    assert model.answer(qs, protocol=generate_protocol(mode="text")).replies == answers.replies


def test_the_checkpoints_generation_config_is_applied(model, questions, generation_config):
    """A repetition penalty and sampling settings (ignored under do_sample=False), as Qwen2.5-VL's
    checkpoints carry them: the replies still equal ``generate`` on each question, and the
    penalty changes them."""
    generation_config.repetition_penalty = 3.0
    generation_config.temperature, generation_config.top_k, generation_config.top_p = 0.1, 1, 0.001
    answers = model.answer(questions[:2], protocol=generate_protocol(max_new_tokens=6))
    check_replies(model, questions[:2], answers, 6)
    model.prefix_cache = False
    plain = model.answer(questions[:2], protocol=generate_protocol(max_new_tokens=6))
    assert plain.replies == answers.replies
    generation_config.repetition_penalty = None
    assert model.answer(questions[:2], protocol=generate_protocol(max_new_tokens=6)).replies != (
        answers.replies
    )


def test_a_biased_model_parses_and_records_as_the_paper(model, questions, generation_config):
    """A generation config that favours one token makes every reply that token repeated: "B"
    parses as B, "x" as Unknown, recorded in the paper's fields."""
    tok = model.processor.tokenizer
    generation_config.sequence_bias = [[[tok.convert_tokens_to_ids("B")], 100.0]]
    answers = model.answer(questions, protocol=generate_protocol(max_new_tokens=3))
    check_replies(model, questions[:1], answers, 3)
    records = answers.to_records(questions)
    for i, q in enumerate(questions):
        for k, options in enumerate(answers.options[i]):
            n = k + 1
            assert answers.replies[i][k] == "BBB" and answers.choice[i, k] == 1
            assert records[i][f"prediction_level{n}"] == "BBB"
            assert records[i][f"predicted_level{n}_letter"] == "B"
            assert records[i][f"predicted_level{n}"] == options[1]
            assert records[i][f"ground_truth_level{n}"] == q.answers[k]
            assert set(records[i][f"probs_level{n}"]) == set("ABCD"[: len(options)])

    generation_config.sequence_bias = [[[tok.convert_tokens_to_ids("x")], 100.0]]
    answers = model.answer(questions[:1], protocol=generate_protocol(max_new_tokens=3))
    assert (answers.choice == -1).all() and answers.replies[0] == ["xxx"] * 4
    (record,) = answers.to_records(questions[:1])
    for n in range(1, 5):
        assert record[f"prediction_level{n}"] == "xxx"
        assert record[f"predicted_level{n}"] == record[f"predicted_level{n}_letter"] == "Unknown"
        assert record[f"ground_truth_level{n}"] == questions[0].answers[n - 1]
    assert answers.predicted(0) == [None] * 4


def test_circular_generation_parses_every_rotation(model, questions, generation_config):
    tok = model.processor.tokenizer
    generation_config.sequence_bias = [[[tok.convert_tokens_to_ids("B")], 100.0]]
    qs = questions[:3]
    answers = model.answer(qs, protocol=generate_protocol(circular=True, max_new_tokens=2))
    rotations = answers.extra["rotation_choices"]
    for i in range(len(qs)):
        for k, options in enumerate(answers.options[i]):
            m = len(options)
            # rotation r asks options[r:] + options[:r]; its "B" is options[(r + 1) % m]
            assert rotations[i, k, :m].tolist() == [(r + 1) % m for r in range(m)]
            assert answers.extra["rotation_replies"][i][k] == ["BB"] * m
            assert not answers.correct[i, k]  # one letter for every rotation is never right
    generation_config.sequence_bias = [[[tok.convert_tokens_to_ids("x")], 100.0]]
    unknown = model.answer(qs, protocol=generate_protocol(circular=True, max_new_tokens=2))
    assert (unknown.extra["rotation_choices"] == -1).all() and not unknown.correct.any()


def test_a_generation_config_that_is_not_greedy_is_refused(model, questions, generation_config):
    generation_config.num_beams = 2
    with pytest.raises(ValueError, match="decodes by beam_search.*greedy decoding only"):
        model.answer(questions[:1], protocol=generate_protocol())


def test_records_of_generated_answers():
    """The record mapping alone: a parsed reply, an Unknown one, a level not asked."""
    from hierzoo.models.outputs import Answers

    q = Question(
        image="a.jpg",
        label="leaf",
        answers=["top", "mid", "leaf"],
        choices=[["top", "other"], ["x", "mid", "y"], ["leaf", "z"]],
    )
    answers = Answers(
        choice=np.array([[0, -1, -1]]),
        probs=np.array([[[0.7, 0.3, np.nan], [0.2, 0.5, 0.3], [np.nan] * 3]], dtype=np.float32),
        options=[[["top", "other"], ["x", "mid", "y"], []]],
        errors=[None],
        replies=[["Answer: B", "c", None]],
    )
    (row,) = answers.to_records([q])
    assert row["prediction_level1"] == "Answer: B"
    assert row["predicted_level1"] == "top" and row["predicted_level1_letter"] == "A"
    assert row["prediction_level2"] == "c"
    assert row["predicted_level2"] == row["predicted_level2_letter"] == "Unknown"
    assert row["probs_level2"] == {"A": 0.2, "B": 0.5, "C": 0.3}
    assert not any(key.endswith("level3") for key in row)
    logits = Answers(answers.choice, answers.probs, answers.options, [None])
    assert "prediction_level1" not in logits.to_records([q])[0]
    assert "predicted_level2" not in logits.to_records([q])[0]


# ---------------------------------------------------------------------------- dry run
def processor_truth(m, image: Image.Image, text: str) -> tuple[dict, int]:
    """Tiles, size and image tokens of one image as the paper's scripts prepare it (the
    transcription of their image code, then the processor's own output the way each family's
    model reads it), and the prompt's token count."""
    import paper_reference as pr

    config = m.model.config
    if m.family in ("qwen2.5-vl", "qwen3-vl"):
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        ip = m.processor.image_processor
        side = ip.patch_size * ip.merge_size
        image = pr.paper_qwen_image(image, side, 4 * side * side, 16384 * side * side)
        enc = m.processor(text=[text], images=[image], return_tensors="pt")
        h, w = smart_resize(
            image.height, image.width, side, ip.size["shortest_edge"], ip.size["longest_edge"]
        )
        assert enc["image_grid_thw"][0].tolist() == [1, h // ip.patch_size, w // ip.patch_size]
        truth = {"size": [w, h], "tiles": 1, "tokens": (h // side) * (w // side)}
        return truth, int(enc["input_ids"].shape[1])
    if m.family == "llava-onevision":
        # one padded view: the tower's patch features and the image_newline (pad mode)
        side = config.vision_config.image_size
        tokens = (side // config.vision_config.patch_size) ** 2 + 1
        assert config.vision_feature_select_strategy == "full"
        ids = pr.tokenizer_image_token(text, lambda c: m.processor.tokenizer(c)["input_ids"])
        return {"size": [side, side], "tiles": 1, "tokens": tokens}, len(ids) - 1 + tokens
    side = config.vision_config.image_size[0]
    tiles = len(pr.load_image(image, input_size=side, max_num=4)[0])
    enc = m.processor(text=[text], images=[image], return_tensors="pt")
    truth = {"size": [side, side], "tiles": tiles, "tokens": tiles * config.image_seq_length}
    return truth, int(enc["input_ids"].shape[1])


@pytest.mark.parametrize("mode", ["image", "text"])
def test_dry_run_shows_the_prompts_answer_tokenizes(model, questions, monkeypatch, mode):
    protocol = Protocol(taxonomy="cub200", shuffle_options=True, mode=mode)
    described = model.describe_requests(questions, protocol=protocol)
    seen: list[str] = []
    encode = model._encode

    def spy(texts, images, side):
        seen.extend(texts)
        return encode(texts, images, side)

    monkeypatch.setattr(model, "_encode", spy)
    model.prefix_cache = False
    answers = model.answer(questions, protocol=protocol)
    assert [d["text"] for d in described] == seen
    asked = [(i, k) for i in range(len(questions)) for k, o in enumerate(answers.options[i]) if o]
    assert [(d["sample"], d["level"] - 1) for d in described] == asked
    for d in described:
        assert d["letters"] == "ABCD"[: len(answers.options[d["sample"]][d["level"] - 1])]
        assert "max_new_tokens" not in d and "rotation" not in d
        q = questions[d["sample"]]
        if mode == "text":
            system = paper_system(model.family, "text")
            assert d["images"] == [] and f"<|im_start|>system\n{system}<|im_end|>" in d["text"]
            continue
        image = Image.open(q.path).convert("RGB")
        (got,) = d["images"]
        truth, prompt_tokens = processor_truth(model, image, d["text"])
        assert got == {"path": str(q.path), **truth}
        assert d["prompt_tokens"] == prompt_tokens


def test_dry_run_without_weights_equals_the_loaded_model(model, tiny_dirs, questions):
    from hierzoo.models import load_for_dry_run

    light = load_for_dry_run(tiny_dirs[model.family], prefix_cache=False)
    assert light.model is None and type(light) is type(model) and not light.prefix_cache
    protocol = generate_protocol(shuffle_options=True, circular=True)
    described = light.describe_requests(questions, protocol=protocol, limit=7)
    assert described == model.describe_requests(questions, protocol=protocol, limit=7)
    assert len(described) == 7 and [d["rotation"] for d in described[:4]] == [0, 1, 2, 3]
    assert {d["max_new_tokens"] for d in described} == {5 if model.family == "internvl" else 10}
    assert light.describe_requests(questions, protocol=protocol, limit=0) == []
    with pytest.raises(ValueError, match="without its weights.*load it with hierzoo.load"):
        light.answer(questions, protocol=protocol)
    with pytest.raises(ValueError, match=r"`limit` >= 0"):
        light.describe_requests(questions, limit=-1)


def test_dry_run_reports_an_unreadable_image(model, questions, image_dir):
    questions[0].path = image_dir / "corrupt.jpg"
    first, *_ = model.describe_requests(questions, protocol=Protocol(taxonomy="cub200"), limit=1)
    (image,) = first["images"]
    assert image["path"].endswith("corrupt.jpg") and image["error"]
    assert first["prompt_tokens"] is None and "size" not in image
