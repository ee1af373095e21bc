"""Slow, obvious per-sample loops over name paths, written the way the paper's metric script
computes each metric (lower-cased names, one sample at a time). The vectorized metrics are
tested against these."""

from __future__ import annotations


def _low(path):
    return [p.lower() if isinstance(p, str) else None for p in path]


def hca(pred, true):
    return sum(_low(p) == _low(t) for p, t in zip(pred, true)) / len(true)


def leaf(pred, true):
    return sum((_low(p)[-1] or "") == _low(t)[-1] for p, t in zip(pred, true)) / len(true)


def por(pred, true):
    total = 0.0
    for p, t in zip(pred, true):
        p, t = _low(p), _low(t)
        total += sum(1 for a, b in zip(p, t) if a == b) / len(t)
    return total / len(true)


def strict_por(pred, true):
    total = 0.0
    for p, t in zip(pred, true):
        p, t = _low(p), _low(t)
        n = 0
        for a, b in zip(p, t):
            if a != b:
                break
            n += 1
        total += n / len(t)
    return total / len(true)


def tor(pred, true):
    total = 0.0
    for p, t in zip(pred, true):
        p, t = _low(p), _low(t)
        pairs = sum(
            1 for j in range(len(t) - 1) if j + 1 < len(p) and p[j] == t[j] and p[j + 1] == t[j + 1]
        )
        total += pairs / (len(t) - 1) if len(t) > 1 else 0
    return total / len(true)


def level_acc(pred, true):
    depth = max(len(t) for t in true)
    right, total = [0] * depth, [0] * depth
    for p, t in zip(pred, true):
        p, t = _low(p), _low(t)
        for j in range(len(t)):
            total[j] += 1
            if j < len(p) and p[j] == t[j]:
                right[j] += 1
    return [r / n if n else float("nan") for r, n in zip(right, total)]


def hf1_nodes(pred_ids, true_ids):
    """Set-based hierarchical F1 over node-id paths (lists of ints, any lengths); an element is
    a (level, answer) pair, so two unknown answers (-2) at two levels are two wrong elements."""
    total = 0.0
    for p, t in zip(pred_ids, true_ids):
        ps, ts = set(enumerate(p)), set(enumerate(t))
        inter = len(ps & ts)
        prec = inter / len(ps) if ps else 0
        rec = inter / len(ts) if ts else 0
        total += 2 * prec * rec / (prec + rec) if prec + rec else 0
    return total / len(true_ids)


def consistency_ids(pred_ids, taxonomy, first_level=0):
    ok = 0
    for p in pred_ids:
        good = True
        for k, node in enumerate(p):
            if node < 0 or node >= taxonomy.n_nodes or taxonomy.level[node] != first_level + k:
                good = False
                break
            if k > 0 and taxonomy.parent[node] != p[k - 1]:
                good = False
                break
        ok += good
    return ok / len(pred_ids)


def encode_per_sample(pred, target, taxonomy=None, first_level=0):
    """The per-sample name encoder hierzoo had before bulk encoding: every sample and level in
    Python, lower-casing and looking up each name. ``hierzoo.metrics.encode`` must return
    exactly what this returns."""
    import numpy as np

    def depth_of(row):
        depth = len(row)
        while depth and row[depth - 1] is None:
            depth -= 1
        return depth

    def pick(cands, parent, prev):
        if len(cands) > 1 and prev >= 0:
            for c in cands:
                if parent[c] == prev:
                    return c
        return cands[0]

    n = len(target)
    width = max((len(r) for r in target), default=0)
    t_out = np.full((n, width), -1, dtype=np.int64)
    p_out = np.full((n, width), -2, dtype=np.int64)
    mask = np.zeros((n, width), dtype=bool)
    if taxonomy is None:
        vocab = [{} for _ in range(width)]
        for i, (prow, trow) in enumerate(zip(pred, target)):
            for k, name in enumerate(trow[: depth_of(trow)]):
                mask[i, k] = True
                if name is None:
                    t_out[i, k] = -3
                    continue
                t_out[i, k] = vocab[k].setdefault(name.lower(), len(vocab[k]))
                guess = prow[k] if k < len(prow) else None
                if isinstance(guess, str):
                    p_out[i, k] = vocab[k].setdefault(guess.lower(), len(vocab[k]))
        return p_out, t_out, mask
    level_ids = taxonomy._level_name_ids
    parent = taxonomy.parent
    for i, (prow, trow) in enumerate(zip(pred, target)):
        t_prev = p_prev = -1
        for k, name in enumerate(trow[: depth_of(trow)]):
            if name is None:
                raise ValueError(
                    f"Sample {i} has no ground truth at column {k} (taxonomy level "
                    f"{first_level + k}) but has one below it; a path of taxonomy "
                    f"{taxonomy.name!r} has every level: give the missing name."
                )
            lev = first_level + k
            cands = level_ids[lev].get(name.strip().lower(), []) if lev < taxonomy.depth else []
            if not cands:
                raise ValueError(
                    f"Ground truth {name!r} of sample {i} is not a node of level {lev} of taxonomy "
                    f"{taxonomy.name!r}; check that the results match this taxonomy (and "
                    "`first_level`)."
                )
            t_id = pick(cands, parent, t_prev)
            t_out[i, k] = t_id
            mask[i, k] = True
            guess = prow[k] if k < len(prow) else None
            if isinstance(guess, str):
                pc = level_ids[lev].get(guess.strip().lower(), [])
                if pc:
                    p_out[i, k] = t_id if t_id in pc else pick(pc, parent, p_prev)
            t_prev, p_prev = t_id, int(p_out[i, k])
    return p_out, t_out, mask
