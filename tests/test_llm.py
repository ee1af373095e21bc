"""Text-only LLMs on tiny random Qwen2 and Llama causal LMs: fused, prefix-cached letter scoring
against a plain forward of each question's whole prompt, written here the obvious way; the
paper's chat and base framings; the refusals that name what to use instead."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import hierzoo  # noqa: E402
from hierzoo.cli import main  # noqa: E402
from hierzoo.models import Protocol, UnknownModelError, resolve, tiny  # noqa: E402
from hierzoo.models._factory import family_class  # noqa: E402
from hierzoo.models.base import OptionError  # noqa: E402
from hierzoo.models.llm import (  # noqa: E402
    INTERNLM_SYSTEM,
    InternLM2Classifier,
    TextLLMClassifier,
)
from hierzoo.tasks import Question, read_questions  # noqa: E402

BUILDERS = {"qwen2": tiny.build_tiny_qwen2_lm, "llama": tiny.build_tiny_llama_lm}
RAW = json.loads(
    (Path(__file__).resolve().parents[1] / "hierzoo/data/prompts.json").read_text(encoding="utf-8")
)
HELPFUL = "You are a helpful assistant."
TOL = 1e-5


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_llm")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def models(dirs):
    out = {}
    for name, path in dirs.items():
        out[name, "chat"] = hierzoo.load(path, device="cpu")
        out[name, "base"] = hierzoo.load(path, device="cpu", framing="base")
    return out


@pytest.fixture(params=[(n, f) for n in BUILDERS for f in ("chat", "base")], ids=str)
def key(request) -> tuple[str, str]:
    return request.param


@pytest.fixture(scope="module")
def questions() -> list[Question]:
    qs = copy.deepcopy(read_questions("cub200-random")[:4])
    others = [c for c in qs[1].choices[0] if c != qs[1].answers[0]]
    qs[1].choices[0] = [others[0], qs[1].answers[0], others[1]]  # a three-option level
    return qs


# ---------------------------------------------------------------------------- reference
def paper_question(q: Question, level: int, options, variant: int = 1) -> str:
    """The og_llm scripts' question: wording, one line per option, the instruction."""
    entry = RAW["taxonomies"]["cub200"]
    text = entry["text_prompts"][variant]
    text = text.replace("{rank}", entry["ranks"][level]).replace("{label}", q.label)
    lines = [f"{c}. {o}" for c, o in zip("ABCDEFGH", options)]
    return "\n".join([text, *lines, RAW["instruction"]])


def reference_logits(m, question: str, n: int, framing: str) -> np.ndarray:
    """One question alone: the whole prompt through the model, the last position's logits at
    the option letters (``A`` after a chat template's assistant header, `` A`` after
    ``Answer:``)."""
    tok = m.processor.tokenizer
    if framing == "base":
        enc = tok([question + " Answer:"], return_tensors="pt")  # as the paper's --base runs
        letters = [tok.convert_tokens_to_ids("Ġ" + c) for c in "ABCDEFGH"[:n]]
    else:
        system = [{"role": "system", "content": m.system_message}] if m.system_message else []
        messages = [*system, {"role": "user", "content": question}]
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = tok([prompt], add_special_tokens=False, return_tensors="pt")
        letters = tok.convert_tokens_to_ids(list("ABCDEFGH"[:n]))
    with torch.no_grad():
        return m.model(**enc).logits[0, -1, letters].float().numpy()


def check_against_reference(m, questions, answers, framing, variant=1):
    asked = 0
    for i, q in enumerate(questions):
        for k, options in enumerate(answers.options[i]):
            if not options:
                assert answers.choice[i, k] == -1 and k == q.n_levels - 1  # the leaf is given
                continue
            ref = reference_logits(m, paper_question(q, k, options, variant), len(options), framing)
            got = answers.extra["letter_logits"][i, k, : len(options)]
            np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
            assert answers.choice[i, k] == int(np.argmax(ref))
            asked += 1
    assert asked == sum(q.n_levels - 1 for q in questions)


