"""The ``openai-chat`` family: ``hierzoo eval --model openai:MODEL`` against a real server process
on 127.0.0.1 (tests/chat_server.py, serving a tiny random-weight Qwen2.5-VL), compared with the
same tiny model run locally; the paper's GPT-4o requests against the transcription of its
scripts; faults, the key, resume and the run's identity."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import paper_reference as ref
import pytest
from chat_server import ChatServer
from cub_images import write_cub_images
from PIL import Image

import hierzoo
from hierzoo import prompts
from hierzoo.cli import main, parse_args
from hierzoo.models import resolve, tiny
from hierzoo.models.api import (
    ApiAuthError,
    NotAvailableOverApi,
    OpenAIChatClassifier,
    describe_request,
    estimate_cost,
)
from hierzoo.models.base import OptionError
from hierzoo.runner import EvalConfig, run_eval
from hierzoo.tasks import read_questions

KEY = "sk-hierzoo-family-" + secrets.token_hex(16)
KEY_ENV = "HZ_FAMILY_API_KEY"
SERVED = "tiny-vlm"
GPT = "gpt-4o-2024-11-20"
N = 6  # question-set entries (4 levels each)
REPO = Path(__file__).resolve().parents[1]
CUB_GPT = "Based on taxonomy, what is the {} of the bird in this image?"
"""evaluation/vllm/gpt/gpt_img_all.py:66-76 (``--dataset_prompt cub``)."""
CUB_GPT_TEXT = "Given the {label}, what is its taxonomic classification at the {rank} level?"
"""evaluation/llm/gpt/gpt_cub_text.py:62-66."""
CUB_RANKS = ["order", "family", "genus", "species"]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("api_family")
    model = tiny.build_tiny_qwen2_5_vl(root / "qwen", seed=5)
    write_cub_images(root, N, height=lambda i: 48 + 8 * (i % 3))
    return {"root": root, "model": model, "images": str(root / "data")}


@pytest.fixture(scope="module")
def server(setup):
    with ChatServer(setup["model"], served_name=SERVED, extra_names=[GPT], api_key=KEY) as srv:
        yield srv


@pytest.fixture
def fresh(server):
    server.reset()
    return server


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("HIERZOO_CACHE", str(tmp_path / "hzcache"))
    return tmp_path


@pytest.fixture(scope="module")
def local_run(setup, tmp_path_factory):
    """The same tiny model run locally by `hierzoo eval` (letter logits, the local path)."""
    out = tmp_path_factory.mktemp("local") / "run"
    argv = ["eval", "--model", str(setup["model"]), "--device", "cpu", "--num-workers", "0"]
    assert main([*argv, *_common(setup, out)]) == 0
    return _rows(out)


@pytest.fixture(scope="module")
def local_clf(setup):
    return hierzoo.load(setup["model"], device="cpu", num_workers=0)


def _common(setup, out, *extra):
    return [
        "--questions",
        "cub200-similar",
        "--image-root",
        setup["images"],
        "--taxonomy",
        "cub200",
        "--limit",
        str(N),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _api_args(setup, server, out, model=SERVED, *extra):
    return [
        "eval",
        "--model",
        f"openai:{model}",
        "--api-base",
        server.base_url,
        "--api-key-env",
        KEY_ENV,
        *_common(setup, out, *extra),
    ]


def _config(setup, server, out, **options) -> EvalConfig:
    """The `hierzoo eval` run above, with model options the command line does not offer."""
    return EvalConfig(
        model=f"openai:{SERVED}",
        out=str(out),
        questions="cub200-similar",
        image_root=setup["images"],
        taxonomy="cub200",
        limit=N,
        progress=False,
        model_kwargs={"api_base": server.base_url, "api_key_env": KEY_ENV, **options},
    )


def _rows(out) -> dict[int, dict]:
    lines = (Path(out) / "predictions.jsonl").read_text().splitlines()
    return {r["sample"]: r for r in map(json.loads, lines)}


def _levels(row) -> list[int]:
    return sorted(int(k[len("ground_truth_level") :]) for k in row if k.startswith("ground_truth"))


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _cache(env) -> list[Path]:
    return _files(env / "hzcache" / "api")


# ---------------------------------------------------------------------------- the family
def test_openai_prefix_resolves_without_the_network_and_the_zoo_lists_gpt4o(capsys):
    spec = resolve("openai:gpt-4o")
    assert (spec.name, spec.family, spec.hub_id, spec.served) == (
        "gpt-4o",
        "openai-chat",
        GPT,
        True,
    )
    assert resolve("openai:gpt-4o-2024-11-20") == spec == resolve("gpt-4o")
    qwen = resolve("openai:Qwen/Qwen2.5-VL-72B-Instruct")  # case kept: servers match exactly
    assert (qwen.family, qwen.hub_id, qwen.served) == (
        "openai-chat",
        "Qwen/Qwen2.5-VL-72B-Instruct",
        True,
    )
    assert not resolve("qwen2.5-vl-72b").served
    with pytest.raises(ValueError, match="openai:MODEL"):
        resolve("openai:")
    assert hierzoo.list_models("api") == ["gpt-4o"]
    assert "gpt-4o" not in hierzoo.list_models("vlm")
    assert main(["models", "--family", "api"]) == 0
    shown = capsys.readouterr().out
    assert "gpt-4o" in shown and GPT in shown and "openai-chat" in shown


def test_a_missing_openai_package_names_the_extra():
    code = (
        "import sys\n"
        "sys.modules['openai'] = None\n"
        "import hierzoo\n"
        "try:\n"
        "    hierzoo.load('openai:gpt-4o')\n"
        "except ImportError as e:\n"
        "    print('IMPORT', e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert "IMPORT" in done.stdout and "pip install 'hierzoo[api]'" in done.stdout, done


def test_options_are_checked_and_refused_by_name(monkeypatch, tmp_path):
    from hierzoo.models._factory import family_class

    monkeypatch.setenv(KEY_ENV, KEY)
    base = {"api_base": "http://127.0.0.1:9/v1", "api_key_env": KEY_ENV}
    with pytest.raises(OptionError, match="num_workers: options of .*'gpt-4o' is an API model"):
        hierzoo.load("openai:gpt-4o", num_workers=2, **base)
    with pytest.raises(ValueError, match="no weights here to cast; drop --dtype"):
        hierzoo.load("openai:gpt-4o", dtype="bfloat16", **base)
    with pytest.raises(ValueError, match="`layout` to be one of"):
        hierzoo.load("openai:gpt-4o", layout="paper", **base)
    with pytest.raises(ValueError, match="allowed_token_ids"):
        hierzoo.load("openai:gpt-4o", restrict="allowed_token_ids", **base)
    with pytest.raises(OptionError, match="api_base: options of API models"):
        family_class("qwen2.5-vl").check_options(["api_base"], "qwen2.5-vl-7b", pass_through=True)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ApiAuthError, match=r"\$OPENAI_API_KEY is not set"):
        hierzoo.load("openai:gpt-4o")  # OpenAI's server, no key: refused before any request
    clf = hierzoo.load("openai:Qwen/Qwen2.5-VL-72B-Instruct", **base)
    assert clf.layout == "vision-llm" and clf.prompt_family == "qwen2.5-vl"
    assert hierzoo.load("openai:gpt-4o", **base).layout == "gpt-4o"


def test_what_a_server_lacks_is_named(monkeypatch, setup):
    monkeypatch.setenv(KEY_ENV, KEY)
    clf = hierzoo.load("openai:tiny", api_base="http://127.0.0.1:9/v1", api_key_env=KEY_ENV)
    tax = hierzoo.load_taxonomy("cub200")
    for call in (
        lambda: clf.predict_path(["x.jpg"], tax),
        lambda: clf.score_nodes(["x.jpg"], tax),
        lambda: clf.check_task("path"),
    ):
        with pytest.raises(NotAvailableOverApi, match="not a score for every node"):
            call()
    with pytest.raises(NotAvailableOverApi, match="not the model's hidden states"):
        clf.features(["x.jpg"], "llm:-1")
    with pytest.raises(TypeError, match="hierzoo.load"):
        OpenAIChatClassifier.from_model(object())


@pytest.mark.parametrize(
    ("flag", "value", "echoed"),
    [
        ("--concurrency", "0", True),
        ("--concurrency", "many", True),
        ("--api-base", "ftp://host/v1", True),
        ("--api-base", "127.0.0.1:8000/v1", True),
        ("--api-key-env", "sk-proj-Secret-123", False),  # a key passed by mistake: not shown
    ],
)
def test_api_flags_are_checked_at_parse_time(flag, value, echoed, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", "openai:x", "--out", "o", flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and flag in err, err
    assert (value in err) == echoed, err
    args = parse_args(["eval", "--model", "m", "--out", "o", "--api-base", "http://h:8000/v1/"])
    assert args.api_base == "http://h:8000/v1"


def test_path_task_is_refused_before_anything_is_written(setup, fresh, env, capsys):
    out = env / "run"
    code = main(_api_args(setup, fresh, out, SERVED, "--task", "path"))
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "every node" in err, err
    assert not out.exists() and fresh.received() == 0


def test_dry_run_needs_no_key_and_sends_nothing(setup, fresh, env, monkeypatch, capsys):
    """`--dry-run N` builds the first N request bodies as the run would send them (the image as
    its size and digest), without a key, without a request, writing nothing."""
    monkeypatch.delenv(KEY_ENV)
    out = env / "dry"
    code = main(_api_args(setup, fresh, out, GPT, "--answer", "generate", "--dry-run", "3"))
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["sample"], r["level"]) for r in lines] == [(0, 1), (0, 2), (0, 3)]
    for r in lines:
        assert r["request"]["model"] == GPT and r["max_new_tokens"] == 5
        assert r["text"].startswith(CUB_GPT.format(CUB_RANKS[r["level"] - 1]))
    assert fresh.received() == 0 and not out.exists() and _cache(env) == []
    with pytest.raises(ApiAuthError):  # the real load still wants its key
        hierzoo.load(f"openai:{GPT}", api_key_env=KEY_ENV)


# ---------------------------------------------------------------------------- the paper's GPT-4o
def test_paper_gpt4o_requests_equal_the_scripts(setup, env):
    """Image mode: gpt_img_all.py's messages and parameters (the transcription in
    tests/paper_reference.py), options in the file's order, every level asked (the leaf too)."""
    questions = read_questions("cub200-similar", image_root=setup["images"])[:N]
    clf = hierzoo.load("openai:gpt-4o", api_base="http://127.0.0.1:9/v1", api_key_env=KEY_ENV)
    protocol = clf.default_protocol("cub200", answer="generate")
    assert not protocol.shuffle_options and protocol.prompt_variant == 0
    shown = clf.describe_requests(questions, protocol=protocol)
    expected = []
    for i, q in enumerate(questions):
        data = base64.b64encode(Path(q.path).read_bytes()).decode("ascii")
        for k, choices in enumerate(q.choices):
            cmap = {chr(65 + j): o for j, o in enumerate(choices)}
            text = ref.question(CUB_GPT.format(CUB_RANKS[k]), cmap)
            body = {**ref.GPT_PARAMS, "messages": ref.gpt_messages(text, data)}
            expected.append((i, k + 1, text, describe_request(body)))
    assert [(s["sample"], s["level"], s["text"], s["request"]) for s in shown] == expected
    assert all(s["max_new_tokens"] == 5 for s in shown)
    assert clf.describe_requests(questions, protocol=protocol, limit=3) == shown[:3]
    # the image: the file's bytes, not re-encoded (the digest `sha256sum FILE` prints)
    digest = hashlib.sha256(Path(questions[0].path).read_bytes()).hexdigest()
    assert digest in shown[0]["request"]["messages"][1]["content"][1]["image_url"]["url"]


