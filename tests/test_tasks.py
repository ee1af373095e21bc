from __future__ import annotations

import json

import numpy as np
import pytest

from hierzoo import bundled_taxonomies, load_taxonomy
from hierzoo.tasks import (
    ImageResolver,
    Question,
    QuestionError,
    build_questions,
    read_questions,
    samples_from_csv,
    samples_from_folder,
    validate_questions,
    write_questions,
)
from hierzoo.taxonomy import PATH_SEPARATOR


@pytest.mark.parametrize("name", ["cub200-random", "cub200-similar"])
def test_cub_question_files_load_validate_and_round_trip(name, tmp_path):
    qs = read_questions(name)
    assert len(qs) == 5794
    assert all(q.n_levels == 4 and all(len(c) == 4 for c in q.choices) for q in qs)
    validate_questions(qs, load_taxonomy("cub200"))
    out = write_questions(qs, tmp_path / "q.jsonl")
    again = read_questions(out)
    assert [q.to_dict() for q in again] == [q.to_dict() for q in qs]
    from importlib import resources

    original = (
        resources.files("hierzoo.data.questions")
        .joinpath(
            {
                "cub200-random": "CUB200_with_random_choice.jsonl",
                "cub200-similar": "CUB200_with_similar_choice.jsonl",
            }[name]
        )
        .read_text()
        .splitlines()
    )
    assert [json.loads(line) for line in original] == [q.to_dict() for q in again]


def test_image_root_remapping(tmp_path):
    root = tmp_path / "data"
    img = root / "CUB_200_2011" / "images" / "001.Black_footed_Albatross" / "a.jpg"
    img.parent.mkdir(parents=True)
    img.write_bytes(b"x")
    shorter = root / "images" / "001.Black_footed_Albatross" / "a.jpg"
    shorter.parent.mkdir(parents=True)
    shorter.write_bytes(b"y")
    resolve = ImageResolver(root)
    recorded = "/projectnb/ivc-ml/dataset/CUB_200_2011/images/001.Black_footed_Albatross/a.jpg"
    assert resolve(recorded) == img  # the longest existing tail wins
    assert resolve("/elsewhere/images/001.Black_footed_Albatross/a.jpg") == shorter
    assert resolve("/x/CUB_200_2011/images/001.Black_footed_Albatross/missing.jpg") is None
    assert resolve("images/001.Black_footed_Albatross/a.jpg") == shorter
    qs = read_questions("cub200-random", image_root=root)
    assert qs[0].path is None  # not among our two files: recorded, not fatal


def _check_built(tax, qs, n_choices=4):
    for q in qs:
        path = tax.paths[tax.leaf_index(q.label)]
        for k, (ans, opts) in enumerate(zip(q.answers, q.choices)):
            assert ans == tax.names[path[k]].lower()
            assert ans in opts
            assert len(opts) == min(
                n_choices, len({tax.names[i].lower() for i in tax.level_nodes(k)})
            )
            assert len(set(opts)) == len(opts)
            level_names = {tax.names[i].lower() for i in tax.level_nodes(k)}
            assert set(opts) <= level_names


@pytest.mark.parametrize("name", bundled_taxonomies())
@pytest.mark.parametrize("distractors", ["random", "similar"])
def test_built_questions_fit_every_taxonomy(name, distractors):
    tax = load_taxonomy(name)
    rng = np.random.default_rng(0)
    size = min(40, tax.n_leaves)
    labels = [tax.labels[i] for i in rng.choice(tax.n_leaves, size=size, replace=False)]
    qs = build_questions(
        tax, [(f"img{i}.jpg", lab) for i, lab in enumerate(labels)], distractors=distractors, seed=3
    )
    _check_built(tax, qs)
    validate_questions(qs, tax)
    again = build_questions(
        tax, [(f"img{i}.jpg", lab) for i, lab in enumerate(labels)], distractors=distractors, seed=3
    )
    assert [q.to_dict() for q in again] == [q.to_dict() for q in qs]
    other = build_questions(
        tax, [(f"img{i}.jpg", lab) for i, lab in enumerate(labels)], distractors=distractors, seed=4
    )
    assert [q.to_dict() for q in other] != [q.to_dict() for q in qs]


