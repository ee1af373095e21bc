"""Models behind a chat-completions API: the paper's GPT-4o requests, retries, the response cache,
the key, logprob answers and usage, against a real server process on 127.0.0.1 that serves a tiny
random-weight Qwen2.5-VL (tests/chat_server.py) and injects faults; and against `transformers
serve`, a third-party server, for generated replies."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import paper_reference as ref
import pytest
from chat_server import ChatServer
from PIL import Image

from hierzoo.models.api import (
    ApiAuthError,
    ApiNotFoundError,
    ApiSettings,
    ChatClient,
    RequestSettings,
    ResponseCache,
    ResponseCacheWarning,
    ResponseFormatError,
    Usage,
    build_request,
    describe_request,
    estimate_cost,
    first_token_top_logprobs,
    letter_answer,
    paper_settings,
    request_key,
    response_letter_answer,
    retry_after_seconds,
    retry_delay,
)

KEY = "sk-hierzoo-test-" + secrets.token_hex(16)
KEY_ENV = "HZ_TEST_API_KEY"
SERVED = "tiny-vlm"
GPT = "gpt-4o-2024-11-20"
INSTRUCTION = ref.INSTRUCTION
REPO = Path(__file__).resolve().parents[1]


def question(i: int, options=("Passeriformes", "Charadriiformes", "Piciformes", "Anseriformes")):
    cmap = {chr(65 + j): o for j, o in enumerate(options)}
    return ref.question(
        f"Q{i} Based on taxonomy, what is the order of the bird in this image?", cmap
    )


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2.5-VL whose output layer is scaled by 20, so that the next-token
    distribution is peaked (distinct top tokens, letters mostly outside the top 20)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from hierzoo.models import tiny

    path = tiny.build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_api") / "qwen", seed=3)
    model = AutoModelForImageTextToText.from_pretrained(path)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("api_images")
    rng = np.random.default_rng(0)
    out = []
    for i in range(8):
        pixels = (rng.random((64, 48 + 8 * (i % 3), 3)) * 255).astype("uint8")
        path = root / (f"img{i}.jpg" if i % 2 == 0 else f"img{i}.png")
        Image.fromarray(pixels).save(path)
        out.append(path)
    return out


@pytest.fixture(scope="module")
def server(tiny_dir):
    srv = ChatServer(tiny_dir, served_name=SERVED, extra_names=[GPT], api_key=KEY)
    with srv:
        yield srv


@pytest.fixture(scope="module")
def local(tiny_dir):
    """The same tiny model in this process, for answers computed without the server."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()

    class Local:
        tokenizer = processor.tokenizer

        def inputs(self, text, image, system=ref.SYSTEM_HELPFUL):
            content = [{"type": "text", "text": text}]
            if image is not None:
                content.append({"type": "image"})
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": content},
            ]
            prompt = processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            pics = [Image.open(image).convert("RGB")] if image is not None else None
            return processor(text=[prompt], images=pics, return_tensors="pt")

        def next_logprobs(self, text, image):
            with torch.no_grad():
                logits = model(**self.inputs(text, image)).logits[0, -1]
            return torch.log_softmax(logits.double(), dim=-1)

        def greedy(self, text, image, max_new_tokens):
            enc = self.inputs(text, image)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
            new = out[0, enc["input_ids"].shape[1] :]
            return processor.tokenizer.decode(new, skip_special_tokens=True), len(new)

        def letter_id(self, letter):
            ids = processor.tokenizer.encode(letter, add_special_tokens=False)
            assert len(ids) == 1
            return ids[0]

    return Local()


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("HIERZOO_CACHE", str(tmp_path / "hzcache"))
    return tmp_path


@pytest.fixture
def fresh(server):
    server.reset()
    return server


def make_client(server, **kw) -> ChatClient:
    settings = dict(
        api_base=server.base_url, api_key_env=KEY_ENV, backoff_base=0.01, backoff_max=0.05
    )
    settings.update(kw)
    return ChatClient(ApiSettings(**settings))


def served(**kw) -> RequestSettings:
    return RequestSettings(model=SERVED, **kw)


def by_text(stats: dict) -> dict[str, dict]:
    return {s["text"]: s for s in stats.values()}


def cache_files(root: Path) -> list[Path]:
    return sorted(root.glob("??/*.json")) if root.is_dir() else []


def leaks(key: str, *texts: str | bytes) -> list[str]:
    found = []
    for t in texts:
        data = t if isinstance(t, bytes) else str(t).encode()
        if key.encode() in data:
            found.append(data[:200].decode("utf-8", "replace"))
    return found


def all_bytes(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in root.rglob("*") if p.is_file()]