def test_paper_gpt4o_text_mode_and_wording_per_taxonomy(setup, env):
    """Text mode: gpt_cub_text.py's request (text only, the leaf not asked, its wording);
    ImageNet: variant 1 in image runs, 2 in text runs."""
    questions = read_questions("cub200-similar")[:2]
    clf = hierzoo.load("openai:gpt-4o", api_base="http://127.0.0.1:9/v1", api_key_env=KEY_ENV)
    protocol = clf.default_protocol("cub200", mode="text", answer="generate")
    shown = clf.describe_requests(questions, protocol=protocol)
    expected = []
    for i, q in enumerate(questions):
        for k, choices in enumerate(q.choices[:-1]):
            cmap = {chr(65 + j): o for j, o in enumerate(choices)}
            text = ref.question(CUB_GPT_TEXT.format(label=q.label, rank=CUB_RANKS[k]), cmap)
            expected.append((i, k + 1, {**ref.GPT_PARAMS, "messages": ref.gpt_messages(text)}))
    assert [(s["sample"], s["level"], s["request"]) for s in shown] == expected
    assert clf.default_protocol("imagenet-animal").prompt_variant == 1
    assert clf.default_protocol("imagenet-artifact", mode="text").prompt_variant == 2
    assert clf.default_protocol("food101").prompt_variant == 0
    assert clf.default_protocol("cub200", prompt_variant=3).prompt_variant == 3
    logits = clf.request_settings("logits")
    assert (logits.max_tokens, logits.top_logprobs, logits.temperature) == (1, 20, 0.2)


