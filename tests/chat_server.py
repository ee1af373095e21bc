"""A chat-completions server for tests: a tiny local vision LLM behind ``POST
/v1/chat/completions`` and ``GET /v1/models``, with faults injected on command.

Run as a process (``python tests/chat_server.py --model-dir DIR --port 0``); it prints
``PORT <n>`` once the model is loaded and the socket listens on 127.0.0.1. Tests use
:class:`ChatServer`, which starts it, talks to its control endpoints and stops it.

What it answers, for a model directory saved by ``hierzoo.models.tiny`` (any
``AutoModelForImageTextToText`` with its processor):

- the messages in the OpenAI format (string or list content, ``image_url`` items with base64 data
  URLs), turned into the transformers format (each image item becomes ``{"type": "image"}``, its
  bytes a PIL image) and rendered by the processor's chat template with the generation prompt;
- ``choices[0].message.content``: greedy generation of up to ``max_tokens`` new tokens
  (``temperature`` and ``seed`` are accepted and ignored), decoded without special tokens;
- ``choices[0].logprobs.content`` when ``logprobs`` is true: per generated token its
  log-probability and the ``top_logprobs`` most probable tokens, from the model's raw logits
  (before any restriction, as vLLM's default ``raw_logprobs``); more than 20 are allowed;
- ``usage``: prompt and completion token counts;
- restrictions: ``allowed_token_ids`` masks every other token at every step; a single-token
  ``structured_outputs.choice``, ``guided_choice`` or ``regex`` of the form ``(A|B|C)`` masks the
  first token to the choices and generates one token.

Control (no key needed): ``POST /control`` with any of ``{"rules": [{"match": TEXT or null,
"plan": [FAULT, ...]}], "delay": SECONDS, "hold_after": N}``; ``POST /control/reset``;
``POST /control/release``; ``GET /control/stats``. A request's n-th arrival (0-based, per
distinct body) meets ``plan[n]`` of the first rule whose ``match`` occurs in its body, and is
answered normally past the plan. Faults: ``"429"``, ``"429:S"`` (``Retry-After: S``),
``"429:date:S"`` (``Retry-After`` as the HTTP date of the next whole second plus S, recorded under
``announced``), ``"429:ms:M"`` (``retry-after-ms``), ``"500"``, ``"503"``, ``"400"``,
``"500:echo"`` (a 500 whose message quotes the request's ``Authorization`` header),
``"drop"`` (the status line, headers and a part of the body, then the socket is closed),
``"hang:S"`` (answer after S seconds), ``"nan"`` (the answer with ``NaN`` in its usage, as
invalid JSON) and ``"badlogprob"`` (the answer with a top log-probability ``"x"``).
``hold_after: N`` holds every chat request after the first N admitted ones until
``/control/release``. Stats are per distinct body (keyed by the
SHA-256 of its bytes): the user text, receive times (monotonic and wall clock), statuses, and how
many times it was answered with a completion.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email.utils
import hashlib
import io
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# ---------------------------------------------------------------------------- the model
class TinyChatModel:
    """Greedy generation and first-step logprobs of a saved tiny vision LLM."""

    def __init__(self, model_dir: str) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        torch.set_num_threads(1)
        self.torch = torch
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.tokenizer = self.processor.tokenizer
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
        self.lock = threading.Lock()

    @staticmethod
    def to_transformers(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
        from PIL import Image

        out, images = [], []
        for message in messages:
            content = message.get("content")
            if isinstance(content, str) or content is None:
                out.append({"role": message["role"], "content": content or ""})
                continue
            items = []
            for item in content:
                if item.get("type") == "text":
                    items.append({"type": "text", "text": item["text"]})
                elif item.get("type") == "image_url":
                    url = item["image_url"]["url"]
                    head, sep, payload = url.partition(";base64,")
                    if not url.startswith("data:") or not sep:
                        raise HttpError(400, f"only base64 data URLs are served, not {url[:40]!r}")
                    try:
                        image = Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")
                    except Exception as e:
                        raise HttpError(400, f"cannot decode the image: {e}") from None
                    images.append(image)
                    items.append({"type": "image"})
                else:
                    raise HttpError(400, f"unsupported content item {item.get('type')!r}")
            out.append({"role": message["role"], "content": items})
        return out, images

    def single_token_ids(self, choices: list[str]) -> list[int]:
        ids = []
        for choice in choices:
            got = self.tokenizer.encode(choice, add_special_tokens=False)
            if len(got) != 1:
                raise HttpError(400, f"the test server restricts to single tokens; {choice!r}")
            ids.append(got[0])
        return ids

    def restriction(self, body: dict[str, Any]) -> tuple[list[int] | None, bool]:
        """``(allowed ids, first token only)`` from the body's restriction fields."""
        choices = None
        if isinstance(body.get("structured_outputs"), dict):
            choices = body["structured_outputs"].get("choice")
        if body.get("guided_choice") is not None:
            choices = body["guided_choice"]
        if body.get("regex") is not None:
            m = re.fullmatch(r"\((.*)\)", body["regex"])
            if m is None:
                raise HttpError(400, "the test server reads regexes of the form (A|B|C) only")
            choices = [re.sub(r"\\(.)", r"\1", part) for part in m.group(1).split("|")]
        if choices is not None:
            return self.single_token_ids(list(choices)), True
        ids = body.get("allowed_token_ids")
        if ids is not None:
            vocab = self.model.config.get_text_config().vocab_size
            if not ids or not all(isinstance(i, int) and 0 <= i < vocab for i in ids):
                raise HttpError(400, f"allowed_token_ids must be ids in [0, {vocab})")
            return list(ids), False
        return None, False

    def complete(self, body: dict[str, Any], name: str) -> dict[str, Any]:
        torch = self.torch
        from transformers import LogitsProcessor, LogitsProcessorList

        if body.get("stream") or body.get("n", 1) != 1:
            raise HttpError(400, "the test server answers n=1 without streaming only")
        messages, images = self.to_transformers(body.get("messages") or [])
        allowed, one_token = self.restriction(body)
        max_new = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        if one_token:
            max_new = 1
        prompt = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        inputs = self.processor(text=[prompt], images=images or None, return_tensors="pt")

        class Mask(LogitsProcessor):
            def __call__(self, input_ids, scores):  # noqa: ANN001
                keep = torch.full_like(scores, -math.inf)
                keep[:, allowed] = 0
                return scores + keep

        with self.lock, torch.no_grad():
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                logits_processor=LogitsProcessorList([Mask()]) if allowed else None,
            )
        n_prompt = inputs["input_ids"].shape[1]
        new = out.sequences[0, n_prompt:].tolist()
        eos = self.tokenizer.eos_token_id
        finish = "stop" if new and new[-1] == eos else "length"
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
            "logprobs": None,
        }
        if body.get("logprobs"):
            top = int(body.get("top_logprobs") or 0)
            content = []
            for step, token_id in enumerate(new):
                lp = torch.log_softmax(out.logits[step][0].float(), dim=-1)
                values, ids = lp.topk(min(top, lp.numel())) if top else (lp[:0], lp[:0].long())
                content.append(
                    {
                        **self._entry(token_id, float(lp[token_id])),
                        "top_logprobs": [
                            self._entry(int(i), float(v)) for v, i in zip(values, ids)
                        ],
                    }
                )
            choice["logprobs"] = {"content": content}
        return {
            "id": f"chatcmpl-{hashlib.sha1(prompt.encode()).hexdigest()[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": n_prompt,
                "completion_tokens": len(new),
                "total_tokens": n_prompt + len(new),
            },
        }

    def _entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        token = self.tokenizer.decode([token_id])
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