def exception_texts(e: BaseException) -> list[str]:
    texts = ["".join(traceback.format_exception(e)), str(e), repr(e)]
    while e.__cause__ or e.__context__:
        e = e.__cause__ or e.__context__
        texts += [str(e), repr(e)]
    return texts


# ---------------------------------------------------------------------------- requests
def test_paper_request_is_the_scripts_request(images):
    """Image mode: the body the paper's gpt_img_all.py sends (its messages and parameters, as
    transcribed in tests/paper_reference.py); text mode: gpt_cub_text.py's single text item."""
    q = question(0)
    jpeg = images[0]
    b64 = base64.b64encode(jpeg.read_bytes()).decode()
    got = build_request(q, jpeg, paper_settings("gpt-4o"))
    assert got == {**ref.GPT_PARAMS, "messages": ref.gpt_messages(q, b64)}
    assert got["model"] == "gpt-4o-2024-11-20"
    assert [i["type"] for i in got["messages"][1]["content"]] == ["text", "image_url"]
    png = images[1]  # the paper labels every file image/jpeg
    assert build_request(q, png, paper_settings())["messages"][1]["content"][1]["image_url"][
        "url"
    ].startswith("data:image/jpeg;base64,")
    text_mode = build_request(q, None, paper_settings("gpt-4o"))
    assert text_mode == {**ref.GPT_PARAMS, "messages": ref.gpt_messages(q, None)}
    auto = build_request(q, png, RequestSettings(model="m", image_mime="auto"))
    assert auto["messages"][1]["content"][1]["image_url"]["url"].startswith("data:image/png;")


def test_logits_settings_and_options():
    logits = build_request("q", None, paper_settings(answer="logits"))
    assert logits["max_tokens"] == 1 and logits["logprobs"] is True
    assert logits["top_logprobs"] == 20
    assert {k: logits[k] for k in ("temperature", "seed")} == {"temperature": 0.2, "seed": 42}
    first = build_request("q", b"\x89PNG\r\n\x1a\nxx", served(image_first=True, detail=None))
    assert first["messages"][1]["content"][0] == {
        "type": "image_url",
        "image_url": {
            "url": "data:image/jpeg;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nxx").decode()
        },
    }
    assert build_request("q", None, served(system=None))["messages"][0]["role"] == "user"
    with pytest.raises(ValueError, match="answer"):
        paper_settings(answer="logit")
    with pytest.raises(ValueError, match="max_tokens"):
        served(max_tokens=0)
    with pytest.raises(ValueError, match="restrict"):
        served(restrict="grammar")
    with pytest.raises(ValueError, match="allowed_token_ids"):
        served(restrict="allowed_token_ids")
    with pytest.raises(ValueError, match="image_mime"):
        served(image_mime="jpeg")
    with pytest.raises(ValueError, match="not a JPEG"):
        build_request("q", b"hello", served(image_mime="auto"))


def test_restriction_fields():
    body = build_request("q", None, served(restrict="choice"), letters="ABCD")
    assert body["structured_outputs"] == {"choice": ["A", "B", "C", "D"]}
    assert build_request("q", None, served(restrict="guided_choice"), letters="AB")[
        "guided_choice"
    ] == ["A", "B"]
    assert build_request("q", None, served(restrict="regex"), letters="ABC")["regex"] == "(A|B|C)"
    ids = build_request("q", None, served(restrict="allowed_token_ids", allowed_token_ids=(7, 9)))
    assert ids["allowed_token_ids"] == [7, 9]
    with pytest.raises(ValueError, match="letters"):
        build_request("q", None, served(restrict="choice"))
    assert build_request("q", None, served(extra={"top_k": 1}))["top_k"] == 1
    with pytest.raises(ValueError, match="seed"):
        build_request("q", None, served(extra={"seed": 1}))


def test_dry_run_form_has_size_and_hash_not_bytes(images):
    path = images[2]
    data = path.read_bytes()
    req = build_request(question(1), path, paper_settings())
    before = json.dumps(req)
    shown = describe_request(req)
    text = json.dumps(shown)
    assert base64.b64encode(data).decode()[:40] not in text
    url = shown["messages"][1]["content"][1]["image_url"]["url"]
    assert url == (
        f"data:image/jpeg;base64,<{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}>"
    )
    assert json.dumps(req) == before  # the request itself is untouched
    shown["messages"][1]["content"][1] = req["messages"][1]["content"][1]
    assert shown == req  # everything else as sent