# ---------------------------------------------------------------------------- answers
def test_answers_equal_a_plain_forward_of_each_question(models, key, questions):
    name, framing = key
    m = models[key]
    assert type(m) is TextLLMClassifier and m.framing == framing
    answers = m.answer(questions, protocol=Protocol(taxonomy="cub200", mode="text"))
    assert answers.extra["framing"] == framing and answers.extra["prompt_variant"] == 1
    assert answers.options[0][0] == questions[0].choices[0]  # the file's order, as the paper
    check_against_reference(m, questions, answers, framing)


def test_batch_sizes_prefix_cache_and_streaming_agree(dirs, key, questions):
    name, framing = key
    protocol = Protocol(taxonomy="cub200", mode="text")
    runs = []
    for prefix in (True, False):
        m = hierzoo.load(dirs[name], device="cpu", framing=framing, prefix_cache=prefix)
        for bs in (1, 3, None):
            runs.append(m.answer(questions, protocol=protocol, batch_size=bs))
        small = hierzoo.load(
            dirs[name], device="cpu", framing=framing, prefix_cache=prefix, token_budget=60
        )
        runs.append(small.answer(questions, protocol=protocol))
        pieces = list(m.iter_answers(questions, protocol=protocol, chunk_size=3))
        assert [p for positions, _ in pieces for p in positions] == list(range(len(questions)))
        streamed = np.concatenate([a.extra["letter_logits"] for _, a in pieces])
        np.testing.assert_allclose(streamed, runs[0].extra["letter_logits"], atol=TOL)
    first = runs[0]
    for other in runs[1:]:
        np.testing.assert_allclose(
            other.extra["letter_logits"], first.extra["letter_logits"], atol=TOL, equal_nan=True
        )
        assert np.array_equal(other.choice, first.choice)


def test_the_prefix_cache_is_the_system_turn(models):
    qwen, llama = models["qwen2", "chat"], models["llama", "chat"]
    assert qwen.prefix_cache and llama.prefix_cache and models["llama", "base"].prefix_cache
    # Qwen adds no BOS: a base prompt starts with the question itself, nothing to share
    assert not models["qwen2", "base"].prefix_cache


