"""InternVL 2.5 in OpenGVLab's own format (the paper's InternVL2.5-8B), converted on load into
transformers' classes: a tiny checkpoint in that format (its config layout and weight names,
InternLM2 with fused ``wqkv`` and grouped-query attention) answers as OpenGVLab's modelling code
computes (``internvl_chat_reference``, plain torch over the same weights) on the prompt
``model.chat`` builds (``paper_reference``)."""

from __future__ import annotations

import json

import numpy as np
import paper_reference as pr
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import internvl_chat_reference as ref  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import hierzoo  # noqa: E402
from hierzoo import prompts  # noqa: E402
from hierzoo.models import Protocol, resolve, tiny  # noqa: E402
from hierzoo.models.vlm import _internvl_chat as remote  # noqa: E402
from hierzoo.tasks import read_questions  # noqa: E402

SIZES = [(100, 75), (56, 56), (48, 90), (150, 60)]


def _image(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width * 31 + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=["internlm2", "qwen2"])
def checkpoint(tmp_path_factory, request):
    """InternLM2 inside (InternVL2.5-8B, the paper's) or Qwen2 (InternVL2.5-1B / 4B / 38B / 78B)."""
    root = tmp_path_factory.mktemp(f"internvl_chat_{request.param}")
    return tiny.build_tiny_internvl_chat(root / "m", llm=request.param)


@pytest.fixture(scope="module")
def model(checkpoint):
    return hierzoo.load(checkpoint, device="cpu", trust_remote_code=True)


@pytest.fixture
def questions(tmp_path):
    qs = read_questions("cub200-random")[:4]
    for q, size in zip(qs, SIZES):
        q.path = tmp_path / f"{size[0]}x{size[1]}.png"
        _image(*size).save(q.path)
    return qs


def _weights(checkpoint):
    return load_file(str(checkpoint / "model.safetensors"))


def _config(checkpoint):
    return json.loads((checkpoint / "config.json").read_text())


def _paper_ids(m, text, image, answer=""):
    """The token ids and tiles of ``model.chat``'s request (InternLM2's tokenizer adds BOS)."""
    pixels, n = None, None
    if image is not None:
        tiles, pixels = pr.load_image(image, input_size=56, max_num=4)
        n = len(tiles)
    query = pr.internvl_query(text, n, pr.INTERNVL_SYSTEM, num_image_token=4) + answer
    return m.processor.tokenizer(query)["input_ids"], pixels


def test_a_directory_in_opengvlabs_format_is_internvl_loaded_only_with_remote_code(checkpoint):
    spec = resolve(str(checkpoint))
    assert (spec.family, spec.checkpoint_format) == ("internvl", "internvl_chat")
    zoo = resolve("internvl2.5-8b")
    assert (zoo.hub_id, zoo.checkpoint_format) == ("OpenGVLab/InternVL2_5-8B", "internvl_chat")
    assert zoo.base_llm == "internlm2.5-7b-chat"
    with pytest.raises(ValueError, match=r"trust_remote_code=True \(hierzoo eval --trust-remote"):
        hierzoo.load(checkpoint, device="cpu")
    with pytest.raises(ValueError, match="leave out device_map"):
        hierzoo.load(checkpoint, device_map="auto", trust_remote_code=True)


def test_the_conversion_computes_what_opengvlabs_code_computes(checkpoint, model):
    """Image features and logits of the converted model equal the plain-torch transcription of
    InternViT, the mlp1 projector and InternLM2 over the checkpoint's own weights."""
    w, config = _weights(checkpoint), _config(checkpoint)
    m = model.model
    internlm = config["llm_config"]["architectures"] == ["InternLM2ForCausalLM"]
    assert type(m.model.language_model).__name__ == ("LlamaModel" if internlm else "Qwen2Model")
    rope = m.config.text_config.rope_parameters["rope_type"]
    assert rope == ("dynamic" if internlm else "default")
    assert m.config.text_config._attn_implementation == "sdpa"
    _, pixels = pr.load_image(_image(100, 75), input_size=56, max_num=4)
    with torch.no_grad():
        ours = m.model.get_image_features(pixel_values=pixels)
        ours = ours.pooler_output if hasattr(ours, "pooler_output") else ours
        want = ref.image_features(w, config, pixels)
        torch.testing.assert_close(
            torch.as_tensor(ours).reshape(want.shape), want, atol=1e-5, rtol=0
        )
        ids, _ = _paper_ids(model, "Which bird? A. x B. y", _image(100, 75))
        got = m(input_ids=torch.tensor([ids]), pixel_values=pixels).logits[0]
    want = ref.logits(w, config, ids, pixels, m.config.image_token_id)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["image", "text"])