def test_request_key_covers_the_whole_request(images):
    base = build_request(question(0), images[0], paper_settings())
    key = request_key(base, "http://h:8000/v1")
    assert request_key(dict(reversed(list(base.items()))), "http://h:8000/v1/") == key
    assert request_key(base, "http://h:8001/v1") != key
    assert request_key(base) != key  # OpenAI's base
    for change in ({"seed": 1}, {"temperature": 0.0}, {"model": "gpt-4o"}, {"max_tokens": 6}):
        assert request_key({**base, **change}, "http://h:8000/v1") != key
    other_image = build_request(question(0), images[2], paper_settings())
    assert request_key(other_image, "http://h:8000/v1") != key
    with pytest.raises(ValueError, match="api_base"):
        request_key(base, "h:8000")


# ---------------------------------------------------------------------------- logprobs
def _slow_letter_answer(top, letters):
    """The documented rule written out: exact token matches, probabilities summed per letter,
    renormalised over the letters present."""
    mass = {c: 0.0 for c in letters}
    seen = set()
    for e in top:
        if e["token"] in mass:
            mass[e["token"]] += math.exp(e["logprob"])
            seen.add(e["token"])
    total = sum(mass.values())
    probs = [mass[c] / total if total else float("nan") for c in letters]
    present = [c for c in letters if c in seen]
    choice = max(present, key=lambda c: (mass[c], -letters.index(c))) if present else None
    return choice, probs, [c for c in letters if c not in seen]


def test_letter_answer_rule():
    top = [
        {"token": "B", "logprob": -0.2},
        {"token": " A", "logprob": -1.0},  # not the letter token
        {"token": "D", "logprob": -2.5},
        {"token": "Answer", "logprob": -3.0},
    ]
    a = letter_answer(top, "ABCD")
    assert a.letter == "B" and a.choice == 1
    assert a.absent == ("A", "C") and a.any_absent
    assert a.floor == -3.0
    pb, pd = math.exp(-0.2), math.exp(-2.5)
    np.testing.assert_allclose(a.probs, [0, pb / (pb + pd), 0, pd / (pb + pd)], rtol=1e-12)
    assert a.logprobs == (None, -0.2, None, -2.5)
    assert a.letter_mass == pytest.approx(pb + pd)
    none = letter_answer([{"token": "x", "logprob": -0.1}], "AB")
    assert none.choice == -1 and none.letter is None and all(math.isnan(p) for p in none.probs)
    tie = letter_answer([{"token": "C", "logprob": -1.0}, {"token": "A", "logprob": -1.0}], "ABC")
    assert tie.letter == "A"
    dup = letter_answer([{"token": "A", "logprob": -1.0}, {"token": "A", "logprob": -1.0}], "AB")
    assert dup.logprobs[0] == pytest.approx(math.log(2 * math.exp(-1.0)))
    assert letter_answer([], "AB").floor is None
    for bad in ({"token": "A"}, {"logprob": -1.0}, {"token": "A", "logprob": "x"}):
        with pytest.raises(ResponseFormatError):
            letter_answer([bad], "AB")
    rng = random.Random(0)
    for _ in range(300):
        letters = "ABCDE"[: rng.randint(2, 5)]
        pool = list("ABCDEFG") + [" A", "B.", "a"]
        top = [
            {"token": rng.choice(pool), "logprob": -rng.random() * 5}
            for _ in range(rng.randint(0, 8))
        ]
        fast = letter_answer(top, letters)
        choice, probs, absent = _slow_letter_answer(top, letters)
        assert fast.letter == choice and list(fast.absent) == absent
        np.testing.assert_allclose(fast.probs, probs, rtol=1e-9, atol=1e-12)


def test_missing_logprobs_are_named():
    with pytest.raises(ResponseFormatError, match="--answer generate"):
        first_token_top_logprobs({"choices": [{"message": {"content": "A"}}]})
    with pytest.raises(ResponseFormatError, match="no choices"):
        first_token_top_logprobs({"object": "error"})


# ---------------------------------------------------------------------------- retry policy
def test_retry_after_parsing_and_delays():
    now = 1_700_000_000.0
    assert retry_after_seconds({"Retry-After": "3"}, now) == 3.0
    assert retry_after_seconds({"retry-after": "1.5"}, now) == 1.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}, now) == 0.25
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 7))
    assert retry_after_seconds({"Retry-After": date}, now) == pytest.approx(7.0)
    past = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now - 7))
    assert retry_after_seconds({"Retry-After": past}, now) == 0.0
    assert retry_after_seconds({"Retry-After": "soon"}, now) is None
    assert retry_after_seconds({}, now) is None
    s = ApiSettings(backoff_base=0.5, backoff_max=3.0, retry_after_max=10.0)
    rng = random.Random(1)
    assert retry_delay(1, {"Retry-After": "4"}, s, rng) == 4.0
    assert retry_delay(1, {"Retry-After": "400"}, s, rng) == 10.0
    for attempt, bound in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)):
        draws = [retry_delay(attempt, {}, s, rng) for _ in range(400)]
        assert min(draws) >= 0.0 and max(draws) <= bound
        assert max(draws) > 0.9 * bound and min(draws) < 0.1 * bound  # full jitter