def test_chat_framing_is_the_papers_og_llm_prompt(models, questions):
    q = questions[0]
    text = paper_question(q, 0, q.choices[0])
    head, tail = models["qwen2", "chat"].template("text")
    assert head + text + tail == (
        f"<|im_start|>system\n{HELPFUL}<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    head, tail = models["llama", "chat"].template("text")
    assert head + text + tail == (
        f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{HELPFUL}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{text}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    tok = models["qwen2", "chat"].processor.tokenizer
    assert models["qwen2", "chat"].letter_token_ids(4, "text") == tok.convert_tokens_to_ids(
        list("ABCD")
    )


def test_base_framing_is_the_question_and_answer_colon(models, questions):
    q = questions[0]
    options = q.choices[0]
    question = (
        f"Given the {q.label}, what is its taxonomic classification at the order level?\n"
        + "\n".join(f"{c}. {o}" for c, o in zip("ABCD", options))
        + "\nAnswer with the option's letter from the given choices directly."
    )
    assert question == paper_question(q, 0, options)
    head, tail = models["qwen2", "base"].template("text")
    assert head + question + tail == question + " Answer:"
    head, tail = models["llama", "base"].template("text")
    assert head + question + tail == "<|begin_of_text|>" + question + " Answer:"
    tok = models["qwen2", "base"].processor.tokenizer
    assert models["qwen2", "base"].letter_token_ids(4, "text") == tok.convert_tokens_to_ids(
        ["ĠA", "ĠB", "ĠC", "ĠD"]
    )


def test_the_zoo_base_model_is_asked_with_the_base_framing(dirs):
    from dataclasses import replace

    spec = replace(resolve("qwen2.5-7b"), source=str(dirs["qwen2"]))
    assert spec.framing == "base"
    m = TextLLMClassifier.from_spec(spec, device=torch.device("cpu"))
    assert m.framing == "base" and m.template("text") == ("", " Answer:")
    chat = TextLLMClassifier.from_spec(
        replace(resolve("qwen2.5-7b-instruct"), source=str(dirs["qwen2"])),
        device=torch.device("cpu"),
    )
    assert chat.framing == "chat"


def test_a_model_without_a_chat_template_needs_the_base_framing(dirs, tmp_path):
    tok = AutoTokenizer.from_pretrained(dirs["qwen2"])
    model = AutoModelForCausalLM.from_pretrained(dirs["qwen2"])
    tok.chat_template = None
    assert hierzoo.wrap(model, tok).framing == "base"
    with pytest.raises(ValueError, match="no chat template.*framing='base'"):
        hierzoo.wrap(model, tok, framing="chat")
    with pytest.raises(ValueError, match="`framing` to be one of"):
        hierzoo.wrap(model, tok, framing="raw")


# ---------------------------------------------------------------------------- protocol
def test_default_protocol_is_the_papers_text_run(models):
    m = models["qwen2", "chat"]
    p = m.default_protocol("cub200")
    assert p == Protocol(taxonomy="cub200", mode="text", prompt_variant=1)
    assert m.default_protocol("imagenet-animal").prompt_variant == 2
    assert m.default_protocol("inat21-plant").prompt_variant == 1
    assert m.default_protocol("food101").prompt_variant == 0
    assert m.default_protocol("cub200", prompt_variant=3).prompt_variant == 3
    assert not m.default_protocol("cub200").shuffle_options


def test_another_variant_is_asked_when_given(models, questions):
    m = models["llama", "chat"]
    answers = m.answer(
        questions, protocol=Protocol(taxonomy="cub200", mode="text", prompt_variant=4)
    )
    assert answers.extra["prompt_variant"] == 4
    check_against_reference(m, questions, answers, "chat", variant=4)


def test_internlm_keeps_its_own_system_message_and_swapped_variants(dirs, questions):
    tok = AutoTokenizer.from_pretrained(dirs["qwen2"])
    model = AutoModelForCausalLM.from_pretrained(dirs["qwen2"])
    m = InternLM2Classifier.from_model(model, tok)
    assert m.system_message == INTERNLM_SYSTEM and m.family == "internlm2"
    head, _ = m.template("text")
    assert head == f"<|im_start|>system\n{INTERNLM_SYSTEM}<|im_end|>\n<|im_start|>user\n"
    assert [m.default_protocol(t).prompt_variant for t in ("inat21-animal", "imagenet-animal")] == [
        2,
        1,
    ]
    answers = m.answer(questions[:2], protocol=Protocol(taxonomy="cub200", mode="text"))
    check_against_reference(m, questions[:2], answers, "chat")
    own = TextLLMClassifier.from_model(model, tok, system_message="Be brief.")
    assert own.template("text")[0].startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_internlm_needs_trust_remote_code():
    spec = resolve("internlm2.5-7b-chat")
    assert family_class(spec.family) is InternLM2Classifier
    with pytest.raises(ValueError, match=r"trust_remote_code=True \(hierzoo eval --trust-remote"):
        InternLM2Classifier.from_spec(spec, device=torch.device("cpu"))


def test_image_mode_is_refused_naming_text_mode(models, questions):
    m = models["qwen2", "chat"]
    with pytest.raises(ValueError, match=r"use --mode text"):
        m.answer(questions, protocol=Protocol(taxonomy="cub200"))
    with pytest.raises(ValueError, match=r"use --mode text"):
        m.check_protocol(m.default_protocol("cub200", mode="image"))
    with pytest.raises(ValueError, match=r"--task questions --mode text"):
        TextLLMClassifier.check_mode("text", "path")
    with pytest.raises(NotImplementedError, match="text_features"):
        m.features(["x.jpg"], "llm:-1")
    with pytest.raises(NotImplementedError, match="mode='text'"):
        m.score_nodes(["x.jpg"], hierzoo.load_taxonomy("cub200"))


def test_generation_is_answered_or_refused_clearly(models, questions):
    m = models["qwen2", "chat"]
    protocol = Protocol(taxonomy="cub200", mode="text", answer="generate")
    try:
        answers = m.answer(questions[:1], protocol=protocol)
    except ValueError as e:  # until vision LLMs generate, the family refuses it with the fix
        assert "--answer logits" in str(e)
    else:  # the vision LLMs' generation path, inherited
        assert answers.replies is not None


def test_options_of_other_families_are_refused_by_name(dirs):
    with pytest.raises(OptionError, match=r"worker_decode: options of .*, but .* text-only LLM"):
        hierzoo.load(dirs["qwen2"], device="cpu", worker_decode="tensor")
    with pytest.raises(OptionError, match=r"batched_vision_attention: options of vision LLMs, but"):
        hierzoo.load(dirs["qwen2"], device="cpu", batched_vision_attention=False)
    with pytest.raises(OptionError, match="options of loading a checkpoint"):
        hierzoo.wrap(AutoModelForCausalLM.from_pretrained(dirs["qwen2"]), trust_remote_code=True)


# ---------------------------------------------------------------------------- zoo and loading
def test_zoo_entries_resolve_to_the_family_without_downloading():
    for name, hub in (
        ("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct"),
        ("qwen2-7b-instruct", "Qwen/Qwen2-7B-Instruct"),
        ("qwen2.5-7b", "Qwen/Qwen2.5-7B"),
        ("internlm2.5-7b-chat", "internlm/internlm2_5-7b-chat"),
    ):
        spec = resolve(name)
        assert spec.hub_id == hub and spec.licence and "Vision LLMs Are Bad" in spec.paper
        assert resolve(f"hf-hub:{hub}") == spec
        assert issubclass(family_class(spec.family), TextLLMClassifier)
    assert (
        resolve("qwen2.5-7b").framing == "base" and resolve("qwen2.5-7b-instruct").framing is None
    )
    assert set(hierzoo.list_models("llm")) >= {"qwen2.5-7b-instruct", "internlm2.5-7b-chat"}
    assert not set(hierzoo.list_models("llm")) & set(hierzoo.list_models("vlm"))
    pairs = {
        "qwen2.5-vl-7b": "qwen2.5-7b-instruct",
        "llava-ov-7b": "qwen2-7b-instruct",
        "internvl2.5-8b": "internlm2.5-7b-chat",
    }
    for vlm, llm in pairs.items():
        assert resolve(vlm).base_llm == llm
    for spec in hierzoo.models.ZOO.values():
        if spec.base_llm:
            assert resolve(spec.base_llm).family in ("llm", "internlm2"), spec.name


def test_directories_are_causal_lms_by_their_config(dirs, tmp_path):
    assert resolve(dirs["qwen2"]).family == "llm" and resolve(dirs["llama"]).family == "llm"
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(
        json.dumps({"model_type": "fancy", "architectures": ["FancyForCausalLM"]})
    )
    assert resolve(other).family == "llm"
    vision = tmp_path / "vision"
    vision.mkdir()
    (vision / "config.json").write_text(
        json.dumps(
            {
                "model_type": "fancy_vl",
                "architectures": ["FancyVLForCausalLM"],
                "vision_config": {"hidden_size": 8},
            }
        )
    )
    with pytest.raises(UnknownModelError, match="ForCausalLM"):
        resolve(vision)
    vlm = tiny.build_tiny_qwen2_5_vl(tmp_path / "qwen_vl")
    assert resolve(vlm).family == "qwen2.5-vl"
    with pytest.raises(ValueError, match="not a text-only causal LM"):
        TextLLMClassifier.from_spec(resolve(vlm), device=torch.device("cpu"))


def test_wrap_finds_the_family_of_a_causal_lm(dirs, models, questions):
    model = AutoModelForCausalLM.from_pretrained(dirs["llama"])
    wrapped = hierzoo.wrap(model)  # the tokenizer from where the model was loaded
    assert type(wrapped) is TextLLMClassifier and wrapped.model is model
    protocol = Protocol(taxonomy="cub200", mode="text")
    np.testing.assert_allclose(
        wrapped.answer(questions, protocol=protocol).extra["letter_logits"],
        models["llama", "chat"].answer(questions, protocol=protocol).extra["letter_logits"],
        atol=TOL,
        equal_nan=True,
    )
    with pytest.raises(TypeError, match="ForCausalLM"):
        TextLLMClassifier.from_model(model.model, AutoTokenizer.from_pretrained(dirs["llama"]))


def test_text_features_read_the_named_prompt(models):
    m = models["qwen2", "chat"]
    names = ["black footed albatross", "laysan albatross"]
    feats = m.text_features(names, "llm:1")
    head, tail = m.template("text")
    tok = m.processor.tokenizer
    for i, name in enumerate(names):
        span = len(tok(name, add_special_tokens=False)["input_ids"])
        ids = tok([head + name + tail], add_special_tokens=False, return_tensors="pt")
        at = len(tok(head, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            hidden = m.model(**ids, output_hidden_states=True).hidden_states[1][0]
        ref = hidden[at : at + span].mean(0)
        torch.testing.assert_close(feats["llm:1"][i], ref, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- hierzoo eval
def test_eval_runs_a_text_llm_end_to_end(dirs, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["eval", "--model", str(dirs["qwen2"]), "--questions", "cub200-similar"]
    assert main([*args, "--out", str(tmp_path / "img"), "--limit", "3"]) == 2
    assert "use --mode text" in capsys.readouterr().err
    args += ["--mode", "text", "--limit", "3", "--trust-remote-code", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "text" and summary["n"] == 3
    assert summary["provenance"]["model_class"] == "TextLLMClassifier"
    assert summary["provenance"]["identity"]["options"] == {"trust_remote_code": True}
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    qs = read_questions("cub200-similar")[:3]
    m = hierzoo.load(dirs["qwen2"], device="cpu")
    answers = m.answer(qs, protocol=m.default_protocol("cub200"))
    for i, row in enumerate(sorted(rows, key=lambda r: r["sample"])):
        assert row["predicted_level4"] == qs[i].answers[3] and row["predicted_level4_given"]
        for k in range(3):
            assert row[f"predicted_level{k + 1}"] == qs[i].choices[k][answers.choice[i, k]]
    task = ["--task", "path", "--taxonomy", "cub200", "--out", str(tmp_path / "path")]
    assert main([*args, *task]) == 2
    assert "--task questions --mode text" in capsys.readouterr().err


def test_templates_without_a_clean_system_turn_still_answer(dirs, questions):
    tok = AutoTokenizer.from_pretrained(dirs["qwen2"])
    model = AutoModelForCausalLM.from_pretrained(dirs["qwen2"])
    protocol = Protocol(taxonomy="cub200", mode="text")
    # the head ends with a space that the next word's token takes: no shared prefix
    tok.add_tokens([" Which"])
    model.resize_token_embeddings(len(tok))
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:\n{% endif %}"
    )
    with pytest.warns(UserWarning, match="merge across the end of the system turn"):
        m = hierzoo.wrap(model, tok)
    assert not m.prefix_cache and m.template("text")[0].endswith("user: ")
    check_against_reference(m, questions, m.answer(questions, protocol=protocol), "chat")
    # a template without a system role (Gemma 2's) is asked without one
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "<turn>{{ m['role'] }}\n{{ m['content'] }}<end>\n{% endfor %}"
        "{% if add_generation_prompt %}<turn>model\n{% endif %}"
    )
    with pytest.raises(ValueError, match="System role not supported.*system_message=''"):
        hierzoo.wrap(model, tok)
    m = hierzoo.wrap(model, tok, system_message="")
    assert m.template("text") == ("<turn>user\n", "<end>\n<turn>model\n") and m.prefix_cache
    check_against_reference(m, questions, m.answer(questions, protocol=protocol), "chat")


def test_an_empty_system_message_keeps_the_templates_own(dirs):
    m = hierzoo.load(dirs["qwen2"], device="cpu", system_message="")
    head, _ = m.template("text")
    assert head == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\n"
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_defaults_to_bfloat16(dirs, models, key, questions):
    name, framing = key
    protocol = Protocol(taxonomy="cub200", mode="text")
    cpu = models[key].answer(questions, protocol=protocol)
    exact = hierzoo.load(dirs[name], device="cuda", dtype="float32", framing=framing)
    assert exact.device.type == "cuda" and exact.token_budget > 8192
    got = exact.answer(questions, protocol=protocol)
    np.testing.assert_allclose(
        got.extra["letter_logits"], cpu.extra["letter_logits"], atol=1e-4, equal_nan=True
    )
    assert np.array_equal(got.choice, cpu.choice)
    fast = hierzoo.load(dirs[name], device="cuda", framing=framing)
    assert fast.dtype == torch.bfloat16
    half = fast.answer(questions, protocol=protocol)
    np.testing.assert_allclose(
        half.extra["letter_logits"], cpu.extra["letter_logits"], atol=0.1, equal_nan=True
    )
