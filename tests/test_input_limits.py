"""Inputs stay inside their limits: nothing lost from a file, every encoding problem names the
file, every bad question is named before a model loads, and no image is read from outside
``--image-root``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hierzoo import Taxonomy, TaxonomyError, load_taxonomy
from hierzoo.cli import main
from hierzoo.tasks import ImageResolver, QuestionError, read_questions, samples_from_csv

BOM = "\ufeff"


def _question(**over):
    row = {
        "image": "a.jpg",
        "label": "Laysan Albatross",
        "level1": "procellariiformes",
        "choices_level1": ["procellariiformes", "apodiformes", "podicipediformes"],
    }
    row.update(over)
    return row


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------- taxonomy CSV
@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("order,species\nA,s1\nA,s2,s3\n", 3),  # more cells than the header
        ("order,species,label\nA,s1,x\nA,s2,y,z\n", 3),  # a cell after the label column
    ],
)
def test_a_csv_row_longer_than_its_header_is_an_error(tmp_path, text, line):
    f = tmp_path / "t.csv"
    f.write_text(text)
    with pytest.raises(TaxonomyError, match=rf"t.csv:{line}: .*4 cells|t.csv:{line}: .*3 cells"):
        load_taxonomy(f)


def test_empty_cells_past_the_header_lose_nothing(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("order,species\nA,s1,\nA,s2,,\n")
    assert load_taxonomy(f).to_paths() == {"s1": ["A", "s1"], "s2": ["A", "s2"]}


def test_an_empty_rank_name_in_a_csv_header_is_an_error(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("order,,species\nA,B,s1\n")
    with pytest.raises(TaxonomyError, match=r"t.csv:1: column 2 has no rank name"):
        load_taxonomy(f)


def test_a_bom_is_not_part_of_the_first_rank(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text(BOM + "order,species\nA,s1\n", encoding="utf-8")
    assert load_taxonomy(f).ranks == ("order", "species")
    g = tmp_path / "l.csv"
    g.write_text(BOM + "label,order,species\nx,A,s1\n", encoding="utf-8")
    tax = load_taxonomy(g)
    assert tax.labels == ("x",) and tax.ranks == ("order", "species")


def test_a_bom_in_a_taxonomy_json_is_read(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(BOM + json.dumps({"s1": ["A", "s1"]}), encoding="utf-8")
    assert load_taxonomy(f).to_paths() == {"s1": ["A", "s1"]}


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_non_utf8_taxonomy_files_name_the_file(tmp_path, suffix):
    f = tmp_path / f"latin1{suffix}"
    text = (
        "order,species\nA,Caf\u00e9\n" if suffix == ".csv" else '{"Caf\u00e9": ["A", "Caf\u00e9"]}'
    )
    f.write_bytes(text.encode("latin-1"))
    with pytest.raises(TaxonomyError, match=rf"latin1\{suffix}.*not UTF-8.*byte 0xe9"):
        load_taxonomy(f)


def test_a_deeply_nested_tree_is_an_error_not_a_recursion_error(tmp_path):
    f = tmp_path / "deep.json"
    depth = 5000
    f.write_text('{"n": ' * depth + "null" + "}" * depth)
    with pytest.raises(TaxonomyError, match=r"deep.json.*nested"):
        load_taxonomy(f)
    deep: dict = {"leaf": None}
    for i in range(3000):
        deep = {f"n{i}": deep}
    tax = Taxonomy.from_tree(deep)  # built in Python: as deep as it is
    assert tax.depth == 3001 and tax.leaves == ["leaf"]


# --------------------------------------------------------------------------- question files
def test_integer_answer_is_named_at_read_time(tmp_path):
    f = _jsonl(tmp_path / "q.jsonl", [_question(), _question(level1=3)])
    with pytest.raises(QuestionError, match=r"q.jsonl:2: level1 is 3"):
        read_questions(f)


def test_more_options_than_letters_is_named_at_read_time(tmp_path):
    opts = [f"o{i}" for i in range(27)]
    f = _jsonl(tmp_path / "q.jsonl", [_question(), _question(level1="o3", choices_level1=opts)])
    with pytest.raises(QuestionError, match=r"q.jsonl:2: choices_level1 has 27 options.*26"):
        read_questions(f)
    ok = _jsonl(tmp_path / "ok.jsonl", [_question(level1="o3", choices_level1=opts[:26])])
    assert len(read_questions(ok)[0].choices[0]) == 26


def test_a_repeated_option_is_named_at_read_time(tmp_path):
    opts = ["procellariiformes", "apodiformes", "Apodiformes "]
    f = _jsonl(tmp_path / "q.jsonl", [_question(), _question(choices_level1=opts)])
    with pytest.raises(QuestionError, match=r"q.jsonl:2: choices_level1 repeats 'Apodiformes '"):
        read_questions(f)


def test_bad_questions_stop_eval_before_a_model_loads(tmp_path, capsys):
    f = _jsonl(tmp_path / "q.jsonl", [_question(), _question(level1=3)])
    args = ["eval", "--model", "no-such-model", "--questions", str(f)]
    assert main(args + ["--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "q.jsonl:2: level1 is 3" in err and "no-such-model" not in err


def test_question_file_encodings(tmp_path):
    f = tmp_path / "bom.jsonl"
    f.write_text(BOM + json.dumps(_question()) + "\n", encoding="utf-8")
    assert read_questions(f)[0].label == "Laysan Albatross"
    g = tmp_path / "latin1.jsonl"
    g.write_bytes(json.dumps(_question(label="Caf\u00e9"), ensure_ascii=False).encode("latin-1"))
    with pytest.raises(QuestionError, match=r"latin1.jsonl.*not UTF-8.*byte 0xe9"):
        read_questions(g)
    h = tmp_path / "list.json"
    h.write_text("[\n" + json.dumps(_question()) + ",\n{oops}\n]")
    with pytest.raises(QuestionError, match=r"list.json:3: .*not valid JSON"):
        read_questions(h)
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"image": ' + "[" * 5000 + "]" * 5000 + "}\n")
    with pytest.raises(QuestionError, match=r"deep.jsonl:1: .*nested"):
        read_questions(deep)


# --------------------------------------------------------------------------- label CSVs
def test_label_csv_bom_encoding_and_extra_cells(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text(BOM + "image,leaf\na.jpg,Laysan Albatross\n", encoding="utf-8")
    assert samples_from_csv(f) == [("a.jpg", "Laysan Albatross")]
    g = tmp_path / "latin1.csv"
    g.write_bytes("image,leaf\na.jpg,Caf\u00e9\n".encode("latin-1"))
    with pytest.raises(QuestionError, match=r"latin1.csv.*not UTF-8"):
        samples_from_csv(g)
    h = tmp_path / "three.csv"
    h.write_text("image,leaf\na.jpg,Albatross, Laysan\nb.jpg,Sooty Albatross,\n")
    with pytest.raises(QuestionError, match=r"three.csv:2: .*3 cells.*Quote"):
        samples_from_csv(h)


# --------------------------------------------------------------------------- image root
def _jpeg(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def test_a_path_that_climbs_out_of_the_image_root_is_refused(tmp_path):
    from hierzoo.images import load_image

    root = tmp_path / "x" / "images"
    inside = _jpeg(root / "001.Laysan_Albatross" / "a.jpg")
    secret = _jpeg(tmp_path / "out" / "secret.jpg")
    resolve = ImageResolver(root)
    escaping = f"{tmp_path}/x/images/../../out/secret.jpg"
    assert Path(escaping).resolve() == secret.resolve()  # the file is there to be read
    got = resolve(escaping)
    assert got is not None and str(got) == escaping
    with pytest.raises(OSError, match=r"secret.jpg.*outside --image-root.*x/images"):
        load_image(got)
    assert resolve("/elsewhere/001.Laysan_Albatross/../001.Laysan_Albatross/a.jpg") == (
        root / "001.Laysan_Albatross" / ".." / "001.Laysan_Albatross" / "a.jpg"
    )  # a '..' that stays inside the root is fine
    assert resolve("/elsewhere/001.Laysan_Albatross/a.jpg") == inside


def test_eval_records_an_escaping_path_as_that_samples_error(tmp_path):
    from hierzoo.models.tiny_clip import build_tiny_openclip

    model = build_tiny_openclip(tmp_path / "model", seed=3)
    root = tmp_path / "x" / "images"
    _jpeg(root / "001.Laysan_Albatross" / "a.jpg")
    _jpeg(tmp_path / "out" / "secret.jpg", 1)
    cub = read_questions("cub200-similar")[0].to_dict()
    rows = [
        {**cub, "image": "/data/001.Laysan_Albatross/a.jpg"},
        {**cub, "image": f"{tmp_path}/x/images/../../out/secret.jpg"},
    ]
    f = _jsonl(tmp_path / "q.jsonl", rows)
    out = tmp_path / "run"
    args = ["eval", "--model", str(model), "--questions", str(f), "--image-root", str(root)]
    main(args + ["--taxonomy", "cub200", "--out", str(out), "--no-progress", "--device", "cpu"])
    got = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    by_sample = {r["sample"]: r for r in got}
    assert "error" not in by_sample[0]
    assert "outside --image-root" in by_sample[1]["error"]
    assert str(root) in by_sample[1]["error"] and "secret.jpg" in by_sample[1]["error"]


@pytest.mark.parametrize("reader", ["pil", "tensor", "bytes"])
def test_every_image_reader_refuses_an_escaping_path(tmp_path, reader):
    from hierzoo.images import TensorDecode, iterate_images, read_bytes

    root = tmp_path / "x" / "images"
    good = _jpeg(root / "a" / "ok.jpg")
    _jpeg(tmp_path / "out" / "secret.jpg")
    refused = ImageResolver(root)(f"{tmp_path}/x/images/../../out/secret.jpg")
    items = [good, refused]
    if reader == "bytes":
        batches = list(read_bytes(items, batch_size=2, threads=1))
    else:
        transform = TensorDecode(16, None) if reader == "tensor" else None
        # two worker processes: the refused path crosses a process boundary intact
        batches = list(iterate_images(items, transform, batch_size=2, num_workers=2, chunk_size=1))
    ok = [i for b in batches for i in b.indices]
    failed = {i: msg for b in batches for i, msg in b.failed.items()}
    assert ok == [0] and list(failed) == [1]
    assert "outside --image-root" in failed[1] and str(root) in failed[1]