def test_settings_are_checked():
    for bad in (
        {"concurrency": 0},
        {"max_retries": -1},
        {"timeout": 0},
        {"backoff_base": -1},
        {"retry_after_max": float("inf")},
        {"api_base": "localhost:8000"},
        {"api_key_env": ""},
    ):
        with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
            ApiSettings(**bad)


def test_no_key_for_openai_is_refused_before_any_request(monkeypatch):
    monkeypatch.delenv("HZ_UNSET_KEY", raising=False)
    with pytest.raises(ApiAuthError, match=r"\$HZ_UNSET_KEY is not set"):
        ChatClient(ApiSettings(api_key_env="HZ_UNSET_KEY"))


def test_import_is_light():
    code = (
        "import sys, hierzoo, hierzoo.models.api as a, hierzoo.models.api.client, "
        "hierzoo.models.api.request; a.ChatClient; "
        "print(sorted(m for m in ('openai', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------- usage
def test_cost_table_and_usage_sums():
    assert estimate_cost(GPT, 1_000_000, 1_000_000) == pytest.approx(12.5)
    assert estimate_cost(GPT, 1_000_000, 0, cached_prompt_tokens=400_000) == pytest.approx(
        0.6 * 2.5 + 0.4 * 1.25
    )
    assert estimate_cost("gpt-4o-2024-05-13", 10, 0, cached_prompt_tokens=10) == pytest.approx(5e-5)
    assert estimate_cost("Qwen/Qwen2.5-VL-72B-Instruct", 10, 10) is None
    assert estimate_cost("gpt-4o", 10, 10) is None  # a moving alias has no fixed price
    u = Usage()
    r = {"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 2}}
    u.add_response(r, cached=False)
    u.add_response(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 50,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": 20},
            },
        },
        cached=True,
    )
    s = u.summary(GPT)
    assert (s["prompt_tokens"], s["completion_tokens"], s["cached_prompt_tokens"]) == (150, 3, 20)
    assert (s["sent_prompt_tokens"], s["sent_completion_tokens"]) == (100, 2)
    assert (s["requests"], s["cache_hits"]) == (1, 1)
    assert s["estimated_cost_usd"] == pytest.approx((130 * 2.5 + 20 * 1.25 + 3 * 10) / 1e6)
    assert s["estimated_sent_cost_usd"] == pytest.approx((100 * 2.5 + 2 * 10) / 1e6)
    assert s["prices"]["date"] and s["prices"]["usd_per_1m_tokens"]["output"] == 10.0
    other = u.summary("tiny-vlm")
    assert other["estimated_cost_usd"] is None and other["prices"] is None


# ---------------------------------------------------------------------------- against the server
def test_every_question_answered_once_under_faults(fresh, env, images):
    """429 with Retry-After (waited for, by the server's own receive times), 500, 503, dropped
    connections and a timeout: every request gets exactly one completion and one result."""
    fresh.control(
        rules=[
            {"match": "Q0 ", "plan": ["429:1"]},
            {"match": "Q1 ", "plan": ["500", "drop", "503"]},
            {"match": "Q2 ", "plan": ["drop", "drop"]},
            {"match": "Q3 ", "plan": ["429:ms:300", "429"]},
            {"match": "Q4 ", "plan": ["hang:4"]},
        ]
    )
    client = make_client(fresh, concurrency=3, timeout=1.5)
    reqs = [build_request(question(i), images[i], served()) for i in range(6)]
    results = list(client.run(reqs))
    assert sorted(r.index for r in results) == list(range(6))
    assert all(r.ok and r.response is not None for r in results), [r.error for r in results]
    stats = by_text(fresh.stats())
    assert all(stats[question(i)]["answered"] >= 1 for i in range(6))
    for i in (0, 1, 2, 3, 5):
        assert stats[question(i)]["answered"] == 1
    q0 = stats[question(0)]
    assert q0["statuses"] == [429, 200]
    assert q0["received"][1] - q0["received"][0] >= 1.0
    q3 = stats[question(3)]
    assert q3["statuses"] == [429, 429, 200]
    assert q3["received"][1] - q3["received"][0] >= 0.3
    assert stats[question(1)]["statuses"] == [500, "drop", 503, 200]
    assert stats[question(2)]["statuses"] == ["drop", "drop", 200]
    attempts = {r.index: r.attempts for r in results}
    assert attempts[0] == 2 and attempts[1] == 4 and attempts[2] == 3 and attempts[5] == 1
    assert attempts[4] >= 2  # the first attempt timed out
    assert client.usage.requests == 6 and client.usage.errors == 0
    assert client.usage.retries == sum(a - 1 for a in attempts.values())