def test_served_model_requests_are_the_local_prompts(setup, env):
    """The vision-LLM layout: the planner's system message and text, the image first, the
    options in the order the local path asks them."""
    questions = read_questions("cub200-similar", image_root=setup["images"])[:N]
    clf = hierzoo.load(f"openai:{SERVED}", api_base="http://127.0.0.1:9/v1", api_key_env=KEY_ENV)
    protocol = clf.default_protocol("cub200", answer="generate")
    assert protocol.shuffle_options
    plan = prompts.plan_questions(questions, protocol)
    shown = clf.describe_requests(questions, protocol=protocol)
    assert len(shown) == len(plan.requests) == 4 * N
    for s, r in zip(shown, plan.requests):
        body = s["request"]
        assert body["messages"][0] == {"role": "system", "content": prompts.system_message()}
        image, text = body["messages"][1]["content"]
        assert image["type"] == "image_url" and "detail" not in image["image_url"]
        assert image["image_url"]["url"].startswith("data:image/jpeg;base64,<")  # type read
        assert text == {"type": "text", "text": r.text}
        assert (body["temperature"], body["max_tokens"], "seed" in body) == (0.0, 10, False)


# ---------------------------------------------------------------------------- end to end
def test_eval_logits_over_the_api_equals_the_local_model(setup, fresh, env, local_run):
    """The server gives all 512 tokens' log-probabilities here, so every letter is present and
    the letters' renormalised probabilities are the local path's softmax over the letters."""
    out = env / "run"
    summary = run_eval(_config(setup, fresh, out, top_logprobs=512))
    rows = _rows(out)
    assert sorted(rows) == list(range(N)) and summary["n"] == N
    compared = 0
    for i, row in rows.items():
        mine = local_run[i]
        assert _levels(row) == _levels(mine) == [1, 2, 3, 4]
        for k in _levels(row):
            assert row[f"choices_level{k}"] == mine[f"choices_level{k}"]  # same shuffled order
            assert f"absent_level{k}" not in row and f"prediction_level{k}" not in row
            api = np.array(list(row[f"probs_level{k}"].values()))
            loc = np.array(list(mine[f"probs_level{k}"].values()))
            np.testing.assert_allclose(api, loc, atol=2e-5)
            if np.sort(loc)[-1] - np.sort(loc)[-2] > 1e-4:
                assert row[f"predicted_level{k}"] == mine[f"predicted_level{k}"]
                compared += 1
    assert compared >= 3 * N
    assert fresh.answered() == 4 * N and all(s["answered"] == 1 for s in fresh.stats().values())


