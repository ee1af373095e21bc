"""--protocol open: the reply matcher (each tier, the threshold, unmatched), the plan, free replies
against generate per question and constrained answers against a plain forward per node name on a
tiny vision LLM, and hierzoo eval's records, summary and resume."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from cub_images import write_cub_images

from hierzoo import prompts
from hierzoo.open_answers import FUZZY_THRESHOLD, Match, level_vocabulary, match_reply, normalize
from hierzoo.tasks import read_questions
from hierzoo.taxonomy import Taxonomy, load_taxonomy

RAW = json.loads(
    (Path(__file__).resolve().parents[1] / "hierzoo/data/prompts.json").read_text(encoding="utf-8")
)
NAMES = ["Passeriformes", "Piciformes", "Anseriformes", "Charadriiformes"]


# ---------------------------------------------------------------------------- the matcher
def test_exact_match_after_normalising():
    for reply in (
        "Passeriformes",
        "passeriformes",
        "  **Passeriformes**.\n",
        '"Passeriformes"',
        "\nPasseriformes\nbecause it perches",
    ):
        assert match_reply(reply, NAMES) == Match("Passeriformes", "exact", 1.0), reply
    assert normalize("American_Bulldog ") == "american bulldog"
    assert match_reply("american bulldog", ["American Bulldog"]).how == "exact"


def test_synonyms_come_after_names():
    synonyms = {"perching birds": "Passeriformes", "Piciformes": "Anseriformes"}
    assert match_reply("Perching birds.", NAMES, synonyms) == Match("Passeriformes", "synonym", 1.0)
    # a node's own name wins over another node's synonym of the same spelling
    assert match_reply("piciformes", NAMES, synonyms).name == "Piciformes"
    with pytest.raises(ValueError, match=r"Synonyms name \['Strigiformes'\]"):
        match_reply("x", NAMES, {"owls": "Strigiformes"})


def test_fuzzy_match_and_its_threshold():
    got = match_reply("Passeriforms", NAMES)  # one letter missing
    assert got.name == "Passeriformes" and got.how == "fuzzy"
    import difflib

    ratio = difflib.SequenceMatcher(None, "passeriforms", "passeriformes").ratio()
    assert got.score == pytest.approx(ratio) and ratio >= FUZZY_THRESHOLD
    # above the ratio it is unmatched, and the closest ratio is kept
    assert match_reply("Passeriforms", NAMES, threshold=0.99) == Match(None, "none", ratio)
    assert match_reply("Passeriforms", NAMES, threshold=ratio).how == "fuzzy"
    # a synonym is matched fuzzily too
    assert match_reply("perching bird", NAMES, {"perching birds": "Passeriformes"}).how == "fuzzy"
    # ties go to the first name of the level
    assert match_reply("ab", ["aa", "bb"], threshold=0.5).name == "aa"
    for bad in (0, 1.5, "0.8", True):
        with pytest.raises(ValueError, match="Expected `threshold`"):
            match_reply("x", NAMES, threshold=bad)


def test_unmatched_replies():
    got = match_reply("It is a sparrow", NAMES)
    assert got.name is None and got.how == "none" and 0 < got.score < FUZZY_THRESHOLD
    assert match_reply("", NAMES) == Match(None, "none", 0.0)
    assert match_reply("**.**", NAMES) == Match(None, "none", 0.0)


def test_level_vocabulary_of_a_taxonomy():
    tax = Taxonomy.from_paths(
        {"b1": ["A", "b1"], "b2": ["A", "b2"], "c": ["C", "c"]},
        synonyms={"alpha": "A", "bee": "b1"},
        name="t",
    )
    assert level_vocabulary(tax, 0) == (["A", "C"], {"alpha": "A"})
    assert level_vocabulary(tax, 1) == (["b1", "b2", "c"], {"bee": "b1"})
    with pytest.raises(ValueError, match=r"Expected `level` in 0..1 for 't', but got 2"):
        level_vocabulary(tax, 2)
    cub = load_taxonomy("cub200")
    assert len(level_vocabulary(cub, 3)[0]) == 200


# ---------------------------------------------------------------------------- the plan
def test_plan_asks_each_level_without_options():
    questions = read_questions("cub200-random")[:3]
    plan = prompts.plan_questions(
        questions, prompts.Protocol(taxonomy="cub200", shuffle_options=True, name="open")
    )
    entry = RAW["taxonomies"]["cub200"]
    assert [(r.sample, r.level) for r in plan.requests] == [
        (i, k) for i in range(3) for k in range(4)
    ]
    for r in plan.requests:
        question = entry["image_prompts"][0].replace("{rank}", entry["ranks"][r.level])
        assert r.text == question + "\n" + RAW["open"]["instruction"]
        assert r.system == RAW["open"]["system_image"] and r.options == () and r.letters == ""
    text = prompts.plan_questions(
        questions, prompts.Protocol(taxonomy="cub200", mode="text", name="open")
    )
    assert [r.level for r in text.requests[:3]] == [0, 1, 2]  # the leaf is named, not asked
    assert {r.system for r in text.requests} == {RAW["system_text"]}
    assert prompts.Protocol(name="open", answer="generate").reply_tokens("internvl") == 16


# ---------------------------------------------------------------------------- tiny model
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

import hierzoo  # noqa: E402
from hierzoo.cli import main  # noqa: E402
from hierzoo.models import Protocol, tiny  # noqa: E402
from hierzoo.runner import open_answer_stats  # noqa: E402

N_EVAL = 3


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return hierzoo.load(tiny.build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("open") / "m"), "cpu")


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    root = tmp_path_factory.mktemp("open_images")
    qs = copy.deepcopy(read_questions("cub200-random")[:2])
    rng = np.random.default_rng(1)
    for i, q in enumerate(qs):
        q.path = root / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (64, 80, 3)).astype(np.uint8)).save(q.path)
    return qs


def reference_inputs(m, question, level: int):
    entry = RAW["taxonomies"]["cub200"]
    text = (
        entry["image_prompts"][0].replace("{rank}", entry["ranks"][level])
        + "\n"
        + RAW["open"]["instruction"]
    )
    messages = [
        {"role": "system", "content": RAW["open"]["system_image"]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
    ]
    prompt = m.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = Image.open(question.path).convert("RGB")
    return prompt, image


def test_free_replies_equal_generate_and_are_matched(model, questions):
    cub = load_taxonomy("cub200")
    model.prefix_cache = True
    answers = model.answer(
        questions, protocol=Protocol(taxonomy="cub200", answer="generate", name="open")
    )
    assert answers.extra["max_new_tokens"] == 16
    for i, q in enumerate(questions):
        for k in range(4):
            prompt, image = reference_inputs(model, q, k)
            enc = model.processor(text=[prompt], images=[image], return_tensors="pt")
            with torch.no_grad():
                out = model.model.generate(**enc, max_new_tokens=16, do_sample=False)
            reply = model.processor.batch_decode(
                out[:, enc["input_ids"].shape[1] :],
                skip_special_tokens=True,
                clean_up_tokenization_spaces=False,
            )[0]
            got = answers.open[i][k]
            assert got["reply"] == reply
            m = match_reply(reply, *level_vocabulary(cub, k))
            assert (got["name"], got["how"]) == (m.name, m.how)
    model.prefix_cache = False
    try:
        plain = model.answer(
            questions, protocol=Protocol(taxonomy="cub200", answer="generate", name="open")
        )
    finally:
        model.prefix_cache = True
    assert plain.open == answers.open


def test_a_reply_naming_a_node_is_matched_and_scored(model, questions):
    """A generation config that makes the tiny model say a node's name: the reply matches it
    exactly, and the record predicts that node."""
    tok = model.processor.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ids = tok("Passeriformes", add_special_tokens=False)["input_ids"]
    config = model.model.generation_config
    config.sequence_bias = [[[t], 50.0] for t in ids] + [[[end], 40.0]]
    try:
        answers = model.answer(
            questions[:1],
            protocol=Protocol(taxonomy="cub200", answer="generate", name="open", max_new_tokens=8),
        )
    finally:
        config.sequence_bias = None
    (record,) = answers.to_records(questions[:1])
    reply = record["prediction_level1"]
    assert "passeriformes" in reply.lower()
    m = match_reply(reply, *level_vocabulary(load_taxonomy("cub200"), 0))
    assert record["predicted_level1"] == m.name and record["match_level1"] == m.how


def reference_loglik(m, question, level: int, name: str) -> float:
    """The log-likelihood of ``name`` + end of turn as the whole reply: one forward of the full
    prompt and answer, the answer tokens' log-probabilities summed."""
    prompt, image = reference_inputs(m, question, level)
    tok = m.processor.tokenizer
    answer = tok(prompt + name + "<|im_end|>", add_special_tokens=False)["input_ids"]
    n_answer = len(answer) - len(tok(prompt, add_special_tokens=False)["input_ids"])
    enc = m.processor(text=[prompt + name + "<|im_end|>"], images=[image], return_tensors="pt")
    with torch.no_grad():
        logp = torch.log_softmax(m.model(**enc).logits[0].float(), -1)
    ids = enc["input_ids"][0]
    n = ids.shape[0]
    return float(sum(logp[t - 1, ids[t]] for t in range(n - n_answer, n)))


