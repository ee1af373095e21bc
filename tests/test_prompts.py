"""The paper's prompt strings, rebuilt from prompts.json for every taxonomy, variant and mode."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from hierzoo import bundled_taxonomies, load_taxonomy, prompts

PROMPTS_JSON = Path(__file__).resolve().parents[1] / "hierzoo" / "data" / "prompts.json"
RAW = json.loads(PROMPTS_JSON.read_text(encoding="utf-8"))
TAXONOMIES = list(RAW["taxonomies"])
INSTRUCTION = "Answer with the option's letter from the given choices directly."


def test_prompts_module_does_not_import_torch_or_transformers():
    import subprocess

    code = (
        "import sys, hierzoo.prompts; print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_bundled_copy_is_loaded_and_covers_every_bundled_taxonomy():
    assert prompts.paper_prompts() == RAW
    assert prompts.taxonomies() == TAXONOMIES
    assert set(TAXONOMIES) == set(bundled_taxonomies())


def test_oxford_pets_prompts_are_hierzoos_not_the_papers():
    from hierzoo.taxonomy import BUNDLED

    entry = RAW["taxonomies"]["oxford-pets"]
    assert entry["source"] == "hierzoo" and "not the paper's" in entry["note"]
    assert "oxford-pets" in prompts.taxonomies()
    assert "oxford-pets" not in prompts.paper_taxonomies()
    assert prompts.paper_taxonomies() == [n for n, b in BUNDLED.items() if b.paper]
    assert len(prompts.paper_taxonomies()) == 6
    assert [k for k, v in RAW["taxonomies"].items() if "source" in v] == ["oxford-pets"]
    assert prompts.question_text("oxford-pets", 6, variant=0) == (
        "Based on taxonomy, where does the pet in the image fall in terms of breed?"
    )
    assert prompts.question_text("oxford-pets", 4, variant=1, mode="text", label="Pug") == (
        "Given the Pug, what is its taxonomic classification at the family level?"
    )


def test_system_messages_and_instruction():
    assert prompts.system_message("image") == RAW["system_image"]
    assert prompts.system_message("text") == "You are a helpful assistant."
    assert prompts.system_message("image").startswith("You are an expert in hierarchical image")
    assert prompts.instruction() == INSTRUCTION
    with pytest.raises(ValueError, match="`mode`.*'video'"):
        prompts.system_message("video")


@pytest.mark.parametrize("taxonomy", TAXONOMIES)
@pytest.mark.parametrize("variant", range(5))
@pytest.mark.parametrize("mode", ["image", "text"])
def test_question_text_equals_prompts_json(taxonomy, variant, mode):
    entry = RAW["taxonomies"][taxonomy]
    template = entry[f"{mode}_prompts"][variant]
    ranks = entry["ranks"] or [None] * load_taxonomy(taxonomy).depth
    for level, rank in enumerate(ranks):
        expected = template.replace("{rank}", rank or "").replace("{label}", "Laysan Albatross")
        got = prompts.question_text(
            taxonomy, level, variant=variant, mode=mode, label="Laysan Albatross"
        )
        assert got == expected
        assert "{" not in got


def test_ranks_follow_the_taxonomy():
    for name in TAXONOMIES:
        assert prompts.ranks(name) == (
            list(load_taxonomy(name).ranks) if load_taxonomy(name).ranks else None
        )


def test_cub_prompts_are_the_papers_strings():
    assert (
        prompts.question_text("cub200", 2, variant=0)
        == "Based on taxonomy, what is the genus of the bird in this image?"
    )
    assert (
        prompts.question_text("cub200", 0, variant=1)
        == "Based on the image, what is the taxonomic classification at the order level?"
    )
    assert (
        prompts.question_text("cub200", 1, mode="text", label="Laysan Albatross")
        == "Based on taxonomy, where does Laysan Albatross fall in terms of family?"
    )


def test_user_text_is_question_options_instruction():
    text = prompts.user_text("What is it?", ["gull", "tern", "wren", "jay"])
    assert text == f"What is it?\nA. gull\nB. tern\nC. wren\nD. jay\n{INSTRUCTION}"
    assert prompts.user_text("Q?", ["x", "y"]) == f"Q?\nA. x\nB. y\n{INSTRUCTION}"
    assert prompts.option_lines(["a", "b", "c"]) == ["A. a", "B. b", "C. c"]


def test_letters():
    assert prompts.letters(4) == "ABCD"
    assert prompts.letters(2) == "AB"
    assert prompts.letters(6) == "ABCDEF"
    with pytest.raises(ValueError, match="between 1 and 26 options, but got 27"):
        prompts.letters(27)


def test_messages_put_the_image_first():
    msgs = prompts.messages("hello", mode="image")
    assert msgs[0] == {"role": "system", "content": RAW["system_image"]}
    assert msgs[1]["content"] == [{"type": "image"}, {"type": "text", "text": "hello"}]
    text_msgs = prompts.messages("hello", mode="text")
    assert text_msgs[0]["content"] == "You are a helpful assistant."
    assert text_msgs[1]["content"] == [{"type": "text", "text": "hello"}]


def test_default_prompt_variant():
    assert prompts.default_prompt_variant("inat21-animal", "qwen2.5-vl") == 1
    assert prompts.default_prompt_variant("inat21-animal", "internvl") == 1
    assert prompts.default_prompt_variant("inat21-animal", "llava-onevision") == 0
    assert prompts.default_prompt_variant("inat21-plant", "qwen2.5-vl") == 0
    assert prompts.default_prompt_variant("cub200", "internvl") == 0
    assert prompts.default_prompt_variant(None, "qwen2.5-vl") == 0


def test_default_variants_equal_the_run_scripts():
    """Every run of the paper's run scripts (transcribed in paper_reference) gets its variant
    from the model's entry, including the per-model exceptions."""
    from paper_reference import RUN_SCRIPT_VARIANTS

    for (mode, model), table in RUN_SCRIPT_VARIANTS.items():
        for taxonomy, variant in table.items():
            got = prompts.default_prompt_variant(taxonomy, model=model, mode=mode)
            assert got == variant, (mode, model, taxonomy)
    listed = {(m, n) for m, models in RAW["default_variants"]["models"].items() for n in models}
    assert listed == set(RUN_SCRIPT_VARIANTS)


