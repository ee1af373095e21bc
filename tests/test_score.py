from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest
import reference as ref

from hierzoo import load_taxonomy
from hierzoo.cli import main
from hierzoo.metrics import read_results, round_floats, score_results
from hierzoo.tasks import build_questions

EXAMPLE = str(resources.files("hierzoo.data.examples").joinpath("cub200_simulated_results.json"))


def _paths(rows, start):
    truth, pred = [], []
    for row in rows:
        k, t, p = start, [], []
        while f"ground_truth_level{k}" in row:
            t.append(row[f"ground_truth_level{k}"])
            p.append(row[f"predicted_level{k}"])
            k += 1
        truth.append(t)
        pred.append(p)
    return truth, pred


def _expected(rows, start):
    truth, pred = _paths(rows, start)
    return {
        "hca": 100 * ref.hca(pred, truth),
        "leaf_acc": 100 * ref.leaf(pred, truth),
        "por": 100 * ref.por(pred, truth),
        "strict_por": 100 * ref.strict_por(pred, truth),
        "tor": 100 * ref.tor(pred, truth),
        "level_acc": [100 * v for v in ref.level_acc(pred, truth)],
        "n": len(truth),
    }


def _simulated_results(tax, n, seed, p_right=0.6):
    """Paper-format result rows for random images of a taxonomy (variable depth included)."""
    rng = np.random.default_rng(seed)
    labels = [tax.labels[i] for i in rng.integers(tax.n_leaves, size=n)]
    rows = []
    for q in build_questions(
        tax, [(f"img{i}.jpg", lab) for i, lab in enumerate(labels)], seed=seed
    ):
        row = {"image": q.image, "label": q.label}
        for k, (ans, opts) in enumerate(zip(q.answers, q.choices), start=1):
            choice = ans if rng.random() < p_right else opts[rng.integers(len(opts))]
            if rng.random() < 0.03:
                choice = "Unknown"
            letters = {chr(65 + i): o for i, o in enumerate(opts)}
            row[f"ground_truth_level{k}"] = ans
            row[f"predicted_level{k}"] = choice
            row[f"predicted_level{k}_letter"] = next(
                (L for L, o in letters.items() if o == choice), "Unknown"
            )
            row[f"choices_level{k}"] = letters
        rows.append(row)
    return rows