def test_constrained_answers_rank_the_levels_nodes_by_log_likelihood(model, questions):
    cub = load_taxonomy("cub200")
    answers = model.answer(questions, protocol=Protocol(taxonomy="cub200", name="open"))
    orders = level_vocabulary(cub, 0)[0]
    q = questions[0]
    ref = {name: reference_loglik(model, q, 0, name) for name in orders}
    best = sorted(ref, key=lambda n: -ref[n])
    got = answers.open[0][0]
    assert got["how"] == "ranked" and got["name"] == best[0]
    assert list(got["ranked"]) == best[:5]
    for name, value in got["ranked"].items():
        assert value == pytest.approx(ref[name], abs=1e-3)
    for i, qq in enumerate(questions):  # deeper levels: the recorded top names' values
        for k in (1, 3):
            for name, value in list(answers.open[i][k]["ranked"].items())[:2]:
                assert value == pytest.approx(reference_loglik(model, qq, k, name), abs=1e-3)
    records = answers.to_records(questions)
    assert records[0]["predicted_level1"] == best[0] and records[0]["match_level1"] == "ranked"
    pieces = list(
        model.iter_answers(
            questions, protocol=Protocol(taxonomy="cub200", name="open"), chunk_size=1
        )
    )
    assert [p for p, _ in pieces] == [[0], [1]]
    assert [a.open[0] for _, a in pieces] == answers.open