def test_eval_records_unreadable_answers_per_sample_and_retries_them(setup, fresh, env, capsys):
    """Answers the run cannot read (NaN in the JSON at the genus level, a log-probability that is
    not a number at the species level) are each entry's error: the run finishes and writes every
    entry, and --retry-errors answers them."""
    fresh.control(
        rules=[
            {"match": "genus of the bird", "plan": ["nan"]},
            {"match": "species of the bird", "plan": ["badlogprob"]},
        ]
    )
    out = env / "run"
    assert main(_api_args(setup, fresh, out)) == 1  # every entry failed, none crashed the run
    rows = _rows(out)
    assert sorted(rows) == list(range(N))
    for row in rows.values():
        assert re.match(r"level [34]: ", row["error"]), row["error"]
    assert "--retry-errors" in capsys.readouterr().err
    code = main([*_api_args(setup, fresh, out), "--retry-errors"])
    assert [row.get("error") for row in _rows(out).values()] == [None] * N and code == 0


def test_eval_logits_counts_absent_letters(setup, fresh, env, local_run, capsys):
    """The default 20 alternatives of 512 tokens: letters go missing. A present letter keeps the
    local ratios; a level with no letter is the paper's Unknown; the summary counts them."""
    out = env / "run"
    assert main(_api_args(setup, fresh, out, SERVED, "--concurrency", "3")) == 0
    rows = _rows(out)
    absent_levels = unknown = 0
    for i, row in rows.items():
        for k in _levels(row):
            missing = row.get(f"absent_level{k}", [])
            absent_levels += bool(missing)
            loc = local_run[i][f"probs_level{k}"]
            if len(missing) == len(loc):
                unknown += 1
                assert row[f"predicted_level{k}"] == prompts.UNKNOWN
                assert f"probs_level{k}" not in row
                continue
            api = row[f"probs_level{k}"]
            present = [c for c in loc if c not in missing]
            total = sum(loc[c] for c in present)
            for c in loc:
                want = loc[c] / total if c in present else 0.0
                assert api[c] == pytest.approx(want, abs=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert absent_levels > 0 and unknown > 0
    assert summary["levels_with_absent_letters"] == absent_levels
    usage = summary["provenance"]["usage"]
    assert usage["levels_with_absent_letters"] == absent_levels
    assert usage["requests"] == 4 * N and usage["estimated_cost_usd"] is None
    stats = fresh.stats().values()
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] == 4 * N == len(stats)
    assert summary["provenance"]["api"]["api_base"] == fresh.base_url
    assert "HCA" in capsys.readouterr().out