# ---------------------------------------------------------------------------- the server
class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.rules: list[dict[str, Any]] = []
            self.delay = 0.0
            self.hold_after: int | None = None
            self.admitted = 0
            self.bodies: dict[str, dict[str, Any]] = {}
            self.generation = getattr(self, "generation", 0) + 1
            self.gate.set()


def _user_text(body: dict[str, Any]) -> str:
    for message in body.get("messages") or []:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        return "".join(i.get("text", "") for i in content or [] if i.get("type") == "text")
    return ""


def make_handler(state: State, model: TinyChatModel, names: list[str], api_key: str | None):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, headers: dict[str, str] | None = None):
            self._json(
                status,
                {"error": {"message": message, "type": "test_server_error", "code": status}},
                headers,
            )

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/v1/models":
                data = [{"id": n, "object": "model", "owned_by": "hierzoo-tests"} for n in names]
                self._json(200, {"object": "list", "data": data})
            elif self.path == "/control/stats":
                with state.lock:
                    self._json(200, {"bodies": state.bodies, "admitted": state.admitted})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:  # noqa: N802
            raw = self._body()
            if self.path.startswith("/control"):
                return self._control(raw)
            if self.path != "/v1/chat/completions":
                return self._error(404, f"no route {self.path}")
            key = hashlib.sha256(raw).hexdigest()
            try:
                body = json.loads(raw)
            except ValueError:
                return self._error(400, "the body is not JSON")
            with state.lock:
                stats = state.bodies.setdefault(
                    key,
                    {
                        "text": _user_text(body),
                        "received": [],
                        "received_wall": [],
                        "statuses": [],
                        "announced": [],
                        "answered": 0,
                    },
                )
                # what happens to this request is counted in the entry it was received into: a
                # straggler of an earlier test (answered after reset()) counts in the old entry
                self._stats = stats
                self._generation = state.generation
                attempt = len(stats["received"])
                stats["received"].append(time.monotonic())
                stats["received_wall"].append(time.time())
                text = raw.decode("utf-8", "replace")
                plan = next(
                    (
                        r["plan"]
                        for r in state.rules
                        if r.get("match") in (None, "") or r["match"] in text
                    ),
                    [],
                )
                fault = plan[attempt] if attempt < len(plan) else None
            given = self.headers.get("Authorization", "")
            if api_key is not None and given != f"Bearer {api_key}":
                shown = given.removeprefix("Bearer ")
                return self._status(key, 401, f"Incorrect API key provided: {shown}")
            mutate = fault if fault in ("nan", "badlogprob") else None
            if fault is not None and mutate is None and self._fault(key, fault):
                return None
            if body.get("model") not in names:
                return self._status(key, 404, f"The model `{body.get('model')}` does not exist.")
            with state.lock:
                # a straggler of an earlier test (a hang that ends after reset()) is answered,
                # but neither counts toward nor waits on this test's hold
                current = self._generation == state.generation
                state.admitted += current
                held = (
                    current and state.hold_after is not None and state.admitted > state.hold_after
                )
                delay = state.delay if current else 0.0
            if held:
                state.gate.wait()
            if delay:
                time.sleep(delay)
            try:
                response = model.complete(body, body["model"])
            except HttpError as e:
                return self._status(key, e.status, e.message)
            if mutate == "nan":  # written as the literal NaN, which JSON does not allow
                response["usage"]["prompt_tokens"] = float("nan")
            elif mutate == "badlogprob":
                response["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0]["logprob"] = "x"
            with state.lock:
                self._stats["statuses"].append(200)
                self._stats["answered"] += 1
            with contextlib.suppress(OSError):
                self._json(200, response)
            return None

        def _status(self, key: str, status: int, message: str, headers=None) -> None:
            with state.lock:
                self._stats["statuses"].append(status)
            with contextlib.suppress(OSError):
                self._error(status, message, headers)

        def _fault(self, key: str, fault: str) -> bool:
            kind, _, arg = fault.partition(":")
            if kind == "429":
                headers = {}
                if arg.startswith("date:"):
                    when = math.floor(time.time()) + 1 + float(arg[5:])
                    headers["Retry-After"] = email.utils.formatdate(when, usegmt=True)
                    with state.lock:
                        self._stats["announced"].append(when)
                elif arg.startswith("ms:"):
                    headers["retry-after-ms"] = arg[3:]
                elif arg:
                    headers["Retry-After"] = arg
                self._status(key, 429, "Rate limit reached; slow down.", headers)
                return True
            if kind in ("400", "500", "503"):
                message = f"injected {kind}"
                if arg == "echo":
                    message += f" for Authorization: {self.headers.get('Authorization')}"
                self._status(key, int(kind), message)
                return True
            if kind == "drop":
                with state.lock:
                    self._stats["statuses"].append("drop")
                self.wfile.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b'Content-Length: 400\r\n\r\n{"id": "chatcmpl-'
                )
                self.wfile.flush()
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return True
            if kind == "hang":
                time.sleep(float(arg))
                return False
            raise ValueError(f"unknown fault {fault!r}")

        def _control(self, raw: bytes) -> None:
            if self.path == "/control/reset":
                state.reset()
            elif self.path == "/control/release":
                state.gate.set()
            elif self.path == "/control":
                cfg = json.loads(raw or b"{}")
                with state.lock:
                    if "rules" in cfg:
                        state.rules = list(cfg["rules"])
                    if "delay" in cfg:
                        state.delay = float(cfg["delay"])
                    if "hold_after" in cfg:
                        state.hold_after = cfg["hold_after"]
                        state.gate.clear()
            else:
                return self._error(404, f"no route {self.path}")
            self._json(200, {"ok": True})
            return None

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--served-name", action="append", default=None)
    parser.add_argument("--api-key-env", default=None, help="variable holding the key to demand")
    args = parser.parse_args(argv)
    api_key = os.environ[args.api_key_env] if args.api_key_env else None
    model = TinyChatModel(args.model_dir)
    names = args.served_name or [args.model_dir]
    server = ThreadingHTTPServer(
        ("127.0.0.1", args.port), make_handler(State(), model, names, api_key)
    )
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


