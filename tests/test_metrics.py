from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from conftest import random_taxonomy

from hierzoo import metrics as M
from hierzoo.metrics import HierarchicalMetrics, summarize

SEEDS = [0, 1, 2, 3]


def _simulate(tax, rng, n=300, p_right=0.6, p_unknown=0.05):
    """Random predictions over a taxonomy: per level the right node, another node of the level,
    or an unknown answer. Returns id arrays, mask, and the same paths spelled by node id
    (names repeat across parents, ids do not)."""
    rows = rng.integers(tax.n_leaves, size=n)
    target = tax.paths[rows]
    mask = target >= 0
    pred = target.copy()
    for k in range(tax.depth):
        nodes = tax.level_nodes(k)
        wrong = rng.random(n) > p_right
        pred[wrong, k] = rng.choice(nodes, size=int(wrong.sum()))
        unknown = rng.random(n) < p_unknown
        pred[unknown, k] = -2
    pred[~mask] = -2
    t_names = [[f"#{i}" for i in r if i >= 0] for r in target]
    p_names = [[f"#{i}" if i >= 0 else "Unknown" for i in r[m]] for r, m in zip(pred, mask)]
    return pred, target, mask, p_names, t_names


def _display_names(tax, ids, mask):
    return [[tax.names[i] if i >= 0 else "Unknown" for i in r[m]] for r, m in zip(ids, mask)]