def test_eval_generate_over_the_api_equals_local_generation(setup, fresh, env, local_clf):
    """Replies equal greedy generation from the local path's own prompt (its chat template
    rendered by the local classifier), parsed by the paper's rule; Unknown when no letter."""
    import torch

    out = env / "run"
    assert main(_api_args(setup, fresh, out, SERVED, "--answer", "generate")) == 0
    questions = read_questions("cub200-similar", image_root=setup["images"])[:N]
    head, tail = local_clf.template("image")
    processor = local_clf.processor
    unknown = 0
    for i, row in _rows(out).items():
        image = Image.open(questions[i].path).convert("RGB")
        for k in _levels(row):
            cmap = row[f"choices_level{k}"]
            question = prompts.question_text("cub200", k - 1)
            text = prompts.user_text(question, list(cmap.values()))
            enc = processor(text=[head + text + tail], images=[image], return_tensors="pt")
            with torch.no_grad():
                new = local_clf.model.generate(**enc, max_new_tokens=10, do_sample=False)
            reply = processor.tokenizer.decode(
                new[0, enc["input_ids"].shape[1] :], skip_special_tokens=True
            )
            assert row[f"prediction_level{k}"] == reply
            letter = next((c for c in cmap if c in reply), None)
            assert row[f"predicted_level{k}_letter"] == (letter or "Unknown")
            assert row[f"predicted_level{k}"] == (cmap[letter] if letter else "Unknown")
            assert f"probs_level{k}" not in row
            unknown += letter is None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == N and unknown > 0  # a random model rarely writes a capital letter


def test_circular_answers_over_the_api_equal_the_local_model(setup, fresh, env, local_clf):
    """Every rotation asked; a level is right only if every rotation is, as locally."""
    from hierzoo.models import Protocol

    questions = read_questions("cub200-similar", image_root=setup["images"])[:3]
    protocol = Protocol(taxonomy="cub200", shuffle_options=True, circular=True)
    clf = hierzoo.load(
        f"openai:{SERVED}", api_base=fresh.base_url, api_key_env=KEY_ENV, top_logprobs=512
    )
    api = clf.answer(questions, protocol=protocol)
    loc = local_clf.answer(questions, protocol=protocol)
    assert fresh.received() == 3 * 4 * 4  # every level of every entry, in four rotations
    assert api.options == loc.options
    np.testing.assert_allclose(api.probs, loc.probs, atol=2e-5)
    np.testing.assert_array_equal(api.extra["rotation_choices"], loc.extra["rotation_choices"])
    np.testing.assert_array_equal(api.correct, loc.correct)