def test_default_variant_exceptions_per_model():
    v = prompts.default_prompt_variant
    assert v("inat21-plant", "qwen2.5-vl", model="qwen2.5-vl-7b") == 1
    assert v("inat21-plant", "qwen2.5-vl", model="qwen2.5-vl-32b") == 0
    assert v("inat21-plant", "qwen2.5-vl", model="qwen2.5-vl-72b") == 0
    assert v("imagenet-animal", model="internvl2.5-8b") == 2
    assert v("imagenet-animal", "internvl", model="internvl3-8b") == 0
    assert v("imagenet-animal", model="gpt-4o") == 1
    assert v("imagenet-artifact", model="gpt-4o") == 1
    assert v("inat21-animal", model="internlm2.5-7b-chat", mode="text") == 2
    assert v("imagenet-animal", model="internlm2.5-7b-chat", mode="text") == 1


def test_default_variant_falls_back_to_the_family_then_the_mode():
    v = prompts.default_prompt_variant
    # a model outside the table: its family's entry (the old signature still works)
    assert v("inat21-animal", "qwen2.5-vl", model="qwen2.5-vl-3b") == 1
    assert v("inat21-animal", "internvl", model="internvl3.5-8b") == 1
    assert v("inat21-animal", "qwen3-vl") == 0
    # text mode: 1 for CUB-200 and iNat21, 2 for ImageNet, whatever the model
    for family in (None, "qwen2.5-vl", "llava-onevision", "internvl", "qwen3-vl"):
        for taxonomy, variant in [
            ("cub200", 1),
            ("inat21-animal", 1),
            ("inat21-plant", 1),
            ("imagenet-animal", 2),
            ("imagenet-artifact", 2),
            ("food101", 0),
            ("oxford-pets", 0),
            (None, 0),
        ]:
            assert v(taxonomy, family, mode="text") == variant, (family, taxonomy)
    assert v("cub200", "internvl", mode="image") == 0
    with pytest.raises(ValueError, match="`mode`"):
        v("cub200", mode="video")


