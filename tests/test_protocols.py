"""The paper's prompting experiments as named protocols (``--protocol cot | bio-cot``): the
requests equal the paper's prompts transcribed in tests/paper_reference.py, the answers equal
``generate`` on each full prompt on tiny models, and what cannot be asked is refused by name."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import paper_reference as ref
import pytest
from cub_images import write_cub_images

from hierzoo import prompts
from hierzoo.cli import main
from hierzoo.prompts import Protocol, plan_questions
from hierzoo.tasks import Question, read_questions

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402
from vlm_reference import paper_generate, paper_system  # noqa: E402

from hierzoo.models import tiny  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "hierzoo/data"
PAPER_FAMILIES = ("qwen2.5-vl", "llava-onevision", "internvl")
BUILDERS = {
    "qwen2.5-vl": tiny.build_tiny_qwen2_5_vl,
    "qwen3-vl": tiny.build_tiny_qwen3_vl,
    "llava-onevision": tiny.build_tiny_llava_onevision,
    "internvl": tiny.build_tiny_internvl,
}
N_EVAL = 4


def _entries(n: int) -> list[dict]:
    """The first ``n`` entries of the paper's CUB-200 question file, as its scripts read them."""
    lines = (DATA / "questions/CUB200_with_random_choice.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:n]]


def _cot(**kw) -> Protocol:
    return Protocol(taxonomy="cub200", name="cot", answer="generate", **kw)


def _paper_cot_texts(family: str, n: int) -> list[str]:
    """Every CoT question of the first ``n`` CUB entries, as the family's CoT script asks them:
    one seeded generator through the file, levels in string order, variant 0."""
    out = []
    for cmaps in ref.shuffled_choice_maps(_entries(n), numeric=False):
        for t, cmap in enumerate(cmaps.values()):
            rank = ref.COT_CUB_RANKS[min(t, 3)]
            out.append(ref.cot_question(ref.COT_CUB_TEMPLATE_0.format(rank=rank), cmap, family))
    return out


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("protocol_images")
    rng = np.random.default_rng(1)
    for i, (w, h) in enumerate([(64, 64), (80, 48), (48, 90)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(root / f"{i}.jpg")
    return root


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("protocol_models")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def models(tiny_dirs):
    import hierzoo

    return {name: hierzoo.load(path, device="cpu") for name, path in tiny_dirs.items()}


@pytest.fixture
def cub(image_dir) -> list[Question]:
    qs = copy.deepcopy(read_questions("cub200-random")[:3])
    for i, q in enumerate(qs):
        q.path = image_dir / f"{i}.jpg"
    return qs


def _reference_reply(m, system: str, text: str, image: Path | None, max_new_tokens: int) -> str:
    """One question as the paper's scripts ask it (tests/vlm_reference.py: the family's prompt
    over ``system`` and the user turn, the image prepared as its scripts prepare it)."""
    pil = Image.open(image).convert("RGB") if image is not None else None
    return paper_generate(m, system, text, pil, max_new_tokens)


# ---------------------------------------------------------------------------- cot: requests
@pytest.mark.parametrize("family", PAPER_FAMILIES)
def test_cot_requests_are_the_papers(family):
    n = 8
    questions = read_questions("cub200-random")[:n]
    plan = plan_questions(questions, _cot(shuffle_options=True), family=family)
    assert [r.text for r in plan.requests] == _paper_cot_texts(family, n)
    assert {r.system for r in plan.requests} == {paper_system(family, "image")}
    assert _cot().reply_tokens(family) == ref.COT_MAX_NEW_TOKENS[family]
    apostrophe = "\u2019" if family == "qwen2.5-vl" else "'"
    assert all(
        f"\nLet{apostrophe}s think step by step. Answer with" in r.text for r in plan.requests
    )


def test_cot_changes_only_the_last_line():
    questions = read_questions("cub200-random")[:3]
    paper = plan_questions(questions, Protocol(taxonomy="cub200", mode="text"), family="llm")
    cot = plan_questions(questions, _cot(mode="text"), family="llm")
    for p, c in zip(paper.requests, cot.requests, strict=True):
        head, last = p.text.rsplit("\n", 1)
        assert c.text == f"{head}\n{ref.COT_ASCII}{last}" and c.system == p.system


def test_dry_run_of_cot_renders_the_papers_prompt(models, cub):
    m = models["qwen2.5-vl"]
    described = m.describe_requests(cub, protocol=_cot(shuffle_options=True))
    texts = _paper_cot_texts("qwen2.5-vl", len(cub))
    assert [d["text"] for d in described] == [
        ref.qwen2_5_vl_render(ref.SYSTEM_EXPERT, t) for t in texts
    ]
    assert {d["max_new_tokens"] for d in described} == {10}


# ---------------------------------------------------------------------------- cot: answers
@pytest.mark.parametrize("family", list(BUILDERS))
def test_cot_replies_equal_generate_per_question(models, cub, family):
    m = models[family]
    protocol = _cot(shuffle_options=True, max_new_tokens=6)
    answers = m.answer(cub, protocol=protocol)
    plan = plan_questions(cub, protocol, family=family)
    suffix = ref.COT_QWEN if family.startswith("qwen") else ref.COT_ASCII
    for r in plan.requests:
        assert r.text.endswith(suffix + ref.INSTRUCTION)
        want = _reference_reply(m, paper_system(family, "image"), r.text, cub[r.sample].path, 6)
        assert answers.replies[r.sample][r.level] == want
        letter, _ = ref.parse_letter(want, ref.choice_map(r.options))
        assert answers.choice[r.sample, r.level] == "ABCD".find(letter)
    assert answers.extra["protocol"]["name"] == "cot"
    assert "parse" not in answers.extra["protocol"]  # the paper's rule
    m.prefix_cache = False
    try:
        assert m.answer(cub, protocol=protocol).replies == answers.replies
    finally:
        m.prefix_cache = True


def test_last_letter_parse_reads_the_final_answer():
    cases = {
        "Answer: C": "C",
        "The bird is a gull. So the answer is **B**.": "B",
        "Both A and D fit, but D": "D",
        "D. Anatidae": "D",
        "A bird of prey": "A",
        "AB": None,
        "c": None,
        "E is not an option, nor is 1": None,
        "": None,
    }
    for reply, want in cases.items():
        assert prompts.parse_last_letter(reply, "ABCD") == want, reply
        assert prompts.parse_answer(reply, "ABCD", "last-letter") == want
    # the paper's rule on the same replies, for contrast
    assert prompts.parse_answer("Answer: C", "ABCD") == "A"
    assert prompts.parse_answer("The answer is B", "ABCD", "paper") == "B"
    with pytest.raises(ValueError, match="`parse`.*'first'"):
        prompts.parse_answer("A", "ABCD", "first")


def test_last_letter_parse_on_a_model_reads_the_same_replies(models, cub):
    """The parse changes the choice read from each reply, never the reply: choices follow the
    last-letter rule on the replies of the paper-parsed run."""
    m = models["internvl"]
    paper = m.answer(cub, protocol=_cot(max_new_tokens=12))
    last = m.answer(cub, protocol=_cot(max_new_tokens=12, parse="last-letter"))
    assert last.replies == paper.replies
    assert last.extra["protocol"]["parse"] == "last-letter"
    n = 0
    for i, levels in enumerate(last.options):
        for k, options in enumerate(levels):
            if options:
                letter = prompts.parse_last_letter(paper.replies[i][k], "ABCD"[: len(options)])
                assert last.choice[i, k] == ("ABCD".index(letter) if letter else -1)
                n += 1
    assert n == sum(len(q.answers) for q in cub)


# ---------------------------------------------------------------------------- refusals
def test_named_protocols_refuse_what_they_cannot_ask():
    with pytest.raises(ValueError, match="--protocol cot .* add --answer generate"):
        Protocol(taxonomy="cub200", name="cot")
    with pytest.raises(ValueError, match="--parse last-letter reads generated replies"):
        Protocol(taxonomy="cub200", parse="last-letter")
    with pytest.raises(ValueError, match=r"`parse` \(--parse\).*'last'"):
        Protocol(answer="generate", parse="last")


def test_text_llms_and_served_models_answer_cot():
    from hierzoo.models.api.openai_chat import OpenAIChatClassifier
    from hierzoo.models.clip._base import ClipClassifier
    from hierzoo.models.llm import TextLLMClassifier
    from hierzoo.models.vlm import VisionLLMClassifier

    assert "cot" in TextLLMClassifier.protocols and "bio-cot" not in TextLLMClassifier.protocols
    assert "cot" in OpenAIChatClassifier.protocols
    assert {"cot", "bio-cot"} <= set(VisionLLMClassifier.protocols)
    assert "cot" not in ClipClassifier.protocols


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory, tiny_dirs):
    root = tmp_path_factory.mktemp("protocol_eval")
    write_cub_images(root, N_EVAL)
    return {"images": str(root / "data"), "model": str(tiny_dirs["qwen2.5-vl"])}


def _eval(setup, out, *extra) -> list[str]:
    return [
        "eval",
        "--model",
        setup["model"],
        "--questions",
        "cub200-similar",
        "--image-root",
        setup["images"],
        "--taxonomy",
        "cub200",
        "--limit",
        str(N_EVAL),
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]


def test_eval_refuses_cot_without_generation_before_loading(eval_setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_eval(eval_setup, out, "--protocol", "cot")) == 2
    assert "--protocol cot" in capsys.readouterr().err and not out.exists()
    assert main(_eval(eval_setup, out, "--parse", "last-letter")) == 2
    assert "add --answer generate" in capsys.readouterr().err and not out.exists()
    assert main(_eval(eval_setup, out, "--protocol", "bio-cot", "--answer", "generate")) == 2
    err = capsys.readouterr().err
    assert "['inat21-animal', 'inat21-plant']" in err and "'cub200'" in err and not out.exists()


def test_eval_cot_dry_run_run_resume_and_report(eval_setup, tmp_path, capsys):
    cot = ("--protocol", "cot", "--answer", "generate")
    assert main(_eval(eval_setup, tmp_path / "dry", *cot, "--dry-run", "3")) == 0
    shown = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(shown) == 3 and not (tmp_path / "dry").exists()
    assert all(f"\n{ref.COT_QWEN}{ref.INSTRUCTION}<|im_end|>" in d["text"] for d in shown)
    out = tmp_path / "cot"
    args = _eval(eval_setup, out, *cot, "--parse", "last-letter", "--max-new-tokens", "8")
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "cot" and summary["parse"] == "last-letter"
    ident = json.loads((out / "run.json").read_text())["identity"]
    assert ident["protocol"] == "cot" and ident["parse"] == "last-letter"
    assert ident["max_new_tokens"] == 8
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    for r in rows:
        for k in range(1, 5):
            letter = prompts.parse_last_letter(r[f"prediction_level{k}"], "ABCD") or "Unknown"
            assert r[f"predicted_level{k}_letter"] == letter
    # resume: a run cut after two samples finishes with the same records
    preds = out / "predictions.jsonl"
    full = preds.read_text()
    preds.write_text("".join(full.splitlines(keepends=True)[:2]))
    (out / "summary.json").unlink()
    assert main(args) == 0
    assert preds.read_text() == full
    # the paper's parse is another run: refused in the same folder
    capsys.readouterr()
    assert main(_eval(eval_setup, out, *cot, "--max-new-tokens", "8")) == 2
    assert "parse" in capsys.readouterr().err
    paper = tmp_path / "paper"
    assert main(_eval(eval_setup, paper, "--answer", "generate")) == 0
    capsys.readouterr()
    report = tmp_path / "report"
    assert main(["report", str(out), str(paper), "--out", str(report), "--no-plots"]) == 0
    table = (report / "report.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    assert "| protocol |" in header
    assert "(generate, cot, last-letter)" in table and "| paper |" in table


# ---------------------------------------------------------------------------- bio-cot
def _inat(taxonomy: str, image_dir: Path) -> list[Question]:
    """Four-choice questions on three leaves of a bundled iNat21 taxonomy, with images."""
    from hierzoo import load_taxonomy
    from hierzoo.tasks import build_questions

    tax = load_taxonomy(taxonomy)
    leaves = [tax.labels[i] for i in (0, len(tax.labels) // 2, len(tax.labels) - 1)]
    samples = [(str(image_dir / f"{i}.jpg"), leaf) for i, leaf in enumerate(leaves)]
    qs = build_questions(tax, samples, distractors="similar", seed=0)
    for q, (path, _) in zip(qs, samples):
        q.path = Path(path)
    return qs


def _bio(taxonomy: str, **kw) -> Protocol:
    return Protocol(taxonomy=taxonomy, name="bio-cot", **kw)


@pytest.mark.parametrize("taxonomy", ["inat21-animal", "inat21-plant"])
def test_bio_cot_requests_are_the_papers(taxonomy, image_dir):
    questions = _inat(taxonomy, image_dir)
    plan = plan_questions(questions, _bio(taxonomy, shuffle_options=True), family="qwen2.5-vl")
    noun = taxonomy.split("-")[1]
    expected = []
    entries = [q.to_dict() for q in questions]
    for cmaps in ref.shuffled_choice_maps(entries, numeric=False):
        for t, cmap in enumerate(cmaps.values()):
            rank = ref.BIO_COT_RANKS[min(t, 6)]
            template = ref.BIO_COT_TEMPLATE_1.format(noun=noun, rank=rank)
            expected.append(ref.question(template, cmap))
    assert [r.text for r in plan.requests] == expected
    assert {r.system for r in plan.requests} == {ref.BIO_COT_SYSTEM[taxonomy]}
    assert plan.prompt_variant == 1
    generated = _bio(taxonomy, answer="generate")
    assert generated.reply_tokens("llava-onevision") == ref.BIO_COT_MAX_NEW_TOKENS
    assert _bio(taxonomy, prompt_variant=3).reply_tokens("internvl") is None
    assert plan_questions(questions, _bio(taxonomy, prompt_variant=3)).prompt_variant == 3


def test_dry_run_of_bio_cot_renders_the_papers_prompt(models, image_dir):
    m = models["qwen2.5-vl"]
    questions = _inat("inat21-plant", image_dir)
    protocol = _bio("inat21-plant", answer="generate", shuffle_options=True)
    described = m.describe_requests(questions, protocol=protocol)
    plan = plan_questions(questions, protocol, family="qwen2.5-vl")
    rendered = [ref.qwen2_5_vl_render(ref.BIO_COT_PLANT, r.text) for r in plan.requests]
    assert [d["text"] for d in described] == rendered
    assert {d["max_new_tokens"] for d in described} == {5}
    # the long system message is in every prompt's token count
    paper = m.describe_requests(questions, protocol=Protocol(taxonomy="inat21-plant"), limit=1)
    assert described[0]["prompt_tokens"] > paper[0]["prompt_tokens"] + 100


@pytest.mark.parametrize("family", list(BUILDERS))
def test_bio_cot_answers_equal_generate_per_question(models, image_dir, family):
    m = models[family]
    questions = _inat("inat21-animal", image_dir)[:2]
    protocol = _bio("inat21-animal", answer="generate", shuffle_options=True)
    answers = m.answer(questions, protocol=protocol)
    assert answers.extra["max_new_tokens"] == 5 and answers.extra["prompt_variant"] == 1
    plan = plan_questions(questions, protocol, family=family)
    for r in plan.requests:
        want = _reference_reply(m, ref.BIO_COT_ANIMAL, r.text, questions[r.sample].path, 5)
        assert answers.replies[r.sample][r.level] == want
    m.prefix_cache = False
    try:
        plain = m.answer(questions, protocol=protocol)
    finally:
        m.prefix_cache = True
    assert plain.replies == answers.replies
    np.testing.assert_allclose(plain.probs, answers.probs, atol=1e-5, equal_nan=True)


def test_bio_cot_refusals_name_the_fix(models, image_dir):
    with pytest.raises(ValueError, match=r"\['inat21-animal', 'inat21-plant'\].*'cub200'"):
        _bio("cub200")
    with pytest.raises(ValueError, match="for \\['inat21-animal', 'inat21-plant'\\].*None"):
        _bio(None)
    with pytest.raises(ValueError, match="bio-cot.*images only.*--mode image"):
        _bio("inat21-plant", mode="text")


# ---------------------------------------------------------------------------- taxonomy-context
CUB_JSON = (DATA / "taxonomies/hierarchy_CUB200.json").read_text(encoding="utf-8")
"""Byte for byte the paper's data/taxonomies/hierarchy_CUB200.json, which its scripts read."""


def _tax(taxonomy, **kw) -> Protocol:
    return Protocol(taxonomy=taxonomy, name="taxonomy-context", **kw)


@pytest.mark.parametrize("family", ["qwen2.5-vl", "internvl"])
def test_taxonomy_context_requests_are_the_papers(family):
    n = 6
    questions = read_questions("cub200-random")[:n]
    protocol = _tax("cub200", shuffle_options=True)
    plan = plan_questions(questions, protocol, family=family)
    context = ref.taxonomy_context(CUB_JSON)
    assert context.startswith("{'Black-footed Albatross': ['Procellariiformes', ")
    expected = []
    for cmaps in ref.shuffled_choice_maps(_entries(n), numeric=False):
        for t, cmap in enumerate(cmaps.values()):
            # the taxonomy scripts ask the CUB question of the CoT scripts, variant 0
            template = ref.COT_CUB_TEMPLATE_0.format(rank=ref.COT_CUB_RANKS[min(t, 3)])
            if family == "qwen2.5-vl":
                expected.append(ref.question_taxonomy_qwen(template, cmap))
            else:
                expected.append(ref.question(template, cmap))
    assert [r.text for r in plan.requests] == expected
    framing = prompts.protocol_framing(protocol, family)
    if family == "qwen2.5-vl":
        assert framing == (ref.taxonomy_qwen_system(context), None)
        assert {r.system for r in plan.requests} == {ref.taxonomy_qwen_system(context)}
    else:  # the taxonomy before the image; InternVL keeps its built-in system message
        assert framing == (None, ref.TAXONOMY_CONTEXT + context)
        assert {r.system for r in plan.requests} == {ref.INTERNVL_SYSTEM}
    generated = _tax("cub200", answer="generate")
    assert generated.reply_tokens(family) == ref.TAXONOMY_MAX_NEW_TOKENS[family]


def test_taxonomy_context_renders_the_papers_prompt(models):
    """The whole CUB prompt as the family's chat template renders it (the tiny models' context
    is too short to ask it, so the template is rendered without the length check)."""
    context = ref.taxonomy_context(CUB_JSON)
    questions = read_questions("cub200-random")[:1]
    protocol = _tax("cub200", shuffle_options=True)
    for family in ("qwen2.5-vl", "internvl"):
        m = models[family]
        head, tail = m.template("image", prompts.protocol_framing(protocol, family))
        (cmaps,) = ref.shuffled_choice_maps(_entries(1), numeric=False)
        cmap = cmaps["level1"]
        template = ref.COT_CUB_TEMPLATE_0.format(rank="order")
        text = plan_questions(questions, protocol, family=family).requests[0].text
        if family == "qwen2.5-vl":
            want = ref.qwen2_5_vl_render(
                ref.taxonomy_qwen_system(context), ref.question_taxonomy_qwen(template, cmap)
            )
        else:  # the -hf template's image placeholder stands where the paper's <image> does
            user = ref.taxonomy_internvl_question(context, ref.question(template, cmap))
            want = ref.chatml(ref.INTERNVL_SYSTEM, user.replace("<image>", "<IMG_CONTEXT>"))
        assert head + text + tail == want


def _toy(image_dir: Path):
    from hierzoo.tasks import build_questions
    from hierzoo.taxonomy import Taxonomy

    paths = {
        leaf: [order, family, leaf]
        for order, family, leaf in [
            ("Aves", "Laridae", "Herring Gull"),
            ("Aves", "Laridae", "Common Tern"),
            ("Aves", "Corvidae", "Blue Jay"),
            ("Mammalia", "Felidae", "Lynx"),
            ("Mammalia", "Canidae", "Red Fox"),
        ]
    }
    tax = Taxonomy.from_paths(paths, ranks=("class", "family", "species"), name="toy")
    samples = [(str(image_dir / f"{i}.jpg"), leaf) for i, leaf in enumerate(["Lynx", "Blue Jay"])]
    qs = build_questions(tax, samples, seed=0)
    for q, (path, _) in zip(qs, samples):
        q.path = Path(path)
    return tax, qs


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl", "internvl"])
def test_taxonomy_context_answers_equal_generate_per_question(models, image_dir, family):
    m = models[family]
    tax, questions = _toy(image_dir)
    protocol = _tax(tax, answer="generate", shuffle_options=True)
    context = ref.TAXONOMY_CONTEXT + str(tax.to_paths())
    described = m.describe_requests(questions, protocol=protocol)
    tok = m.processor.tokenizer
    cost = len(tok(context, add_special_tokens=False)["input_ids"])
    assert {d["context_tokens"] for d in described} == {cost}
    plain = m.describe_requests(questions, protocol=Protocol(taxonomy=tax, shuffle_options=True))
    for d, p in zip(described, plain, strict=True):
        assert d["prompt_tokens"] > cost
        if family == "internvl":  # the same system message: the taxonomy is the difference
            assert abs(d["prompt_tokens"] - p["prompt_tokens"] - cost) <= 4  # + the joins
    answers = m.answer(questions, protocol=protocol)
    plan = plan_questions(questions, protocol, family=family)
    for r in plan.requests:
        image = questions[r.sample].path
        if family == "internvl":  # the taxonomy, then the image, then the question
            want = _reference_reply_before_image(m, context, r.text, image, 5)
        else:
            want = _reference_reply(m, ref.TAXONOMY_QWEN_SYSTEM + context, r.text, image, 10)
        assert answers.replies[r.sample][r.level] == want
    m.prefix_cache = False
    try:
        assert m.answer(questions, protocol=protocol).replies == answers.replies
    finally:
        m.prefix_cache = True


def _reference_reply_before_image(m, preamble: str, text: str, image: Path, n: int) -> str:
    content = [
        {"type": "text", "text": preamble},
        {"type": "image"},
        {"type": "text", "text": text},
    ]
    messages = [
        {"role": "system", "content": [{"type": "text", "text": ref.INTERNVL_SYSTEM}]},
        {"role": "user", "content": content},
    ]
    prompt = m.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.index(preamble) < prompt.index("<IMG_CONTEXT>") < prompt.index(text)
    enc = m.processor(text=[prompt], images=[Image.open(image).convert("RGB")], return_tensors="pt")
    with torch.no_grad():
        out = m.model.generate(**enc, max_new_tokens=n, do_sample=False)
    return m.processor.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)[
        0
    ]


def test_taxonomy_context_refusals_name_sizes_and_fixes(models, image_dir, cub):
    m = models["qwen2.5-vl"]
    with pytest.raises(ValueError, match=r"taxonomy 'cub200' \(\d+ tokens\).*at most 4096 "):
        m.describe_requests(cub, protocol=_tax("cub200"))
    with pytest.raises(ValueError, match=r"text_config.max_position_embeddings"):
        m.answer(cub, protocol=_tax("cub200"))
    tax, questions = _toy(image_dir)
    with pytest.raises(ValueError, match=r"for \['qwen2.5-vl', 'qwen3-vl', 'internvl'\]"):
        models["llava-onevision"].describe_requests(questions, protocol=_tax(tax))
    with pytest.raises(ValueError, match="taxonomy-context.*--mode image"):
        _tax(tax, mode="text")
    with pytest.raises(ValueError, match="pass --taxonomy NAME"):
        _tax(None)
    with pytest.raises(ValueError, match="bundled taxonomy.*'birds'"):
        _tax("birds")


def test_eval_taxonomy_context_refuses_what_cannot_fit(eval_setup, tmp_path, capsys):
    out = tmp_path / "tax"
    args = _eval(eval_setup, out, "--protocol", "taxonomy-context")
    assert main([*args, "--dry-run", "2"]) == 2
    assert "at most 4096" in capsys.readouterr().err
    assert main(args) == 2
    assert "at most 4096" in capsys.readouterr().err and not (out / "predictions.jsonl").exists()


def test_eval_taxonomy_context_dry_run_run_and_resume(eval_setup, tmp_path, capsys):
    """CUB-200's taxonomy in every prompt of a tiny Qwen2.5-VL whose context admits it: the dry
    run and the summary say what it costs; a resumed run equals a fresh one."""
    import shutil

    model = tmp_path / "long"
    shutil.copytree(eval_setup["model"], model)
    config = json.loads((model / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 16384
    (model / "config.json").write_text(json.dumps(config))
    setup = {**eval_setup, "model": str(model)}
    flags = ("--protocol", "taxonomy-context", "--answer", "generate", "--limit", "2")
    assert main([*_eval(setup, tmp_path / "dry", *flags), "--dry-run", "2"]) == 0
    shown = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    context = ref.taxonomy_qwen_system(ref.taxonomy_context(CUB_JSON))
    assert all(f"<|im_start|>system\n{context}<|im_end|>" in d["text"] for d in shown)
    cost = shown[0]["context_tokens"]
    assert cost > 10_000 and all(d["prompt_tokens"] > cost for d in shown)
    out = tmp_path / "run"
    assert main(_eval(setup, out, *flags)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "taxonomy-context" and summary["context_tokens"] == cost
    preds = out / "predictions.jsonl"
    full = preds.read_text()
    preds.write_text(full.splitlines(keepends=True)[0])
    (out / "summary.json").unlink()
    assert main(_eval(setup, out, *flags)) == 0
    assert preds.read_text() == full


def test_cot_on_a_text_only_llm_equals_generate_per_question(tmp_path):
    """A text-only LLM asked ``cot`` in text mode: the paper's text question with the ASCII CoT
    text before the instruction, under its chat framing; each reply equals ``generate`` on the
    whole prompt alone."""
    import hierzoo

    m = hierzoo.load(tiny.build_tiny_qwen2_lm(tmp_path / "lm"), device="cpu")
    questions = read_questions("cub200-random")[:2]
    protocol = m.default_protocol("cub200", answer="generate", name="cot")
    answers = m.answer(questions, protocol=protocol)
    tok = m.processor.tokenizer
    plan = plan_questions(questions, protocol, family=m.family)
    assert plan.prompt_variant == 1  # the paper's text runs' wording
    for r in plan.requests:
        assert r.text.endswith("\n" + ref.COT_ASCII + ref.INSTRUCTION)
        messages = [
            {"role": "system", "content": ref.SYSTEM_HELPFUL},
            {"role": "user", "content": r.text},
        ]
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = tok([prompt], add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = m.model.generate(**enc, max_new_tokens=5, do_sample=False)
        want = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        assert answers.replies[r.sample][r.level] == want
    # bio-cot asks images, which a text-only LLM does not see: refused naming the mode
    with pytest.raises(ValueError, match="answers the text questions only.*--mode text"):
        m.check_protocol(Protocol(taxonomy="inat21-plant", name="bio-cot"))


def test_report_pairs_runs_of_one_protocol_only(tmp_path):
    """A vision LLM's text run pairs with its LLM's run asked the same way: a cot run of the LLM
    is not the paper run's partner, and an explicit pair of the two names the protocol."""
    from test_report import write_runs
    from test_report_compare import text_run

    from hierzoo.report import PairError, load_runs, pair_runs

    runs = {
        "vlm": text_run("qwen2.5-vl-7b", [0.8, 0.6, 0.5, 1.0], 0.3, protocol="paper"),
        "llm-cot": text_run(
            "qwen2.5-7b-instruct", [0.9, 0.7, 0.6, 1.0], 0.4, seed=2, protocol="cot"
        ),
        "llm-last": text_run(
            "qwen2.5-7b-instruct", [0.9, 0.7, 0.6, 1.0], 0.4, seed=3, parse="last-letter"
        ),
        "llm": text_run("qwen2.5-7b-instruct", [0.9, 0.8, 0.7, 1.0], 0.5, seed=4, protocol="paper"),
    }
    root = write_runs(tmp_path, runs)
    pairs = pair_runs(load_runs([root]))
    assert [(Path(v["run_dir"]).name, Path(m["run_dir"]).name) for v, m in pairs] == [
        ("vlm", "llm")
    ]
    with pytest.raises(PairError, match="their protocol differ \\('paper' and 'cot'\\)"):
        pair_runs([], [(root / "vlm", root / "llm-cot")])


def test_a_served_model_is_sent_the_cot_question():
    """GPT-4o's request under cot: the paper's GPT text question with the ASCII CoT text before
    the instruction, nothing else changed (described without a key, nothing sent)."""
    from hierzoo.models import load_for_dry_run

    clf = load_for_dry_run("openai:gpt-4o")
    questions = read_questions("cub200-random")[:2]
    kw = {"mode": "text", "answer": "generate"}
    cot = clf.describe_requests(
        questions, protocol=clf.default_protocol("cub200", name="cot", **kw)
    )
    paper = clf.describe_requests(questions, protocol=clf.default_protocol("cub200", **kw))
    assert len(cot) == len(paper) > 0
    for c, p in zip(cot, paper, strict=True):
        (system_c, user_c), (system_p, user_p) = c["request"]["messages"], p["request"]["messages"]
        assert system_c == system_p
        (text_p,) = [x["text"] for x in user_p["content"]]
        (text_c,) = [x["text"] for x in user_c["content"]]
        head, last = text_p.rsplit("\n", 1)
        assert last == ref.INSTRUCTION and text_c == f"{head}\n{ref.COT_ASCII}{last}"


@pytest.mark.slow
def test_eval_cot_under_torchrun_equals_one_process(eval_setup, tmp_path):
    """A prompting protocol runs through the same sharded runner: two torchrun processes write
    the records one process writes (replies included)."""
    import os
    import subprocess
    import sys

    one, two = tmp_path / "one", tmp_path / "two"
    cot = ("--protocol", "cot", "--answer", "generate", "--max-new-tokens", "6")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    base = [sys.executable, "-m", "hierzoo"]
    done = subprocess.run(base + _eval(eval_setup, one, *cot), env=env, capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "hierzoo"]  # fmt: skip
    res = subprocess.run(run + _eval(eval_setup, two, *cot), env=env, capture_output=True)
    assert res.returncode == 0, res.stderr[:4000] + b"\n...\n" + res.stderr[-2000:]
    rows = (one / "predictions.jsonl").read_text()
    assert rows == (two / "predictions.jsonl").read_text() and "prediction_level1" in rows
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s1["metrics"] == s2["metrics"] and s2["provenance"]["world_size"] == 2
    assert s1["protocol"] == s2["protocol"] == "cot"


def test_eval_with_a_taxonomy_file_of_ones_own(tiny_dirs, tmp_path, capsys):
    """``--taxonomy FILE`` (a user's taxonomy) with a vision LLM: the paper's protocol asks its
    levels in the generic wording and records the taxonomy by name; ``taxonomy-context`` writes
    that taxonomy into the prompt; ``bio-cot``, which has worked examples for iNat21 only, is
    refused naming them."""
    from hierzoo import load_taxonomy

    paths = {
        "Red Fox": ["Carnivora", "Canidae", "Red Fox"],
        "Gray Wolf": ["Carnivora", "Canidae", "Gray Wolf"],
        "House Cat": ["Carnivora", "Felidae", "House Cat"],
        "Brown Rat": ["Rodentia", "Muridae", "Brown Rat"],
    }
    file = tmp_path / "mammals.json"
    file.write_text(json.dumps(paths))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i, leaf in enumerate(paths):
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{leaf.lower().replace(' ', '_')}_{i}.png")
    common = ["eval", "--model", str(tiny_dirs["qwen2.5-vl"]), "--taxonomy", str(file)]
    common += ["--images", str(images), "--no-progress"]
    out = tmp_path / "run"
    assert main([*common, "--out", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["ground_truth_level3"] for r in rows) == sorted(x.lower() for x in paths)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["protocol"]["taxonomy"] == "mammals"
    capsys.readouterr()
    context = ["--protocol", "taxonomy-context", "--answer", "generate", "--dry-run", "1"]
    assert main([*common, *context, "--out", str(tmp_path / "ctx")]) == 0
    request = json.loads(capsys.readouterr().out.splitlines()[0])
    assert "Here is a taxonomy: " + str(load_taxonomy(file).to_paths()) in request["text"]
    bio = ["--protocol", "bio-cot", "--answer", "generate", "--out", str(tmp_path / "b")]
    assert main([*common, *bio]) == 2
    assert "worked example for ['inat21-animal', 'inat21-plant'] only" in capsys.readouterr().err