def test_eval_paper_gpt4o_end_to_end_with_cost(setup, fresh, env):
    out = env / "run"
    assert main(_api_args(setup, fresh, out, "gpt-4o", "--answer", "generate")) == 0
    questions = read_questions("cub200-similar")[:N]
    for i, row in _rows(out).items():
        assert _levels(row) == [1, 2, 3, 4]  # the leaf asked too
        for k in range(1, 5):  # the file's order
            assert list(row[f"choices_level{k}"].values()) == questions[i].choices[k - 1]
            assert isinstance(row[f"prediction_level{k}"], str)
    sent = [s["text"] for s in fresh.stats().values()]
    assert len(sent) == 4 * N and all(t.startswith("Based on taxonomy, what is") for t in sent)
    summary = json.loads((out / "summary.json").read_text())
    usage = summary["provenance"]["usage"]
    assert usage["estimated_cost_usd"] == pytest.approx(
        estimate_cost(GPT, usage["prompt_tokens"], usage["completion_tokens"]), abs=1e-6
    )
    assert usage["estimated_cost_usd"] > 0 and usage["prices"]["date"]
    ident = json.loads((out / "run.json").read_text())["identity"]
    assert ident["model"] == f"api:{GPT}" and ident["model_content"] == (
        f"api:{GPT}@{fresh.base_url}"
    )
    settings = ident["requests"]["settings"]
    assert (settings["temperature"], settings["seed"], settings["max_tokens"]) == (0.2, 42, 5)
    assert (settings["detail"], settings["image_first"]) == ("low", False)


# ---------------------------------------------------------------------------- at scale
def test_faults_still_answer_every_question_once(setup, fresh, env):
    """429 (Retry-After), 500 and a dropped connection on some requests: every question is
    answered, each request completed by the server once."""
    fresh.control(
        rules=[
            {"match": "order of the bird", "plan": ["429:0", "500"]},
            {"match": "family of the bird", "plan": ["drop"]},
            {"match": "genus of the bird", "plan": ["503", "429:ms:10"]},
        ]
    )
    out = env / "run"
    summary = run_eval(_config(setup, fresh, out, concurrency=4))
    assert summary["n"] == N and summary["n_errors"] == 0
    rows = _rows(out)
    assert all(_levels(r) == [1, 2, 3, 4] for r in rows.values())
    stats = list(fresh.stats().values())
    assert len(stats) == 4 * N and all(s["answered"] == 1 for s in stats)
    retried = [s for s in stats if len(s["received"]) > 1]
    assert len(retried) == 3 * N
    assert summary["provenance"]["usage"]["retries"] == sum(len(s["received"]) - 1 for s in stats)


def test_a_request_that_keeps_failing_is_that_samples_error_and_the_run_goes_on(
    setup, fresh, env, capsys
):
    target = read_questions("cub200-similar")[2].choices[3][0]  # one species option
    fresh.control(rules=[{"match": target, "plan": ["500", "500"]}])
    out = env / "run"
    summary = run_eval(_config(setup, fresh, out, max_retries=1))
    rows = _rows(out)
    failed = [i for i, r in rows.items() if "error" in r]
    assert failed and summary["n_errors"] == len(failed) and summary["n"] == N - len(failed)
    assert all("HTTP 500" in rows[i]["error"] and "level 4" in rows[i]["error"] for i in failed)
    # redone: only the failed requests are sent again, the samples' other levels are cached
    before = fresh.received()
    cfg = _config(setup, fresh, out, max_retries=1)
    cfg.retry_errors = True
    again = run_eval(cfg)
    assert again["n_errors"] == 0 and fresh.received() - before == len(failed)


