"""--protocol binary: the paper's yes/no statements (prompt_engineering/eval_CUB_binary.py) and its
binary metric (utils/metric_binary.py), against the transcriptions in tests/paper_reference.py and
per-statement forward / generate on tiny vision LLMs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import paper_reference as ref
import pytest
from cub_images import write_cub_images

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402
from vlm_reference import paper_generate, paper_inputs  # noqa: E402

import hierzoo  # noqa: E402
from hierzoo import prompts  # noqa: E402
from hierzoo.cli import main  # noqa: E402
from hierzoo.metrics import score_results  # noqa: E402
from hierzoo.models import Protocol, tiny  # noqa: E402
from hierzoo.models.outputs import Answers, first_yes  # noqa: E402
from hierzoo.runner import EvalConfig, RunError, binary_answer_stats  # noqa: E402
from hierzoo.tasks import read_questions  # noqa: E402

FAMILIES = {
    "qwen2.5-vl": tiny.build_tiny_qwen2_5_vl,
    "llava-onevision": tiny.build_tiny_llava_onevision,
}
TOL = 1e-5
N_EVAL = 4


def binary(**kw) -> Protocol:
    return Protocol(taxonomy="cub200", shuffle_options=True, name="binary", **kw)


def paper_entries(questions) -> list[dict]:
    """The question-set entries as the paper's jsonl holds them."""
    out = []
    for q in questions:
        entry = {"image": q.image, "label": q.label}
        for k, (answer, choices) in enumerate(zip(q.answers, q.choices), start=1):
            entry[f"level{k}"] = answer
            entry[f"choices_level{k}"] = list(choices)
        out.append(entry)
    return out


# ---------------------------------------------------------------------------- prompts and plan
def test_requests_are_the_papers_statements_in_its_order():
    """eval_CUB_binary.py: random.seed(42); per entry, per level (sorted keys, None skipped)
    the options shuffled, then one statement per option in that order."""
    questions = read_questions("cub200-random")[:30]
    plan = prompts.plan_questions(questions, binary())
    maps = ref.shuffled_choice_maps(paper_entries(questions), numeric=False)
    expected = []
    for i, cmaps in enumerate(maps):
        for key, cmap in cmaps.items():
            t = int(key[5:]) - 1
            expected += [(i, t, item, ref.binary_question(t, item)) for item in cmap.values()]
    got = [(r.sample, r.level, r.options[0], r.text) for r in plan.requests]
    assert got == expected
    assert {r.system for r in plan.requests} == {ref.BINARY_SYSTEM}
    for r in plan.requests:
        q = questions[r.sample]
        assert r.answer == int(r.options[0] == q.answers[r.level]) and r.letters == ""
    assert sum(r.answer for r in plan.requests) == sum(len(q.answers) for q in questions)
    assert plan.n_letters == 2
    # the paper's ranks: order, family, genus, species; a generated reply may have 10 tokens
    assert [prompts.binary_statement("cub200", k, "x") for k in range(4)] == [
        ref.BINARY_STATEMENT.format(rank=rank, item="x") for rank in ref.BINARY_RANKS
    ]
    assert binary(answer="generate").reply_tokens("qwen2.5-vl") == 10


def test_statements_of_other_taxonomies():
    assert prompts.binary_statement("inat21-plant", 1, "Tracheophyta") == (
        "The plant in the image belongs to the phylum Tracheophyta."
    )
    assert prompts.binary_statement("imagenet-artifact", 2, "vehicle") == (
        "The object in the image belongs to the category vehicle."
    )
    tax = hierzoo.Taxonomy.from_paths({"b": ["A", "b"]}, ranks=["kind", "breed"], name="mine")
    assert prompts.binary_statement(tax, 1, "b") == (
        "The subject in the image belongs to the breed b."
    )
    assert prompts.binary_statement(None, 0, "b") == (
        "The subject in the image belongs to the category b."
    )
    with pytest.raises(ValueError, match=r"Expected `level` in 0..3 .* but got 4"):
        prompts.binary_statement("cub200", 4, "x")