def test_score_json_on_the_bundled_example(capsys):
    assert main(["score", EXAMPLE, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = _expected(read_results(EXAMPLE), start=1)  # CUB: every level kept
    for key in ("hca", "leaf_acc", "por", "strict_por", "tor"):
        assert out[key] == pytest.approx(expected[key], abs=1e-6)
    assert out["level_acc"] == pytest.approx(expected["level_acc"], abs=1e-6)
    assert out["n"] == expected["n"] == 500
    assert out["levels"] == ["level1", "level2", "level3", "level4"]


@pytest.mark.parametrize(
    "name", ["imagenet-animal", "food101", "inat21-plant", "imagenet-artifact"]
)
def test_root_level_is_left_out_as_in_the_paper(name, tmp_path):
    tax = load_taxonomy(name)
    rows = _simulated_results(tax, 300, seed=1)
    f = tmp_path / "results.json"
    f.write_text(json.dumps(rows))
    got = score_results(read_results(f))
    expected = _expected(rows, start=2)  # the paper's script starts at level 2 here
    for key in ("hca", "leaf_acc", "por", "strict_por", "tor", "n"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    assert got["level_acc"] == pytest.approx(expected["level_acc"], abs=1e-6)
    with_tax = score_results(read_results(f), taxonomy=tax)
    for key in ("hca", "leaf_acc", "por", "strict_por", "tor", "level_acc"):
        assert with_tax[key] == pytest.approx(got[key], abs=1e-9)
    assert 0 <= with_tax["consistency"] <= 100
    kept = score_results(read_results(f), keep_root=True)
    assert len(kept["level_acc"]) == len(got["level_acc"]) + 1


def test_none_counts_as_wrong_where_the_paper_shifts(tmp_path):
    rows = [
        {
            "ground_truth_level1": "a",
            "ground_truth_level2": "b",
            "ground_truth_level3": "c",
            "predicted_level1": "a",
            "predicted_level2": None,
            "predicted_level3": "c",
        },
        {
            "ground_truth_level1": "x",
            "ground_truth_level2": "b",
            "ground_truth_level3": "d",
            "predicted_level1": "x",
            "predicted_level2": "B",
        },
    ]
    got = score_results(rows)
    assert got["level_acc"] == [100.0, 50.0, 50.0]
    assert got["hca"] == 0.0


def test_jsonl_with_a_torn_last_line_and_errors(tmp_path):
    rows = _simulated_results(load_taxonomy("cub200"), 20, seed=2)
    f = tmp_path / "predictions.jsonl"
    body = (
        "".join(json.dumps(r) + "\n" for r in rows)
        + json.dumps({"image": "bad.jpg", "error": "cannot open"})
        + "\n"
    )
    f.write_text(body + '{"image": "torn.jpg", "ground_tru')
    with pytest.warns(UserWarning, match="torn last line"):
        got = score_results(read_results(f))
    assert got["n"] == 20 and got["n_errors"] == 1


def test_python_dash_m_and_table():
    out = subprocess.run(
        [sys.executable, "-m", "hierzoo", "score", EXAMPLE],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "HCA" in out.stdout and "per level" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "hierzoo", "score", "nope.json"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "No result file at 'nope.json'" in bad.stderr


# ------------------------------------------------------------------ missing levels (issue 13)
CUB_PATH = ["Procellariiformes", "Diomedeidae", "Phoebastria", "Black-footed Albatross"]


def _albatross_row(species="Laysan Albatross", drop=None, null=None):
    """A CUB-200 row right at every level but the species; ``drop``/``null`` remove a level."""
    row = {"image": "albatross.jpg"}
    for k, name in enumerate(CUB_PATH, start=1):
        row[f"ground_truth_level{k}"] = name
        row[f"predicted_level{k}"] = name if k < 4 else species
    if drop:
        del row[f"ground_truth_level{drop}"], row[f"predicted_level{drop}"]
    if null:
        row[f"ground_truth_level{null}"] = None
    return row


@pytest.mark.parametrize("gap", [{"drop": 3}, {"null": 2}])
def test_a_missing_middle_level_is_never_a_shorter_path(gap):
    rows = [_albatross_row(), _albatross_row(**gap)]  # both wrong at the species
    with pytest.raises(ValueError, match=r"Entry 1 has no ground_truth_level[23] but has a"):
        score_results(rows, taxonomy=load_taxonomy("cub200"))
    got = score_results(rows, keep_root=True)
    assert got["hca"] == 0.0 and got["leaf_acc"] == 0.0
    missing = next(iter(gap.values())) - 1
    expected = [100.0, 100.0, 100.0, 0.0]
    expected[missing] = 50.0  # the row without that level is wrong there
    assert got["level_acc"] == expected
    assert got["por"] == pytest.approx(100 * (3 / 4 + 2 / 4) / 2)
    assert got["strict_por"] == pytest.approx(100 * (3 / 4 + missing / 4) / 2)


# ------------------------------------------------------------------ reading result files fast
def _messy_rows(tax, n, seed):
    """Result rows as real files hold them: the paper's fields, errors, null and missing
    predictions, non-string answers, case variants, a missing middle level, paths of several
    depths."""
    rng = np.random.default_rng(seed)
    rows = _simulated_results(tax, n, seed=seed)
    for row in rows:
        r = rng.random()
        if r < 0.05:
            row.clear()
            row.update({"image": "x.jpg", "error": "cannot open"})
        elif r < 0.1:
            row["predicted_level2"] = None
        elif r < 0.15:
            row.pop("predicted_level1", None)
        elif r < 0.2:
            row["predicted_level1"] = 7
        elif r < 0.25:
            row["ground_truth_level1"] = row["ground_truth_level1"].upper()
        elif r < 0.3 and "ground_truth_level3" in row:
            row["ground_truth_level2"] = None  # a missing middle level
        elif r < 0.33:
            row["predicted_level1"] = ["a", "list"]
    return rows


PARSERS = ["json", "msgspec"]


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_columns_score_as_the_rows_do(parser, fmt, tmp_path, monkeypatch):
    from hierzoo.metrics import read_result_columns, reading

    if parser == "msgspec":
        pytest.importorskip("msgspec")
    monkeypatch.setattr(reading, "BLOCK_BYTES", 4096)  # many blocks, lines cut across reads
    for name in ("imagenet-artifact", "cub200"):
        rows = _messy_rows(load_taxonomy(name), 300, seed=len(name))
        f = tmp_path / f"{name}.{fmt}"
        if fmt == "json":
            f.write_text(json.dumps(rows, indent=4))
        else:
            f.write_text(
                "".join(
                    json.dumps(r) + "\n" + ("\n" if i % 50 == 7 else "") for i, r in enumerate(rows)
                )
            )
        cols = read_result_columns(f, parser=parser)
        assert cols.n_errors == sum(1 for r in rows if r.get("error"))
        for keep_root in (False, True):
            assert score_results(cols, keep_root=keep_root, ci=True) == score_results(
                rows, keep_root=keep_root, ci=True
            )
        # the obvious computation: the paper-style loops over the rows' name paths
        truth, pred = [], []
        for r in rows:
            if r.get("error"):
                continue
            k, t, p = 1, [], []
            while f"ground_truth_level{k}" in r:
                t.append(r[f"ground_truth_level{k}"])
                guess = r.get(f"predicted_level{k}")
                p.append(guess if isinstance(guess, str) else None)
                k += 1
            truth.append([x.lower() if x is not None else "\0missing" for x in t])
            pred.append(p)
        got = score_results(cols, keep_root=True)
        assert got["hca"] == pytest.approx(100 * ref.hca(pred, truth), abs=1e-9)
        assert got["por"] == pytest.approx(100 * ref.por(pred, truth), abs=1e-9)
        assert got["strict_por"] == pytest.approx(100 * ref.strict_por(pred, truth), abs=1e-9)
        assert got["level_acc"] == pytest.approx(
            [100 * v for v in ref.level_acc(pred, truth)], abs=1e-9
        )


@pytest.mark.parametrize("parser", PARSERS)
def test_reading_quirks_give_the_same_columns(parser, tmp_path, monkeypatch):
    """What the fast parser must not take at face value: a NaN literal, a level key nested in
    another field, a level after a gap, a BOM, a torn last line, levels that grow later."""
    from hierzoo.metrics import read_result_columns, reading

    if parser == "msgspec":
        pytest.importorskip("msgspec")
    monkeypatch.setattr(reading, "BLOCK_BYTES", 256)
    base = {"ground_truth_level1": "a", "predicted_level1": "a"}
    rows = [
        dict(base),
        {**base, "score": float("nan")},
        {**base, "meta": {"ground_truth_level2": "nested"}},
        {**base, "ground_truth_level3": "c", "predicted_level3": "C"},  # level 2 absent
        {**base, "ground_truth_level2": "b", "predicted_level2": "x"},
        {"ground_truth_level1": 5, "predicted_level1": "5"},
    ] * 3 + [{**base, **{f"ground_truth_level{k}": "d" for k in range(2, 12)}}]
    f = tmp_path / "quirks.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in rows)
    f.write_bytes(b"\xef\xbb\xbf" + text.encode() + b'{"ground_truth_level1": "torn')
    with pytest.warns(UserWarning, match="torn last line"):
        cols = read_result_columns(f, parser=parser)
    assert cols.where.tolist() == list(range(1, len(rows) + 1))
    got = score_results(cols, keep_root=True)
    assert got == score_results(rows, keep_root=True)
    assert got["n"] == len(rows) and len(got["level_acc"]) == 11
    for quirk in rows[1:6]:  # each quirk alone in a file, so no block escapes it by chance
        g = tmp_path / "one.jsonl"
        g.write_text("".join(json.dumps(r) + "\n" for r in [quirk] * 3))
        assert score_results(read_result_columns(g, parser=parser), keep_root=True) == (
            score_results([quirk] * 3, keep_root=True)
        )
    # level 2: 3 rows lack it, 3 are wrong, the long row has no answer; level 3: "C" is "c"
    assert got["level_acc"][:3] == [100.0, 0.0, 75.0]


def _named(cols, which):
    ids = getattr(cols, which)
    return [[cols.values[i] if i >= 0 else None for i in row] for row in ids.tolist()]


def test_a_json_list_is_read_in_place_with_its_quirks(tmp_path, monkeypatch):
    """A JSON list is memory-mapped, never copied whole, and searched for level keys piece by
    piece: keys that straddle two pieces, a BOM, a level after a gap late in the file, a key
    nested in another field and a NaN literal give the standard library's columns."""
    from hierzoo.metrics import read_result_columns, reading

    pytest.importorskip("msgspec")
    base = {"ground_truth_level1": "a", "predicted_level1": "a", "image": "x.jpg"}
    clean = [dict(base, ground_truth_level2=f"b{i % 3}", predicted_level2="b1") for i in range(40)]
    quirks = [
        [{**base, "ground_truth_level5": "e", "predicted_level5": "E"}],  # levels 3, 4 absent
        [{**base, "meta": {"ground_truth_level2": "nested"}}],
        [{**base, "score": float("nan")}],
        [],
    ]
    for scan in (7, 19, 20, 64, 1 << 20):  # pieces shorter than, as long as, longer than a key
        monkeypatch.setattr(reading, "SCAN_BYTES", scan)
        for late in quirks:
            rows = clean + late
            f = tmp_path / "list.json"
            f.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows, indent=4).encode())
            fast = read_result_columns(f, parser="msgspec")
            slow = read_result_columns(f, parser="json")
            assert fast.where.tolist() == slow.where.tolist() and fast.n_errors == slow.n_errors
            for cols in ("truth", "pred"):
                assert _named(fast, cols) == _named(slow, cols)
            assert score_results(fast, keep_root=True) == score_results(rows, keep_root=True)

    def no_copy(*args, **kw):
        raise AssertionError("the whole file was read into memory")

    rows = clean * 50
    f.write_text(json.dumps(rows, indent=4))
    monkeypatch.setattr(reading, "_open_bytes", no_copy)
    assert score_results(read_result_columns(f, parser="msgspec")) == score_results(rows)


@pytest.mark.parametrize("scan", [1, 2, 5, 18, 19, 20, 1000])
def test_counting_a_mapped_file_piece_by_piece_equals_counting_its_bytes(
    scan, tmp_path, monkeypatch
):
    from hierzoo.metrics import reading

    rng = np.random.default_rng(scan)
    alphabet = np.frombuffer(b'"ground_tl1', dtype=np.uint8)
    text = rng.choice(alphabet, size=3000).tobytes() + b'"ground_truth_level1"' * 7
    f = tmp_path / "data.bin"
    f.write_bytes(text)
    monkeypatch.setattr(reading, "SCAN_BYTES", scan)
    with reading._mapped(f) as view:
        for pattern in (b'"ground_truth_level', b"ro", b'"', b'"ground_truth_level9"'):
            assert reading._count(view, pattern) == text.count(pattern)
            assert reading._contains(view, pattern) == (pattern in text)


@pytest.mark.parametrize("parser", PARSERS)
def test_a_bad_line_is_named(parser, tmp_path):
    from hierzoo.metrics import read_result_columns

    if parser == "msgspec":
        pytest.importorskip("msgspec")
    f = tmp_path / "bad.jsonl"
    f.write_text('{"ground_truth_level1": "a"}\n\n[1, 2]\n{"ground_truth_level1": "b"}\n')
    with pytest.raises(ValueError, match=r"line 3 is \[1, 2\]; expected one JSON object"):
        read_result_columns(f, parser=parser)
    f.write_text('{"ground_truth_level1": "a"}\n{"ground_truth_level1": "b",\n{}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not a JSON object"):
        read_result_columns(f, parser=parser)
    g = tmp_path / "bad.json"
    g.write_text('[{"ground_truth_level1": "a"}, 3]')
    with pytest.raises(ValueError, match=r"entry 1 is 3; expected one JSON object"):
        read_result_columns(g, parser=parser)
    rows = [{"ground_truth_level1": "Procellariiformes", "ground_truth_level3": "Phoebastria"}] * 2
    h = tmp_path / "gap.jsonl"
    h.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match=r"Line 1 of .*gap.jsonl has no ground_truth_level2"):
        score_results(read_result_columns(h, parser=parser), taxonomy=load_taxonomy("cub200"))


def _write(f, rows, fmt, bom=False):
    if fmt == "json":
        text = json.dumps(rows, indent=4)
    elif fmt == "compact":
        text = json.dumps(rows)
    else:  # JSON Lines with blank lines
        text = "".join(
            json.dumps(r) + "\n" + ("\n" if i % 41 == 3 else "") for i, r in enumerate(rows)
        )
    f.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())


def _same_columns(a, b):
    assert (a.unit, a.n_errors, a.where.tolist()) == (b.unit, b.n_errors, b.where.tolist())
    assert (a.predicted_fields, a.level0) == (b.predicted_fields, b.level0)
    for cols in ("truth", "pred"):
        assert _named(a, cols) == _named(b, cols)


@pytest.mark.parametrize("fmt", ["json", "compact", "jsonl"])
def test_a_file_read_in_parts_gives_the_columns_of_one_process(fmt, tmp_path, monkeypatch):
    """Parts cut at row boundaries, read by several processes and merged: the columns one
    process reads, with error rows, null and missing answers, numbers, a BOM, blank lines,
    and rows that get deeper in later parts."""
    from hierzoo.metrics import read_result_columns, reading

    pytest.importorskip("msgspec")
    monkeypatch.setattr(reading, "PARALLEL_BYTES", 0)
    rows = _messy_rows(load_taxonomy("imagenet-animal"), 240, seed=5)
    for r in rows:  # an unhashable answer sends a part to the standard library: not here
        if isinstance(r.get("predicted_level1"), list):
            r["predicted_level1"] = "a list"
    rows += [
        {"ground_truth_level1": "a", **{f"ground_truth_level{k}": f"n{k}" for k in range(2, 15)}}
    ]
    f = tmp_path / f"results.{fmt}"
    for bom in (False, True):
        _write(f, rows, fmt, bom)
        one = read_result_columns(f, workers=1)
        assert one.truth.shape[0] == 14
        for workers in (2, 3, 7):
            as_list = fmt != "jsonl"
            parts = reading._read_in_parts(f, as_list, workers)
            assert parts is not None  # read in parts, not by the one-process reader
            _same_columns(parts, one)
            _same_columns(read_result_columns(f, workers=workers), one)
        assert score_results(read_result_columns(f, workers=3), ci=True) == score_results(
            one, ci=True
        )
    # processes started with spawn (a fresh interpreter) read the same
    monkeypatch.setattr(reading, "_start_method", lambda: "spawn")
    _same_columns(reading._read_in_parts(f, fmt != "jsonl", 2), one)


@pytest.mark.parametrize("fmt", ["compact", "jsonl"])
def test_a_part_the_fast_parser_cannot_take_sends_the_file_to_one_reader(
    fmt, tmp_path, monkeypatch
):
    """A cut that falls inside a string, a NaN, an unhashable answer or a torn last line in a
    later part: the file is read whole, as one process reads it (warnings and errors too)."""
    from hierzoo.metrics import read_result_columns, reading

    pytest.importorskip("msgspec")
    monkeypatch.setattr(reading, "PARALLEL_BYTES", 0)
    base = [{"ground_truth_level1": "a", "predicted_level1": f"b{i}"} for i in range(60)]
    tricky = 'x"}, {"ground_truth_level1": "trap'
    late = [
        [{"ground_truth_level1": "a", "note": tricky * 400}],  # the "}, {" cut in a string
        [{"ground_truth_level1": "a", "score": float("nan")}],
        [{"ground_truth_level1": "a", "predicted_level1": ["un", "hashable"]}],
    ]
    f = tmp_path / f"results.{fmt}"
    for extra in late:
        rows = base + extra + base
        _write(f, rows, fmt)
        assert reading._read_in_parts(f, fmt != "jsonl", 2) is None
        _same_columns(read_result_columns(f, workers=2), read_result_columns(f, parser="json"))
    if fmt == "jsonl":
        f.write_text("".join(json.dumps(r) + "\n" for r in base * 2) + '{"ground_truth_le')
        assert reading._read_in_parts(f, False, 2) is None
        with pytest.warns(UserWarning, match="torn last line"):
            cols = read_result_columns(f, workers=2)
        assert cols.n == 120
        f.write_text("".join(json.dumps(r) + "\n" for r in base) + "[1]\n" + json.dumps(base[0]))
        with pytest.raises(ValueError, match=r"line 61 is \[1\]"):
            read_result_columns(f, workers=2)


def test_workers_must_be_a_positive_count(tmp_path, capsys):
    from hierzoo.metrics import available_cpus, read_result_columns

    f = tmp_path / "r.json"
    row = {"ground_truth_level1": "a", "predicted_level1": "a"}
    f.write_text(json.dumps([row, {**row, "ground_truth_level1": "b", "predicted_level1": "b"}]))
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match=rf"got {re.escape(repr(bad))}; use 1 to read"):
            read_result_columns(f, workers=bad)
    assert available_cpus() >= 1
    with pytest.raises(SystemExit):
        main(["score", str(f), "--workers", "0"])
    assert "--workers: expected an integer >= 1" in capsys.readouterr().err
    assert main(["score", str(f), "--workers", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hca"] == 100.0


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_msgspec_reads_a_clean_file_without_building_rows(fmt, tmp_path, monkeypatch):
    from hierzoo.metrics import reading

    pytest.importorskip("msgspec")
    rows = _simulated_results(load_taxonomy("imagenet-animal"), 200, seed=3)
    f = tmp_path / f"clean.{fmt}"
    if fmt == "json":
        f.write_text(json.dumps(rows, indent=4))
    else:
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(reading, "BLOCK_BYTES", 8192)

    def no_rows(*args, **kw):
        raise AssertionError("the standard-library path ran")

    monkeypatch.setattr(reading._Builder, "add_dicts", no_rows)
    cols = reading.read_result_columns(f, parser="msgspec")
    monkeypatch.undo()
    assert score_results(cols, ci=True) == score_results(rows, ci=True)


# ------------------------------------------------------------------ the root rule, said out loud
def _albatross_subset():
    """Five albatrosses, every order answer wrong, 6 of the 15 answers below it right: POR 30
    over the four CUB levels, 40 if level 1 is dropped as if it were a root."""
    right = [3, 2, 1, 0, 0]  # right answers per row, from level 2 down
    rows = []
    for n_right in right:
        row = {"image": "albatross.jpg"}
        for k, name in enumerate(CUB_PATH, start=1):
            row[f"ground_truth_level{k}"] = name
            ok = k > 1 and k - 1 <= n_right
            row[f"predicted_level{k}"] = name if ok else "Charadriiformes"
        rows.append(row)
    return rows


def test_a_level_left_out_as_the_root_is_said_and_the_taxonomy_decides():
    rows = _albatross_subset()
    with_tax = score_results(rows, taxonomy=load_taxonomy("cub200"))
    assert with_tax["por"] == pytest.approx(30.0)  # CUB has 13 orders: level 1 is scored
    assert with_tax["left_out"] == [] and with_tax["first_scored_level"] == 1
    guessed = score_results(rows)  # every row says "Procellariiformes": taken for a root
    assert guessed["por"] == pytest.approx(40.0)
    assert guessed["first_scored_level"] == 2 and guessed["levels"][0] == "level2"
    (entry,) = guessed["left_out"]
    assert entry["level"] == 1 and entry["name"] == "level1"
    assert "'Procellariiformes'" in entry["reason"]
    assert "--keep-root" in entry["keep"] and "--taxonomy" in entry["keep"]
    assert score_results(rows, keep_root=True)["por"] == pytest.approx(30.0)
    assert score_results(rows, keep_root=True)["left_out"] == []
    tax = load_taxonomy("inat21-animal")
    inat = score_results(_simulated_results(tax, 50, seed=4), taxonomy=tax)
    assert inat["left_out"][0]["name"] == "kingdom"
    assert "single top-level node" in inat["left_out"][0]["reason"]
    assert inat["levels"][0] == "phylum"


def test_score_cli_says_what_it_left_out_and_prints_round_json(tmp_path, capsys):
    f = tmp_path / "albatrosses.json"
    rows = _albatross_subset() * 100 + [dict(_albatross_subset()[0], predicted_level2="x")] * 7
    f.write_text(json.dumps(rows))
    assert main(["score", str(f)]) == 0
    table = capsys.readouterr().out
    assert "left out level1 (level 1)" in table and "--keep-root" in table
    assert "percent" in table
    assert main(["score", str(f), "--json", "--ci"]) == 0
    line = capsys.readouterr().out
    assert not re.search(r"\d\.\d{7,}", line), line  # 1.4000000000000001 -> 1.4
    out = json.loads(line)
    exact = score_results(rows, ci=True)
    assert out["level_acc"][0]["value"] == round(exact["level_acc"][0]["value"], 6)
    assert out["left_out"][0]["name"] == "level1"
    assert round_floats({"a": [float("nan"), 1 / 3]}) == {"a": [None, 0.333333]}


@pytest.mark.parametrize("parser", PARSERS)
def test_numbers_are_names_by_their_text_on_both_sides(parser, tmp_path):
    """A class index where a name belongs: ``1`` matches ``1`` and ``"1"`` whichever side holds
    the string; ``true`` or a list as a prediction stays wrong."""
    from hierzoo.metrics import read_result_columns, results_to_paths

    if parser == "msgspec":
        pytest.importorskip("msgspec")
    pairs = [(1, 1), (2, 2), ("3", 3), (4, "4"), (5.5, 5.5), (6, 7), ("yes", True), (2, [2])]
    rows = [{"ground_truth_level1": t, "predicted_level1": p} for t, p in pairs]
    f = tmp_path / "ints.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    right = [True] * 5 + [False] * 3
    expected = 100 * sum(right) / len(right)
    got = score_results(read_result_columns(f, parser=parser), keep_root=True)
    assert got["level_acc"] == [pytest.approx(expected)]
    assert score_results(rows, keep_root=True)["level_acc"] == [pytest.approx(expected)]
    truth, pred, _ = results_to_paths(rows)
    assert [t == p for (t,), (p,) in zip(truth, pred)] == right


@pytest.mark.parametrize("parser", PARSERS)
def test_json_that_is_not_one_object_per_line_is_named_with_the_fix(parser, tmp_path):
    """Objects written with an indent, two objects on a line, a run's summary.json: one line
    naming the file and the fix, the same with either parser (never a row count that the line
    numbers do not match)."""
    from hierzoo.metrics import read_result_columns

    if parser == "msgspec":
        pytest.importorskip("msgspec")
    row = {"ground_truth_level1": "a", "predicted_level1": "a"}
    f = tmp_path / "pretty.jsonl"
    f.write_text(json.dumps(row, indent=2) + "\n" + json.dumps(row, indent=2) + "\n")
    spread = r"pretty.jsonl holds JSON spread over several lines \(line 1 is '\{'\)"
    with pytest.raises(ValueError, match=spread + r".*without indent"):
        read_result_columns(f, parser=parser)
    with pytest.raises(ValueError, match=spread):
        read_results(f)
    f.write_text(json.dumps(row) + " " + json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"pretty.jsonl:1 holds more than one JSON value"):
        read_result_columns(f, parser=parser)
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"metrics": {"hca": 50.0}}, indent=2))
    with pytest.raises(ValueError, match=r"results are in predictions.jsonl"):
        read_result_columns(run / "summary.json", parser=parser)