def test_a_bad_key_stops_the_run_at_once_in_one_line(setup, fresh, env, monkeypatch, capsys):
    wrong = "sk-wrong-" + secrets.token_hex(12)
    monkeypatch.setenv(KEY_ENV, wrong)
    out = env / "run"
    code = main(_api_args(setup, fresh, out, SERVED, "--concurrency", "2"))
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "refused the API key" in lines[0], captured.err
    assert f"${KEY_ENV}" in lines[0] and wrong not in captured.err + captured.out
    assert fresh.received() <= 2 * 2  # what was in flight (and queued) when the 401 came
    assert not (out / "predictions.jsonl").exists() or not _rows(out)
    assert not any(wrong.encode() in p.read_bytes() for p in _files(out) + _cache(env))
    monkeypatch.setenv(KEY_ENV, KEY)  # fixed: the same command runs in the same folder
    assert main(_api_args(setup, fresh, out, SERVED, "--concurrency", "2")) == 0
    assert sorted(_rows(out)) == list(range(N))


def test_a_server_without_logprobs_stops_a_logits_run_naming_generate(setup, env):
    """A response without log-probabilities (as `transformers serve` gives), read from the
    response cache so that nothing is sent: the run stops, naming --answer generate."""
    from hierzoo.models.api import ResponseCache, ResponseFormatError, build_request, request_key

    base = "http://127.0.0.1:9/v1"
    clf = hierzoo.load(f"openai:{SERVED}", api_base=base, api_key_env=KEY_ENV)
    questions = read_questions("cub200-similar")[:1]
    protocol = clf.default_protocol("cub200", mode="text")
    cache = ResponseCache()
    for r in prompts.plan_questions(questions, protocol).requests:
        settings = dataclasses.replace(clf.request_settings("logits", "text"), system=r.system)
        body = build_request(r.text, None, settings, letters=r.letters)
        reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "A"}}]}
        cache.put(request_key(body, base), reply, api_base=base, request=body)
    with pytest.raises(ResponseFormatError, match="--answer generate"):
        clf.answer(questions, protocol=protocol)
    assert clf.provenance()["usage"]["cache_hits"] >= 1
    assert clf.provenance()["usage"]["requests"] == 0


def test_the_key_leaks_nowhere(setup, fresh, env, capsys):
    """A server error that quotes the Authorization header, a failed sample, the cache, the run
    folder, stdout and stderr: the key appears in none."""
    fresh.control(rules=[{"match": "genus of the bird", "plan": ["500:echo"] * 2}])
    out = env / "run"
    cfg = _config(setup, fresh, out, max_retries=1)
    cfg.answer = "generate"
    summary = run_eval(cfg)
    captured = capsys.readouterr()
    assert summary["n_errors"] == N  # every sample's genus question failed, quoting the header
    texts = [captured.out, captured.err] + [p.read_text() for p in _files(out) + _cache(env)]
    assert texts[2:] and not any(KEY in t for t in texts)
    assert any("[API key]" in t for t in texts)  # the server's message, scrubbed, kept
    assert KEY_ENV not in json.dumps(json.loads((out / "run.json").read_text()))


def test_identity_holds_the_server_and_request_settings_not_the_key_or_concurrency(
    setup, fresh, env, capsys
):
    out = env / "run"
    assert main(_api_args(setup, fresh, out, SERVED, "--concurrency", "2")) == 0
    meta = json.loads((out / "run.json").read_text())
    ident = meta["identity"]
    assert ident["model"] == f"api:{SERVED}" and fresh.base_url in ident["model_content"]
    assert ident["options"] == {"api_base": fresh.base_url}  # not the key variable, concurrency
    assert ident["requests"]["layout"] == "vision-llm"
    assert ident["requests"]["settings"]["top_logprobs"] == 20

    def drop_last_row():
        lines = (out / "predictions.jsonl").read_text().splitlines()
        (out / "predictions.jsonl").write_text("\n".join(lines[:-1]) + "\n")

    # another concurrency resumes the run (the model loads, the identity is compared in full)
    drop_last_row()
    assert main(_api_args(setup, fresh, out, SERVED, "--concurrency", "5")) == 0
    assert sorted(_rows(out)) == list(range(N))
    # other request settings are refused, naming them
    with pytest.raises(ValueError, match="options.*top_logprobs"):
        run_eval(_config(setup, fresh, out, top_logprobs=5))
    code = main(_api_args(setup, fresh, out, SERVED, "--answer", "generate"))
    assert code == 2 and "answer" in capsys.readouterr().err
    # a request setting no flag shows (another hierzoo's default) is compared once loaded
    meta["identity"]["requests"]["settings"]["temperature"] = 0.7
    (out / "run.json").write_text(json.dumps(meta))
    drop_last_row()
    code = main(_api_args(setup, fresh, out, SERVED))
    err = capsys.readouterr().err
    assert code == 2 and "requests" in err and "0.7" in err, err