# ---------------------------------------------------------------------------- for tests
class ChatServer:
    """Starts ``chat_server.py`` as a process on 127.0.0.1 and talks to it.

    The key it demands (if any) is passed through the environment variable ``api_key_env``,
    never on its command line.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        served_name: str = "tiny-vlm",
        extra_names: list[str] | tuple[str, ...] = (),
        api_key: str | None = None,
        startup_timeout: float = 600.0,
    ) -> None:
        self.model_dir = str(model_dir)
        self.names = [served_name, *extra_names]
        self.api_key = api_key
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[str] | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ChatServer:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--model-dir", self.model_dir]
        cmd += ["--port", "0"]
        for name in self.names:
            cmd += ["--served-name", name]
        if self.api_key is not None:
            env["CHAT_SERVER_KEY"] = self.api_key
            cmd += ["--api-key-env", "CHAT_SERVER_KEY"]
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env
        )
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.process.stdout.readline()))
        reader.start()
        reader.join(self.startup_timeout)
        if not line or not line[0].startswith("PORT "):
            self.stop()
            self._stderr.seek(0)
            err = self._stderr.read()
            raise RuntimeError(f"chat_server.py did not start: {line!r}\n{err[-3000:]}")
        self.port = int(line[0].split()[1])
        return self

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.root + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def control(self, **cfg: Any) -> None:
        self._call("POST", "/control", cfg)

    def reset(self) -> None:
        self._call("POST", "/control/reset", {})

    def release(self) -> None:
        self._call("POST", "/control/release", {})

    def stats(self) -> dict[str, dict[str, Any]]:
        return self._call("GET", "/control/stats")["bodies"]

    def received(self) -> int:
        return sum(len(s["received"]) for s in self.stats().values())

    def answered(self) -> int:
        return sum(s["answered"] for s in self.stats().values())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(20)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()