def test_retry_after_http_date_is_waited_for(fresh, env, images):
    fresh.control(rules=[{"match": None, "plan": ["429:date:1"]}])
    [r] = list(make_client(fresh).run([build_request(question(0), images[0], served())]))
    assert r.ok
    [s] = fresh.stats().values()
    assert s["statuses"] == [429, 200]
    assert s["received_wall"][1] >= s["announced"][0]


def test_gives_up_after_the_last_retry_and_the_run_goes_on(fresh, env, images):
    fresh.control(
        rules=[
            {"match": "Q1 ", "plan": ["500"] * 6},
            {"match": "Q2 ", "plan": ["400"]},
        ]
    )
    client = make_client(fresh, max_retries=2)
    reqs = [build_request(question(i), images[i], served()) for i in range(4)]
    results = {r.index: r for r in client.run(reqs)}
    assert results[1].response is None and results[1].attempts == 3
    assert "HTTP 500" in results[1].error and "after 3 attempts" in results[1].error
    assert results[2].attempts == 1 and results[2].error.startswith("HTTP 400: injected 400")
    assert results[0].ok and results[3].ok
    assert client.usage.errors == 2 and client.usage.requests == 2
    stats = by_text(fresh.stats())
    assert len(stats[question(1)]["received"]) == 3
    # errors are not cached: resuming sends exactly the two failed requests again
    before = fresh.received()
    again = {r.index: r for r in make_client(fresh).run(reqs)}
    assert fresh.received() - before == 4 + 1  # Q1: arrivals 4-6 fail, the 7th is answered
    assert again[0].cached and again[3].cached and not again[1].cached
    assert again[1].ok and again[2].ok


def test_an_unreadable_answer_is_that_questions_error_and_the_run_goes_on(fresh, env, images):
    """An answer holding NaN (not JSON): that question's error at once (not retried, not
    cached); the other questions are answered."""
    fresh.control(rules=[{"match": "Q1 ", "plan": ["nan"]}])
    client = make_client(fresh)
    reqs = [build_request(question(i), images[i], served()) for i in range(4)]
    results = {r.index: r for r in client.run(reqs)}
    assert results[1].attempts == 1 and "holds NaN, not a number" in results[1].error
    assert results[0].ok and results[2].ok and results[3].ok
    stats = by_text(fresh.stats())
    assert len(stats[question(1)]["received"]) == 1
    again = {r.index: r for r in make_client(fresh).run(reqs)}
    assert not again[1].cached and again[1].ok  # sent again, answered this time


def test_an_unreachable_server_stops_the_run_naming_the_address(env, images):
    """Nothing listens at the address: the run stops after a request's first attempts failed
    to connect, naming the address, instead of retrying every request for hours."""
    from hierzoo.models.api.client import UNREACHABLE_ATTEMPTS, ApiUnreachableError

    port = _free_port()  # bound and released: nothing listens there
    settings = ApiSettings(
        api_base=f"http://127.0.0.1:{port}/v1", api_key_env=KEY_ENV, concurrency=2,
        backoff_base=0.0, max_retries=8,
    )  # fmt: skip
    client = ChatClient(settings, cache=False)
    reqs = [build_request(question(i), images[i], served()) for i in range(6)]
    with pytest.raises(ApiUnreachableError, match=rf"Cannot reach the server at .*:{port}/v1"):
        list(client.run(reqs))
    assert UNREACHABLE_ATTEMPTS <= 8


def test_bad_key_stops_at_once_without_the_key(fresh, env, monkeypatch, images, caplog):
    wrong = "sk-wrong-" + secrets.token_hex(12)
    monkeypatch.setenv(KEY_ENV, wrong)
    client = make_client(fresh, concurrency=3)
    reqs = [build_request(question(i), images[i % 8], served()) for i in range(12)]
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ApiAuthError) as info:
        list(client.run(reqs))
    message = str(info.value)
    assert "HTTP 401" in message and f"${KEY_ENV}" in message and "--api-key-env" in message
    assert "Incorrect API key provided: [API key]" in message  # the server echoed it
    assert fresh.received() <= 3
    assert not cache_files(env / "hzcache" / "api")
    for secret in (wrong, KEY):
        assert not leaks(secret, *exception_texts(info.value), caplog.text, repr(client))