def test_a_finished_run_and_a_second_folder_send_nothing(setup, fresh, env):
    out = env / "run"
    assert main(_api_args(setup, fresh, out, SERVED)) == 0
    sent = fresh.received()
    assert sent == 4 * N
    assert main(_api_args(setup, fresh, out, SERVED)) == 0  # finished: the model is not asked
    assert main(_api_args(setup, fresh, env / "other", SERVED)) == 0  # all from the cache
    assert fresh.received() == sent
    other = {i: {k: v for k, v in r.items() if k != "run"} for i, r in _rows(env / "other").items()}
    mine = {i: {k: v for k, v in r.items() if k != "run"} for i, r in _rows(out).items()}
    assert other == mine
    summary = json.loads((env / "other" / "summary.json").read_text())
    assert summary["provenance"]["usage"]["cache_hits"] == 4 * N
    assert summary["provenance"]["usage"]["requests"] == 0


def test_a_resumed_run_counts_the_tokens_of_every_answer_it_holds(setup, fresh, env):
    """Each row records the tokens of its answers, so a run finished in two goes has the usage
    and cost of one that ran at once (the rows of the first go included)."""
    import shutil

    whole, resumed = env / "whole", env / "resumed"
    assert main(_api_args(setup, fresh, whole, "gpt-4o", "--answer", "generate")) == 0
    resumed.mkdir()
    shutil.copy(whole / "run.json", resumed / "run.json")
    lines = (whole / "predictions.jsonl").read_text().splitlines(keepends=True)
    (resumed / "predictions.jsonl").write_text("".join(lines[: N // 2]))  # as if stopped here
    assert main(_api_args(setup, fresh, resumed, "gpt-4o", "--answer", "generate")) == 0
    first, second = (json.loads((d / "summary.json").read_text()) for d in (whole, resumed))
    assert second["done_before"] == N // 2
    keys = ("prompt_tokens", "completion_tokens", "cached_prompt_tokens", "estimated_cost_usd")
    u1, u2 = first["provenance"]["usage"], second["provenance"]["usage"]
    assert [u2[k] for k in keys] == [u1[k] for k in keys] and u1["prompt_tokens"] > 0
    assert all(r["tokens"]["completion"] > 0 for r in _rows(resumed).values())


def test_a_killed_run_pays_again_for_at_most_the_requests_in_flight(setup, fresh, env):
    k, width = 5, 2
    fresh.control(hold_after=k)  # the server answers k requests, then holds the rest
    out = env / "run"
    cmd = [sys.executable, "-m", "hierzoo", *_api_args(setup, fresh, out, SERVED)]
    cmd += ["--concurrency", str(width)]
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    watchdog = threading.Timer(600, proc.kill)  # a hung child fails the test, never hangs it
    watchdog.start()
    try:
        while proc.poll() is None and len(_cache(env)) < k:  # the k answers are stored
            time.sleep(0.05)
        while proc.poll() is None and fresh.received() < k + width:  # the held ones are in
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        fresh.release()
    assert len(_cache(env)) == k
    before = fresh.received()
    assert main(_api_args(setup, fresh, out, SERVED, "--concurrency", str(width))) == 0
    assert fresh.received() - before == 4 * N - k  # nothing finished is asked again
    assert sorted(_rows(out)) == list(range(N))
    twice = [s for s in fresh.stats().values() if s["answered"] == 2]
    assert len(twice) <= width  # paid again: at most the requests in flight at the kill