def test_open_refusals(model, questions):
    with pytest.raises(ValueError, match="needs the taxonomy: pass --taxonomy NAME"):
        model.answer(questions, protocol=Protocol(name="open", answer="generate"))
    with pytest.raises(ValueError, match="in text mode use --answer generate"):
        model.answer(questions, protocol=Protocol(taxonomy="cub200", name="open", mode="text"))


# ---------------------------------------------------------------------------- hierzoo eval
@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("open_eval")
    model = tiny.build_tiny_qwen2_5_vl(root / "model")
    write_cub_images(root, N_EVAL)
    return root, str(model)


def _args(eval_setup, out, *extra):
    root, model = eval_setup
    return [
        "eval", "--model", model, "--questions", "cub200-similar", "--image-root",
        str(root / "data"), "--limit", str(N_EVAL), "--out", str(out),
        "--no-progress", "--device", "cpu", "--protocol", "open", *extra,
    ]  # fmt: skip


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_eval_open_records_summary_and_resume(eval_setup, tmp_path, capsys):
    cub = load_taxonomy("cub200")
    out = tmp_path / "free"
    assert main(_args(eval_setup, out, "--answer", "generate")) == 0
    rows = _lines(out / "predictions.jsonl")
    for r in rows:
        for k in range(1, 5):
            m = match_reply(r[f"prediction_level{k}"], *level_vocabulary(cub, k - 1))
            assert (r[f"predicted_level{k}"], r[f"match_level{k}"]) == (m.name, m.how)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "open" and summary["n_answers"] == 4 * N_EVAL
    assert summary == {**summary, **open_answer_stats(rows, "generate")}
    assert sum(summary["match_tiers"].values()) == 4 * N_EVAL
    assert set(summary["match_tiers"]) == {"exact", "synonym", "fuzzy", "none"}
    assert "open answers:" in capsys.readouterr().out
    preds = out / "predictions.jsonl"
    whole = preds.read_text()
    preds.write_text("".join(whole.splitlines(keepends=True)[:1]))
    (out / "summary.json").unlink()
    assert main(_args(eval_setup, out, "--answer", "generate")) == 0
    assert preds.read_text() == whole

    ranked = tmp_path / "ranked"
    assert main(_args(eval_setup, ranked)) == 0
    rows = _lines(ranked / "predictions.jsonl")
    assert all(r[f"match_level{k}"] == "ranked" for r in rows for k in range(1, 5))
    assert all(r["predicted_level4"] in level_vocabulary(cub, 3)[0] for r in rows)
    summary = json.loads((ranked / "summary.json").read_text())
    assert summary["match_tiers"] == {"ranked": 4 * N_EVAL}

    capsys.readouterr()
    assert main(_args(eval_setup, tmp_path / "text", "--mode", "text")) == 2
    assert "in text mode use --answer generate" in capsys.readouterr().err
    assert not (tmp_path / "text" / "predictions.jsonl").exists()


