"""One question planner: what a model is asked, what a fine-tuning set teaches, the evaluation's
option order and the paper's loops all come from hierzoo.prompts.plan_questions."""

from __future__ import annotations

import copy

import pytest

import hierzoo
from hierzoo import prompts
from hierzoo.prompts import Protocol, plan_questions
from hierzoo.runner import shuffle_options
from hierzoo.sft import sft_records
from hierzoo.tasks import read_questions


@pytest.fixture(scope="module")
def questions():
    qs = copy.deepcopy(read_questions("cub200-similar")[:6])
    qs[1].answers[1] = None  # a level that is not asked
    qs[3].choices[2] = qs[3].choices[2][:3]  # a level with three options
    if qs[3].answers[2] not in qs[3].choices[2]:
        qs[3].choices[2][0] = qs[3].answers[2]
    return qs


PROTOCOLS = [
    Protocol(taxonomy="cub200", shuffle_options=True),
    Protocol(taxonomy="cub200", shuffle_options=True, seed=7, prompt_variant=3),
    Protocol(taxonomy="cub200", mode="text"),
    Protocol(taxonomy=None, shuffle_options=True, first_level=0),
]


def _conversation(record: dict) -> tuple[str, str, str]:
    system, user, assistant = record["messages"]
    (text,) = [c["text"] for c in user["content"] if c["type"] == "text"]
    return system["content"], text, assistant["content"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_fine_tuning_set_teaches_exactly_what_is_asked(questions, protocol):
    plan = plan_questions(questions, protocol)
    records = sft_records(
        questions,
        mode=protocol.mode,
        taxonomy=protocol.taxonomy,
        prompt_variant=protocol.prompt_variant,
        shuffle_options=protocol.shuffle_options,
        seed=protocol.seed,
        missing_images="recorded",
    )
    asked = [(r.system, r.text, r.answer_letter) for r in plan.requests]
    assert [_conversation(rec) for rec in records] == asked
    assert [rec["id"] for rec in records] == [
        f"{r.sample}-level{r.level + 1}" for r in plan.requests
    ]
    for r in plan.requests:  # the letter taught names the right option
        q = questions[r.sample]
        assert r.options[r.answer].lower() == q.answers[r.level].lower()
        assert list(r.options) == [q.choices[r.level][j] for j in r.order]
    # a level without an answer, and the leaf in text mode, are not asked
    assert all(not (r.sample == 1 and r.level == 1) for r in plan.requests)
    if protocol.mode == "text":
        assert all(r.level < questions[r.sample].n_levels - 1 for r in plan.requests)


def test_the_evaluation_order_is_the_planners(questions):
    for mode in ("image", "text"):
        plan = plan_questions(questions, Protocol(shuffle_options=True, seed=42, mode=mode))
        shuffled = shuffle_options(list(questions), 42, mode)
        for i, q in enumerate(shuffled):
            for k, choices in enumerate(q.choices):
                assert choices == (plan.options[i][k] or questions[i].choices[k])


def test_orders_count_only_the_levels_that_are_asked(questions):
    """The seeded generator shuffles the asked levels only, so a level without an answer
    consumes no draw: entry 2's orders do not depend on entry 1's unasked level."""
    plan = plan_questions(questions, Protocol(shuffle_options=True))
    full = copy.deepcopy(questions)
    full[1].answers[1] = full[1].choices[1][0]
    other = plan_questions(full, Protocol(shuffle_options=True))
    assert plan.orders[1][1] == [] and other.orders[1][1] != []
    counts = prompts.asked_options([(q.answers, q.choices) for q in questions], "image")
    assert plan.orders == prompts.shuffled_orders(counts, 42)


def test_circular_requests_rotate_the_first_order(questions):
    plan = plan_questions(questions[:2], Protocol(taxonomy="cub200", circular=True))
    first = {(r.sample, r.level): r for r in plan.requests if r.rotation == 0}
    for r in plan.requests:
        order = plan.orders[r.sample][r.level]
        assert list(r.order) == order[r.rotation :] + order[: r.rotation]
        assert r.order[r.answer] == first[r.sample, r.level].order[first[r.sample, r.level].answer]
    assert len(plan.requests) == sum(len(o) for row in plan.orders[:2] for o in row)


def test_requests_are_plain_data_a_remote_client_can_send(questions, tmp_path):
    import dataclasses
    import json

    plan = plan_questions(questions[:1], Protocol(taxonomy="cub200"))
    r = plan.requests[0]
    payload = json.loads(json.dumps(dataclasses.asdict(r)))
    assert payload["image"] == questions[0].image and payload["system"] == r.system
    assert r.messages() == prompts.messages(r.text, mode="image")
    assert json.loads(json.dumps(plan.protocol.to_dict()))["taxonomy"] == "cub200"


def test_protocol_with_a_user_taxonomy_names_its_ranks():
    tax = hierzoo.Taxonomy.from_paths(
        {
            "Tabby": ["Animalia", "Felidae", "Tabby"],
            "Lion": ["Animalia", "Felidae", "Lion"],
            "Wolf": ["Animalia", "Canidae", "Wolf"],
        },
        ranks=["kingdom", "family", "breed"],
        name="pets",
    )
    from hierzoo.tasks import build_questions

    qs = build_questions(tax, [("a.jpg", "Tabby"), ("b.jpg", "Wolf")], seed=0)
    plan = plan_questions(qs, Protocol(taxonomy=tax))
    assert [r.question for r in plan.requests[:3]] == [
        f"Based on taxonomy, what is the {rank} of the subject of this image?"
        for rank in ("kingdom", "family", "breed")
    ]
    text = plan_questions(qs, Protocol(taxonomy=tax, mode="text", prompt_variant=1))
    assert text.requests[1].question == (
        "Given the Tabby, what is its classification at the family level?"
    )
    assert Protocol(taxonomy=tax).ranks() == ["kingdom", "family", "breed"]
    assert Protocol(taxonomy=tax).to_dict()["taxonomy"] == "pets"
    # a Taxonomy named as a bundled one takes the paper's prompts
    cub = hierzoo.load_taxonomy("cub200")
    assert prompts.question_text(cub, 0) == prompts.question_text("cub200", 0)
    # and one without ranks the generic ones
    flat = hierzoo.Taxonomy.from_paths({"x": ["a", "x"], "y": ["b", "y"]}, name="flat")
    assert prompts.question_text(flat, 1) == prompts.GENERIC["image_prompts"][0]
    with pytest.raises(ValueError, match="a Taxonomy or None"):
        Protocol(taxonomy=3)  # type: ignore[arg-type]