def test_unknown_model_stops_at_once(fresh, env, images):
    client = make_client(fresh, concurrency=2)
    reqs = [build_request(question(i), None, RequestSettings(model="nope")) for i in range(6)]
    with pytest.raises(ApiNotFoundError, match=r"no model 'nope'.*/models"):
        list(client.run(reqs))
    assert fresh.received() <= 2


def test_key_leaks_nowhere(fresh, env, images, caplog, recwarn):
    """Everything written or raised by a run with retries, a server error that quotes the
    Authorization header, a damaged cache entry and a rerun: no byte of the key."""
    caplog.set_level(logging.DEBUG)
    fresh.control(
        rules=[
            {"match": "Q1 ", "plan": ["429:0", "500:echo"]},
            {"match": "Q2 ", "plan": ["400"]},
        ]
    )
    settings = dict(max_retries=1)
    client = make_client(fresh, **settings)
    reqs = [build_request(question(i), images[i], served(top_logprobs=5)) for i in range(4)]
    results = list(client.run(reqs))
    cache_root = env / "hzcache" / "api"
    files = cache_files(cache_root)
    assert len(files) == 2
    echoed = next(r for r in results if r.index == 1)
    assert "HTTP 500" in echoed.error and "Authorization: Bearer [API key]" in echoed.error
    files[0].write_text("{broken")
    results += list(make_client(fresh, **settings).run(reqs))
    texts = [repr(r) for r in results] + [json.dumps(r.response) for r in results]
    texts += [str(r.error) for r in results]
    texts += [repr(client), repr(client.settings), json.dumps(client.usage.summary(SERVED))]
    texts += [caplog.text] + [str(w.message) for w in recwarn]
    texts += [json.dumps(describe_request(r)) for r in reqs]
    assert not leaks(KEY, *texts, *all_bytes(env))
    assert any(r.error and "HTTP 400" in r.error for r in results)


def test_rerun_sends_nothing(fresh, env, images):
    reqs = [build_request(question(i), images[i], served()) for i in range(5)]
    first = make_client(fresh)
    done = {r.index: r for r in first.run(reqs)}
    sent = fresh.received()
    assert sent == 5 and len(cache_files(env / "hzcache" / "api")) == 5
    second = make_client(fresh)
    again = {r.index: r for r in second.run(reqs)}
    assert fresh.received() == sent
    assert all(again[i].cached and again[i].attempts == 0 for i in range(5))
    assert [again[i].response for i in range(5)] == [done[i].response for i in range(5)]
    assert second.usage.requests == 0 and second.usage.cache_hits == 5
    assert second.usage.prompt_tokens == first.usage.prompt_tokens > 0
    assert second.usage.sent_prompt_tokens == 0


def test_requests_that_could_not_be_built_are_errors_in_their_turn(fresh, env, images, tmp_path):
    def requests():
        for i in range(4):
            try:
                path = tmp_path / "missing.jpg" if i == 2 else images[i]
                yield build_request(question(i), path, served())
            except OSError as e:
                yield e

    results = {r.index: r for r in make_client(fresh).run(requests())}
    assert sorted(results) == [0, 1, 2, 3]
    assert results[2].response is None and "missing.jpg" in results[2].error
    assert results[2].error.startswith("FileNotFoundError")
    assert all(results[i].ok for i in (0, 1, 3))
    assert fresh.received() == 3
    with pytest.raises(ValueError, match="Request 1 is not a chat-completions body"):
        list(make_client(fresh).run([build_request("q", None, served()), {"model": SERVED}]))


def test_duplicate_requests_are_sent_once(fresh, env, images):
    req = build_request(question(0), images[0], served())
    results = sorted(
        make_client(fresh, cache=False).run([req, dict(req), req]), key=lambda r: r.index
    )
    assert fresh.received() == 1
    assert [r.response for r in results] == [results[0].response] * 3
    assert [r.cached for r in results].count(False) == 1


def test_stopped_run_resumes_with_the_missing_requests_only(fresh, env, images):
    n, k = 12, 3
    reqs = [build_request(question(i), images[i % 8], served()) for i in range(n)]
    client = make_client(fresh, concurrency=2)
    got = []
    results = client.run(reqs)
    for r in results:
        got.append(r.index)
        if len(got) == k:
            break
    results.close()
    stored = len(cache_files(env / "hzcache" / "api"))
    assert stored >= k  # requests in flight when it stopped were finished and stored
    before = fresh.received()
    rest = list(make_client(fresh, concurrency=2).run(reqs))
    assert fresh.received() - before == n - stored
    assert sorted(r.index for r in rest) == list(range(n))
    assert all(s["answered"] == 1 for s in fresh.stats().values())  # nobody paid twice