def test_text_only_llm_names_the_node_in_text_mode(tmp_path):
    """A text-only LLM answers open questions in text mode: the question names the leaf, the
    reply equals ``generate`` on the chat prompt, matched as for vision LLMs."""
    m = hierzoo.load(tiny.build_tiny_qwen2_lm(tmp_path / "lm"), device="cpu")
    qs = read_questions("cub200-random")[:2]
    protocol = Protocol(taxonomy="cub200", mode="text", answer="generate", name="open")
    answers = m.answer(qs, protocol=protocol)
    variant = answers.extra["prompt_variant"]
    entry, cub = RAW["taxonomies"]["cub200"], load_taxonomy("cub200")
    tok = m.processor.tokenizer
    for i, q in enumerate(qs):
        assert answers.open[i][3] is None  # the leaf is named, not asked
        for k in range(3):
            question = entry["text_prompts"][variant].replace("{rank}", entry["ranks"][k])
            text = question.replace("{label}", q.label) + "\n" + RAW["open"]["instruction"]
            messages = [
                {"role": "system", "content": RAW["system_text"]},
                {"role": "user", "content": text},
            ]
            prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                out = m.model.generate(**enc, max_new_tokens=16, do_sample=False)
            reply = tok.decode(
                out[0, enc["input_ids"].shape[1] :],
                skip_special_tokens=True,
                clean_up_tokenization_spaces=False,
            )
            got = answers.open[i][k]
            assert got["reply"] == reply
            assert got["how"] == match_reply(reply, *level_vocabulary(cub, k)).how
    # binary states what an image shows: image mode, which a text-only LLM refuses by name
    with pytest.raises(ValueError, match=r"is a text-only LLM: .* use --mode text"):
        m.check_protocol(Protocol(taxonomy="cub200", name="binary"))