def test_files_that_are_not_utf8_json_are_named_with_the_fix(tmp_path):
    import gzip

    from hierzoo.metrics import read_result_columns

    line = json.dumps({"ground_truth_level1": "a", "predicted_level1": "a"}) + "\n"
    cases = {
        "gz.jsonl.gz": (gzip.compress(line.encode()), r"gzip-compressed.*gunzip .*gz.jsonl.gz"),
        "u16.json": (("[" + line + "]").encode("utf-16"), r"UTF-16 text: save it as UTF-8"),
        "u16be.json": (("[" + line + "]").encode("utf-16-be"), r"holds NUL bytes"),
        "latin.jsonl": (line.encode() + b'{"ground_truth_level1": "caf\xe9"}\n', r"jsonl:2 is not"),
        "junk.jsonl": (line.encode() + b"\xff\xfe junk", r"junk.jsonl:2 is not UTF-8"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        for read in (read_result_columns, read_results):
            with pytest.raises(ValueError, match=message):
                read(tmp_path / name)


@pytest.mark.parametrize("parser", PARSERS)
def test_fields_the_score_would_miss_are_refused(parser, tmp_path):
    """Predictions under another name, levels counted from 0, a file whose only level is left
    out as the root: each an error naming the fix, never a silent 0% or an empty score."""
    from hierzoo.metrics import read_result_columns

    if parser == "msgspec":
        pytest.importorskip("msgspec")

    def cols(rows):
        f = tmp_path / "r.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return read_result_columns(f, parser=parser)

    misnamed = [
        {"ground_truth_level1": "a", "ground_truth_level2": x, "prediction_level2": x} for x in "bc"
    ]
    for rows in (misnamed, cols(misnamed)):
        with pytest.raises(ValueError, match=r"has a predicted_levelK field.*rename"):
            score_results(rows)
    nulls = [{**r, "predicted_level2": None} for r in misnamed]  # present but unanswered: 0%
    assert score_results(cols(nulls))["level_acc"] == [0.0]
    zero = [
        {f"{f}_level{k}": f"{x}{k}" for f in ("ground_truth", "predicted") for k in (0, 1, 2)}
        for x in "bc"
    ]
    for rows in (zero, cols(zero)):
        with pytest.raises(ValueError, match=r"ground_truth_level0.*number the fields from 1"):
            score_results(rows)
    root_only = [{"ground_truth_level1": "a", "predicted_level1": x} for x in "ab"]
    for rows in (root_only, cols(root_only)):
        with pytest.raises(ValueError, match=r"level 1 only.*keep it with --keep-root"):
            score_results(rows)
        assert score_results(rows, keep_root=True)["level_acc"] == [50.0]


def test_score_names_the_bad_file_of_several_and_scores_the_rest(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(
        "".join(
            json.dumps({"ground_truth_level1": t, "predicted_level1": "a"}) + "\n" for t in "ab"
        )
    )
    (tmp_path / "empty.json").write_text("[]")
    torn = tmp_path / "torn.jsonl"
    torn.write_text(good.read_text() + '{"ground_truth_le')
    paths = [str(tmp_path / n) for n in ("empty.json", "good.jsonl", "torn.jsonl", "no.json")]
    assert main(["score", *paths, "--keep-root"]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert lines[0].startswith("hierzoo score: error: ") and "empty.json" in lines[0]
    assert (
        lines[1] == f"hierzoo score: warning: {torn}:3: skipped a torn last line (an "
        "interrupted write)."
    )
    assert "no.json" in lines[2] and len(lines) == 3
    table = [ln for ln in out.splitlines() if ln.startswith(str(tmp_path))]
    assert [ln.split()[0] for ln in table] == [str(good), str(torn)]
    assert all(ln.split()[1] == "50.00" for ln in table)


def test_score_results_takes_a_path_and_a_taxonomy_name_and_names_bad_arguments(tmp_path):
    rows = _simulated_results(load_taxonomy("cub200"), 30, seed=4)
    f = tmp_path / "r.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = score_results(rows, taxonomy=load_taxonomy("cub200"))
    assert score_results(str(f), taxonomy="cub200") == expected
    assert score_results(f, taxonomy="cub200") == expected
    with pytest.raises(TypeError, match=r"one row \(a dict\); pass \[row\]"):
        score_results(rows[0])
    with pytest.raises(TypeError, match=r"got int"):
        score_results(3)
    for n_boot in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match=rf"`n_boot`.*got {n_boot!r}"):
            score_results(rows, ci=True, n_boot=n_boot)
    from hierzoo.metrics import summarize

    with pytest.raises(ValueError, match=r"`confidence` in \(0, 1\).*got 95"):
        summarize([["a"]], [["a"]], ci=True, confidence=95)


def test_a_folder_given_as_a_result_file_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["score", str(run)]) == 2
    assert "is a folder; give a result file." in capsys.readouterr().err
    (run / "predictions.jsonl").write_text('{"ground_truth_level1": "a"}\n')
    assert main(["score", str(run)]) == 2
    assert "a run's results are its predictions.jsonl" in capsys.readouterr().err
