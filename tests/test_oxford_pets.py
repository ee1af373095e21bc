"""Oxford-IIIT Pet straight from the dataset's own layout: one folder of `<Breed_name>_<n>.jpg`
files, and `annotations/list.txt` beside it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hierzoo import load_taxonomy
from hierzoo.cli import main
from hierzoo.tasks import QuestionError, read_questions, samples_from_images

# file name -> the breed; cats are written with a capital letter, as in the dataset
FILES = {
    "Abyssinian_1.jpg": "Abyssinian",
    "Abyssinian_12.jpg": "Abyssinian",
    "British_Shorthair_3.jpg": "British Shorthair",
    "american_bulldog_7.jpg": "American Bulldog",
    "yorkshire_terrier_100.jpg": "Yorkshire Terrier",
    "shiba_inu_2.jpg": "Shiba Inu",
}
CLASS_ID = {"Abyssinian": 1, "American Bulldog": 2, "British Shorthair": 10, "Shiba Inu": 32}
CLASS_ID["Yorkshire Terrier"] = 37


def _jpeg(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(path)


def _dataset(root: Path, *, with_list: bool) -> Path:
    """The dataset as downloaded: ``root/images/*.jpg`` (and a stray ``.mat`` file, as the
    dataset has), and ``root/annotations/list.txt`` when ``with_list``."""
    for i, name in enumerate(FILES):
        _jpeg(root / "images" / name, i)
    (root / "images" / "Abyssinian_1.mat").write_bytes(b"MATLAB")
    (root / "images.tar.gz").write_bytes(b"")  # the download, kept beside its contents
    if with_list:
        lines = [
            "#Image CLASS-ID SPECIES BREED ID",
            "#ID: 1:37 Class ids",
            "#SPECIES: 1:Cat 2:Dog",
            "#BREED ID: 1-12:Cat 1-25:Dog",
            "#All images with 1st letter as captial are cat images",
        ]
        for name, breed in FILES.items():
            if name == "shiba_inu_2.jpg":
                continue  # an image the list does not name
            species = 1 if name[0].isupper() else 2
            lines.append(f"{name[:-4]} {CLASS_ID[breed]} {species} 1")
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / "list.txt").write_text("\n".join(lines) + "\n")
    return root / "images"


def test_labels_from_file_names(tmp_path):
    tax = load_taxonomy("oxford-pets")
    images = _dataset(tmp_path, with_list=False)
    pairs = samples_from_images(images, tax)
    assert {Path(p).name: leaf for p, leaf in pairs} == FILES
    assert all(Path(p).parent == images for p, _ in pairs)
    # the dataset's folder (holding images/ and annotations/) works as well
    assert samples_from_images(tmp_path, tax) == pairs


def test_a_file_that_names_no_breed_is_an_error(tmp_path):
    tax = load_taxonomy("oxford-pets")
    images = _dataset(tmp_path, with_list=False)
    _jpeg(images / "golden_retriever_4.jpg", 9)
    _jpeg(images / "pug.jpg", 10)
    with pytest.raises(QuestionError) as err:
        samples_from_images(images, tax)
    msg = str(err.value)
    assert "'golden_retriever_4.jpg'" in msg and "'golden_retriever'" in msg
    assert "'pug.jpg'" in msg and "_<n>" in msg
    assert "2 files" in msg and "--labels" in msg


def test_labels_from_the_list_file(tmp_path):
    tax = load_taxonomy("oxford-pets")
    images = _dataset(tmp_path, with_list=True)
    with pytest.warns(UserWarning, match="1 image.*not in.*list.txt.*shiba_inu_2.jpg"):
        pairs = samples_from_images(images, tax)
    expected = {k: v for k, v in FILES.items() if k != "shiba_inu_2.jpg"}
    assert {Path(p).name: leaf for p, leaf in pairs} == expected
    # the list's order
    assert [Path(p).name for p, _ in pairs] == list(expected)


def test_the_list_file_is_checked_line_by_line(tmp_path):
    tax = load_taxonomy("oxford-pets")
    images = _dataset(tmp_path, with_list=True)
    listing = tmp_path / "annotations" / "list.txt"
    good = listing.read_text()
    listing.write_text(good.replace("american_bulldog_7 2 2 1", "american_bulldog_7 3 2 1"))
    with pytest.raises(QuestionError, match=r"list.txt:\d+: .*class 3 .*American Pit Bull Terrier"):
        samples_from_images(images, tax)
    listing.write_text(good.replace("american_bulldog_7 2 2 1", "american_bulldog_7 2 1 1"))
    with pytest.raises(QuestionError, match=r"list.txt:\d+: .*species 1 \(cat\)"):
        samples_from_images(images, tax)
    listing.write_text(good.replace("american_bulldog_7 2 2 1", "american_bulldog_7 two 2 1"))
    with pytest.raises(QuestionError, match=r"list.txt:\d+: expected .*Image CLASS-ID SPECIES"):
        samples_from_images(images, tax)
    listing.write_text(good.replace("american_bulldog_7 2 2 1", "american_bulldog_7 38 2 1"))
    with pytest.raises(QuestionError, match=r"list.txt:\d+: .*class 38.*1\.\.37"):
        samples_from_images(images, tax)


def test_a_split_file_given_as_labels(tmp_path):
    tax = load_taxonomy("oxford-pets")
    images = _dataset(tmp_path, with_list=True)
    split = tmp_path / "annotations" / "test.txt"
    split.write_text("Abyssinian_12 1 1 1\nshiba_inu_2 32 2 21\nshiba_inu_99 32 2 21\n")
    pairs = samples_from_images(images, tax, labels=split)
    assert pairs == [
        (str(images / "Abyssinian_12.jpg"), "Abyssinian"),
        (str(images / "shiba_inu_2.jpg"), "Shiba Inu"),
        (str(images / "shiba_inu_99.jpg"), "Shiba Inu"),  # listed: missing is a per-sample error
    ]


def test_image_folders_still_work_through_the_same_function(tmp_path):
    tax = load_taxonomy("cub200")
    for folder in ["001.Black_footed_Albatross", "Laysan Albatross"]:
        _jpeg(tmp_path / "imgs" / folder / "x.jpg", 0)
    pairs = samples_from_images(tmp_path / "imgs", tax)
    assert sorted(lab for _, lab in pairs) == ["Black-footed Albatross", "Laysan Albatross"]
    csv = tmp_path / "labels.csv"
    csv.write_text("image,leaf\na.jpg,Laysan Albatross\n")
    assert samples_from_images(tmp_path / "imgs", tax, labels=csv) == [
        (str(tmp_path / "imgs" / "a.jpg"), "Laysan Albatross")
    ]
    _jpeg(tmp_path / "imgs" / "stray.jpg", 1)
    with pytest.raises(QuestionError, match="both image files.*and sub-folders"):
        samples_from_images(tmp_path / "imgs", tax)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from hierzoo.models.tiny_clip import build_tiny_openclip

    return str(build_tiny_openclip(tmp_path_factory.mktemp("pets") / "model", seed=3))


@pytest.mark.parametrize("with_list", [False, True])
def test_eval_on_the_datasets_own_layout(tmp_path, tiny_model, with_list):
    images = _dataset(tmp_path / "pets", with_list=with_list)
    out = tmp_path / "run"
    args = ["eval", "--model", tiny_model, "--taxonomy", "oxford-pets", "--images", str(images)]
    args += ["--out", str(out), "--no-progress", "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the list leaves one image out, and says so
        assert main(args) == 0
    built = read_questions(out / "questions.jsonl")
    expected = {k: v for k, v in FILES.items() if not (with_list and k == "shiba_inu_2.jpg")}
    assert {Path(q.image).name: q.label for q in built} == expected
    assert all(q.n_levels == 7 for q in built)
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == len(expected) and not any("error" in r for r in rows)
    assert {r["ground_truth_level7"] for r in rows} == {v.lower() for v in expected.values()}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["hca"]["value"] is not None


def test_eval_names_a_file_that_matches_no_breed_before_loading_a_model(tmp_path, capsys):
    images = _dataset(tmp_path / "pets", with_list=False)
    _jpeg(images / "golden_retriever_4.jpg", 9)
    args = ["eval", "--model", "no-such-model", "--taxonomy", "oxford-pets"]
    args += ["--images", str(images), "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "golden_retriever_4.jpg" in err and "no-such-model" not in err


def test_questions_may_name_a_breed_by_its_file_name_form():
    from hierzoo.tasks import build_questions, validate_questions

    tax = load_taxonomy("oxford-pets")
    q = build_questions(tax, [("x.jpg", "American Bulldog")], seed=0)[0]
    k = q.choices[6].index("american bulldog")
    q.choices[6][k] = q.answers[6] = "american_bulldog"
    validate_questions([q], tax)
    q.answers[6] = q.choices[6][k - 1]
    with pytest.raises(QuestionError, match="is not 'American Bulldog''s node"):
        validate_questions([q], tax)