def test_the_planner_asks_each_family_as_the_paper_does(tmp_path):
    from hierzoo.tasks import read_questions

    qs = read_questions("cub200-random")[:3]
    helpful = "You are a helpful assistant."
    internvl = RAW["families"]["internvl"]["system_image"]
    assert internvl.startswith("你是书生·万象，英文名是InternVL")
    cases = [
        ("qwen2.5-vl", "image", RAW["system_image"], False),
        ("qwen2.5-vl", "text", helpful, False),
        ("internvl", "image", internvl, False),
        ("internvl", "text", internvl, False),
        ("llava-onevision", "image", RAW["system_image"], False),
        ("llava-onevision", "text", helpful, True),
        (None, "text", helpful, False),
    ]
    for family, mode, system, lower in cases:
        assert prompts.system_message(mode, family) == system
        plan = prompts.plan_questions(
            qs, prompts.Protocol(taxonomy="cub200", mode=mode), family=family
        )
        assert {r.system for r in plan.requests} == {system}
        assert plan.prompt_variant == (1 if mode == "text" else 0)
        if mode == "text":
            label = qs[0].label.lower() if lower else qs[0].label
            assert label in plan.requests[0].question and qs[0].label != qs[0].label.lower()
    plan = prompts.plan_questions(
        qs, prompts.Protocol(taxonomy="inat21-plant"), family="qwen2.5-vl", model="qwen2.5-vl-7b"
    )
    assert plan.prompt_variant == 1


def test_generic_prompts_for_other_taxonomies():
    assert prompts.question_text(None, 7) == prompts.GENERIC["image_prompts"][0]
    assert prompts.question_text(None, 0, variant=2, mode="text", label="oak") == (
        "What could oak be classified as?"
    )
    assert prompts.ranks(None) is None


def test_bad_values_name_the_value_and_the_fix():
    with pytest.raises(ValueError, match=r"`taxonomy`.*None \(generic prompts\), but got 'birds'"):
        prompts.question_text("birds", 0)
    with pytest.raises(ValueError, match=r"`variant` in 0\.\.4, but got 5"):
        prompts.question_text("cub200", 0, variant=5)
    with pytest.raises(ValueError, match="more levels than the taxonomy"):
        prompts.question_text("cub200", 4)
    with pytest.raises(ValueError, match="pass `label`"):
        prompts.question_text("cub200", 0, mode="text")


def test_shuffled_orders_reproduce_the_papers_generator():
    counts = [[4, 4, None, 3], [2, None, 4, 4]]
    got = prompts.shuffled_orders(counts, seed=42)
    rng = random.Random(42)
    expected = []
    for row in counts:
        orders = []
        for c in row:
            if c is None:
                orders.append([])
                continue
            choices = list(range(c))
            rng.shuffle(choices)
            orders.append(choices)
        expected.append(orders)
    assert got == expected
    assert prompts.shuffled_orders(counts, seed=42) == got
    assert prompts.shuffled_orders(counts, seed=0) != got


def test_shuffled_orders_visit_levels_in_numeric_key_order():
    """The paper's ImageNet scripts sort level keys numerically (level2 before level10): the
    draws land on the same levels as its transcribed loop on a 12-level set (with unasked levels
    and levels of different option counts, so that a wrong order shifts every later draw)."""
    from paper_reference import shuffled_indices

    rng = random.Random(5)
    counts = [
        [rng.choice([None, 2, 3, 4, 4, 4]) for _ in range(rng.randint(4, 12))] for _ in range(60)
    ]
    counts[0] = [3] * 12
    got = prompts.shuffled_orders(counts, seed=42)
    assert got == shuffled_indices(counts, seed=42, numeric=True)
    assert got != shuffled_indices(counts, seed=42, numeric=False)
    # up to nine levels (CUB-200, iNat21) string and numeric order agree
    short = [row[:9] for row in counts]
    string_order = shuffled_indices(short, seed=42, numeric=False)
    assert prompts.shuffled_orders(short, seed=42) == string_order


def test_the_paper_parse_rules_equal_its_scripts_on_random_replies():
    import random

    from paper_reference import parse_binary, parse_letter

    from hierzoo.prompts import parse_paper_answer, parse_yes_no

    rng = random.Random(0)
    alphabet = "ABCDEabcde .:\nYesNoynAnswer"
    fixed = ["C", " B.", "Answer: C", "D. Anatidae", "c", "BA", "", "Yes.", " no", "Nope", "I yes"]
    replies = fixed + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(500)
    ]
    for reply in replies:
        for letters in ("ABCD", "ABC", "ABCDEFG"):
            cmap = {letter: f"option {letter}" for letter in letters}
            want, _ = parse_letter(reply, cmap)
            got = parse_paper_answer(reply, letters)
            assert (got or "Unknown") == want, (reply, letters)
        assert parse_yes_no(reply) == parse_binary(reply)[0], reply
    assert parse_paper_answer("Answer: C", "ABCD") == "A"  # the paper's quirk, kept
    assert parse_paper_answer("D", "ABC") is None


