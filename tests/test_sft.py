"""SFT export: the files load back, every answer letter names the right option, and the
strings and option orders are the evaluation's."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

import hierzoo
from hierzoo import prompts
from hierzoo.cli import main
from hierzoo.sft import export_sft, sft_records
from hierzoo.tasks import build_questions, read_questions

N = 12


@pytest.fixture(scope="module")
def questions():
    return read_questions("cub200-similar")[:N]


def _load(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines()]


def _parts(record: dict, format: str) -> tuple[str | None, str, str | None, str]:
    """(system, user text, image path, answer letter) of one exported conversation."""
    if format == "qwen":
        system, user, assistant = record["messages"]
        assert (
            system["role"] == "system"
            and user["role"] == "user"
            and assistant["role"] == "assistant"
        )
        images = [c["image"] for c in user["content"] if c["type"] == "image"]
        (text,) = [c["text"] for c in user["content"] if c["type"] == "text"]
        return system["content"], text, images[0] if images else None, assistant["content"]
    human, gpt = record["conversations"]
    assert human["from"] == "human" and gpt["from"] == "gpt"
    value = human["value"]
    if format == "llava":
        image = record.get("image")
        assert value.startswith("<image>\n") == (image is not None)
        return None, value.removeprefix("<image>\n"), image, gpt["value"]
    images = record.get("images")
    assert value.startswith("<image>") == (images is not None)
    return (
        record["system"],
        value.removeprefix("<image>"),
        images[0] if images else None,
        gpt["value"],
    )


def _options(text: str) -> dict[str, str]:
    lines = text.split("\n")[1:-1]
    return dict(line.split(". ", 1) for line in lines)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@pytest.mark.parametrize("mode", ["image", "text"])
@pytest.mark.parametrize("format", ["qwen", "llava", "sharegpt"])
def test_exported_files_load_back_and_name_the_right_answers(
    questions, tmp_path, format, mode, suffix
):
    out = tmp_path / f"sft{suffix}"
    done = export_sft(questions, out, format=format, mode=mode, taxonomy="cub200", prompt_variant=2)
    records = _load(out)
    levels = 4 if mode == "image" else 3  # text mode names the leaf and does not ask it
    assert done.n_conversations == len(records) == N * levels and done.n_entries == N
    assert done.prompt_variant == 2 and done.seed == 42
    orders = prompts.shuffled_orders(
        prompts.asked_options([(q.answers, q.choices) for q in questions], mode), 42
    )
    ids = [f"{i}-level{k + 1}" for i in range(N) for k in range(levels)]
    assert [r["id"] for r in records] == ids
    letters_used = set()
    for record in records:
        i, k = (int(x) for x in record["id"].replace("level", "").split("-"))
        k -= 1
        q = questions[i]
        system, text, image, letter = _parts(record, format)
        options = [q.choices[k][j] for j in orders[i][k]]
        label = q.label if mode == "text" else None
        question = prompts.question_text("cub200", k, variant=2, mode=mode, label=label)
        assert text == prompts.user_text(question, options)
        assert _options(text)[letter] == q.answers[k]
        letters_used.add(letter)
        assert image == (q.image if mode == "image" else None)
        if system is not None:
            assert system == prompts.system_message(mode)
        if format == "qwen":
            messages = copy.deepcopy(record["messages"][:2])
            for item in messages[1]["content"]:
                item.pop("image", None)
            assert messages == prompts.messages(text, mode=mode)
    assert letters_used == set("ABCD")


def test_kept_order_seed_and_default_variant(questions):
    kept = sft_records(questions, taxonomy="cub200", shuffle_options=False)
    for r, (i, k) in zip(kept, [(i, k) for i in range(N) for k in range(4)]):
        _, text, _, _ = _parts(r, "qwen")
        assert list(_options(text).values()) == questions[i].choices[k]
    assert sft_records(questions, taxonomy="cub200", seed=1) != sft_records(
        questions, taxonomy="cub200"
    )
    # the paper's default wording: 1 for iNat21-Animal with Qwen2.5-VL and InternVL, else 0
    tax = hierzoo.load_taxonomy("inat21-animal")
    qs = build_questions(tax, [("a.jpg", tax.labels[0])], seed=0)
    for family, variant in (("qwen2.5-vl", 1), ("internvl", 1), ("llava-onevision", 0), (None, 0)):
        r = sft_records(qs, format="llava", taxonomy="inat21-animal", family=family)
        question = prompts.question_text("inat21-animal", 0, variant=variant)
        assert r[0]["conversations"][0]["value"].startswith(f"<image>\n{question}\n")
    generic = sft_records(questions[:1], format="llava")
    assert generic[0]["conversations"][0]["value"].startswith(
        f"<image>\n{prompts.GENERIC['image_prompts'][0]}\n"
    )


def test_bad_values_name_the_value(questions, tmp_path):
    with pytest.raises(ValueError, match="`format` to be one of"):
        sft_records(questions, format="alpaca")
    with pytest.raises(ValueError, match="`prompt_variant` in 0..4, but got 5"):
        sft_records(questions, prompt_variant=5)
    with pytest.raises(ValueError, match="`taxonomy` to be one of"):
        sft_records(questions, taxonomy="birds")
    with pytest.raises(ValueError, match=r"\.json \(a JSON list\) or \.jsonl"):
        export_sft(questions, tmp_path / "out.txt")
    broken = copy.deepcopy(questions[:1])
    broken[0].answers[1] = "not an option"
    with pytest.raises(ValueError, match="not among its options"):
        sft_records(broken)


@pytest.fixture
def image_root(tmp_path, questions):
    """The first three images of the set, laid out as CUB's images/ folder."""
    from PIL import Image

    root = tmp_path / "data"
    for q in questions[:3]:
        p = root / "CUB_200_2011" / Path(q.image).relative_to(Path(q.image).parents[2])
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(p)
    return root