def test_killed_run_pays_again_for_at_most_the_requests_in_flight(fresh, env, images, tmp_path):
    n, k, width = 9, 3, 2
    reqs = [build_request(question(i), images[i % 8], served()) for i in range(n)]
    (tmp_path / "reqs.json").write_text(json.dumps(reqs))
    fresh.control(hold_after=k)  # the server answers k requests, then holds the rest
    code = (
        "import json, sys\n"
        "from hierzoo.models.api import ApiSettings, ChatClient\n"
        f"reqs = json.load(open({str(tmp_path / 'reqs.json')!r}))\n"
        f"s = ApiSettings(api_base={fresh.base_url!r}, api_key_env={KEY_ENV!r}, "
        f"concurrency={width})\n"
        "for r in ChatClient(s).run(reqs):\n"
        "    print('DONE', r.index, flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    watchdog = threading.Timer(600, proc.kill)  # a hung child fails the test, never hangs it
    watchdog.start()
    try:
        lines = [proc.stdout.readline() for _ in range(k)]
        assert all(line.startswith("DONE") for line in lines), lines
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        fresh.release()
    assert len(cache_files(env / "hzcache" / "api")) == k
    before = fresh.received()
    rest = list(make_client(fresh, concurrency=width).run(reqs))
    assert fresh.received() - before == n - k
    assert sorted(r.index for r in rest) == list(range(n)) and all(r.ok for r in rest)
    twice = [s for s in fresh.stats().values() if len(s["received"]) == 2]
    assert len(twice) <= width  # paid again: at most the requests in flight at the kill


def test_damaged_cache_entries_are_refetched_with_a_warning(fresh, env, images):
    reqs = [build_request(question(i), images[i], served()) for i in range(4)]
    list(make_client(fresh).run(reqs))
    files = cache_files(env / "hzcache" / "api")
    files[0].write_text('{"format": "hierzoo-chat-response/1", "key": "')
    entry = json.loads(files[1].read_text())
    entry["key"] = "0" * 64
    files[1].write_text(json.dumps(entry))
    before = fresh.received()
    with pytest.warns(ResponseCacheWarning) as caught:
        results = list(make_client(fresh).run(reqs))
    assert fresh.received() - before == 2
    said = " ".join(str(w.message) for w in caught)
    assert f"{files[0]} is not valid JSON" in said
    assert f"{files[1]} holds the response of another request" in said
    assert all(r.ok for r in results)
    cache = ResponseCache(env / "hzcache" / "api")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(cache.get(request_key(r, fresh.base_url)) for r in reqs)


def test_logprob_answers_equal_the_local_forward(fresh, env, images, local):
    """The letter read from the server's first-token top_logprobs is the letter argmax of the same
    model's forward on the same chat-template prompt; with a shorter list, the letters missing from
    it are the ones ranked below it locally."""
    letters = "ABCD"
    ids = [local.letter_id(c) for c in letters]
    vocab = len(local.tokenizer)
    client = make_client(fresh)
    checked_partial = 0
    for i in range(6):
        q, image = question(i), images[i] if i < 4 else None
        lp = local.next_logprobs(q, image)
        letter_lp = lp[ids]
        full = client.send(build_request(q, image, served(top_logprobs=vocab, max_tokens=1)))
        a = response_letter_answer(full.response, letters)
        assert a.absent == ()
        assert a.choice == int(letter_lp.argmax())
        np.testing.assert_allclose(a.logprobs, letter_lp.numpy(), atol=1e-4)
        np.testing.assert_allclose(a.probs, letter_lp.softmax(0).numpy(), atol=1e-4)
        # a list that ends after the second-best letter
        rank = {int(t): r for r, t in enumerate(lp.argsort(descending=True))}
        ranks = sorted(rank[t] for t in ids)
        top_k = ranks[1] + 1
        part = client.send(build_request(q, image, served(top_logprobs=top_k, max_tokens=1)))
        b = response_letter_answer(part.response, letters)
        assert set(b.absent) == {c for c, t in zip(letters, ids) if rank[t] >= top_k}
        assert len(b.absent) == 2 and b.choice == a.choice
        assert b.floor <= min(v for v in b.logprobs if v is not None)
        present = [j for j, c in enumerate(letters) if c not in b.absent]
        np.testing.assert_allclose(
            [b.probs[j] for j in present], letter_lp[present].softmax(0).numpy(), atol=1e-4
        )
        checked_partial += 1
    assert checked_partial == 6
    # OpenAI's limit of 20: the letters of this random model mostly fall outside it
    twenty = client.send(build_request(question(0), images[0], served(top_logprobs=20)))
    c = response_letter_answer(twenty.response, letters)
    lp = local.next_logprobs(question(0), images[0])
    rank = {int(t): r for r, t in enumerate(lp.argsort(descending=True))}
    assert set(c.absent) == {ch for ch, t in zip(letters, ids) if rank[t] >= 20}


def test_generated_replies_equal_local_greedy_generation(fresh, env, images, local):
    client = make_client(fresh)
    for i in range(4):
        q = question(i)
        image = images[i] if i != 3 else None
        r = client.send(build_request(q, image, served(max_tokens=6)))
        want, n_new = local.greedy(q, image, 6)
        assert r.reply == want
        assert r.response["usage"]["completion_tokens"] == n_new
        assert r.response["usage"]["prompt_tokens"] == local.inputs(q, image)["input_ids"].shape[1]


@pytest.mark.parametrize("restrict", ["choice", "guided_choice", "regex", "allowed_token_ids"])
def test_restricted_answers_pass_through(fresh, env, images, local, restrict):
    letters = "ABCD"
    ids = tuple(local.letter_id(c) for c in letters)
    settings = served(max_tokens=1, restrict=restrict, allowed_token_ids=ids)
    client = make_client(fresh)
    unrestricted_tops = []
    for i in range(3):
        q = question(i)
        r = client.send(build_request(q, images[i], settings, letters=letters))
        lp = local.next_logprobs(q, images[i])
        assert r.reply == letters[int(lp[list(ids)].argmax())]
        unrestricted_tops.append(int(lp.argmax()))
    assert any(t not in ids for t in unrestricted_tops)  # the restriction changed the answer


def test_usage_and_cost_of_a_run(fresh, env, images, local):
    settings = RequestSettings(model=GPT, max_tokens=2)
    reqs = [build_request(question(i), images[i], settings) for i in range(3)]
    client = make_client(fresh)
    list(client.run(reqs))
    prompts = [local.inputs(question(i), images[i])["input_ids"].shape[1] for i in range(3)]
    completions = [local.greedy(question(i), images[i], 2)[1] for i in range(3)]
    s = client.usage.summary(GPT)
    assert s["prompt_tokens"] == sum(prompts) and s["completion_tokens"] == sum(completions)
    assert s["estimated_cost_usd"] == pytest.approx(
        (sum(prompts) * 2.5 + sum(completions) * 10.0) / 1e6, abs=1e-6
    )
    again = make_client(fresh)
    list(again.run(reqs))
    t = again.usage.summary(GPT)
    assert t["estimated_cost_usd"] == s["estimated_cost_usd"]
    assert t["estimated_sent_cost_usd"] == 0.0


# ---------------------------------------------------------------------------- transformers serve
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def transformers_serve(tiny_dir, tmp_path_factory):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    exe = Path(sys.executable).parent / "transformers"
    if not exe.exists():
        pytest.skip("the transformers command is not installed")
    port = _free_port()
    log = open(tmp_path_factory.mktemp("tserve") / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(exe), "serve", str(tiny_dir), "--host", "127.0.0.1", "--port", str(port)]
        + ["--device", "cpu"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited: {Path(log.name).read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("transformers serve did not start within 600 s")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        log.close()


@pytest.mark.slow
def test_transformers_serve_replies_equal_local_greedy_generation(
    transformers_serve, tiny_dir, env, images, local, monkeypatch
):
    """A third-party server (it needs no key, gives no log-probabilities): the paper's request
    layout with the PNG images, replies equal to local greedy generation."""
    monkeypatch.delenv(KEY_ENV)
    client = ChatClient(ApiSettings(api_base=transformers_serve, api_key_env=KEY_ENV))
    settings = RequestSettings(model=str(tiny_dir), max_tokens=5, image_mime="auto")
    reqs = [build_request(question(i), images[i], settings) for i in (1, 3)]
    reqs.append(build_request(question(5), None, settings))
    results = sorted(client.run(reqs), key=lambda r: r.index)
    for r, (i, image) in zip(results, [(1, images[1]), (3, images[3]), (5, None)]):
        assert r.ok, r.error
        assert r.reply == local.greedy(question(i), image, 5)[0]
    with pytest.raises(ResponseFormatError, match="no log-probabilities"):
        response_letter_answer(results[0].response, "ABCD")


def test_a_key_variable_named_but_not_set_is_warned_about(monkeypatch):
    monkeypatch.delenv("HZ_UNSET_KEY", raising=False)
    settings = ApiSettings(api_base="http://127.0.0.1:9/v1", api_key_env="HZ_UNSET_KEY")
    with pytest.warns(UserWarning, match=r"\$HZ_UNSET_KEY \(--api-key-env\) is not set"):
        ChatClient(settings, cache=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default variable unset: a local server, no key
        ChatClient(ApiSettings(api_base="http://127.0.0.1:9/v1"), cache=False)