# max_new_tokens of the paper's scripts, per script (family, taxonomy, mode -> tokens), read from
# the generate calls of github: yuanqing-ai/LLM-Hierarchical-Consistency
PAPER_MAX_NEW_TOKENS = [
    ("qwen2.5-vl", "cub200", "image", 10),  # evaluation/vllm/qwen/eval_CUB.py:186
    ("qwen2.5-vl", "inat21-animal", "image", 5),  # eval_natural_animal.py:199
    ("qwen2.5-vl", "inat21-plant", "image", 5),  # eval_natural_plant.py:200
    ("qwen2.5-vl", "imagenet-animal", "image", 10),  # eval_animal.py
    ("qwen2.5-vl", "imagenet-artifact", "image", 10),  # eval_artifact.py
    ("qwen2.5-vl", "food101", "image", 10),  # eval_food.py
    ("llava-onevision", "cub200", "image", 10),  # evaluation/vllm/llava/eval_CUB.py:124
    ("llava-onevision", "inat21-animal", "image", 10),  # eval_natural_animal.py
    ("llava-onevision", "inat21-plant", "image", 10),  # eval_natural_plant.py
    ("llava-onevision", "imagenet-animal", "image", 10),  # eval_animal.py
    ("llava-onevision", "imagenet-artifact", "image", 10),  # eval_artifact.py
    ("llava-onevision", "food101", "image", 10),  # eval_food.py
    *[("internvl", t, "image", 5) for t in prompts.paper_taxonomies()],  # eval_img_*.py:221
    *[
        (family, t, "text", 5)  # evaluation/llm/{qwen,llava,internvl}/eval_text_*.py
        for family in ("qwen2.5-vl", "llava-onevision", "internvl")
        for t in ("cub200", "inat21-animal", "inat21-plant", "imagenet-animal", "imagenet-artifact")
    ],
]


@pytest.mark.parametrize(("family", "taxonomy", "mode", "tokens"), PAPER_MAX_NEW_TOKENS)
def test_max_new_tokens_are_the_papers(family, taxonomy, mode, tokens):
    assert prompts.max_new_tokens(family, taxonomy, mode) == tokens
    protocol = prompts.Protocol(taxonomy=load_taxonomy(taxonomy), mode=mode, answer="generate")
    assert protocol.reply_tokens(family) == tokens


def test_max_new_tokens_defaults_and_override():
    # a family or taxonomy the paper did not run: image 10, text 5
    assert prompts.max_new_tokens("qwen3-vl", "cub200", "image") == 10
    assert prompts.max_new_tokens("qwen3-vl", "inat21-animal", "text") == 5
    assert prompts.max_new_tokens("qwen2.5-vl", None, "image") == 10
    assert prompts.max_new_tokens("qwen2.5-vl", "oxford-pets", "image") == 10
    assert prompts.max_new_tokens(None) == 10
    assert prompts.Protocol(taxonomy="inat21-plant").reply_tokens("qwen2.5-vl") is None
    override = prompts.Protocol(taxonomy="inat21-plant", answer="generate", max_new_tokens=32)
    assert override.reply_tokens("qwen2.5-vl") == 32
    assert override.to_dict()["max_new_tokens"] == 32
    with pytest.raises(ValueError, match="`mode`.*'video'"):
        prompts.max_new_tokens("internvl", "cub200", "video")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_max_new_tokens_must_be_a_positive_integer(bad):
    with pytest.raises(
        ValueError, match=f"`max_new_tokens` to be an integer >= 1, but got {bad!r}"
    ):
        prompts.Protocol(answer="generate", max_new_tokens=bad)


def test_max_new_tokens_needs_generated_answers():
    with pytest.raises(ValueError, match=r"limits generated replies: set answer='generate'"):
        prompts.Protocol(max_new_tokens=10)


def test_protocol_names_are_checked():
    """Protocol(name=...) takes the names of PROTOCOLS only, naming the bad one; a family
    refuses a name outside its ``protocols`` by name before any model work."""
    from hierzoo.models.base import HierClassifier

    assert prompts.Protocol().name == "paper" and "paper" in prompts.PROTOCOLS
    with pytest.raises(ValueError, match=r"--protocol.*but got 'chain'"):
        prompts.Protocol(name="chain")
    assert HierClassifier.protocols == ("paper",)