@pytest.mark.parametrize("seed", SEEDS)
def test_metrics_equal_slow_loops(seed):
    rng = np.random.default_rng(seed)
    tax = random_taxonomy(
        seed, n_leaves=30, min_depth=1 + seed % 2, max_depth=6, branching=2 + seed % 3
    )
    pred, target, mask, p_names, t_names = _simulate(tax, rng)
    assert M.hca(pred, target, mask) == pytest.approx(ref.hca(p_names, t_names), abs=1e-12)
    assert M.leaf_accuracy(pred, target, mask) == pytest.approx(
        ref.leaf(p_names, t_names), abs=1e-12
    )
    assert M.por(pred, target, mask) == pytest.approx(ref.por(p_names, t_names), abs=1e-12)
    assert M.strict_por(pred, target, mask) == pytest.approx(
        ref.strict_por(p_names, t_names), abs=1e-12
    )
    assert M.tor(pred, target, mask) == pytest.approx(ref.tor(p_names, t_names), abs=1e-12)
    np.testing.assert_allclose(
        M.level_accuracy(pred, target, mask), ref.level_acc(p_names, t_names), atol=1e-12
    )
    true_ids = [list(r[m]) for r, m in zip(target, mask)]
    pred_ids = [list(r[m]) for r, m in zip(pred, mask)]
    assert M.hierarchical_f1(pred, target, mask) == pytest.approx(
        ref.hf1_nodes(pred_ids, true_ids), abs=1e-12
    )
    assert M.path_consistency(pred, target, mask, taxonomy=tax) == pytest.approx(
        ref.consistency_ids(pred_ids, tax), abs=1e-12
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_names_equal_codes(seed):
    rng = np.random.default_rng(seed)
    tax = random_taxonomy(seed, n_leaves=25)
    pred, target, mask, *_ = _simulate(tax, rng)
    p_names, t_names = _display_names(tax, pred, mask), _display_names(tax, target, mask)
    # names repeat under other parents: by name, a same-named node is a right answer (the paper)
    by_names = summarize([[n.upper() for n in row] for row in p_names], t_names, taxonomy=tax)
    assert by_names["hca"] == pytest.approx(ref.hca(p_names, t_names), abs=1e-12)
    assert by_names["tor"] == pytest.approx(ref.tor(p_names, t_names), abs=1e-12)
    np.testing.assert_allclose(by_names["level_acc"], ref.level_acc(p_names, t_names), atol=1e-12)
    without_tax = summarize(p_names, t_names)
    for key in ("hca", "leaf_acc", "por", "strict_por", "tor", "hf1", "level_acc"):
        assert without_tax[key] == pytest.approx(by_names[key], abs=1e-12)
    # where names are unique per level, names and codes agree exactly
    by_path = {
        lab: ["/".join(tax.path_names(int(leaf))[: k + 1]) for k in range(int(tax.level[leaf]) + 1)]
        for lab, leaf in zip(tax.labels, tax.leaf_ids)
    }
    unique = type(tax).from_paths(by_path)
    assert unique.level_sizes == tax.level_sizes
    u_pred = _display_names(unique, pred, mask)
    u_true = _display_names(unique, target, mask)
    assert summarize(u_pred, u_true, taxonomy=unique) == summarize(
        pred, target, mask, taxonomy=unique
    )


def test_consistency_separates_wrong_from_incoherent():
    tax = random_taxonomy(7, n_leaves=20, min_depth=3, max_depth=3)
    target = tax.paths[:4]
    wrong_but_coherent = tax.paths[[1, 2, 3, 0]]
    assert M.path_consistency(wrong_but_coherent, target, taxonomy=tax) == 1.0
    incoherent = target.copy()
    incoherent[:, 1] = tax.paths[[1, 2, 3, 0], 1]
    linked = tax.parent[incoherent[:, 2]] == incoherent[:, 1]
    assert M.path_consistency(incoherent, target, taxonomy=tax) == pytest.approx(linked.mean())
    for bad in (-1, -2, tax.n_nodes, tax.n_nodes + 5):
        invalid = target.copy()
        invalid[0, 2] = bad
        assert not M.consistent_paths(invalid, invalid != -99, tax)[0]
    shifted = tax.paths[:4, 1:]  # right nodes, but column 0 is level 1, not 0
    assert M.path_consistency(shifted, shifted, taxonomy=tax) == 0.0
    assert M.path_consistency(shifted, shifted, taxonomy=tax, first_level=1) == 1.0


def test_hf1_with_paths_of_other_depths():
    tax = random_taxonomy(3, n_leaves=40, min_depth=2, max_depth=6)
    rng = np.random.default_rng(0)
    rows_t = rng.integers(tax.n_leaves, size=200)
    rows_p = np.where(rng.random(200) < 0.5, rows_t, rng.integers(tax.n_leaves, size=200))
    target, pred = tax.paths[rows_t], tax.paths[rows_p]
    value = M.hierarchical_f1(pred, target, target >= 0, pred_mask=pred >= 0)
    expected = ref.hf1_nodes([list(r[r >= 0]) for r in pred], [list(r[r >= 0]) for r in target])
    assert value == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_batches_equal_one_pass(seed):
    rng = np.random.default_rng(seed)
    tax = random_taxonomy(seed, n_leaves=30)
    pred, target, mask, *_ = _simulate(tax, rng, n=500)
    one = HierarchicalMetrics(taxonomy=tax)
    one.update(pred, target, mask)
    batched = HierarchicalMetrics(taxonomy=tax)
    cuts = np.sort(rng.choice(np.arange(1, 500), size=7, replace=False))
    for idx in np.split(rng.permutation(500), cuts):
        # batches of narrower width when their paths are shorter
        width = int(mask[idx].sum(1).max())
        batched.update(pred[idx, :width], target[idx, :width], mask[idx, :width])
    assert batched.compute() == one.compute()
    assert batched.compute(ci=True, seed=3) == one.compute(ci=True, seed=3)
    merged = HierarchicalMetrics(taxonomy=tax)
    half = HierarchicalMetrics(taxonomy=tax)
    merged.update(pred[:250], target[:250], mask[:250])
    half.update(pred[250:], target[250:], mask[250:])
    assert merged.merge(half).compute() == one.compute()
    one.reset()
    assert one.n == 0


def test_confidence_interval_matches_resampling_bootstrap():
    rng = np.random.default_rng(0)
    tax = random_taxonomy(5, n_leaves=30, min_depth=3, max_depth=5)
    pred, target, mask, *_ = _simulate(tax, rng, n=400)
    est = M.por(pred, target, mask, ci=True, n_boot=4000, seed=1)
    assert est.low < est.value < est.high
    # the obvious bootstrap: resample sample indices, recompute the metric
    per_sample = ((pred == target) & mask).sum(1) / mask.sum(1)
    idx = rng.integers(0, 400, size=(4000, 400))
    means = per_sample[idx].mean(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    assert est.low == pytest.approx(lo, abs=0.006)
    assert est.high == pytest.approx(hi, abs=0.006)
    assert M.por(pred, target, mask, ci=True, n_boot=4000, seed=1) == est
    levels = M.level_accuracy(pred, target, mask, ci=True)
    for e in levels:
        assert e.low <= e.value <= e.high


def test_input_checks_name_the_problem():
    with pytest.raises(ValueError, match="same shape"):
        M.hca(np.zeros((3, 2), int), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="contiguous"):
        M.hca(np.zeros((2, 3), int), np.zeros((2, 3), int), np.array([[1, 0, 1], [1, 1, 1]], bool))
    with pytest.raises(ValueError, match="no levels"):
        M.hca(np.zeros((2, 2), int), np.array([[0, 1], [-1, -1]]))
    with pytest.raises(ValueError, match="confidence"):
        M.hca(np.zeros((2, 2), int), np.zeros((2, 2), int), ci=True, confidence=95)
    tax = random_taxonomy(0)
    with pytest.raises(ValueError, match="'not-a-node'.*level 0"):
        M.hca([["x"]], [["not-a-node"]], taxonomy=tax)
    with pytest.raises(ValueError, match="taxonomy="):
        M.path_consistency(np.zeros((1, 1), int), np.zeros((1, 1), int), taxonomy=None)


def test_unknown_and_none_predictions_are_wrong():
    truth = [["a", "b", "c"], ["a", "b", "d"]]
    pred = [["a", None, "c"], ["A", "B", "Unknown"]]
    assert M.level_accuracy(pred, truth).tolist() == [1.0, 0.5, 0.5]
    assert M.hca(pred, truth) == 0.0
    assert M.strict_por(pred, truth) == pytest.approx((1 / 3 + 2 / 3) / 2)


def test_ambiguous_names_resolve_under_the_chosen_parent():
    from hierzoo import load_taxonomy

    tax = load_taxonomy("imagenet-artifact")
    a, b = tax.find("sports equipment")
    truth = [tax.path_names(a)[1:]]
    pred_same = [tax.path_names(b)[1:]]  # the other "sports equipment", under its own parent
    p, t, m = M.encode(pred_same, truth, taxonomy=tax, first_level=1)
    assert t[0, 2] == a and p[0, 2] == a  # a name equal to the truth's name scores as right
    assert p[0, 1] == tax.parent[b]
    assert not M.consistent_paths(p, m, tax, first_level=1)[0]


def test_first_error_level():
    truth = np.array([[0, 1, 2], [0, 1, 2], [0, 1, -1]])
    pred = np.array([[0, 1, 2], [0, 9, 2], [9, 1, -2]])
    assert M.first_error_level(pred, truth).tolist() == [-1, 1, 0]


def test_a_missing_middle_name_is_wrong_at_its_level_never_a_shorter_path():
    truth = [["a", None, "c"], ["a", "b", None]]  # a gap in row 0, a trailing pad in row 1
    pred = [["a", "b", "x"], ["a", "b"]]
    p, t, m = M.encode(pred, truth)
    assert m.tolist() == [[True, True, True], [True, True, False]]
    assert t[0, 1] == M.functional.MISSING
    assert M.level_accuracy(pred, truth).tolist() == [1.0, 0.5, 0.0]
    assert M.leaf_accuracy(pred, truth) == 0.5  # row 0's leaf is "c", not the level above
    assert M.hca(pred, truth) == 0.5
    tax = random_taxonomy(1, n_leaves=10, min_depth=3, max_depth=3)
    full = tax.path_names(int(tax.leaf_ids[0]))
    with pytest.raises(ValueError, match="Sample 0 has no ground truth at column 1"):
        M.encode([full], [[full[0], None, full[2]]], taxonomy=tax)


def test_a_negative_prediction_never_matches():
    target = np.array([[0, -1]])
    mask = np.array([[True, True]])
    assert M.level_accuracy(np.array([[0, -1]]), target, mask).tolist() == [1.0, 0.0]
    assert M.hca(np.array([[0, -1]]), target, mask) == 0.0


def _spellings(name, rng):
    """The same name as a result file may spell it: case variants, stray spaces."""
    return [name, name.upper(), name.title(), f" {name} ", name.swapcase()][int(rng.integers(5))]


def _random_name_paths(tax, rng, n, gaps):
    """Name paths over a taxonomy as result files hold them: case variants, names of other
    nodes and levels, unknown names, None and non-strings, rows cut short or padded with None,
    and (``gaps``) a missing name inside a path."""
    all_names = list(tax.names)
    truth, pred = [], []
    for _ in range(n):
        path = tax.path_names(int(tax.leaf_ids[rng.integers(tax.n_leaves)]))
        t = [_spellings(x, rng) for x in path]
        if rng.random() < 0.2:
            t = t[: int(rng.integers(1, len(t) + 1))]
        if rng.random() < 0.1:
            t = t + [None] * int(rng.integers(1, 3))
        if gaps and len(t) > 2 and rng.random() < 0.2:
            t[int(rng.integers(1, len(t) - 1))] = None
        p = []
        for k, x in enumerate(path):
            r = rng.random()
            if r < 0.5:
                p.append(_spellings(x, rng))
            elif r < 0.75:
                nodes = tax.level_nodes(min(k, tax.depth - 1))
                p.append(_spellings(tax.names[int(rng.choice(nodes))], rng))
            elif r < 0.85:
                p.append(all_names[int(rng.integers(len(all_names)))])
            else:
                p.append(["Unknown", None, "no such name", 3, ""][int(rng.integers(5))])
        cut = rng.random()
        if cut < 0.1:
            p = p[: int(rng.integers(0, len(p) + 1))]
        elif cut < 0.15:
            p = p + ["extra"]
        truth.append(t)
        pred.append(p)
    return pred, truth


@pytest.mark.parametrize("seed", SEEDS)
def test_bulk_encoder_equals_the_per_sample_encoder(seed):
    from hierzoo import load_taxonomy

    rng = np.random.default_rng(seed)
    taxonomies = [
        random_taxonomy(seed, n_leaves=40, min_depth=2, max_depth=6, branching=2),
        load_taxonomy("imagenet-artifact"),  # "sports equipment" under two parents
    ]
    for tax in taxonomies:
        pred, truth = _random_name_paths(tax, rng, 400, gaps=False)
        got = M.encode(pred, truth, taxonomy=tax)
        want = ref.encode_per_sample(pred, truth, taxonomy=tax)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        # one level down (`first_level=1`): the rows without their top level
        rows = [i for i, row in enumerate(truth) if len(row) > 1 and row[1] is not None]
        sub_t = [truth[i][1:] for i in rows]
        sub_p = [pred[i][1:] for i in rows]
        got = M.encode(sub_p, sub_t, taxonomy=tax, first_level=1)
        want = ref.encode_per_sample(sub_p, sub_t, taxonomy=tax, first_level=1)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        pred, truth = _random_name_paths(tax, rng, 400, gaps=True)
        got = M.encode(pred, truth)  # without a taxonomy: a vocabulary per level
        want = ref.encode_per_sample(pred, truth)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        # errors: the same message for the same first bad sample
        for bad in ([["no such node"]], [[truth[0][0], None, "x"]]):
            t = truth[:5] + bad + truth[5:]
            p = pred[:5] + [["x"]] + pred[5:]
            with pytest.raises(ValueError) as want_err:
                ref.encode_per_sample(p, t, taxonomy=tax)
            with pytest.raises(ValueError) as got_err:
                M.encode(p, t, taxonomy=tax)
            assert str(got_err.value) == str(want_err.value)


def test_the_metrics_package_has_no_import_cycle():
    """The functional core imports nothing of the accumulator (torchmetrics' direction): the
    graph of imports between hierzoo.metrics' modules, function-level imports included, has no
    cycle."""
    import ast
    from pathlib import Path

    package = Path(M.__file__).parent
    modules = {p.stem: p for p in package.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[:2] == ["hierzoo", "metrics"] and len(parts) > 2:
                    deps.add(parts[2])
                elif node.module == "hierzoo.metrics":
                    deps.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[:2] == ["hierzoo", "metrics"] and len(parts) > 2:
                        deps.add(parts[2])
        graph[name] = deps & set(modules)
    assert "accumulator" not in graph["functional"]
    assert "accumulator" in graph and "functional" in graph["accumulator"]

    def visit(name, path):
        assert name not in path, f"import cycle: {' -> '.join([*path, name])}"
        for dep in graph[name]:
            visit(dep, [*path, name])

    for name in graph:
        visit(name, [])


def test_metric_inputs_in_the_forms_a_user_reaches_for_or_a_clear_error():
    """A taxonomy by name, a PathPrediction as the prediction, an empty batch; one path as a
    flat list, node ids against names, compute() before any update: errors naming the fix."""
    import hierzoo

    tax = hierzoo.load_taxonomy("cub200")
    paths = tax.paths[[0, 5, 9]]
    names = [[tax.names[i] for i in row] for row in paths]
    wrong = [row[:-1] + ["Common Raven"] for row in names]
    by_object = M.summarize(wrong, names, taxonomy=tax)
    assert M.summarize(wrong, names, taxonomy="cub200") == by_object
    assert M.hca(wrong, names, taxonomy="cub200") == by_object["hca"]
    acc = M.HierarchicalMetrics(taxonomy="cub200")
    acc.update([], [])  # an empty batch adds nothing
    with pytest.raises(ValueError, match=r"No samples yet: call update\(\)"):
        acc.compute()
    acc.update(wrong, names)
    assert acc.compute() == by_object
    with pytest.raises(ValueError, match=r"`only` to be one of"):
        acc.compute(only="HCA")
    with pytest.raises(TypeError, match=r"HierarchicalMetrics to merge"):
        acc.merge({})
    with pytest.raises(ValueError, match=r"`first_level` in 0..3"):
        M.HierarchicalMetrics(taxonomy=tax, first_level=5)
    with pytest.raises(ValueError, match=r"at most 4 level columns"):
        M.HierarchicalMetrics(taxonomy=tax, num_levels=7)
    with pytest.raises(ValueError, match=r"No samples: `pred` and `target` are empty"):
        M.summarize([], [])

    # a PathPrediction gives the form the targets are in
    from hierzoo.models import PathPrediction

    pred = PathPrediction(
        node_ids=paths.copy(),
        names=[list(row) for row in names],
        scores=np.ones(paths.shape),
        consistent=np.ones(len(paths), dtype=bool),
        strategy="joint",
    )
    assert M.summarize(pred, names, taxonomy=tax)["hca"] == 1.0
    assert M.summarize(pred, paths, taxonomy=tax)["hca"] == 1.0
    with pytest.raises(ValueError, match=r"`target` holds names and `pred` node codes"):
        M.summarize(paths, names, taxonomy=tax)
    for flat in (names[0], np.array(names[0]), "Laysan Albatross"):
        with pytest.raises(TypeError, match=r"for one sample pass \[path\]"):
            M.summarize(flat, flat)
    with pytest.raises(TypeError, match=r"a Taxonomy, a bundled taxonomy name"):
        M.summarize(names, names, taxonomy=3)