def test_cli_with_image_root(image_root, tmp_path, capsys):
    out = tmp_path / "train.jsonl"
    args = [
        "export-sft",
        "--questions",
        "cub200-similar",
        "--limit",
        "5",
        "--image-root",
        str(image_root),
    ]
    assert main([*args, "--out", str(out)]) == 2
    assert "2 of 5 images were not found" in capsys.readouterr().err
    assert (
        main(
            [
                *args,
                "--out",
                str(out),
                "--skip-missing",
                "--format",
                "llava",
                "--taxonomy",
                "cub200",
            ]
        )
        == 0
    )
    assert "wrote 12 llava conversations (image mode) from 3 entries" in capsys.readouterr().out
    records = _load(out)
    assert {r["image"] for r in records} == {str(p) for p in image_root.rglob("*.jpg")}
    assert (
        main(
            [
                "export-sft",
                "--questions",
                "cub200-similar",
                "--limit",
                "2",
                "--mode",
                "text",
                "--keep-option-order",
                "--out",
                str(tmp_path / "t.json"),
            ]
        )
        == 0
    )
    assert "wrote 6 qwen conversations (text mode) from 2 entries" in capsys.readouterr().out
    assert (
        main(
            [
                "export-sft",
                "--questions",
                "cub200-similar",
                "--limit",
                "2",
                "--out",
                str(tmp_path / "x.txt"),
            ]
        )
        == 2
    )


def test_prompts_equal_what_a_vision_llm_is_asked(questions, tmp_path):
    """The exported conversation, rendered by a model's chat template, is the evaluation's
    prompt followed by the answer letter; the options are in the order the model was asked."""
    pytest.importorskip("transformers")
    from PIL import Image

    from hierzoo.models import Protocol
    from hierzoo.models.tiny import build_tiny_qwen2_5_vl

    clf = hierzoo.load(build_tiny_qwen2_5_vl(tmp_path / "qwen"), device="cpu")
    qs = copy.deepcopy(questions[:3])
    for j, q in enumerate(qs):
        q.path = tmp_path / f"{j}.png"
        Image.fromarray(np.full((32, 32, 3), 40 * j, dtype=np.uint8)).save(q.path)
    for mode, shuffle in (("image", True), ("text", False)):
        protocol = Protocol(taxonomy="cub200", mode=mode, shuffle_options=shuffle)
        answers = clf.answer(qs, protocol=protocol)
        records = sft_records(qs, mode=mode, taxonomy="cub200", shuffle_options=shuffle)
        head, tail = clf.template(mode)
        for r in records:
            i, k = (int(x) for x in r["id"].replace("level", "").split("-"))
            _, text, image, letter = _parts(r, "qwen")
            assert list(_options(text).values()) == answers.options[i][k - 1]
            assert image == (str(qs[i].path) if mode == "image" else None)
            rendered = clf.processor.apply_chat_template(
                r["messages"][:2], tokenize=False, add_generation_prompt=True
            )
            assert rendered == head + text + tail
            full = clf.processor.apply_chat_template(r["messages"], tokenize=False)
            assert full == head + text + tail + letter + "<|im_end|>\n"


def test_a_bundled_set_is_exported_with_its_taxonomys_prompts(tmp_path, capsys):
    """As hierzoo eval asks it: a bundled question set knows its taxonomy without --taxonomy;
    a family hierzoo does not know is refused."""
    from hierzoo.cli import main

    base = ["export-sft", "--questions", "cub200-similar", "--limit", "2"]
    for name, extra in (("inferred", []), ("given", ["--taxonomy", "cub200"])):
        for mode in ("image", "text"):
            out = tmp_path / f"{name}-{mode}.json"
            assert main([*base, "--mode", mode, *extra, "--output", str(out)]) == 0
    for mode in ("image", "text"):
        inferred = (tmp_path / f"inferred-{mode}.json").read_text()
        assert inferred == (tmp_path / f"given-{mode}.json").read_text()
    assert (
        "what is the order of the bird in this image"
        in (tmp_path / "inferred-image.json").read_text()
    )
    with pytest.raises(SystemExit):
        main([*base, "--family", "qwen25vl", "--output", str(tmp_path / "x.json")])
    assert "invalid choice: 'qwen25vl'" in capsys.readouterr().err