def test_binary_refuses_text_mode_and_circular():
    with pytest.raises(ValueError, match="no text mode: use --mode image"):
        Protocol(name="binary", mode="text")
    with pytest.raises(ValueError, match="drop --circular"):
        Protocol(name="binary", circular=True)
    for extra, flag in (({"mode": "text"}, "--mode text"), ({"circular": True}, "--circular")):
        cfg = EvalConfig(model="m", out="o", questions="cub200-random", protocol="binary", **extra)
        with pytest.raises(RunError, match=f"does not take {flag}"):
            cfg.check()


# ---------------------------------------------------------------------------- the metric
def random_binary_answers(questions, seed: int) -> Answers:
    """Answers of yes/no statements drawn at random (1, 0, -1; the true option more often
    yes), in the paper's option order, as a model's would come out."""
    rng = np.random.default_rng(seed)
    plan = prompts.plan_questions(questions, binary())
    depth = max(len(q.answers) for q in questions)
    said = [[[] for _ in range(depth)] for _ in questions]
    for r in plan.requests:
        p = [0.1, 0.3, 0.6] if r.answer else [0.1, 0.6, 0.3]
        said[r.sample][r.level].append(int(rng.choice([-1, 0, 1], p=p)))
    choice = np.array([[first_yes(s) for s in per_level] for per_level in said])
    width = max(len(o) for opts in plan.options for o in opts)
    return Answers(
        choice=choice,
        probs=np.full((len(questions), depth, width), np.nan, dtype=np.float32),
        options=plan.options,
        errors=[None] * len(questions),
        binary=said,
    )


def as_paper_result(record: dict) -> dict:
    """A hierzoo record in the layout eval_CUB_binary.py writes: each option's answer under the
    option's own name at the top level, no predicted_levelK."""
    out = {k: v for k, v in record.items() if not k.startswith(("predicted_", "binary_"))}
    for key, answers in record.items():
        if key.startswith("binary_level"):
            out.update(answers)
    return out


def test_the_binary_metric_is_the_papers_rule():
    questions = read_questions("cub200-random")[:200]
    answers = random_binary_answers(questions, seed=0)
    records = answers.to_records(questions)
    paper = [as_paper_result(r) for r in records]
    truths, preds = ref.extract_binary_hierarchies(paper)
    ours = [[r[f"predicted_level{k}"] for k in range(1, 5)] for r in records]
    assert preds == ours
    assert any(None in p for p in ours) and any(None not in p for p in ours)
    several = sum(
        sum(v == 1 for v in r[f"binary_level{k}"].values()) > 1
        for r in records
        for k in range(1, 5)
    )
    assert several > 0  # the first yes in asked order counts
    expected = ref.paper_metrics(paper, binary=True)
    got = score_results(records, taxonomy=hierzoo.load_taxonomy("cub200"))
    assert got["n"] == expected["n"] == len(questions)
    for ours_key, paper_key in (
        ("hca", "hca"),
        ("por", "por"),
        ("strict_por", "strict_por"),
        ("tor", "tor"),
        ("leaf_acc", "leaf"),
    ):
        assert got[ours_key] == pytest.approx(expected[paper_key]), ours_key
    assert got["level_acc"] == pytest.approx(list(expected["layers"].values()))
    stats = binary_answer_stats(records, "logits")
    flat = [v for per_level in answers.binary for level in per_level for v in level]
    assert stats["n_statements"] == len(flat) == stats["n_yes"] + stats["n_no"] + stats["n_neither"]
    assert stats["n_neither"] == flat.count(-1) > 0
    assert stats["levels_without_yes"] == sum(p.count(None) for p in ours)
    assert stats["levels_with_several_yes"] == several