def test_similar_distractors_are_nearest_in_the_tree():
    tax = load_taxonomy("inat21-animal")
    rows = np.random.default_rng(0).choice(tax.n_leaves, size=40, replace=False)
    qs = build_questions(
        tax, [(f"i{i}", tax.labels[r]) for i, r in enumerate(rows)], distractors="similar", seed=0
    )
    anc = {}

    def lca_depth(a, b):
        pa = anc.setdefault(a, tax.ancestors(a)[:-1])
        pb = anc.setdefault(b, tax.ancestors(b)[:-1])
        n = 0
        for x, y in zip(pa, pb):
            if x != y:
                break
            n += 1
        return n

    for q in qs:
        path = tax.paths[tax.leaf_index(q.label)]
        for k in range(1, tax.depth):
            answer = int(path[k])
            chosen = [tax.find(o, level=k)[0] for o in q.choices[k] if o != q.answers[k]]
            assert len(chosen) == 3
            worst = min(lca_depth(answer, c) for c in chosen)
            # every node left out lies no nearer than the farthest one taken
            for n in tax.level_nodes(k).tolist():
                if n != answer and n not in chosen and lca_depth(answer, n) > worst:
                    raise AssertionError(
                        f"{tax.names[n]} is nearer to {tax.names[answer]} than a chosen distractor"
                    )


def test_levels_with_fewer_nodes_than_choices():
    tax = load_taxonomy("imagenet-animal")  # level sizes 1, 2, 10, ...
    qs = build_questions(tax, [("a.jpg", tax.labels[0])], seed=0)
    assert qs[0].choices[0] == [tax.names[0].lower()]
    assert len(qs[0].choices[1]) == 2


def test_bad_questions_name_the_value():
    tax = load_taxonomy("cub200")
    q = read_questions("cub200-similar")[0]
    bad = Question(
        **{**q.__dict__, "answers": list(q.answers), "choices": [list(c) for c in q.choices]}
    )
    bad.choices[2] = ["stercorarius", "fregata", "hydroprogne", "larus"]
    with pytest.raises(QuestionError, match="'phoebastria' of level3 is not among its options"):
        validate_questions([bad], tax)
    with pytest.raises(QuestionError, match="not among its options"):
        bad.answer_index(2)
    wrong_level = Question(
        **{**q.__dict__, "answers": list(q.answers), "choices": [list(c) for c in q.choices]}
    )
    wrong_level.answers[1] = wrong_level.choices[1][
        [c for c in range(4) if wrong_level.choices[1][c] != q.answers[1]][0]
    ]
    with pytest.raises(QuestionError, match="is not 'Black-footed Albatross''s node"):
        validate_questions([wrong_level], tax)
    unknown = Question(**{**q.__dict__, "label": "Dodo"})
    with pytest.raises(QuestionError, match="label 'Dodo' is not a leaf"):
        validate_questions([unknown], tax)
    with pytest.raises(ValueError, match="distractors"):
        build_questions(tax, [("a", "Laysan Albatross")], distractors="hard")


def test_samples_from_folder_and_csv(tmp_path):
    tax = load_taxonomy("cub200")
    for folder in ["001.Black_footed_Albatross", "Laysan Albatross"]:
        (tmp_path / "imgs" / folder).mkdir(parents=True)
        (tmp_path / "imgs" / folder / "x.jpg").write_bytes(b"")
    pairs = samples_from_folder(tmp_path / "imgs", tax)
    assert sorted(lab for _, lab in pairs) == ["Black-footed Albatross", "Laysan Albatross"]
    (tmp_path / "imgs" / "Dodo").mkdir()
    with pytest.raises(QuestionError, match="Folder 'Dodo' names no leaf"):
        samples_from_folder(tmp_path / "imgs", tax)
    csv = tmp_path / "labels.csv"
    csv.write_text("image,leaf\na.jpg,Laysan Albatross\nb.jpg,Sooty Albatross\n")
    assert samples_from_csv(csv, image_root="/data") == [
        ("/data/a.jpg", "Laysan Albatross"),
        ("/data/b.jpg", "Sooty Albatross"),
    ]
    assert PATH_SEPARATOR == " > "


def test_build_questions_takes_a_taxonomy_name_and_names_a_lone_pair():
    from hierzoo import load_taxonomy
    from hierzoo.tasks import build_questions

    pairs = [("a.jpg", "Black-footed Albatross"), ("b.jpg", "Common Raven")]
    by_name = build_questions("cub200", pairs, seed=3)
    assert [q.to_dict() for q in by_name] == [
        q.to_dict() for q in build_questions(load_taxonomy("cub200"), pairs, seed=3)
    ]
    with pytest.raises(TypeError, match=r"\(image, leaf label\) pairs.*\[\(image, label\)\]"):
        build_questions("cub200", pairs[0])