def test_answers_equal_opengvlabs_computation_on_the_papers_requests(
    checkpoint, model, questions, mode
):
    """Every level of a few CUB-200 entries (the paper's option shuffle, images of 1 to 5 tiles):
    the letter logits hierzoo reads equal those of the reference on ``model.chat``'s prompt."""
    w, config = _weights(checkpoint), _config(checkpoint)
    protocol = Protocol(taxonomy="cub200", mode=mode, shuffle_options=mode == "image")
    plan = prompts.plan_questions(questions, protocol, family="internvl")
    answers = model.answer(questions, protocol=protocol)
    tok = model.processor.tokenizer
    letters = [tok("ABCD"[i], add_special_tokens=False)["input_ids"][-1] for i in range(4)]
    for r in plan.requests:
        image = Image.open(questions[r.sample].path) if mode == "image" else None
        ids, pixels = _paper_ids(model, r.text, image)
        if "internlm2" in str(checkpoint.parent):  # InternLM2's tokenizer adds BOS, Qwen2's not
            assert ids[0] == tok.bos_token_id
        else:
            assert tok.bos_token_id not in ids
        want = ref.logits(w, config, ids, pixels, model.model.config.image_token_id)[-1]
        n = len(answers.options[r.sample][r.level])
        got = answers.extra["letter_logits"][r.sample, r.level, :n]
        np.testing.assert_allclose(got, want[letters[:n]].numpy(), atol=1e-4, rtol=0)


def test_generated_replies_end_where_model_chat_ends_them(checkpoint, model, questions):
    """``--answer generate``: greedy replies of the reference that stop at ``<|im_end|>`` (the
    eos ``model.chat`` sets), decoded without special tokens, are hierzoo's replies."""
    w, config = _weights(checkpoint), _config(checkpoint)
    qs = questions[:2]
    protocol = Protocol(taxonomy="cub200", answer="generate")
    plan = prompts.plan_questions(qs, protocol, family="internvl")
    answers = model.answer(qs, protocol=protocol)
    tok = model.processor.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert model.model.generation_config.eos_token_id == end
    image_id = model.model.config.image_token_id
    for r in plan.requests:
        ids, pixels = _paper_ids(model, r.text, Image.open(qs[r.sample].path))
        out = []
        for _ in range(5):  # the paper's max_new_tokens for InternVL
            nxt = int(ref.logits(w, config, ids + out, pixels, image_id)[-1].argmax())
            out.append(nxt)
            if nxt == end:
                break
        reply = tok.decode(out, skip_special_tokens=True)
        assert answers.replies[r.sample][r.level] == reply


def test_the_dry_run_shows_model_chats_request(checkpoint, questions, capsys):
    """``hierzoo eval --dry-run``: the prompt as ``model.chat`` tokenizes it (BOS, InternVL's
    system message, ``<img>`` + 4 tokens per tile + ``</img>``), without loading the weights."""
    spec = resolve(str(checkpoint))
    from hierzoo.models.vlm.internvl import InternVLClassifier

    with pytest.raises(ValueError, match="trust_remote_code"):
        InternVLClassifier.for_dry_run(spec)
    clf = InternVLClassifier.for_dry_run(spec, trust_remote_code=True)
    assert clf.model is None and clf.config.model_type == "internvl"
    protocol = Protocol(taxonomy="cub200", shuffle_options=True)
    described = clf.describe_requests(questions, protocol=protocol)
    plan = prompts.plan_questions(questions, protocol, family="internvl")
    tok = clf.processor.tokenizer
    for d, r in zip(described, plan.requests):
        image = Image.open(questions[r.sample].path)
        ids, pixels = _paper_ids(clf, r.text, image)
        assert d["prompt_tokens"] == len(ids)
        assert d["images"][0]["tiles"] == len(pixels)
        assert d["images"][0]["tokens"] == 4 * len(pixels)
        # the text as rendered, its image placeholder expanded by the processor
        image_tokens = "<img>" + "<IMG_CONTEXT>" * (4 * len(pixels)) + "</img>"
        text = d["text"].replace("<IMG_CONTEXT>", image_tokens, 1)
        assert tok(text, add_special_tokens=False)["input_ids"] == ids


def test_checkpoints_hierzoo_cannot_convert_are_refused_naming_why(checkpoint, tmp_path):
    config = _config(checkpoint)
    for change, match in (
        ({"ps_version": "v1"}, "shuffles image features as 'v1'"),
        ({"llm_config": {**config["llm_config"], "architectures": ["Phi3ForCausalLM"]}}, "Phi3"),
        ({"use_thumbnail": False}, "without a thumbnail"),
    ):
        bad = tmp_path / "bad"
        bad.mkdir(exist_ok=True)
        for f in checkpoint.iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        (bad / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=match):
            hierzoo.load(bad, device="cpu", trust_remote_code=True)
    w = _weights(checkpoint)
    w.pop("mlp1.3.bias")
    (bad / "config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file

    save_file(w, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['model.multi_modal_projector.linear_2.bias"):
        hierzoo.load(bad, device="cpu", trust_remote_code=True)


def test_split_wqkv_takes_each_key_value_heads_queries_then_key_then_value():
    heads, kv, hd, hidden = 4, 2, 3, 5
    groups = heads // kv
    rows = []
    for j in range(kv):  # per key-value head: its query heads, its key, its value
        rows += [("q", j * groups + g) for g in range(groups)] + [("k", j), ("v", j)]
    wqkv = torch.stack(
        [
            torch.full((hd, hidden), {"q": 0, "k": 100, "v": 200}[kind] + h, dtype=torch.float32)
            for kind, h in rows
        ]
    ).reshape(-1, hidden)
    q, k, v = remote._split_wqkv(wqkv, heads, kv)
    assert q[:, 0].reshape(heads, hd)[:, 0].tolist() == [0, 1, 2, 3]
    assert k[:, 0].reshape(kv, hd)[:, 0].tolist() == [100, 101]
    assert v[:, 0].reshape(kv, hd)[:, 0].tolist() == [200, 201]