# ---------------------------------------------------------------------------- tiny models
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_binary")
    return {
        name: hierzoo.load(build(root / name), device="cpu") for name, build in FAMILIES.items()
    }


@pytest.fixture(params=list(FAMILIES))
def model(models, request):
    m = models[request.param]
    m.prefix_cache = True
    return m


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    root = tmp_path_factory.mktemp("binary_images")
    qs = copy.deepcopy(read_questions("cub200-random")[:2])
    rng = np.random.default_rng(0)
    for i, (q, (w, h)) in enumerate(zip(qs, [(64, 64), (80, 48)])):
        q.path = root / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(q.path)
    qs[1].choices[3] = [qs[1].answers[3], "laysan albatross"]  # a level of two options
    return qs


def reference_inputs(m, question, level: int, option: str):
    """The paper's request for one statement (its messages: system, image, text), with the
    image prepared as the paper's scripts prepare it (tests/vlm_reference.py): the rendered
    prompt, its token ids (LLaVA's image positions as ``IMAGE_POSITION``) and the model's
    keyword arguments."""
    text = ref.binary_question(level, option)
    messages = [
        # the system turn as a list of text parts, the form every chat template renders (the
        # -ov-hf template renders a plain string as an empty system turn)
        {"role": "system", "content": [{"type": "text", "text": ref.BINARY_SYSTEM}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
    ]
    prompt = m.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = Image.open(question.path).convert("RGB")
    ids, inputs = paper_inputs(m, ref.BINARY_SYSTEM, text, image)
    return prompt, ids, inputs


def reference_generate(m, question, level: int, option: str, max_new_tokens: int) -> str:
    """``generate`` on the paper's request for one statement, the reply decoded."""
    image = Image.open(question.path).convert("RGB")
    text = ref.binary_question(level, option)
    return paper_generate(m, ref.BINARY_SYSTEM, text, image, max_new_tokens)


def yes_no_ids(m, prompt: str) -> list[int]:
    tok = m.processor.tokenizer
    base = tok(prompt, add_special_tokens=False)["input_ids"]
    return [
        tok(prompt + w, add_special_tokens=False)["input_ids"][len(base)] for w in ("Yes", "No")
    ]


def each_statement(answers):
    for i, per_level in enumerate(answers.options):
        for k, options in enumerate(per_level):
            for j, option in enumerate(options):
                yield i, k, j, option


def test_logits_answers_equal_a_forward_per_statement(model, questions):
    answers = model.answer(questions, protocol=binary())
    assert answers.extra["answers"] == ["Yes", "No"] and answers.statement_replies is None
    got = answers.extra["answer_logits"]
    for i, k, j, option in each_statement(answers):
        prompt, _, inputs = reference_inputs(model, questions[i], k, option)
        with torch.no_grad():
            logits = model.model(**inputs).logits[0, -1, yes_no_ids(model, prompt)]
        logits = logits.float().numpy()
        np.testing.assert_allclose(got[i, k, j], logits, atol=TOL)
        assert answers.binary[i][k][j] == int(logits[0] > logits[1])
        p_yes = torch.softmax(torch.tensor(logits), 0)[0].item()
        assert answers.probs[i, k, j] == pytest.approx(p_yes, abs=TOL)
    for i, per_level in enumerate(answers.binary):
        assert answers.choice[i].tolist() == [first_yes(s) for s in per_level]
    model.prefix_cache = False
    plain = model.answer(questions, protocol=binary(), batch_size=1)
    assert plain.binary == answers.binary
    np.testing.assert_allclose(plain.extra["answer_logits"], got, atol=TOL, equal_nan=True)


def test_generated_answers_equal_generate_per_statement(model, questions):
    answers = model.answer(questions, protocol=binary(answer="generate"))
    assert answers.extra["max_new_tokens"] == 10
    for i, k, j, option in each_statement(answers):
        if i == 1 and k < 3:  # the first image, and the second's level of two options
            continue
        reply = reference_generate(model, questions[i], k, option, 10)
        assert answers.statement_replies[i][k][j] == reply
        assert answers.binary[i][k][j] == ref.parse_binary(reply)[0]
    model.prefix_cache = False
    plain = model.answer(questions, protocol=binary(answer="generate"))
    assert plain.statement_replies == answers.statement_replies


def test_a_model_that_says_yes_predicts_the_first_option_asked(model, questions):
    """A generation config that favours the first token of "Yes": every statement is answered
    yes, and the prediction of each level is its first option in the order asked."""
    tok = model.processor.tokenizer
    tail = model.template("image", prompts.Framing(system=prompts.binary_system_message()))[1]
    (yes, _) = yes_no_ids(model, tail)
    config = model.model.generation_config
    config.sequence_bias = [[[yes], 100.0]]
    try:
        answers = model.answer(questions, protocol=binary(answer="generate", max_new_tokens=2))
    finally:
        config.sequence_bias = None
    records = answers.to_records(questions)
    for i, record in enumerate(records):
        for k, options in enumerate(answers.options[i]):
            n = k + 1
            assert record[f"binary_level{n}"] == dict.fromkeys(options, 1)
            assert record[f"predicted_level{n}"] == options[0]
            assert list(record[f"choices_level{n}"].values()) == options
            assert all(r.lower().startswith("y") for r in record[f"replies_level{n}"].values())
            assert record[f"ground_truth_level{n}"] == questions[i].answers[k]
    assert tok.decode([yes]).lower().startswith("y")


def test_dry_run_shows_the_papers_prompts(model, questions):
    described = model.describe_requests(questions, protocol=binary(answer="generate"))
    plan = prompts.plan_questions(questions, binary())
    assert len(described) == len(plan.requests)
    for entry, r in zip(described, plan.requests):
        prompt, ids, _ = reference_inputs(model, questions[r.sample], r.level, r.options[0])
        assert entry["text"] == prompt and entry["option"] == r.options[0]
        assert (entry["sample"], entry["level"]) == (r.sample, r.level + 1)
        assert entry["prompt_tokens"] == len(ids)
        assert entry["letters"] == "" and entry["max_new_tokens"] == 10


# ---------------------------------------------------------------------------- hierzoo eval
@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("binary_eval")
    model = tiny.build_tiny_qwen2_5_vl(root / "model")
    write_cub_images(root, N_EVAL)
    return root, str(model)


def _args(eval_setup, out, *extra):
    root, model = eval_setup
    return [
        "eval", "--model", model, "--questions", "cub200-similar", "--image-root",
        str(root / "data"), "--taxonomy", "cub200", "--limit", str(N_EVAL), "--out", str(out),
        "--no-progress", "--device", "cpu", "--protocol", "binary", *extra,
    ]  # fmt: skip


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_eval_records_summary_resume_and_dry_run(eval_setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(eval_setup, out, "--answer", "generate")) == 0
    rows = _lines(out / "predictions.jsonl")
    assert [r["sample"] for r in rows] == list(range(N_EVAL))
    for r in rows:
        for k in range(1, 5):
            options = list(r[f"choices_level{k}"].values())
            said = r[f"binary_level{k}"]
            assert list(said) == options and set(said.values()) <= {-1, 0, 1}
            assert said == {o: ref.parse_binary(x)[0] for o, x in r[f"replies_level{k}"].items()}
            assert r[f"predicted_level{k}"] == next((o for o in options if said[o] == 1), None)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "binary" and summary["answer"] == "generate"
    assert summary == {**summary, **binary_answer_stats(rows, "generate")}
    assert summary["n_statements"] == sum(
        len(r[f"binary_level{k}"]) for r in rows for k in (1, 2, 3, 4)
    )
    rescored = score_results(rows, taxonomy=hierzoo.load_taxonomy("cub200"))
    assert rescored["hca"] == pytest.approx(summary["metrics"]["hca"]["value"])
    ident = json.loads((out / "run.json").read_text())["identity"]
    assert ident["protocol"] == "binary"
    assert "statements:" in capsys.readouterr().out

    # resume: a run cut after two samples finishes with the rows of the whole run
    preds = out / "predictions.jsonl"
    whole = preds.read_text()
    preds.write_text("".join(whole.splitlines(keepends=True)[:2]))
    (out / "summary.json").unlink()
    assert main(_args(eval_setup, out, "--answer", "generate")) == 0
    assert preds.read_text() == whole
    assert json.loads((out / "summary.json").read_text())["done_before"] == 2
    # the paper protocol is another run: refused in this folder
    capsys.readouterr()
    args = _args(eval_setup, out, "--answer", "generate")
    args[args.index("binary")] = "paper"
    assert main(args) == 2

    # the dry run shows the statements the run asked, in its order
    capsys.readouterr()
    assert main(_args(eval_setup, tmp_path / "dry", "--dry-run", "6")) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert not (tmp_path / "dry").exists()
    first = list(rows[0]["choices_level1"].values())
    assert [x["option"] for x in lines[:4]] == first and lines[4]["level"] == 2
    assert all(ref.BINARY_SYSTEM in x["text"] for x in lines)

    capsys.readouterr()
    assert main(_args(eval_setup, tmp_path / "text", "--mode", "text")) == 2
    assert "--protocol binary does not take --mode text" in capsys.readouterr().err


def test_report_names_the_protocol(tmp_path):
    from hierzoo.report import format_markdown, format_summary, report_table

    def run(name, **extra):
        return {"model": "qwen", "taxonomy": "cub200", "n": 0, "n_errors": 1, "metrics": None,
                "run_dir": str(tmp_path / name), **extra}  # fmt: skip

    runs = [run("paper"), run("binary", protocol="binary", answer="generate"), run("old")]
    rows = report_table(runs)
    assert [r["protocol"] for r in rows] == ["paper", "binary", "paper"]
    assert rows[1]["model"] == "qwen (generate, binary)"
    md = format_markdown(rows)
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[:5] == ["model", "taxonomy", "task", "mode", "protocol"]
    assert cells[-4:] == ["answer", "Unknown", "Agree", "run"]
    line = next(x for x in md.splitlines() if "(generate, binary)" in x)
    assert [c.strip() for c in line.strip("|").split("|")][cells.index("protocol")] == "binary"
    stats = {"n_statements": 16, "n_yes": 5, "n_no": 10, "n_neither": 1, "n_levels": 4,
             "levels_without_yes": 1, "levels_with_several_yes": 2}  # fmt: skip
    summary = {**run("b"), "n": 1, "protocol": "binary", **stats}
    summary["metrics"] = {k: 50.0 for k in ("hca", "leaf_acc", "por", "strict_por", "tor", "hf1")}
    summary["metrics"]["level_acc"] = [50.0] * 4
    summary["levels"] = ["order", "family", "genus", "species"]
    text = format_summary(summary)
    assert "statements: 5 yes, 10 no, 1 neither of 16; of 4 levels 1 without a yes" in text


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(eval_setup, tmp_path):
    """Each rank asks its share of the samples; the statements' option orders are drawn over the
    whole set first, so the merged records equal one process's."""
    import os
    import subprocess
    import sys

    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "hierzoo"]
    subprocess.run(base + _args(eval_setup, one), env=env, check=True, capture_output=True)
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "hierzoo"]  # fmt: skip
    res = subprocess.run(run + _args(eval_setup, two), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (one / "predictions.jsonl").read_text() == (two / "predictions.jsonl").read_text()
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s1["metrics"] == s2["metrics"] and s2["provenance"]["world_size"] == 2
    assert s1["n_statements"] == s2["n_statements"] == 16 * N_EVAL
